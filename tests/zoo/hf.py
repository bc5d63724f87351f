"""Hugging Face ``transformers`` hosts: ``CLIPModel``, ``SiglipModel``, ``Siglip2Model`` and ``XCLIPModel``,
built small from their ``*Config`` classes, with a prompted forward written out from their submodules.

The written-out forward calls the embeddings' parts, the encoder layers one by one (prompts put in
explicitly, CLIP's causal mask built here), the final norms, pooling and projections; X-CLIP's
message tokens stay inside its vision layers, and its MIT and prompt generator are called as modules.
"""

from __future__ import annotations

import inspect
import re
import zlib

import torch
import torch.nn.functional as F

from zoo import HostCase, frame_averaged, scaled_logits, text_context

try:
    import transformers
except ImportError:  # the family contributes no cases
    transformers = None

WIDTH, LAYERS, IMAGE, PATCH, CLIP_CONTEXT, SIGLIP_CONTEXT, FRAMES = 32, 3, 32, 8, 32, 16, 2
TOWER = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=2)


# ------------------------------------------------------------------------------- tokenizers

def _clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CLIP_CONTEXT)


class WordTokenizer:
    """SigLIP-like: one piece per word or full stop, no start token, EOS at the end, padded to a
    fixed length with the pad id, which is the EOS id as in SigLIP's tokenizer."""

    eos = pad = 1

    def __init__(self, context_length: int = SIGLIP_CONTEXT, vocab_size: int = 256) -> None:
        self.context_length, self.vocab_size = context_length, vocab_size

    def encode(self, text: str) -> list[int]:
        # crc32 is stable across runs (str hash is salted); ids 0 and 1 stay special
        return [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in re.findall(r"[^\s.]+|\.", text)]

    def __call__(self, texts) -> torch.Tensor:
        ids = torch.full((len(texts), self.context_length), self.pad, dtype=torch.long)
        for row, text in enumerate(texts):
            pieces = self.encode(text)[:self.context_length - 1] + [self.eos]
            ids[row, :len(pieces)] = torch.tensor(pieces)
        return ids


# ----------------------------------------------------------------------------------- builders

def _clip(seed):
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=CLIP_CONTEXT, **TOWER),
        vision_config=dict(image_size=IMAGE, patch_size=PATCH, **TOWER), projection_dim=WIDTH)
    return transformers.CLIPModel(config).eval()


def _siglip(seed, cls="Siglip"):
    torch.manual_seed(seed)
    text = dict(vocab_size=256, max_position_embeddings=SIGLIP_CONTEXT, pad_token_id=WordTokenizer.pad,
                eos_token_id=WordTokenizer.eos, bos_token_id=None, **TOWER)
    vision = dict(patch_size=PATCH, **TOWER)
    vision.update(image_size=IMAGE) if cls == "Siglip" else vision.update(num_patches=(IMAGE // PATCH) ** 2)
    config = getattr(transformers, f"{cls}Config")(text_config=text, vision_config=vision)
    return getattr(transformers, f"{cls}Model")(config).eval()


def _xclip(seed):
    torch.manual_seed(seed)
    config = transformers.XCLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=CLIP_CONTEXT, **TOWER),
        vision_config=dict(image_size=IMAGE, patch_size=PATCH, num_frames=FRAMES, mit_hidden_size=WIDTH,
                           mit_intermediate_size=2 * WIDTH, mit_num_hidden_layers=1, mit_num_attention_heads=2,
                           **TOWER),
        projection_dim=WIDTH, prompt_layers=1, prompt_num_attention_heads=2)
    return transformers.XCLIPModel(config).eval()


def _checkpointing(host, on):
    # activation_checkpointing_* from transformers 5 on (the older names warn there). Non-reentrant,
    # as 5 defaults to: the reentrant kind cannot serve torch.autograd.grad, which the contract uses.
    if not on:
        getattr(host, "activation_checkpointing_disable", host.gradient_checkpointing_disable)()
    elif hasattr(host, "activation_checkpointing_enable"):
        host.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        host.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# ------------------------------------------------------------------------- the hosts' own paths

def _pooled(out):
    return out if torch.is_tensor(out) else out.pooler_output


def _own_text(host, ids):
    return _pooled(host.get_text_features(input_ids=ids))


def _siglip2_inputs(frames):
    """Images ``(N, C, H, W)`` as Siglip2's processor hands them over: patches, mask and grid."""
    try:  # the torch (C, H, W) version: in the fast processor before transformers 5, the only one from 5 on
        from transformers.models.siglip2.image_processing_siglip2_fast import convert_image_to_patches
    except ImportError:
        from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    patches = torch.stack([convert_image_to_patches(image, PATCH) for image in frames])
    grid = IMAGE // PATCH
    return dict(pixel_values=patches, pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
                spatial_shapes=torch.tensor([[grid, grid]] * len(frames)))


def _own_image(host, images):
    if type(host).__name__ == "Siglip2Model":
        return _pooled(host.get_image_features(**_siglip2_inputs(images)))
    return _pooled(host.get_image_features(pixel_values=images))




def _own_logits(host, frames, ids):
    """Image CLIPs: the frame-averaged image features against the class features (ViFi-CLIP)."""
    b, t = frames.shape[:2]
    video = _own_image(host, frames.flatten(0, 1)).view(b, t, -1).mean(1)
    return scaled_logits(host, video, _own_text(host, ids))


def _own_xclip_logits(host, frames, ids):
    return host(input_ids=ids, pixel_values=frames).logits_per_video


# ----------------------------------------------------------------------- prompted, by hand



def _put(x, tokens, a, b):
    """``x`` (N, L, D) with positions ``a:b`` replaced by ``tokens`` (n, D) or (N, n, D)."""
    tokens = tokens.expand(x.shape[0], -1, -1) if tokens.ndim == 2 else tokens
    return torch.cat([x[:, :a], tokens, x[:, b:]], 1)


def _block(block, x, mask):
    """One encoder layer. Before transformers 5 the layers took the causal mask as a separate
    ``causal_attention_mask`` argument and returned a tuple."""
    if "causal_attention_mask" in inspect.signature(block.forward).parameters:
        out = block(x, None, mask)
    else:
        out = block(x, mask)
    return out if torch.is_tensor(out) else out[0]


def _manual_text_states(text_model, ids, prompts, start, causal):
    """Final-norm hidden states of a prompted text tower, layer by layer."""
    n = prompts.ctx.shape[0]
    emb = text_model.embeddings
    x = _put(emb.token_embedding(ids), text_context(prompts, ids.shape[0]), start, start + n)
    x = x + emb.position_embedding.weight[:ids.shape[1]]
    mask = None
    if causal:  # additive (N, 1, L, L) mask, as eager attention and SDPA both take it
        length = ids.shape[1]
        mask = torch.full((length, length), torch.finfo(x.dtype).min).triu(1).expand(len(ids), 1, -1, -1)
    for layer, block in enumerate(text_model.encoder.layers):
        if 1 <= layer <= len(prompts.text_deep):
            x = _put(x, prompts.text_deep[layer - 1], start, start + n)
        x = _block(block, x, mask)
    return text_model.final_layer_norm(x)


def _manual_clip_text(host, ids, prompts, start):
    assert start == 1  # after CLIP's start token
    x = _manual_text_states(host.text_model, ids, prompts, start, causal=True)
    eos = getattr(host.text_model, "eos_token_id", 2)  # X-CLIP before transformers 5: always the highest id
    pos = ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)
    return host.text_projection(x[torch.arange(len(ids)), pos])


def _manual_siglip_text(host, ids, prompts, start):
    assert start == 0  # SigLIP's tokenizer has no start token
    x = _manual_text_states(host.text_model, ids, prompts, start, causal=False)
    return host.text_model.head(x[:, -1])  # the last position, padding or not


def _manual_vision_states(vision_model, x, prompts, pre_norm=None):
    """Encoder output (prompts stripped) of embedded image tokens ``x``: prompts appended (before
    ``pre_norm`` where the tower has one), replaced at layers 1.., stripped after the last layer."""
    n = 0 if prompts.vision_ctx is None else prompts.vision_ctx.shape[0]
    if n:
        x = torch.cat([x, prompts.vision_ctx.expand(x.shape[0], -1, -1)], 1)
    if pre_norm is not None:
        x = pre_norm(x)
    for layer, block in enumerate(vision_model.encoder.layers):
        if n and 1 <= layer <= len(prompts.vision_deep):
            x = _put(x, prompts.vision_deep[layer - 1], x.shape[1] - n, x.shape[1])
        x = _block(block, x, None)
    return x[:, :x.shape[1] - n]


def _clip_embed(vision_model, images):
    emb = vision_model.embeddings
    x = emb.patch_embedding(images).flatten(2).transpose(1, 2)
    x = torch.cat([emb.class_embedding.expand(x.shape[0], 1, -1), x], 1)
    return x + emb.position_embedding.weight


def _manual_clip_image(host, images, prompts):
    v = host.vision_model
    x = _manual_vision_states(v, _clip_embed(v, images), prompts, v.pre_layrnorm)
    return host.visual_projection(v.post_layernorm(x[:, 0]))


def _manual_siglip_image(host, images, prompts):
    v = host.vision_model
    if type(host).__name__ == "Siglip2Model":  # patches as its processor cuts them; the native grid
        x = v.embeddings.patch_embedding(_siglip2_inputs(images)["pixel_values"])
    else:
        x = v.embeddings.patch_embedding(images).flatten(2).transpose(1, 2)
    x = _manual_vision_states(v, x + v.embeddings.position_embedding.weight, prompts)
    return v.head(v.post_layernorm(x))  # attention pooling over the patch tokens




def _manual_xclip_logits(host, frames, ids, prompts, start):
    b, t = frames.shape[:2]
    v = host.vision_model
    x = _manual_vision_states(v, _clip_embed(v, frames.flatten(0, 1)), prompts, v.pre_layernorm)
    video = host.mit(host.visual_projection(v.post_layernorm(x[:, 0])).view(b, t, -1))[1]  # pooled
    tokens = host.prompts_visual_layernorm(x[:, 1:]) @ host.prompts_visual_projection
    tokens = tokens.view(b, t, -1, video.shape[-1]).mean(1)
    text = _manual_clip_text(host, ids, prompts, start).unsqueeze(0).expand(b, -1, -1)
    text = text + host.prompts_generator(text, tokens)
    video, text = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
    return host.logit_scale.exp() * torch.einsum("bd,bkd->bk", video, text)


# ---------------------------------------------------------------------------------- the cases

def _cases() -> list[HostCase]:
    if transformers is None:
        return []
    clip_like = dict(tokenizer=_clip_tokenizer, own_text=_own_text, checkpointing=_checkpointing,
                     checkpoint_needs_train=True, text_layers=LAYERS, vision_layers=LAYERS,
                     frames=(FRAMES, 3, IMAGE, IMAGE))
    siglip_like = dict(clip_like, tokenizer=WordTokenizer, causal=False, own_logits=_own_logits,
                       manual_text=_manual_siglip_text,
                       manual_logits=frame_averaged(_manual_siglip_image, _manual_siglip_text))
    cases = [
        HostCase(name="hf-clip", build=_clip, own_logits=_own_logits, manual_text=_manual_clip_text,
                 manual_logits=frame_averaged(_manual_clip_image, _manual_clip_text), **clip_like),
        HostCase(name="hf-siglip", build=_siglip, **siglip_like),
        HostCase(name="hf-xclip", build=_xclip, own_logits=_own_xclip_logits, manual_text=_manual_clip_text,
                 manual_logits=_manual_xclip_logits, trainable=("mit", "prompts_generator"), **clip_like),
    ]
    if hasattr(transformers, "Siglip2Model"):  # from transformers 4.49
        cases.append(HostCase(name="hf-siglip2", build=lambda seed: _siglip(seed, "Siglip2"), **siglip_like))
    return cases


CASES = _cases()
