"""The host zoo: every host family the wrapper serves, as small models built in the test, each with
its own (un-prompted) text and video paths and a prompted forward written out by hand.

One module per family; each defines ``CASES``, a list of :class:`HostCase`. The contract test
(``tests/test_host_contract.py``) runs every check over every case. A family whose library is not
installed contributes no cases (its module returns an empty list).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ["clip_layouts", "hf", "open_clip_custom", "videox", "stochastic"]


@dataclass
class HostCase:
    """One host, and how to run it without the wrapper.

    Attributes:
        name: Test id.
        build: ``build(seed) -> host`` in eval mode; the same seed gives the same weights.
        tokenizer: ``tokenizer() -> tokenizer`` passed to the wrapper and used for the written-out phrase.
        own_text: ``own_text(host, ids) -> (N, D)``: the host's own text features.
        own_logits: ``own_logits(host, frames, ids) -> (B, K)``: the host's own video logits.
        manual_text: ``manual_text(host, ids, prompts, start) -> (N, D)``: prompted text by hand
            (``start`` = index of the first context token).
        manual_logits: ``manual_logits(host, frames, ids, prompts, start) -> (B, K)``: prompted logits by hand.
        frames: Shape ``(T, C, H, W)`` of one clip.
        text_layers, vision_layers: Depths of the towers (the test configs use up to these).
        vision: Whether vision prompts are possible.
        causal: Whether the text tower is causal (then the short path must equal the full one).
        checkpointing: ``checkpointing(host, on)``, or ``None`` where the host has none.
        checkpoint_needs_train: Whether the host checkpoints only in training mode (Hugging Face).
        trainable: Host submodules to train beside the prompts (``train_host=``).
    """

    name: str
    build: Callable[[int], nn.Module]
    tokenizer: Callable[[], Any]
    own_text: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    own_logits: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    manual_text: Callable[..., torch.Tensor]
    manual_logits: Callable[..., torch.Tensor]
    frames: tuple[int, int, int, int] = (2, 3, 32, 32)
    text_layers: int = 3
    vision_layers: int = 3
    vision: bool = True
    causal: bool = True
    checkpointing: Optional[Callable[[nn.Module, bool], None]] = None
    checkpoint_needs_train: bool = False
    trainable: tuple[str, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        return self.name


# ------------------------------------------------------- pieces every hand-written forward shares

def text_context(prompts, rows: int) -> torch.Tensor:
    """The layer-0 context ``(rows, n_ctx, D)`` written out: soft tokens, or ReLU(Linear([hard; soft]))."""
    soft = prompts.ctx.unsqueeze(0).expand(rows, -1, -1)
    if prompts.coupling is None:
        return soft
    hard = prompts.hard.unsqueeze(0).expand_as(soft)
    return F.relu(F.linear(torch.cat([hard, soft], -1), prompts.coupling.weight, prompts.coupling.bias))


def scaled_logits(host, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``exp(logit_scale) * cos`` plus the host's logit bias where it has one (SigLIP)."""
    logits = host.logit_scale.exp() * (F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t())
    bias = getattr(host, "logit_bias", None)
    return logits + bias if bias is not None else logits


def frame_averaged(manual_image, manual_text):
    """The video logits of an image CLIP (ViFi-CLIP: frame features averaged over time), by hand."""
    def manual_logits(host, frames, ids, prompts, start):
        b, t = frames.shape[:2]
        video = manual_image(host, frames.flatten(0, 1), prompts).view(b, t, -1).mean(1)
        return scaled_logits(host, video, manual_text(host, ids, prompts, start))

    return manual_logits


def all_cases() -> list[HostCase]:
    cases = []
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"zoo.{family}")
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("zoo."):
                continue  # family not written yet
            raise
        cases.extend(module.CASES)
    return cases
