"""One training micro-step's loss as a single module, and the autocast context of a precision."""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TrainStep(nn.Module):
    """One micro-step's loss (cross-entropy, anchor term, text-consistency term, PromptSRC-style
    self-regularisation), in a single forward.

    DDP wraps this module rather than the bare wrapper because the anchor term runs the prompted
    towers a second time (on anchor clips): inside one DDP forward every use of the prompts belongs
    to the same reduction, with no ``find_unused_parameters`` and no extra synchronisation.

    ``self_regularizer`` (a :class:`promptcouple.guards.SelfRegularizer`) receives the step's own
    prompted video features, class features, logits and video context: nothing prompted is
    computed twice, only the frozen model's view of the same clips.
    """

    def __init__(self, wrapper: nn.Module, regularizer: Optional[nn.Module] = None,
                 text_regularizer: Optional[nn.Module] = None, self_regularizer: Optional[nn.Module] = None):
        super().__init__()
        self.wrapper = wrapper
        object.__setattr__(self, "regularizer", regularizer)  # no parameters; keep it out of DDP
        object.__setattr__(self, "text_regularizer", text_regularizer)
        object.__setattr__(self, "self_regularizer", self_regularizer)

    def forward(self, frames: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                anchor_clips: Optional[torch.Tensor] = None,
                anchor_labels: Optional[torch.Tensor] = None,
                anchor_ids: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w, reg = self.wrapper, self.regularizer
        # The wrapper's forward, unrolled so that the anchor term shares its passes: the prompted
        # anchor labels join the class prompts in one text pass, and the anchor clips join the
        # training clips in one vision pass (rows are independent, so batching changes nothing).
        anchored = reg is not None and anchor_clips is not None and reg.mode != "reference"
        k = len(classnames)
        names = list(classnames) + (reg.anchor_labels if anchored and reg.folds_anchor_text() else [])
        text_all = w.encode_text(names)
        text, anchor_text = text_all[:k], (text_all[k:] if len(names) > k else None)
        folded = anchored and anchor_clips.shape[1:] == frames.shape[1:]
        clips = torch.cat([frames, anchor_clips.to(frames.dtype)]) if folded else frames
        video_all, context_all = w.encode_video(clips, return_tokens=True)
        b = frames.shape[0]
        video, context = video_all[:b], _rows(context_all, slice(0, b))
        a_video, a_context = (video_all[b:], _rows(context_all, slice(b, None))) if folded else (None, None)
        if folded and context_all is not None and a_context is None:  # a context we cannot split by rows
            video, context = w.encode_video(frames, return_tokens=True)
            a_video = None
        logits = w.logits(video, text, context)
        prompted_logits = logits  # before the reference anchor adjustment: the self-regulariser's input
        parts = {}
        if reg is not None and anchor_clips is not None and reg.mode == "reference":
            logits = reg.adjust_logits(logits, anchor_clips)
        loss = F.cross_entropy(logits.float(), labels)
        parts["ce"] = loss.detach()
        if reg is not None and anchor_clips is not None and reg.mode != "reference":
            anchor = reg(anchor_clips, labels=anchor_labels, class_features=text, video=a_video, context=a_context,
                         anchor_text=anchor_text, clip_ids=anchor_ids)
            parts["anchor"] = anchor.detach()
            loss = loss + anchor
        if self.text_regularizer is not None:
            consistency = self.text_regularizer(text)
            parts["text"] = consistency.detach()
            loss = loss + consistency
        if self.self_regularizer is not None:
            agreement = self.self_regularizer(frames, video, text, prompted_logits, context)
            parts["self_reg"] = agreement.detach()
            loss = loss + agreement
        return loss, parts


def _rows(context, rows: slice):
    """Rows of a video context (a tensor, or a tuple of tensors, batch first); ``None`` if it has none."""
    if context is None:
        return None
    if torch.is_tensor(context):
        return context[rows]
    if isinstance(context, (tuple, list)) and all(torch.is_tensor(c) for c in context):
        return type(context)(c[rows] for c in context)
    return None


def autocast(precision: str, device: torch.device):
    """The autocast context of ``run.precision`` (``fp32``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
