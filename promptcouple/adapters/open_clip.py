"""open_clip ``CLIP``: its own text transformer and ViT, batch-first from 2.26 on, sequence-first before."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from promptcouple.adapters.base import HostAdapter, TextSite, UnsupportedHostError, VisionSite, project


def _open_clip_older_than_2_26() -> bool:
    try:
        import open_clip
        major, minor = (int(p) for p in open_clip.__version__.split(".")[:2])
        return (major, minor) < (2, 26)
    except Exception:  # no open_clip or an odd version string: assume a current release
        return False


def transformer_layout(transformer: nn.Module) -> tuple[bool, bool]:
    """(blocks are sequence-first, the transformer's own input/output is sequence-first).

    From 2.26 the ``Transformer`` carries ``batch_first`` and converts to and from LND itself;
    before that it had no attribute and took LND from its caller.
    """
    bf = getattr(transformer, "batch_first", None)
    if bf is None:
        old = _open_clip_older_than_2_26()
        return old, old
    return not bf, False


def open_clip_vision_site(visual: nn.Module, family: str) -> VisionSite:
    """Prompt sites of open_clip's ``VisionTransformer``: appended before ``ln_pre``, stripped
    where the transformer returns (before CLS, average or attentional pooling)."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise UnsupportedHostError(
            f"{family}: the image tower is {type(visual).__name__}, which has no token sequence for vision "
            "prompts; use text prompts only (CouplingConfig(n_vision_ctx=0, vision_depth=0))")
    seq_first, io_seq_first = transformer_layout(visual.transformer)
    return VisionSite(insert=visual.ln_pre, insert_on="input", strip=visual.transformer, strip_on="output",
                      strip_seq_first=io_seq_first, blocks=list(visual.transformer.resblocks),
                      seq_first=seq_first, width=visual.class_embedding.shape[-1])


def is_open_clip_vit(visual: nn.Module) -> bool:
    try:
        from open_clip.transformer import VisionTransformer
    except ImportError:
        return False
    return isinstance(visual, VisionTransformer)


def _refusal(visual: nn.Module, family: str) -> str:
    """Why an image tower other than open_clip's ViT takes no vision prompts (a timm trunk: its own reason)."""
    trunk = getattr(visual, "trunk", None)
    if isinstance(trunk, nn.Module) and type(visual).__name__ == "TimmModel":
        from promptcouple.adapters.timm import vision_refusal

        return vision_refusal(trunk, family)
    return f"{family}: the image tower is {type(visual).__name__}, which has no token sequence"


class TextTowerPath:
    """open_clip's text path over a module that owns ``token_embedding``, ``positional_embedding``,
    ``transformer``, ``ln_final``, ``text_projection`` and ``attn_mask`` (``CLIP`` itself, or a
    ``TextTransformer``), run on a prefix of the ids where that is exact."""

    def __init__(self, owner: nn.Module, pool: str, eos_id: Optional[int]) -> None:
        self.owner, self.pool, self.eos_id = owner, pool, eos_id

    def site(self) -> TextSite:
        o = self.owner
        seq_first, _ = transformer_layout(o.transformer)
        # The tokenizer's length; CoCa's tower has one position more, for the CLS it appends itself.
        length = getattr(o, "context_length", None) or o.positional_embedding.shape[0]
        return TextSite(embedding=o.token_embedding, blocks=list(o.transformer.resblocks), seq_first=seq_first,
                        width=o.token_embedding.weight.shape[1], context_length=int(length),
                        causal=o.attn_mask is not None)

    def short(self, ids: torch.Tensor, length: Optional[int] = None) -> Optional[torch.Tensor]:
        """Exact text features from ``ids[:, :L]``, ``L`` = last pooled position + 1 (``length``
        where the caller knows it from tokenization; measured here otherwise, a device sync).

        The tower is causal, so the pooled EOT/EOS position only sees tokens up to itself: cutting
        the sequence after it, with the mask and positional embedding cut alike, is exact.
        """
        from open_clip.transformer import text_global_pool

        o = self.owner
        if self.pool not in ("argmax", "eos") or o.attn_mask is None or getattr(o, "cls_emb", None) is not None:
            return None
        if length is None:
            pos = ids.argmax(dim=-1) if self.pool == "argmax" else (ids == self.eos_id).int().argmax(dim=-1)
            length = int(pos.max()) + 1
        ids = ids[:, :length]
        cast = o.transformer.get_cast_dtype()
        x = o.token_embedding(ids).to(cast) + o.positional_embedding[:length].to(cast)
        x = o.transformer(x, attn_mask=o.attn_mask[:length, :length])
        x = text_global_pool(o.ln_final(x), ids, self.pool, eos_token_id=self.eos_id)
        return project(x, o.text_projection)


class OpenClipAdapter(HostAdapter):
    """open_clip ``CLIP`` (``create_model("ViT-B-16-quickgelu")`` and friends)."""

    kind = "open_clip"
    family = "open_clip CLIP"

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        try:
            import open_clip
        except ImportError:
            return False
        return type(model) is open_clip.CLIP or (isinstance(model, open_clip.CLIP) and hasattr(model, "token_embedding"))

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._text = TextTowerPath(model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None))
        self.text = self._text.site()
        self.vision = open_clip_vision_site(model.visual, self.family) if is_open_clip_vit(model.visual) else None
        self.vision_refusal = None if self.vision is not None else _refusal(model.visual, self.family)

    def encode_text_short(self, ids: torch.Tensor, length: Optional[int] = None) -> Optional[torch.Tensor]:
        return self._text.short(ids, length)

    def intermediates_owners(self) -> Sequence[nn.Module]:
        return (self.model, self.model.visual)
