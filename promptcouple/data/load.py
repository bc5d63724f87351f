"""One video file as the model sees it in evaluation: decoded, sampled by segments, CLIP-normalised."""

from __future__ import annotations

import torch

from promptcouple.fileio import PathLike

from .decode import read_video_frames
from .sampling import clip_indices
from .transforms import EvalTransform

__all__ = ["load_video"]


def load_video(path: PathLike, num_frames: int = 8, image_size: int = 224, *, num_clips: int = 1,
               num_crops: int = 1) -> torch.Tensor:
    """Read one video file for inference, exactly as evaluation reads it.

    The same decoding (:func:`read_video_frames`), segment sampling (the centre of each of
    ``num_frames`` segments, :func:`segment_indices`) and evaluation transform (:class:`EvalTransform`)
    as :class:`VideoListDataset` with ``train=False``, so scores match ``promptcouple eval``'s::

        frames = pc.load_video("archery.mp4", num_frames=8, image_size=224)   # (8, 3, 224, 224)
        probs = model(frames[None], classnames).softmax(-1)

    Args:
        path: A video file (anything PyAV decodes).
        num_frames: Frames per clip ``T`` (the prompts' training value: ``promptcouple inspect``).
        image_size: Output side length.
        num_clips: Temporal views.
        num_crops: Spatial views per clip, 1 (centre) or 3.

    Returns:
        float32 ``(T, 3, S, S)`` for one view, ``(V, T, 3, S, S)`` for ``V = num_clips * num_crops``
        views (clip-major); average the views' probabilities.

    Raises:
        VideoDecodeError, av.FFmpegError, OSError: The file cannot be decoded.
    """
    if num_frames < 1 or num_clips < 1:
        raise ValueError(f"num_frames and num_clips must be >= 1, got {num_frames} and {num_clips}")
    transform = EvalTransform(image_size, num_crops)
    frames = read_video_frames(path, lambda n: clip_indices(n, num_frames, train=False, num_clips=num_clips))
    frames = frames.view(num_clips, num_frames, *frames.shape[1:])
    views = torch.stack([transform(c) for c in frames]).flatten(0, 1)  # as VideoListDataset's evaluation items
    return views[0] if views.shape[0] == 1 else views
