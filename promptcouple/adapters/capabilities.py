"""What building a host for training asks of it beyond the prompt sites: its frame size and
whether it can recompute its blocks in backward (gradient checkpointing)."""

from __future__ import annotations

from typing import Optional

from torch import nn


def image_size_of(model: nn.Module) -> Optional[int]:
    """The side of the square frames the image tower was built for (``None``: it does not say)."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return size if isinstance(size, int) else None


def enable_grad_checkpointing(model: nn.Module) -> bool:
    """Switch on gradient checkpointing in both towers; ``False`` when the model has no such switch."""
    if not hasattr(model, "set_grad_checkpointing"):
        return False
    model.set_grad_checkpointing(True)
    return True


def frame_format(model: nn.Module) -> tuple[Optional[int], Optional[tuple[int, int]]]:
    """``(channels, (height, width))`` of the frames the image tower takes; ``None`` where it does not say.

    Read from the tower's first convolution (the patch embedding or the ResNet stem) and its
    ``image_size``; a video model holding a CLIP as ``.clip`` answers for that CLIP, a Hugging Face
    model from its ``vision_config``.
    """
    inner = getattr(model, "clip", None)
    if isinstance(inner, nn.Module) and not hasattr(model, "visual"):
        return frame_format(inner)
    vision_config = getattr(getattr(model, "config", None), "vision_config", None)
    if vision_config is not None:
        size = getattr(vision_config, "image_size", None)
        return getattr(vision_config, "num_channels", None), (size, size) if isinstance(size, int) else None
    visual = getattr(model, "visual", None)
    if not isinstance(visual, nn.Module):
        return None, None
    conv = next((m for m in visual.modules() if isinstance(m, nn.Conv2d)), None)
    size = getattr(visual, "image_size", None)
    if isinstance(size, int):
        size = (size, size)
    elif not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(x, int) for x in size)):
        size = None
    return (conv.in_channels if conv is not None else None), (tuple(size) if size is not None else None)
