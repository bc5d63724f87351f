"""Values several parts of the package must agree on: CLIP's pixel statistics and the hand-crafted prompts.

Each is defined here once, so a dataset, a transform and a regulariser cannot drift apart.
"""

from __future__ import annotations

from typing import Sequence

from promptcouple.errors import InvalidInputError

# The per-channel mean and std OpenAI's CLIP was trained with (RGB, pixels in [0, 1]); every CLIP
# fine-tuned from it (ViFi-CLIP, GA2-CLIP, X-CLIP) and the embedded world CLIP expect them too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The hand-crafted video prompt of ViFi-CLIP and GA2-CLIP: the anchors' negative prompts and the
# KgCoOp-style text-consistency target are written in it.
HAND_CRAFTED_TEMPLATE = "a video of a person {}."
# The caption style the embedded world CLIP was pretrained on: its zero-shot prompt.
ZERO_SHOT_TEMPLATE = "a video of a {}."


def class_text(name: str) -> str:
    """A class name as prompt text: label files write ``playing_guitar`` for "playing guitar"."""
    return name.replace("_", " ")


def class_key(name: str) -> str:
    """A class name in the form two names are compared in (case, underscores and spacing ignored)."""
    return " ".join(class_text(name).lower().split())


def fill_template(template: str, names: Sequence[str]) -> list[str]:
    """``template`` (with one ``{}``) filled with each class name.

    Raises:
        ValueError: The template has no ``{}`` for the name.
    """
    if "{}" not in template:
        raise InvalidInputError(f"template {template!r} has no '{{}}' for the class name; "
                         f"write e.g. {HAND_CRAFTED_TEMPLATE!r}")
    return [template.format(class_text(name)) for name in names]
