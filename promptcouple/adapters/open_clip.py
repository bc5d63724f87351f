"""open_clip ``CLIP`` models: batch-first blocks from 2.26 on, sequence-first before."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from promptcouple.adapters.base import HostSpec, UnsupportedHostError


def _open_clip_older_than_2_26() -> bool:
    try:
        import open_clip
        major, minor = (int(p) for p in open_clip.__version__.split(".")[:2])
        return (major, minor) < (2, 26)
    except Exception:  # no open_clip or an odd version string: assume a current release
        return False


def _layout(transformer: nn.Module) -> tuple[bool, bool]:
    """(blocks are sequence-first, the transformer's own input/output is sequence-first).

    From 2.26 the ``Transformer`` carries ``batch_first`` and converts to and from LND itself;
    before that it had no attribute and took LND from its caller.
    """
    bf = getattr(transformer, "batch_first", None)
    if bf is None:
        old = _open_clip_older_than_2_26()
        return old, old
    return not bf, False


def is_open_clip(core: nn.Module) -> bool:
    try:
        import open_clip
    except ImportError:
        return False
    return isinstance(core, (open_clip.CLIP, getattr(open_clip, "CustomTextCLIP", ())))


def open_clip_spec(core: nn.Module) -> HostSpec:
    import open_clip
    from open_clip.transformer import VisionTransformer

    if not isinstance(core, open_clip.CLIP):
        raise UnsupportedHostError(
            f"{type(core).__name__} has a separate text tower ({type(getattr(core, 'text', None)).__name__}); "
            "only open_clip.CLIP with its built-in text transformer can be hooked (HF text towers cannot)")
    visual = core.visual
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedHostError(
            f"the image tower is {type(visual).__name__}; prompts need open_clip's VisionTransformer "
            "(timm and ResNet towers have no token sequence the hooks can extend)")
    if getattr(visual, "attn_pool", None) is not None and getattr(visual, "attn_pool_contrastive", None) is not None:
        raise UnsupportedHostError("attentional pooling with a contrastive pooler is not supported")
    text_seq_first, _ = _layout(core.transformer)
    vision_seq_first, vision_io_seq_first = _layout(visual.transformer)
    return HostSpec(
        kind="open_clip",
        core=core,
        token_embedding=core.token_embedding,
        text_blocks=list(core.transformer.resblocks),
        text_seq_first=text_seq_first,
        vision_ln_pre=visual.ln_pre,
        vision_transformer=visual.transformer,
        vision_blocks=list(visual.transformer.resblocks),
        vision_seq_first=vision_seq_first,
        vision_io_seq_first=vision_io_seq_first,
        text_width=core.token_embedding.weight.shape[1],
        vision_width=visual.class_embedding.shape[-1],
        context_length=core.positional_embedding.shape[0],
        encode_text=core.encode_text,
        encode_image=core.encode_image,
        encode_text_short=_short_text_path(core),
        intermediates_owners=(core, visual),
    )


def _short_text_path(core: nn.Module):
    """An exact text path over ``ids[:, :L]``; ``None`` where pooling needs the full sequence.

    The text tower is causal, so the pooled EOT/EOS position only sees tokens up to itself:
    cutting the sequence after it, with the mask and positional embedding cut alike, is exact.
    """
    from open_clip.transformer import text_global_pool

    pool = getattr(core, "text_pool_type", "argmax")
    if pool not in ("argmax", "eos") or core.attn_mask is None:
        return None
    eos_id: Optional[int] = getattr(core, "text_eos_id", None)

    def encode(ids: torch.Tensor) -> torch.Tensor:
        pos = ids.argmax(dim=-1) if pool == "argmax" else (ids == eos_id).int().argmax(dim=-1)
        length = int(pos.max()) + 1
        ids = ids[:, :length]
        cast = core.transformer.get_cast_dtype()
        x = core.token_embedding(ids).to(cast) + core.positional_embedding[:length].to(cast)
        x = core.transformer(x, attn_mask=core.attn_mask[:length, :length])
        x = text_global_pool(core.ln_final(x), ids, pool, eos_token_id=eos_id)
        proj = core.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    return encode
