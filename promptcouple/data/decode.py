"""Decoding sampled frames: video files with PyAV, frame folders with PIL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence, Union

import av
import numpy as np
import torch
from PIL import Image

__all__ = ["VideoDecodeError", "DECODE_ERRORS", "read_video_frames", "read_frame_folder"]

PathLike = Union[str, "os.PathLike[str]"]


class VideoDecodeError(RuntimeError):
    """A video or frame folder could not be decoded into the requested frames."""


# What a broken file can raise while being opened or decoded. PyAV's errors subclass FFmpegError
# (InvalidDataError is also a ValueError); PIL raises OSError subclasses; a frame whose size
# changes mid-stream makes np.stack raise ValueError.
DECODE_ERRORS: tuple[type[BaseException], ...] = (VideoDecodeError, av.FFmpegError, OSError, EOFError, ValueError)


def _header_frame_count(container: "av.container.InputContainer", stream: "av.video.stream.VideoStream") -> int:
    """Frame count from the container header: exact for mp4/avi, estimated from duration otherwise (webm)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return 0
    if stream.duration and stream.time_base:
        return int(round(float(stream.duration * stream.time_base * rate)))
    if container.duration:  # in microseconds (AV_TIME_BASE)
        return int(round(container.duration / 1e6 * float(rate)))
    return 0


def _video_stream(container: "av.container.InputContainer", path: str) -> "av.video.stream.VideoStream":
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream")
    return container.streams.video[0]


def _decode(
    container: "av.container.InputContainer", stream: "av.video.stream.VideoStream", wanted: set[int] | None
) -> tuple[dict[int, np.ndarray], int]:
    """Decodes sequentially; converts only the ``wanted`` frames and stops after the last one.

    Returns:
        The wanted frames as (H, W, 3) uint8 arrays, and the number of frames decoded (the true
        frame count when the stream ended before the last wanted frame, or when ``wanted`` is None).
    """
    out: dict[int, np.ndarray] = {}
    last = max(wanted) if wanted else None
    count = 0
    for frame in container.decode(stream):
        if wanted is not None and count in wanted:
            out[count] = frame.to_ndarray(format="rgb24")
        count += 1
        if last is not None and count > last:
            break
    return out, count


def _stack(frames: dict[int, np.ndarray], indices: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2).contiguous()


def read_video_frames(path: PathLike, sample: Callable[[int], Sequence[int]]) -> torch.Tensor:
    """Decodes the frames that ``sample(num_frames)`` asks for from a video file.

    Decoding is sequential from the start (no seeking: exact for every codec, and cheap for
    the 2-20 s clips of action-recognition datasets). When the header over-states the frame count
    (some webm / damaged files) or has none, the true count is known after one pass and ``sample``
    is called again with it.

    Args:
        path: The video file.
        sample: Maps the frame count to the 0-based indices to return (any order, repeats allowed).

    Returns:
        uint8 tensor ``(len(indices), 3, H, W)`` in the order of the indices.

    Raises:
        VideoDecodeError, av.FFmpegError, OSError: The file cannot be decoded (see ``DECODE_ERRORS``).
    """
    path = str(path)
    with av.open(path) as container:
        stream = _video_stream(container, path)
        n = _header_frame_count(container, stream)
        if n > 0:
            indices = list(sample(n))
            frames, decoded = _decode(container, stream, set(indices))
            if len(frames) == len(set(indices)):
                return _stack(frames, indices)
            n = decoded  # the stream ended early: header count too large
        else:
            _, n = _decode(container, stream, None)
    if n == 0:
        raise VideoDecodeError(f"{path}: no decodable video frames")
    indices = list(sample(n))
    with av.open(path) as container:
        frames, _ = _decode(container, _video_stream(container, path), set(indices))
    if len(frames) < len(set(indices)):
        raise VideoDecodeError(f"{path}: decoded {len(frames)} of {len(set(indices))} requested frames")
    return _stack(frames, indices)


def read_frame_folder(
    folder: PathLike,
    indices: Sequence[int],
    *,
    template: str = "img_{:05d}.jpg",
    start_index: int = 1,
) -> torch.Tensor:
    """Loads frames ``template.format(start_index + i)`` for each 0-based index ``i`` with PIL.

    Args:
        folder: Folder of frames.
        indices: 0-based frame indices (repeats are loaded once).
        template: File name pattern (GA2-CLIP / Text4Vis: ``img_{:05d}.jpg``).
        start_index: Number of the first frame file (1 in GA2-CLIP / Text4Vis, 0 for ``frame{:d}.jpg``).

    Returns:
        uint8 tensor ``(len(indices), 3, H, W)`` in the order of the indices.

    Raises:
        OSError: A frame file is missing or unreadable.
        ValueError: Frames of different sizes.
    """
    folder = Path(folder)
    cache: dict[int, np.ndarray] = {}
    for i in indices:
        if i not in cache:
            with Image.open(folder / template.format(start_index + i)) as img:
                cache[i] = np.asarray(img.convert("RGB"))
    return _stack(cache, indices)
