"""Segment-based (TSN-style) temporal sampling of frame indices."""

from __future__ import annotations

import torch

from promptcouple.errors import InvalidInputError

__all__ = ["segment_indices", "clip_indices"]


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    train: bool,
    clip: int = 0,
    num_clips: int = 1,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Picks one frame in each of ``num_segments`` equal segments of a video.

    Segment ``i`` covers frames ``[i*n/T, (i+1)*n/T)``. In training the frame is drawn uniformly
    inside each segment (independently per segment); in evaluation it is at the fraction
    ``(clip + 0.5) / num_clips`` of each segment, so one clip takes the centres and several clips
    spread evenly over each segment. Videos shorter than ``num_segments`` repeat frames; indices
    are always non-decreasing and inside ``[0, num_frames)``.

    Randomness comes from ``generator`` or torch's global RNG, which DataLoader seeds per worker
    (numpy's global RNG would give every worker the same draws).

    Args:
        num_frames: Frames in the video (n > 0).
        num_segments: Frames to sample (T > 0).
        train: Random offset inside each segment if True, fixed positions otherwise.
        clip: Which evaluation clip, ``0 <= clip < num_clips`` (ignored in training).
        num_clips: Evaluation clips per video.
        generator: Optional RNG for training offsets.

    Returns:
        ``T`` 0-based frame indices.
    """
    if num_frames < 1:
        raise InvalidInputError(f"num_frames must be >= 1, got {num_frames}")
    if num_segments < 1:
        raise InvalidInputError(f"num_segments must be >= 1, got {num_segments}")
    if not 0 <= clip < num_clips:
        raise InvalidInputError(f"clip must be in [0, num_clips={num_clips}), got {clip}")
    n, t = num_frames, num_segments
    if train:
        starts = [(i * n) // t for i in range(t)]
        ends = [max(((i + 1) * n) // t, s + 1) for i, s in enumerate(starts)]  # empty segment (n < T): its start
        u = torch.rand(t, generator=generator, dtype=torch.float64).tolist()
        return [min(s + int(x * (e - s)), e - 1) for s, e, x in zip(starts, ends, u)]
    pos = (clip + 0.5) / num_clips
    return [min(int((i + pos) * n / t), n - 1) for i in range(t)]


def clip_indices(
    num_frames: int,
    num_segments: int,
    *,
    train: bool,
    num_clips: int = 1,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Concatenated :func:`segment_indices` of ``num_clips`` clips (one clip in training)."""
    clips = 1 if train else num_clips
    out: list[int] = []
    for c in range(clips):
        out += segment_indices(num_frames, num_segments, train=train, clip=c, num_clips=clips, generator=generator)
    return out
