"""Models in the OpenAI CLIP layout: ``clip.model.CLIP`` and the copies inside ViFi-CLIP and GA2-CLIP.

Blocks are sequence-first and hold the causal mask themselves, at full length, so the text
cannot be shortened without editing the host: this layout always runs the full sequence.
GA2-CLIP's copy returns ``(features, tokens)`` from ``encode_text``; the base adapter takes the
features.
"""

from __future__ import annotations

from torch import nn

from promptcouple.adapters.base import HostAdapter, TextSite, VisionSite


def has_openai_layout(model: nn.Module) -> bool:
    text = getattr(model, "transformer", None)
    return (isinstance(getattr(text, "resblocks", None), nn.Sequential) and not hasattr(text, "batch_first")
            and hasattr(model, "token_embedding") and hasattr(getattr(model, "visual", None), "ln_pre"))


def openai_text_site(model: nn.Module) -> TextSite:
    return TextSite(embedding=model.token_embedding, blocks=list(model.transformer.resblocks), seq_first=True,
                    width=model.token_embedding.weight.shape[1],
                    context_length=model.positional_embedding.shape[0], causal=True)


def openai_vision_site(visual: nn.Module) -> VisionSite:
    return VisionSite(insert=visual.ln_pre, insert_on="input", strip=visual.transformer, strip_on="output",
                      strip_seq_first=True, blocks=list(visual.transformer.resblocks), seq_first=True,
                      width=visual.class_embedding.shape[-1])


class OpenAIAdapter(HostAdapter):
    """``clip.model.CLIP`` (``build_model(state_dict)``) and its copies (ViFi-CLIP, GA2-CLIP)."""

    kind = "openai"
    family = "OpenAI CLIP layout"

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        return has_openai_layout(model)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.text = openai_text_site(model)
        self.vision = openai_vision_site(model.visual)
