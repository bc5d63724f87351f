"""Clip-level transforms: one random crop/flip per clip (the same for all its frames), CLIP normalisation.

Inputs are uint8 tensors ``(T, 3, H, W)``. Torchvision's v2 transforms draw their random
parameters once per call and apply them to every leading index, so a whole clip gets the same
crop and flip: temporal consistency without extra code.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from promptcouple.constants import CLIP_MEAN, CLIP_STD
from promptcouple.errors import InvalidInputError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MULTISCALE_SCALES",
    "MultiScaleCrop",
    "TrainTransform",
    "EvalTransform",
    "resize_short_side",
]

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)  # TSN / ViFi-CLIP / GA2-CLIP


def resize_short_side(size: int) -> int:
    """Short side before cropping: 256 for 224 (the ViFi-CLIP / GA2-CLIP ratio 256/224)."""
    return int(size * 256 / 224)


class MultiScaleCrop(v2.Transform):
    """TSN multi-scale crop: crop sides from ``scales`` x short side, then resize to ``size``.

    Height and width are drawn from the scale list independently but at most ``max_distort``
    steps apart (aspect ratios near 1), at a uniformly random position (TSN / mmaction's
    ``random_crop=False`` default, used by ViFi-CLIP, picks among 13 fixed positions instead).

    Args:
        size: Output side length.
        scales: Fractions of the short side.
        max_distort: Largest index distance between the height and width scales.
    """

    def __init__(self, size: int, scales: Sequence[float] = MULTISCALE_SCALES, max_distort: int = 1) -> None:
        super().__init__()
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise InvalidInputError(f"scales must be fractions in (0, 1], got {scales}")
        self.size = int(size)
        self.scales = tuple(float(s) for s in scales)
        self.max_distort = int(max_distort)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        sides = [max(1, int(min(h, w) * s)) for s in self.scales]
        pairs = [
            (ch, cw)
            for i, ch in enumerate(sides)
            for j, cw in enumerate(sides)
            if abs(i - j) <= self.max_distort
        ]
        ch, cw = pairs[int(torch.randint(len(pairs), ()))]
        top = int(torch.randint(h - ch + 1, ()))
        left = int(torch.randint(w - cw + 1, ()))
        return dict(top=top, left=left, height=ch, width=cw)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resized_crop, inpt, **params, size=[self.size, self.size], antialias=True)


class TrainTransform:
    """Training augmentation for one clip: ``uint8 (T, 3, H, W) -> float32 (T, 3, size, size)``.

    ``"multiscale"`` (default, as ViFi-CLIP and GA2-CLIP): resize the short side to
    ``size * 256/224``, then :class:`MultiScaleCrop`. ``"random_resized"``: torchvision's
    ``RandomResizedCrop`` with area fraction ``area``. Then an optional horizontal flip (off by
    default: it turns "pushing left to right" into "right to left", wrong for SSv2-style labels;
    ViFi-CLIP flips everything, GA2-CLIP everything but SSv2), optional random grayscale
    (GA2-CLIP uses 0.2), and CLIP normalisation.

    Args:
        size: Output side length.
        crop: ``"multiscale"`` or ``"random_resized"``.
        scales: Scales of the multi-scale crop.
        area: Area range of the random resized crop.
        flip: Random horizontal flip with probability 0.5.
        grayscale: Probability of converting the clip to grayscale.
        mean: Normalisation mean (CLIP's by default).
        std: Normalisation std (CLIP's by default).
    """

    def __init__(
        self,
        size: int = 224,
        *,
        crop: Literal["multiscale", "random_resized"] = "multiscale",
        scales: Sequence[float] = MULTISCALE_SCALES,
        area: tuple[float, float] = (0.4, 1.0),
        flip: bool = False,
        grayscale: float = 0.0,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if crop == "multiscale":
            ops: list[Any] = [v2.Resize(resize_short_side(size), antialias=True), MultiScaleCrop(size, scales)]
        elif crop == "random_resized":
            ops = [v2.RandomResizedCrop(size, scale=area, antialias=True)]
        else:
            raise InvalidInputError(f"crop must be 'multiscale' or 'random_resized', got {crop!r}")
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        if grayscale > 0:
            ops.append(v2.RandomGrayscale(grayscale))
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        self.transform = v2.Compose(ops)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self.transform(tv_tensors.Video(clip)).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


class EvalTransform:
    """Evaluation views of one clip: ``uint8 (T, 3, H, W) -> float32 (num_crops, T, 3, size, size)``.

    One crop: resize the short side to ``size * 256/224`` and take the centre. Three crops (as
    ViFi-CLIP): resize the short side to ``size`` and take the start, centre and end of the long
    side, so together they cover the whole frame.

    Args:
        size: Output side length.
        num_crops: 1 or 3.
        mean: Normalisation mean (CLIP's by default).
        std: Normalisation std (CLIP's by default).
    """

    def __init__(
        self,
        size: int = 224,
        num_crops: int = 1,
        *,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if num_crops not in (1, 3):
            raise InvalidInputError(f"num_crops must be 1 or 3, got {num_crops}")
        self.size = int(size)
        self.num_crops = num_crops
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        s = self.size
        if self.num_crops == 1:
            clip = F.resize(clip, [resize_short_side(s)], antialias=True)
            views = [F.center_crop(clip, [s, s])]
        else:
            clip = F.resize(clip, [s], antialias=True)
            h, w = clip.shape[-2:]
            if w >= h:
                top = (h - s) // 2
                views = [F.crop(clip, top, left, s, s) for left in (0, (w - s) // 2, w - s)]
            else:
                left = (w - s) // 2
                views = [F.crop(clip, top, left, s, s) for top in (0, (h - s) // 2, h - s)]
        return torch.stack([self.normalize(v) for v in views])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, num_crops={self.num_crops})"
