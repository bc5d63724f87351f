"""PromptSRC-style guards: keep prompted features near the frozen model's, and average prompts over epochs.

PromptSRC (Khattak et al., ICCV 2023) regularises prompts by the model they are added to:

* **mutual agreement**: on every training batch, the prompted video and class features stay close
  (L1) to the frozen model's features of the same clips and of hand-crafted prompts, and the
  prompted logits close (KL) to the frozen zero-shot logits; the hand-crafted text is an ensemble
  of templates (**textual diversity**), encoded once;
* **Gaussian prompt aggregation**: the prompts of every epoch are averaged with Gaussian weights
  over the epoch index (late epochs weigh most, the last ones not alone), at almost no cost.

Both work with or without coupling and anchors, on every host the wrapper serves.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from promptcouple.constants import fill_template

# Video versions of the hand-crafted templates PromptSRC ensembles for textual diversity.
DIVERSE_TEMPLATES = (
    "a video of a person {}.",
    "a video of a person doing {}.",
    "a video of a person performing {}.",
    "a photo of a person {}.",
    "a clip of {}.",
    "an example of a person {}.",
    "a demonstration of {}.",
    "a video showing {}.",
)


class SelfRegularizer(nn.Module):
    """``text_weight * L1(text) + vision_weight * L1(video) + kl_weight * KL(logits)`` against the frozen model.

    Args:
        wrapper: The ``CouplingPromptWrapper`` being trained.
        classnames: The training classes (their frozen template-ensemble features are the text target).
        text_weight, vision_weight, kl_weight: PromptSRC's 25, 10 and 1 for images.
        templates: Hand-crafted templates averaged for the frozen text target.
    """

    def __init__(self, wrapper: nn.Module, classnames: Sequence[str], *, text_weight: float = 25.0,
                 vision_weight: float = 10.0, kl_weight: float = 1.0,
                 templates: Sequence[str] = DIVERSE_TEMPLATES) -> None:
        super().__init__()
        for name, value in (("text_weight", text_weight), ("vision_weight", vision_weight), ("kl_weight", kl_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SelfRegularizer.{name}={value!r}: expected a finite number >= 0")
        if not templates:
            raise ValueError("SelfRegularizer: templates is empty; give at least one hand-crafted template")
        object.__setattr__(self, "wrapper", wrapper)  # not a submodule: it does not own the model
        self.classnames, self.templates = list(classnames), list(templates)
        self.text_weight, self.vision_weight, self.kl_weight = float(text_weight), float(vision_weight), float(kl_weight)
        self.register_buffer("_frozen_text", None, persistent=False)

    def frozen_text(self) -> torch.Tensor:
        """Template-ensemble class features of the frozen text tower ``(K, D)``: computed once."""
        device = self.wrapper.device
        if self._frozen_text is None or self._frozen_text.device != device:
            per_template = [F.normalize(self.wrapper.encode_frozen_text(fill_template(t, self.classnames)), dim=-1)
                            for t in self.templates]
            self._frozen_text = F.normalize(torch.stack(per_template).mean(0), dim=-1)
        return self._frozen_text

    def forward(self, frames: torch.Tensor, video: torch.Tensor, text: torch.Tensor, logits: torch.Tensor,
                context=None) -> torch.Tensor:
        """The weighted term for one batch.

        Args:
            frames: The batch's clips (the frozen model sees the same frames).
            video, text, logits: The step's prompted video features ``(B, D)``, class features
                ``(K, D)`` and logits ``(B, K)``, so nothing prompted is computed twice.
            context: The video context of ``encode_video(..., return_tokens=True)`` (video hosts).
        """
        w = self.wrapper
        frozen_text = self.frozen_text()
        loss = video.new_zeros((), dtype=torch.float32)
        if self.text_weight:
            loss = loss + self.text_weight * F.l1_loss(F.normalize(text.float(), dim=-1), frozen_text, reduction="mean")
        if self.vision_weight or self.kl_weight:
            with torch.no_grad(), w.prompts_disabled():
                frozen_video, frozen_context = w.encode_video(frames, return_tokens=True)
                target = w.logits(frozen_video, frozen_text.to(frozen_video.dtype), frozen_context)
            if self.vision_weight:
                loss = loss + self.vision_weight * F.l1_loss(F.normalize(video.float(), dim=-1),
                                                             F.normalize(frozen_video.float(), dim=-1))
            if self.kl_weight:
                loss = loss + self.kl_weight * F.kl_div(F.log_softmax(logits.float(), -1),
                                                        F.log_softmax(target.float(), -1),
                                                        log_target=True, reduction="batchmean")
        return loss


class GaussianPromptAverage:
    """Prompt states of each epoch averaged with weights ``N(epoch; mean, std)``, normalised.

    Call :meth:`update` after every epoch with the module whose state is averaged (the wrapper's
    trainable tensors); :meth:`average` returns the averaged state dict (a copy), which the caller
    loads for evaluation. Epochs count from 1. PromptSRC uses mean 15, std 1 over 20 epochs (mean
    3/4 of the way, std 1/20 of the run); :meth:`for_epochs` scales that to a run's length.
    """

    def __init__(self, mean: float, std: float) -> None:
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"GaussianPromptAverage: mean={mean!r}, std={std!r}; expected finite numbers, std > 0")
        self.mean, self.std = float(mean), float(std)
        self._sum: Optional[dict[str, torch.Tensor]] = None
        self._total = 0.0

    @classmethod
    def for_epochs(cls, epochs: int) -> "GaussianPromptAverage":
        return cls(mean=0.75 * epochs, std=max(epochs / 20, 0.5))

    def weight(self, epoch: int) -> float:
        return math.exp(-0.5 * ((epoch - self.mean) / self.std) ** 2)

    def update(self, state: dict[str, torch.Tensor], epoch: int) -> None:
        w = self.weight(epoch)
        if self._sum is None:
            self._sum = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
        for k, v in state.items():
            self._sum[k] += w * v.detach().double()
        self._total += w

    def average(self) -> dict[str, torch.Tensor]:
        if self._sum is None or self._total == 0:
            raise RuntimeError("GaussianPromptAverage: no epoch was added (call update after each epoch)")
        return {k: (v / self._total).float() for k, v in self._sum.items()}

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "sum": self._sum, "total": self._total}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std, self._sum, self._total = state["mean"], state["std"], state["sum"], state["total"]
