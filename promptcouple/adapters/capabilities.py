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
