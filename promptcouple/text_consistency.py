"""A KgCoOp-style baseline: keep prompted class features near the hand-crafted ones.

KgCoOp (Yao et al., CVPR 2023) regularises learnable prompts by the distance between the prompted
class text features and the frozen model's features of a hand-crafted prompt ("a video of a
person {}."), so tuned prompts cannot drift far from general knowledge. Here it is a baseline for
the base-to-novel benchmark; it acts on the text prompts only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from promptcouple.constants import HAND_CRAFTED_TEMPLATE, fill_template
from promptcouple.errors import InvalidInputError


class TextConsistencyRegularizer(nn.Module):
    """``weight * mean_k (1 - cos(prompted_k, handcrafted_k))`` over the training classes.

    Args:
        wrapper: The ``CouplingPromptWrapper`` being trained.
        classnames: The training classes.
        weight: Multiplies the returned loss (KgCoOp's lambda; 8.0 in its paper).
        template: The hand-crafted prompt of the frozen model.
    """

    def __init__(self, wrapper: nn.Module, classnames: Sequence[str], *, weight: float = 8.0,
                 template: str = HAND_CRAFTED_TEMPLATE):
        super().__init__()
        if "{}" not in template:
            raise InvalidInputError(f"template {template!r} has no '{{}}' for the class name")
        object.__setattr__(self, "wrapper", wrapper)  # not a submodule: it does not own the model
        self.classnames, self.weight, self.template = list(classnames), float(weight), template
        self.register_buffer("_frozen", None, persistent=False)

    def frozen_features(self) -> torch.Tensor:
        """Hand-crafted class features of the frozen tower: computed once, then cached."""
        device = self.wrapper.device
        if self._frozen is None or self._frozen.device != device:
            texts = fill_template(self.template, self.classnames)
            self._frozen = F.normalize(self.wrapper.encode_frozen_text(texts), dim=-1)
        return self._frozen

    def forward(self, class_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weighted term; pass the step's prompted class features ``(K, D)`` to avoid re-encoding."""
        if class_features is None:
            class_features = self.wrapper.encode_text(self.classnames)
        prompted = F.normalize(class_features.float(), dim=-1)
        return self.weight * (1 - (prompted * self.frozen_features()).sum(-1)).mean()
