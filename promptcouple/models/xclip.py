"""An X-CLIP style video model built around an open_clip ``CLIP`` (Ni et al., ECCV 2022).

Three additions turn an image CLIP into a video model, all of them new, trainable parameters
around the untouched pretrained weights:

* **Cross-frame communication.** Every chosen vision block is replaced by a :class:`CrossFrameBlock`
  that keeps the original block inside. Before the block runs, one *message token* per frame is
  computed from the frame's CLS token (a linear layer, then self-attention over the ``T`` frames
  of the same video), appended at the END of the token sequence, and dropped again after the
  block. Prompt tokens appended by the prompt wrapper therefore sit before the message token and
  survive the block.
* **Multi-frame integration transformer (MIT).** Per-frame features ``(B, T, D)`` plus a temporal
  position embedding go through a small transformer; its output is added residually and averaged
  over time into the video feature ``(B, D)``.
* **Video-specific prompting.** Class text features are shifted per video by cross-attention from
  the text to the video's visual tokens (patch tokens of all frames, projected to the embedding
  space, plus the video feature), scaled by a small learnable ``alpha``: text becomes ``(B, K, D)``.

Differences from the paper. The first three make the new head an exact no-op at initialisation,
so that an untrained head (for example under a prompt-tuning wrapper, which freezes the host) is
the frame-wise CLIP; its zero-initialised layers still receive gradients:

* A token appended to a softmax attention changes every other token's output even when its value
  is zero (its key and value come from LayerNorm and projection biases). Here the message token
  is ``m = cls + fc(cls)``, then ``m + MSA_T(LN(m))`` (the paper: ``fc(cls)``, then the same
  attention), with ``fc`` and the attention's output projection zero-initialised: it starts as a
  clone of the frame's CLS token. An additive attention mask gives the CLS and message columns
  ``log(1/2)`` each (always, not only at the start): the pair shares the CLS token's attention
  mass, so while the two are equal the block computes what it computed without a message (up to
  float rounding, about 1e-7).
* The MIT adds ``proj(LN(transformer(x + pos)))`` with a zero-initialised ``proj`` to its input
  (the paper adds the transformer output itself).
* The prompt generator returns ``alpha * (decoder(text) - text)``, the residual updates only, whose
  branches end in zero-initialised layers (the paper scales ``decoder(text)``, text included).
* The generator attends to the patch tokens of every frame plus the video feature (the paper: patch
  tokens averaged over time), projected by a copy of CLIP's own ``visual.proj`` (the paper: a random
  projection), so they start in the joint embedding space.

``init="xclip"`` draws every new linear layer from N(0, 0.02) as the paper does (no exact start).
The message token is dropped after the whole original block rather than between its attention
and MLP; the MLP acts per token, so the two are the same.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Iterator, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CrossFrameBlock",
    "CrossFrameMessage",
    "MultiFrameIntegration",
    "VideoSpecificPrompt",
    "XCLIPStyle",
]

InitMode = Literal["zero", "xclip"]
_HALF_LOG = math.log(0.5)


def _default_heads(dim: int) -> int:
    """X-CLIP's ``dim // 64`` heads, reduced to a divisor of ``dim`` (tiny test models have dim 32)."""
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


def _init_linear_layers(module: nn.Module) -> None:
    """X-CLIP's initialisation of new layers: linear weights N(0, 0.02) truncated, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _zero_(layer: nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so the head follows the host into fp16/bf16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


# --------------------------------------------------------------------------------- message tokens


class CrossFrameMessage(nn.Module):
    """One message token per frame: ``m = cls + fc(cls)``, then ``m + MSA_T(LN(m))`` over the frames.

    Args:
        width: Token width of the vision tower.
        heads: Attention heads of the cross-frame attention.
        init: ``"zero"``: ``fc`` and the attention's output projection start at zero, so the message
            is an exact clone of the CLS token; ``"xclip"``: N(0, 0.02) as in the paper.
    """

    def __init__(self, width: int, heads: int, init: InitMode = "zero") -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.ln = _LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        _init_linear_layers(self)
        if init == "zero":
            _zero_(self.fc)
            _zero_(self.attn.out_proj)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """Messages ``(B, T, W)`` from the CLS tokens ``(B, T, W)`` of ``B`` videos of ``T`` frames."""
        m = cls + self.fc(cls)
        h = self.ln(m)
        return m + self.attn(h, h, h, need_weights=False)[0]


def _message_mask(mask: Optional[torch.Tensor], length: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """Additive attention mask over ``length + 1`` tokens, the message token last.

    The message token inherits the CLS token's (index 0) mask row and column, and the CLS and
    message columns get ``log(1/2)`` each: while the message equals the CLS token the pair gets
    exactly the CLS token's attention mass, i.e. the block output is unchanged.
    """
    if mask is None:
        out = torch.zeros(length + 1, length + 1, dtype=dtype, device=device)
    else:
        if mask.shape[-2:] != (length, length):
            raise ValueError(f"attn_mask of shape {tuple(mask.shape)} does not match the {length} tokens "
                             "of the block input")
        if mask.dtype == torch.bool:  # True = not allowed to attend, as in nn.MultiheadAttention
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        idx = torch.cat([torch.arange(length, device=mask.device), torch.zeros(1, dtype=torch.long,
                                                                               device=mask.device)])
        out = mask.to(dtype).index_select(-2, idx).index_select(-1, idx)
    out[..., 0] += _HALF_LOG
    out[..., length] += _HALF_LOG
    return out


class CrossFrameBlock(nn.Module):
    """A vision block with X-CLIP cross-frame communication around it.

    It is called exactly like the block it replaces (``r(x, attn_mask=...)`` or, under gradient
    checkpointing, ``checkpoint(r, x, None, None, attn_mask)``): ``x`` is ``(B*T, L, W)``, or
    ``(L, B*T, W)`` when the block's attention is sequence-first. It appends one message token per
    frame at the end, runs the original block with a mask that lets the message share the CLS
    token's attention mass, and returns the first ``L`` tokens. Attributes it does not have itself
    (``attn``, ``mlp``, ``get_weight_dtype``...) are read from the original block, so code written
    for open_clip's blocks keeps working.

    Args:
        block: The original residual block; its ``forward`` must accept ``attn_mask``.
        num_frames: Frames per video ``T``; the batch must hold whole videos, frames of one video
            adjacent (``(b t)`` order).
        batch_first: Layout to assume when the block's attention is not an ``nn.MultiheadAttention``
            (which says its own layout through ``batch_first`` at call time).
        heads: Heads of the cross-frame attention (default: the block's own).
        init: Initialisation of the message layers, see :class:`CrossFrameMessage`.

    Raises:
        TypeError: If the block's ``forward`` takes no ``attn_mask``.
    """

    def __init__(self, block: nn.Module, num_frames: int, *, batch_first: bool = True,
                 heads: Optional[int] = None, init: InitMode = "zero") -> None:
        super().__init__()
        try:
            signature = inspect.signature(block.forward)
        except (TypeError, ValueError) as err:
            raise TypeError(f"cannot read the call signature of {type(block).__name__}.forward") from err
        if "attn_mask" not in signature.parameters:
            raise TypeError(
                f"{type(block).__name__}.forward{signature} takes no attn_mask; cross-frame message "
                "tokens need it to keep the block exact at initialisation (open_clip blocks have it)")
        width = _block_width(block)
        if heads is None:
            heads = getattr(getattr(block, "attn", None), "num_heads", None) or _default_heads(width)
        self.block = block
        self.message = CrossFrameMessage(width, heads, init)
        self.num_frames = num_frames
        self._fallback_batch_first = batch_first
        self._signature = signature

    def _batch_first(self) -> bool:
        # Read at call time: a sequence-first model may be made by flipping attn.batch_first later.
        attn = getattr(self.block, "attn", None)
        if isinstance(attn, nn.MultiheadAttention):
            return attn.batch_first
        return self._fallback_batch_first

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Run the original block on ``x`` plus one message token per frame; drop the message again."""
        batch_first = self._batch_first()
        frames_dim = 0 if batch_first else 1
        length, bt = x.shape[1 - frames_dim], x.shape[frames_dim]
        t = self.num_frames
        if bt % t:
            raise ValueError(
                f"cross-frame block got {bt} frames, not a multiple of num_frames={t}: the batch must hold "
                f"whole videos of {t} frames in (b t) order; use XCLIPStyle.encode_video on (B, T, 3, H, W)")
        cls = x[:, 0] if batch_first else x[0]  # (B*T, W)
        msg = self.message(cls.reshape(bt // t, t, -1)).reshape(bt, -1).to(x.dtype)
        x = torch.cat([x, msg.unsqueeze(1 - frames_dim)], dim=1 - frames_dim)

        bound = self._signature.bind(x, *args, **kwargs)
        mask = bound.arguments.get("attn_mask")
        bound.arguments["attn_mask"] = _message_mask(mask, length, x.dtype, x.device)
        out = self.block(*bound.args, **bound.kwargs)
        return out[:, :length] if batch_first else out[:length]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "block":  # not set yet (construction, unpickling): do not recurse
                raise
            return getattr(self.block, name)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}"


def _block_width(block: nn.Module) -> int:
    for name in ("ln_1", "norm1"):
        norm = getattr(block, name, None)
        if isinstance(norm, nn.LayerNorm):
            return norm.normalized_shape[0]
    attn = getattr(block, "attn", None)
    if isinstance(attn, nn.MultiheadAttention):
        return attn.embed_dim
    raise TypeError(f"cannot tell the width of {type(block).__name__} (no ln_1 or attn)")


# ------------------------------------------------------------------------------------------ MIT


class _ResidualBlock(nn.Module):
    """Pre-norm transformer block over ``(B, T, D)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = _LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = _LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class MultiFrameIntegration(nn.Module):
    """Video feature ``mean_t(x_t + proj(LN(transformer(x + pos)))_t)`` from per-frame features.

    Args:
        dim: Embedding width ``D``.
        num_frames: Frames per video ``T`` (size of the temporal position embedding).
        layers: Transformer blocks; 0 gives the plain temporal mean.
        heads: Attention heads (default ``dim // 64``, at least 1).
        init: ``"zero"``: ``proj`` starts at zero, so the output is the temporal mean exactly.
    """

    def __init__(self, dim: int, num_frames: int, layers: int = 1, heads: Optional[int] = None,
                 init: InitMode = "zero") -> None:
        super().__init__()
        self.num_frames = num_frames
        self.positional_embedding = nn.Parameter(torch.zeros(num_frames, dim))
        self.blocks = nn.ModuleList(_ResidualBlock(dim, heads or _default_heads(dim)) for _ in range(layers))
        self.ln = _LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        _init_linear_layers(self)
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        if init == "zero":
            _zero_(self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)`` -> ``(B, D)``."""
        if x.ndim != 3 or x.shape[1] != self.num_frames:
            raise ValueError(f"MIT expects per-frame features (B, {self.num_frames}, D), got {tuple(x.shape)}")
        if not len(self.blocks):
            return x.mean(dim=1)
        z = x + self.positional_embedding.to(x.dtype)
        for block in self.blocks:
            z = block(z)
        return (x + self.proj(self.ln(z)).to(x.dtype)).mean(dim=1)


# ------------------------------------------------------------------------ video-specific prompts


class _PromptGeneratorLayer(nn.Module):
    """Text queries attend to visual keys, then an MLP; both residual, both ending in ``out``-layers."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_q = _LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_2 = _LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.ln_q(x), visual, visual, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class VideoSpecificPrompt(nn.Module):
    """The shift ``alpha * (decoder(text, visual) - text)`` that makes class features video-specific.

    Args:
        dim: Embedding width ``D``.
        layers: Cross-attention layers.
        heads: Attention heads (default ``dim // 64``, at least 1).
        alpha: Initial value of the learnable per-channel scale.
        dropout: Dropout inside the layers.
        init: ``"zero"``: every residual branch ends in a zero-initialised layer, so the shift
            starts at exactly zero (and ``alpha`` still scales its growth).
    """

    def __init__(self, dim: int, layers: int = 2, heads: Optional[int] = None, alpha: float = 0.1,
                 dropout: float = 0.0, init: InitMode = "zero") -> None:
        super().__init__()
        heads = heads or _default_heads(dim)
        self.norm = _LayerNorm(dim)
        self.layers = nn.ModuleList(_PromptGeneratorLayer(dim, heads, dropout) for _ in range(layers))
        self.alpha = nn.Parameter(torch.full((dim,), float(alpha)))
        _init_linear_layers(self)
        if init == "zero":
            for layer in self.layers:
                _zero_(layer.cross_attn.out_proj)
                _zero_(layer.mlp[-1])

    def forward(self, text: torch.Tensor, tokens: torch.Tensor,
                video: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Shift ``(B, K, D)`` of the text ``(B, K, D)`` given patch tokens ``(B, N, D)`` and video ``(B, D)``."""
        visual = tokens if video is None else torch.cat([video.unsqueeze(1).to(tokens.dtype), tokens], dim=1)
        visual = self.norm(visual)
        x = text
        for layer in self.layers:
            x = layer(x, visual)
        return self.alpha.to(x.dtype) * (x - text)


# ----------------------------------------------------------------------------------- the model


class XCLIPStyle(nn.Module):
    """An X-CLIP style video classifier around an open_clip ``CLIP`` with a ViT image tower.

    The CLIP is modified in place (its vision blocks become :class:`CrossFrameBlock`) and kept as
    ``self.clip``; load its pretrained weights before building this model. The new head
    (message layers, MIT, prompt generator, token projection) is ordinary trainable parameters,
    listed by :meth:`head_parameters`. With ``init="zero"`` the whole model starts out computing
    exactly the frame-wise CLIP: mean of per-frame image features, unchanged class features.

    Args:
        clip: An open_clip ``CLIP`` whose ``visual`` is a ``VisionTransformer`` (batch-first or
            sequence-first blocks) without attentional pooling.
        num_frames: Frames per video ``T``; every video passed in must have exactly this many.
        mit_layers: Blocks of the multi-frame integration transformer (0: plain temporal mean).
        prompt_layers: Layers of the video-specific prompt generator (0: text is not specialised).
        prompt_alpha: Initial scale of the video-specific shift of the text features.
        cross_frame_layers: Indices of the vision blocks that get message tokens (default: all).
        init: ``"zero"`` (exact frame-wise CLIP at the start) or ``"xclip"`` (the paper's N(0, 0.02)).
        prompt_dropout: Dropout inside the prompt generator.

    Raises:
        TypeError: If ``clip`` is not an open_clip ``CLIP`` with a ViT image tower pooled by its
            CLS token or by averaging (no attentional pooling).
        ValueError: For a bad ``num_frames``, layer count or index, ``init``, or a CLIP that
            already has cross-frame blocks.

    Example::

        clip, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16-quickgelu", pretrained="openai")
        model = XCLIPStyle(clip, num_frames=8)
        logits = model(frames, tokenizer(classnames))          # frames (B, 8, 3, 224, 224)
    """

    def __init__(self, clip: nn.Module, num_frames: int, *, mit_layers: int = 1, prompt_layers: int = 2,
                 prompt_alpha: float = 0.1, cross_frame_layers: Optional[Sequence[int]] = None,
                 init: InitMode = "zero", prompt_dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        if init not in ("zero", "xclip"):
            raise ValueError(f"init must be 'zero' or 'xclip', got {init!r}")
        visual = _check_clip(clip)
        blocks = visual.transformer.resblocks
        if any(isinstance(b, CrossFrameBlock) for b in blocks):
            raise ValueError("this CLIP already has cross-frame blocks (is it inside another XCLIPStyle?); "
                             "build XCLIPStyle from a plain open_clip CLIP")
        layers = range(len(blocks)) if cross_frame_layers is None else list(cross_frame_layers)
        for i in layers:
            if not isinstance(i, int) or not -len(blocks) <= i < len(blocks):
                raise ValueError(f"cross_frame_layers: {i!r} is not a block index of the "
                                 f"{len(blocks)}-layer image tower")
        for name, value in (("mit_layers", mit_layers), ("prompt_layers", prompt_layers)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")

        # Build every new block before touching the CLIP, so an error leaves it unmodified.
        batch_first = _vision_batch_first(visual.transformer)
        patched = {i: CrossFrameBlock(blocks[i], num_frames, batch_first=batch_first, init=init)
                   for i in sorted({i % len(blocks) for i in layers})}
        for i, block in patched.items():
            blocks[i] = block
        self.clip = clip
        self.num_frames = num_frames

        width = visual.class_embedding.shape[-1]
        proj = visual.proj
        embed_dim = proj.shape[1] if proj is not None else width
        self.embed_dim = embed_dim
        self.mit = MultiFrameIntegration(embed_dim, num_frames, mit_layers, init=init)
        self.prompt_generator = (VideoSpecificPrompt(embed_dim, prompt_layers, alpha=prompt_alpha,
                                                     dropout=prompt_dropout, init=init)
                                 if prompt_layers > 0 else None)
        # The generator reads patch tokens in the joint embedding space: start from CLIP's own
        # projection (the paper uses a random one) and normalise like the pooled token if the
        # tower returns un-normalised tokens.
        self.token_norm = (copy.deepcopy(visual.ln_post) if getattr(visual, "final_ln_after_pool", False)
                           else nn.Identity())
        self.token_proj = nn.Parameter(proj.detach().clone()) if proj is not None else None

    # --------------------------------------------------------------------------------- video

    def _check_frames(self, frames: torch.Tensor) -> None:
        if not torch.is_tensor(frames) or frames.ndim != 5:
            shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
            raise ValueError(f"frames must be a tensor (B, T, 3, H, W), got {shape}")
        if frames.shape[1] != self.num_frames:
            raise ValueError(f"this model was built for num_frames={self.num_frames}, got clips of "
                             f"{frames.shape[1]} frames; sample {self.num_frames} frames per video")

    def _run_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame pooled features ``(B, T, D)`` and raw patch tokens ``(B*T, P, W)``."""
        self._check_frames(frames)
        b, t = frames.shape[:2]
        visual = self.clip.visual
        previous = visual.output_tokens
        visual.output_tokens = True  # the tower then returns (pooled, x[:, 1:]) from _global_pool
        try:
            pooled, tokens = visual(frames.flatten(0, 1))
        finally:
            visual.output_tokens = previous
        return pooled.reshape(b, t, -1), tokens

    def encode_frames(self, frames: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Per-frame image features ``(B, T, D)`` after cross-frame communication, before the MIT."""
        per_frame, _ = self._run_frames(frames)
        return F.normalize(per_frame, dim=-1) if normalize else per_frame

    def encode_video(self, frames: torch.Tensor, normalize: bool = False, *, return_tokens: bool = False
                     ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Video features ``(B, D)`` from frames ``(B, T, 3, H, W)`` (arguments as the wrapper's ``encode_video``).

        Args:
            frames: ``B`` clips of exactly ``num_frames`` frames.
            normalize: L2-normalise the returned video features (the tokens are never normalised).
            return_tokens: Also return what :meth:`specialize_text` needs.

        Returns:
            ``video`` or ``(video, tokens)``. ``tokens`` is ``(B, 1 + T*P, D)``: ``tokens[:, 0]`` is
            the (unnormalised) video feature, ``tokens[:, 1:]`` the ``P`` patch tokens of every frame
            (frame-major), projected to the embedding space. Prompt and message tokens are not in it.
        """
        per_frame, raw = self._run_frames(frames)
        video = self.mit(per_frame)
        out = F.normalize(video, dim=-1) if normalize else video
        if not return_tokens:
            return out
        patches = self.token_norm(raw)
        if self.token_proj is not None:
            patches = patches @ self.token_proj.to(patches.dtype)
        patches = patches.reshape(video.shape[0], -1, patches.shape[-1])
        return out, torch.cat([video.unsqueeze(1).to(patches.dtype), patches], dim=1)

    # ---------------------------------------------------------------------------------- text

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Class features ``(K, D)`` from token ids ``(K, context_length)``: the CLIP's own text path."""
        return self.clip.encode_text(ids, normalize=normalize)

    def specialize_text(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Video-specific class features ``(B, K, D)``.

        Args:
            text: Class features ``(K, D)`` (or already per video, ``(B, K, D)``), not normalised.
            tokens: The ``tokens`` of ``encode_video(frames, return_tokens=True)``.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(f"tokens must be (B, 1 + T*P, {self.embed_dim}) from "
                             f"encode_video(..., return_tokens=True), got {tuple(tokens.shape)}")
        b = tokens.shape[0]
        if text.ndim == 2:
            text = text.unsqueeze(0).expand(b, -1, -1)
        if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != self.embed_dim:
            raise ValueError(f"text must be (K, {self.embed_dim}) or ({b}, K, {self.embed_dim}), "
                             f"got {tuple(text.shape)}")
        if self.prompt_generator is None:
            return text
        shift = self.prompt_generator(text, tokens[:, 1:].to(text.dtype), tokens[:, 0].to(text.dtype))
        return text + shift

    # -------------------------------------------------------------------------------- logits

    @property
    def logit_scale(self) -> torch.Tensor:
        """The CLIP's temperature parameter, in log space as in open_clip (``forward`` uses its exp)."""
        return self.clip.logit_scale

    def forward(self, frames: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of clips ``(B, T, 3, H, W)`` against class token ids ``(K, context_length)``."""
        video, tokens = self.encode_video(frames, return_tokens=True)
        text = self.specialize_text(self.encode_text(ids), tokens)
        video, text = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
        logits = self.logit_scale.exp() * torch.einsum("bd,bkd->bk", video, text.to(video.dtype))
        bias = getattr(self.clip, "logit_bias", None)
        return logits + bias if bias is not None else logits

    # ---------------------------------------------------------------------------- parameters

    def head_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """The new modules (named relative to this model): message layers, MIT, prompt generator."""
        for name, module in self.named_modules():
            if isinstance(module, CrossFrameBlock):
                yield f"{name}.message", module.message
        yield "mit", self.mit
        if self.prompt_generator is not None:
            yield "prompt_generator", self.prompt_generator
        if not isinstance(self.token_norm, nn.Identity):
            yield "token_norm", self.token_norm

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of the X-CLIP head (everything that is not the CLIP's own weights).

        A prompt-tuning wrapper freezes them with the rest of the host; to train them as well,
        ``for _, p in model.head_parameters(): p.requires_grad_(True)`` and give them to the optimizer.
        """
        ids = {id(p) for _, m in self.head_modules() for p in m.parameters()}
        if self.token_proj is not None:
            ids.add(id(self.token_proj))
        return [(n, p) for n, p in self.named_parameters() if id(p) in ids]

    def num_head_parameters(self) -> int:
        """Number of scalars in :meth:`head_parameters`."""
        return sum(p.numel() for _, p in self.head_parameters())

    def extra_repr(self) -> str:
        return (f"num_frames={self.num_frames}, embed_dim={self.embed_dim}, "
                f"head_parameters={self.num_head_parameters():,}")


def _check_clip(clip: nn.Module) -> nn.Module:
    """The ViT image tower of an open_clip ``CLIP``, or a ``TypeError`` that says what is wrong."""
    try:
        import open_clip
        from open_clip.transformer import VisionTransformer
    except ImportError as err:  # pragma: no cover - open_clip is a dependency
        raise TypeError("XCLIPStyle needs open_clip_torch") from err
    if not isinstance(clip, open_clip.CLIP):
        raise TypeError(f"XCLIPStyle needs an open_clip CLIP (built-in text transformer), got {type(clip).__name__}")
    visual = clip.visual
    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"the image tower is {type(visual).__name__}; XCLIPStyle needs open_clip's VisionTransformer "
                        "(timm and ResNet towers have no CLS token sequence for message tokens)")
    if getattr(visual, "attn_pool", None) is not None:
        raise TypeError("image towers with attentional pooling (CoCa) are not supported: their tokens are "
                        "pooler queries, not patches")
    if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        raise TypeError(f"image tower pool_type={visual.pool_type!r}; XCLIPStyle needs 'tok' or 'avg' pooling")
    return visual


def _vision_batch_first(transformer: nn.Module) -> bool:
    """The block layout by docs/INTEGRATION.md's rule: ``batch_first`` attribute, else open_clip < 2.26 is LND."""
    bf = getattr(transformer, "batch_first", None)
    if bf is not None:
        return bool(bf)
    try:
        import open_clip
        major, minor = (int(p) for p in open_clip.__version__.split(".")[:2])
        return (major, minor) >= (2, 26)
    except Exception:  # an odd version string: assume a current release
        return True
