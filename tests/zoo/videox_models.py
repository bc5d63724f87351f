"""Small models of two released video CLIPs' interfaces, for the host zoo.

Written from the papers and a reading of the released code (not copied from it), keeping what a
prompt wrapper meets: attribute names, call signatures, return values, caches and switches.

* :class:`XCLIP`: X-CLIP (Ni et al., "Expanding Language-Image Pretrained Models for General Video
  Recognition", arXiv 2208.02816) as microsoft/VideoX releases it (``X-CLIP/models/xclip.py``,
  ``cct.py``, ``mit.py``, ``prompt.py``). A subclass of the OpenAI ``CLIP`` (no ``.clip``) whose
  image tower is a cross-frame communication transformer: each block adds one message token per
  frame, computed from the frames' CLS tokens, after every other token, and drops it before its
  MLP. ``encode_image`` returns ``(cls, patch tokens)``, ``encode_video`` ``(video, per-frame patch
  tokens in the embedding space)``; ``forward(image, text)`` makes the class features video-specific
  with ``prompts_generator``; with ``use_cache=True`` (``FIX_TEXT``) it encodes the text once, under
  ``no_grad``, into ``cache_text_features`` and reuses it for every later call.
* :class:`GA2CLIP`: the OpenAI-layout CLIP inside GA2-CLIP (BBYL9413/GA2-CLIP, ``clip/model.py``,
  copied there from ViFi-CLIP). Built with a ``design_details`` dict whose ``vision_depth`` /
  ``language_depth`` make its own blocks insert IVLP prompts (``visual.VPT``,
  ``resblocks.{i}.VPT_shallow``); ``encode_text(text, return_token=False)`` returns ``(features,
  None)`` or ``(features, tokens)``; ``forward`` returns ``(image, class, token features, scale)``
  and no logits; both transformers checkpoint their blocks by default.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from promptcouple.models.openai_clip import CLIP, LayerNorm, QuickGELU
from promptcouple.models.openai_clip import VisionTransformer as OpenAIVisionTransformer


def _heads(width: int) -> int:
    return max(1, width // 64)  # the released models' rule, kept usable at test widths


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("c_fc", nn.Linear(width, width * 4)),
        ("gelu", QuickGELU()),
        ("c_proj", nn.Linear(width * 4, width)),
    ]))


# ========================================================================================= X-CLIP


class CrossFrameBlock(nn.Module):
    """A ViT block with cross-frame communication (X-CLIP section 3.2).

    The CLS token of each frame becomes a message (``message_fc``); the messages of one video's
    ``T`` frames attend to each other (``message_attn``); each frame's message then joins its
    frame's tokens *last*, takes part in the block's attention and leaves again before the MLP.
    Sequence-first, ``(L, B*T, D)`` with the frames of one video adjacent.
    """

    def __init__(self, width: int, heads: int, frames: int):
        super().__init__()
        self.T = frames
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width)
        self.message_attn = nn.MultiheadAttention(width, heads)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = _mlp(width)
        self.ln_2 = LayerNorm(width)
        self.attn_mask = None  # as the released block: vision attention is unmasked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, bt, d = x.shape
        if bt % self.T:
            raise ValueError(f"cross-frame block got {bt} frames, not a multiple of T={self.T}: "
                             f"pass whole videos of {self.T} frames")
        message = self.message_fc(x[0]).view(bt // self.T, self.T, d).transpose(0, 1)  # (T, B, D)
        h = self.message_ln(message)
        message = message + self.message_attn(h, h, h, need_weights=False)[0]
        x = torch.cat([x, message.transpose(0, 1).reshape(1, bt, d)], dim=0)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x[:length]  # the message token leaves before the MLP
        return x + self.mlp(self.ln_2(x))


class CrossFrameTransformer(nn.Module):
    """The blocks; ``use_checkpoint`` runs them in checkpointed segments, as the released code does
    (non-reentrant here, so that ``torch.autograd.grad`` works through it)."""

    def __init__(self, width: int, layers: int, heads: int, frames: int, use_checkpoint: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.use_checkpoint = use_checkpoint
        self.resblocks = nn.Sequential(*[CrossFrameBlock(width, heads, frames) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_checkpoint:
            return self.resblocks(x)
        return checkpoint_sequential(self.resblocks, min(3, self.layers), x, use_reentrant=False)


class CrossFrameVisionTransformer(OpenAIVisionTransformer):
    """The image tower: OpenAI's ViT layout with cross-frame blocks; returns ``(cls, patch tokens)``."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, frames: int, use_checkpoint: bool = False):
        super().__init__(input_resolution, patch_size, width, layers, heads, output_dim)
        self.transformer = CrossFrameTransformer(width, layers, heads, frames, use_checkpoint)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj, x[:, 1:]  # patch tokens raw: no ln_post, no proj


class _TemporalBlock(nn.Module):
    """Pre-norm transformer block over frames, sequence-first ``(T, B, D)``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _mlp(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class MultiFrameIntegration(nn.Module):
    """MIT (X-CLIP section 3.3): frame features plus a temporal position embedding through a small
    transformer, added back to the input, averaged over time: ``(B, T, D) -> (B, D)``."""

    def __init__(self, T: int, embed_dim: int, layers: int = 1):
        super().__init__()
        self.T = T
        self.positional_embedding = nn.Parameter(0.02 * torch.randn(1, T, embed_dim))
        self.resblocks = nn.Sequential(*[_TemporalBlock(embed_dim, _heads(embed_dim)) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.resblocks((x + self.positional_embedding).permute(1, 0, 2)).permute(1, 0, 2)
        return (z.to(x.dtype) + x).mean(dim=1)


class _CrossAttention(nn.Module):
    """Multi-head attention from text queries to visual keys and values (batch-first)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        def split(t):  # (B, N, D) -> (B, heads, N, D / heads)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(q)), split(self.k_proj(kv)), split(self.v_proj(kv)))
        return self.proj(out.transpose(1, 2).flatten(2))


class _PromptGeneratorLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = _CrossAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), QuickGELU(), nn.Dropout(dropout), nn.Linear(dim * 4, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), visual)
        return x + self.dropout(self.mlp(self.norm3(x)))


class VideoSpecificPrompt(nn.Module):
    """Video-specific prompting (X-CLIP section 3.4): class features ``(B, K, D)`` attend to the
    video's patch tokens ``(B, P, D)``; the result, scaled by a learnable ``alpha`` per channel, is
    what ``forward`` adds to the class features."""

    def __init__(self, layers: int = 2, embed_dim: int = 512, alpha: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = nn.ModuleList([_PromptGeneratorLayer(embed_dim, _heads(embed_dim)) for _ in range(layers)])
        self.alpha = nn.Parameter(torch.full((embed_dim,), float(alpha)))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        visual = self.norm(visual)
        for layer in self.decoder:
            text = layer(text, visual)
        return self.alpha * text


class XCLIP(CLIP):
    """X-CLIP's interface on the OpenAI layout: frames ``(B, T, 3, H, W)`` and ids in, logits ``(B, K)`` out.

    Keyword arguments as the released constructor: ``T`` frames per video, ``mit_layers``,
    ``prompts_alpha``, ``prompts_layers``, ``use_cache`` (``FIX_TEXT``), ``use_checkpoint``.
    """

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int, *, T: int = 8, mit_layers: int = 1,
                 prompts_alpha: float = 1e-1, prompts_layers: int = 2, use_cache: bool = True,
                 use_checkpoint: bool = False):
        super().__init__(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                         context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)
        # The image tower is replaced, as the released class does after CLIP.__init__.
        self.visual = CrossFrameVisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                                  _heads(vision_width), embed_dim, T, use_checkpoint)
        self.prompts_generator = VideoSpecificPrompt(prompts_layers, embed_dim, prompts_alpha)
        self.mit = MultiFrameIntegration(T, embed_dim, mit_layers)
        self.prompts_visual_ln = LayerNorm(vision_width)
        self.prompts_visual_proj = nn.Parameter(vision_width ** -0.5 * torch.randn(vision_width, embed_dim))
        self.use_cache = use_cache
        self.cache_text_features: Optional[torch.Tensor] = None

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.visual(image.type(self.dtype))

    def encode_video(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(video features (B, D), patch tokens (B, T, P, D))`` of frames ``(B, T, 3, H, W)``."""
        b, t = image.shape[:2]
        cls, patches = self.encode_image(image.flatten(0, 1))
        patches = self.prompts_visual_ln(patches) @ self.prompts_visual_proj
        return self.mit(cls.view(b, t, -1)), patches.view(b, t, -1, patches.shape[-1])

    def cache_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text features computed once, without gradients, then reused whatever ``text`` is.

        As released, it leaves the model in training mode.
        """
        self.eval()
        with torch.no_grad():
            if self.cache_text_features is None:
                self.cache_text_features = self.encode_text(text)
        self.train()
        return self.cache_text_features

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        video, patches = self.encode_video(image)
        patches = patches.mean(dim=1)  # the generator reads the patch tokens averaged over time
        text = self.cache_text(text) if self.use_cache else self.encode_text(text)
        text = text.unsqueeze(0).expand(b, -1, -1)
        text = text + self.prompts_generator(text, patches)
        video, text = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
        return self.logit_scale.exp() * torch.einsum("bd,bkd->bk", video, text)


# ====================================================================================== GA2-CLIP


class IVLPBlock(nn.Module):
    """OpenAI's residual block that, when ``add_prompt``, writes its own layer's prompts into the
    sequence first: text tokens ``1..1+n``, the last ``n`` vision tokens (ViFi-CLIP's IVLP)."""

    def __init__(self, width: int, heads: int, attn_mask: Optional[torch.Tensor], add_prompt: bool,
                 text_layer: bool, index: int, design_details: dict):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = _mlp(width)
        self.ln_2 = LayerNorm(width)
        self.attn_mask = attn_mask
        self.text_layer = text_layer
        self.add_prompt = add_prompt and index != 0  # layer 0's prompts enter before the blocks
        if self.add_prompt:
            n = design_details["language_ctx" if text_layer else "vision_ctx"]
            self.VPT_shallow = nn.Parameter(0.02 * torch.randn(n, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (L, N, D)
        if self.add_prompt:
            p = self.VPT_shallow.to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)
            n = p.shape[0]
            x = torch.cat([x[:1], p, x[1 + n:]]) if self.text_layer else torch.cat([x[:-n], p])
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class GA2Transformer(nn.Module):
    """Blocks checkpointed one by one, on by default as in the released copy."""

    def __init__(self, width: int, layers: int, heads: int, attn_mask: Optional[torch.Tensor],
                 prompts_needed: int, text_layer: bool, design_details: dict):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[IVLPBlock(width, heads, attn_mask, prompts_needed > i, text_layer, i,
                                                   design_details) for i in range(layers)])
        self.grad_checkpointing = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing else block(x)
        return x


class GA2VisualTransformer(OpenAIVisionTransformer):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, design_details: dict, emb_dropout: float = 0.0):
        super().__init__(input_resolution, patch_size, width, layers, heads, output_dim)
        self.dropout = nn.Dropout(emb_dropout)
        self.VPT_shallow = design_details["vision_depth"] > 0
        if self.VPT_shallow:
            self.VPT = nn.Parameter(0.02 * torch.randn(design_details["vision_ctx"], width))
        self.transformer = GA2Transformer(width, layers, heads, None, design_details["vision_depth"], False,
                                          design_details)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.dropout(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        if self.VPT_shallow:
            x = torch.cat([x, self.VPT.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


#: GA2-CLIP's frozen "vanilla" model: no prompts of its own.
NO_PROMPTS = {"trainer": "IVLP", "vision_depth": 0, "vision_ctx": 0, "language_depth": 0, "language_ctx": 0}


class GA2CLIP(nn.Module):
    """GA2-CLIP's CLIP: ``design_details`` second, as in the released constructor."""

    def __init__(self, embed_dim: int, design_details: dict, image_resolution: int, vision_layers: int,
                 vision_width: int, vision_patch_size: int, context_length: int, vocab_size: int,
                 transformer_width: int, transformer_heads: int, transformer_layers: int, emb_dropout: float = 0.0):
        super().__init__()
        self.context_length = context_length
        self.visual = GA2VisualTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                           _heads(vision_width), embed_dim, design_details, emb_dropout)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.transformer = GA2Transformer(transformer_width, transformer_layers, transformer_heads, mask,
                                          design_details["language_depth"], True, design_details)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, transformer_width))
        self.dropout = nn.Dropout(emb_dropout)
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(transformer_width ** -0.5 * torch.randn(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images.type(self.dtype))

    def encode_text(self, text: torch.Tensor, return_token: bool = False
                    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(features (N, D), token features (N, L, D) or None)``: always a tuple."""
        x = self.token_embedding(text).type(self.dtype) + self.positional_embedding.type(self.dtype)
        x = self.dropout(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x).type(self.dtype)
        tokens = x @ self.text_projection
        features = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection
        return features, (tokens if return_token else None)

    def forward(self, image: torch.Tensor, text: torch.Tensor, return_token: bool = False):
        """``(image features, class features, token features or None, exp(logit_scale))``: no logits;
        the caller pools frames and compares (GA2-CLIP's video head)."""
        features, tokens = self.encode_text(text, return_token)
        return self.encode_image(image), features, tokens, self.logit_scale.exp()
