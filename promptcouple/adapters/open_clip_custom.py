"""open_clip models whose towers are modules of their own: ``CustomTextCLIP`` (SigLIP, EVA02, ...),
``CoCa`` (its contrastive path, ``encode_text``/``encode_image``), and ``CLIP`` with a timm trunk.

Text: open_clip's ``TextTransformer`` under ``model.text`` (``CLIP``: its own text modules), causal
or bidirectional (``no_causal_mask``), any ``pool_type``, with CoCa's appended CLS (``embed_cls``).
The text is run short only where the tower is causal and pools at an end-of-text position
(``TextTowerPath.short``). A Hugging Face text tower (``hf_model_name``: open_clip's ``HFTextEncoder``)
with BERT's layout (BERT, RoBERTa, XLM-RoBERTa: the multilingual ``xlm-roberta-base-ViT-B-32``) is
prompted at its word embeddings and encoder layers (:class:`HFTextTowerPath`); it is bidirectional
and pools over the whole sequence, so it always runs at full length.

Image: open_clip's ``VisionTransformer`` (any pooling, CoCa's attentional pooler), or a timm
``VisionTransformer``/``Eva``/``Beit`` trunk inside ``TimmModel`` (``promptcouple.adapters.timm``).
Other towers (open_clip's ``ModifiedResNet``, timm ResNet, ConvNeXt or Swin trunks) take text
prompts only, and a config with vision prompts is told why.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from promptcouple.adapters.base import HostAdapter, TextSite, UnsupportedHostError, first_tensor
from promptcouple.adapters.open_clip import TextTowerPath, is_open_clip_vit, open_clip_vision_site
from promptcouple.adapters.timm import (BeitBiasPadding, adjust_trunk_block, has_token_sequence, is_beit,
                                        needs_block_adjustment, timm_vision_site, vision_refusal)
from promptcouple.errors import InvalidInputError

CLIP_VOCAB = 49408  # open_clip's CLIP tokenizer, the default when the caller gives none


def _timm_trunk(visual: Optional[nn.Module]) -> Optional[nn.Module]:
    """The timm trunk of open_clip's ``TimmModel`` (``None`` for other image towers)."""
    from open_clip.timm_model import TimmModel

    return visual.trunk if isinstance(visual, TimmModel) else None


def _text_tower(model: nn.Module, family: str) -> nn.Module:
    """``model.text`` if it is open_clip's ``TextTransformer`` or an ``HFTextEncoder`` with BERT's
    layout; otherwise the refusal."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        return text
    if isinstance(text, HFTextEncoder):
        if HFTextTowerPath.fits(text):
            return text
        arch = getattr(getattr(text, "config", None), "model_type", "?")
        raise UnsupportedHostError(
            f"{family}: the text tower is open_clip's HFTextEncoder over a transformers '{arch}' model "
            "(hf_model_name); promptcouple prompts those with BERT's layout (embeddings.word_embeddings and "
            "encoder.layer: bert, roberta, xlm-roberta). Build the model with one of those or an open_clip text "
            "tower, or describe it with a HostAdapter subclass and pc.register_host(...)")
    raise UnsupportedHostError(
        f"{family}: the text tower model.text is {type(text).__name__}, expected open_clip's TextTransformer "
        "(token_embedding, transformer.resblocks, ln_final) or HFTextEncoder; describe it with a HostAdapter "
        "subclass and pc.register_host(...)")


class HFTextTowerPath:
    """open_clip's ``HFTextEncoder`` over a transformers encoder with BERT's layout.

    The context replaces the placeholders' word embeddings, before the position and token-type
    embeddings and the embedding norm are applied (position ids come from the ids, so they are
    unchanged); deep text prompts enter the encoder layers' inputs. The encoder masks padding and
    attends both ways, so there is no exact shorter run (:meth:`short` is ``None``).
    """

    def __init__(self, tower: nn.Module) -> None:
        self.tower = tower

    @staticmethod
    def fits(tower: nn.Module) -> bool:
        model = getattr(tower, "transformer", None)
        embeddings = getattr(model, "embeddings", None)
        return (isinstance(getattr(embeddings, "word_embeddings", None), nn.Embedding)
                and isinstance(getattr(getattr(model, "encoder", None), "layer", None), nn.ModuleList))

    def site(self) -> TextSite:
        model = self.tower.transformer
        words = model.embeddings.word_embeddings
        # RoBERTa's position ids start after its padding index; BERT's at 0.
        padding_idx = getattr(model.embeddings, "padding_idx", None)
        length = model.config.max_position_embeddings - (padding_idx + 1 if padding_idx is not None else 0)
        return TextSite(embedding=words, blocks=list(model.encoder.layer), seq_first=False,
                        width=words.embedding_dim, context_length=int(length), causal=False)

    def short(self, *args, **kwargs) -> Optional[torch.Tensor]:
        return None


class OpenClipCustomAdapter(HostAdapter):
    """open_clip ``CustomTextCLIP`` and ``CoCa`` with open_clip's own text tower; ``CLIP`` with a timm trunk."""

    kind = "open_clip_custom"
    family = "open_clip CustomTextCLIP / CoCa / CLIP with a timm trunk"

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        try:
            import open_clip
        except ImportError:
            return False
        if isinstance(model, (open_clip.CustomTextCLIP, open_clip.CoCa)):
            _text_tower(model, f"open_clip {type(model).__name__}")
            return True
        # A CLIP with a timm ViT/Eva trunk: the built-in open_clip adapter would prompt its text only.
        trunk = _timm_trunk(model.visual) if isinstance(model, open_clip.CLIP) else None
        return trunk is not None and has_token_sequence(trunk) and hasattr(model, "token_embedding")

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.family = f"open_clip {type(model).__name__}"
        if hasattr(model, "token_embedding"):  # CLIP: the text modules are its own
            self._text = TextTowerPath(model, getattr(model, "text_pool_type", "argmax"),
                                       getattr(model, "text_eos_id", None))
        else:
            text = _text_tower(model, self.family)
            from open_clip.hf_model import HFTextEncoder

            self._text = HFTextTowerPath(text) if isinstance(text, HFTextEncoder) else \
                TextTowerPath(text, text.pool_type, text.eos_id)
        self.text = self._text.site()

        visual, trunk = model.visual, _timm_trunk(model.visual)
        self.needs_block_adjustment = False
        self._bias_padding = None
        if is_open_clip_vit(visual):
            self.vision = open_clip_vision_site(visual, self.family)
        elif trunk is not None and has_token_sequence(trunk):
            self.vision = timm_vision_site(trunk)
            self.needs_block_adjustment = needs_block_adjustment(trunk)
            self._bias_padding = BeitBiasPadding(trunk) if is_beit(trunk) else None
        elif trunk is not None:
            self.vision_refusal = vision_refusal(trunk, self.family)
        else:
            self.vision_refusal = (
                f"{self.family}: the image tower is {type(visual).__name__}, which has no token sequence for vision "
                "prompts (those need open_clip's VisionTransformer or a timm VisionTransformer/Eva/Beit trunk)")
        self._trunk = trunk

    # CoCa normalizes by default; the wrapper wants the raw features, as every other host gives.
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.model.encode_text(ids, normalize=False))

    def encode_text_short(self, ids: torch.Tensor, length: Optional[int] = None) -> Optional[torch.Tensor]:
        return self._text.short(ids, length)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.model.encode_image(images, normalize=False))

    def adjust_block(self, args: tuple, kwargs: dict, n_prompts: int) -> tuple[tuple, dict]:
        return adjust_trunk_block(self._trunk, args, kwargs, n_prompts)

    def on_wrap(self) -> None:
        if self._bias_padding is not None:
            self._bias_padding.install()

    def on_unwrap(self) -> None:
        if self._bias_padding is not None:
            self._bias_padding.remove()

    def intermediates_owners(self) -> Sequence[nn.Module]:
        if self.vision is None:  # no prompt tokens to strip: the host's own method stays usable
            return ()
        owners = (self.model, self.model.visual, self._trunk)
        return tuple(m for m in owners if m is not None and hasattr(m, "forward_intermediates"))

    def default_tokenizer(self):
        vocab = self.text.embedding.num_embeddings
        if isinstance(self._text, HFTextTowerPath):
            raise InvalidInputError(
                f"{self.family}: the text tower is a transformers model with its own tokenizer, which does not ship "
                "with promptcouple; pass it, tokenizer=open_clip.get_tokenizer('<model name>')")
        if vocab != CLIP_VOCAB:
            raise InvalidInputError(
                f"{self.family}: the text tower has a vocabulary of {vocab} tokens, not the {CLIP_VOCAB} of "
                "open_clip's CLIP tokenizer (the default); pass the model's own, "
                "tokenizer=open_clip.get_tokenizer('<model name>')")
        return super().default_tokenizer()


ADAPTERS = [OpenClipCustomAdapter]
