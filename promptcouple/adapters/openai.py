"""Models in the OpenAI CLIP layout (the copies inside ViFi-CLIP, GA2-CLIP and X-CLIP)."""

from __future__ import annotations

from torch import nn

from promptcouple.adapters.base import HostSpec


def is_openai_layout(core: nn.Module) -> bool:
    text = getattr(core, "transformer", None)
    return (isinstance(getattr(text, "resblocks", None), nn.Sequential) and not hasattr(text, "batch_first")
            and hasattr(core, "token_embedding") and hasattr(getattr(core, "visual", None), "ln_pre"))


def openai_spec(core: nn.Module) -> HostSpec:
    visual = core.visual
    # The causal mask lives inside every block at full length, so the text cannot be shortened
    # without editing the host: this layout always runs the full sequence.
    return HostSpec(
        kind="openai",
        core=core,
        token_embedding=core.token_embedding,
        text_blocks=list(core.transformer.resblocks),
        text_seq_first=True,
        vision_ln_pre=visual.ln_pre,
        vision_transformer=visual.transformer,
        vision_blocks=list(visual.transformer.resblocks),
        vision_seq_first=True,
        vision_io_seq_first=True,
        text_width=core.token_embedding.weight.shape[1],
        vision_width=visual.class_embedding.shape[-1],
        context_length=core.positional_embedding.shape[0],
        encode_text=core.encode_text,
        encode_image=core.encode_image,
        encode_text_short=None,
    )
