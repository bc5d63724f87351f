"""One training micro-step's loss as a single module, and the autocast context of a precision."""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TrainStep(nn.Module):
    """One micro-step's loss (cross-entropy, anchor term, text-consistency term), in a single forward.

    DDP wraps this module rather than the bare wrapper because the anchor term runs the prompted
    towers a second time (on anchor clips): inside one DDP forward every use of the prompts belongs
    to the same reduction, with no ``find_unused_parameters`` and no extra synchronisation.
    """

    def __init__(self, wrapper: nn.Module, regularizer: Optional[nn.Module] = None,
                 text_regularizer: Optional[nn.Module] = None):
        super().__init__()
        self.wrapper = wrapper
        object.__setattr__(self, "regularizer", regularizer)  # no parameters; keep it out of DDP
        object.__setattr__(self, "text_regularizer", text_regularizer)

    def forward(self, frames: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                anchor_clips: Optional[torch.Tensor] = None,
                anchor_labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w, reg = self.wrapper, self.regularizer
        # The wrapper's forward, unrolled so the class features can be shared with the anchor term.
        text = w.encode_text(classnames)
        video, context = w.encode_video(frames, return_tokens=True)
        logits = w.logits(video, text, context)
        parts = {}
        if reg is not None and anchor_clips is not None and reg.mode == "reference":
            logits = reg.adjust_logits(logits, anchor_clips)
        loss = F.cross_entropy(logits.float(), labels)
        parts["ce"] = loss.detach()
        if reg is not None and anchor_clips is not None and reg.mode != "reference":
            anchor = reg(anchor_clips, labels=anchor_labels, class_features=text)
            parts["anchor"] = anchor.detach()
            loss = loss + anchor
        if self.text_regularizer is not None:
            consistency = self.text_regularizer(text)
            parts["text"] = consistency.detach()
            loss = loss + consistency
        return loss, parts


def autocast(precision: str, device: torch.device):
    """The autocast context of ``run.precision`` (``fp32``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
