"""Decoding sampled frames: video files with PyAV (optionally torchcodec or decord), frame folders with PIL.

Strategies of the PyAV backend, all returning the same frames bit for bit:

* ``"sequential"``: decode every frame from the start up to the last sampled one (the original
  reader; the reference the others are tested against).
* ``"buffered"``: read the file's packets once (no decoding), index them (presentation order,
  keyframes), then decode only what the sampled frames need: from the keyframe before a sampled
  frame up to it, going on inside a GOP and jumping forward over packets no sampled frame needs,
  never backwards. Unsampled non-reference frames (h264/hevc) are not decoded at all.
* ``"seek"``: the same plan, with container seeks instead of a packet buffer, for long files;
  the index comes from a demux-only pass and is cached per file.
* ``"auto"`` (default): ``"buffered"`` up to :data:`BUFFER_LIMIT_BYTES`, ``"seek"`` above.

The plan decides per file and per sampled frame between decoding on and jumping to a keyframe: a
file with one keyframe is decoded sequentially (minus the skipped non-reference frames), a file
with 1-s keyframes mostly by jumps. Files whose index cannot be trusted (missing or repeated
timestamps, discarded or corrupt packets, a first packet that is not a keyframe, timestamps in
decode order as AVI has them for B-frame h264) are decoded sequentially, and so is a file whose
decoding breaks what the index promised (frames out of order, a flagged keyframe that is not
one, a frame that never comes): odd files cost what they always did and come back the same.

The packet index and the plan live in :mod:`promptcouple.data.decode_plan`; this module holds
the sequential reader, the choice of strategy and backend, and the public readers.

The optional backends decode with their own FFmpeg builds. On the test files torchcodec returns
the same frames bit for bit; decord returns other frames on open-GOP h264 and on hevc, so
``backend="auto"`` never takes it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Callable, Literal, Sequence, Union

import av
import numpy as np
import torch
from PIL import Image

# The packet index and the decode plan of the "buffered" and "seek" strategies; the names are
# module attributes here too, where the readers below look them up (and tests replace them).
from promptcouple.data.decode_plan import (_BufferSource, _cached_index, _decode_planned, _demux_index,  # noqa: F401
                                           _draw, _index_cache, _PlanMismatch, _rgb, _SeekSource)
from promptcouple.errors import InvalidInputError, VideoDecodeError

__all__ = [
    "VideoDecodeError",
    "DECODE_ERRORS",
    "STRATEGIES",
    "BACKENDS",
    "BUFFER_LIMIT_BYTES",
    "BACKEND_ENV",
    "available_backends",
    "read_video_frames",
    "read_frame_folder",
]

PathLike = Union[str, "os.PathLike[str]"]
Strategy = Literal["auto", "sequential", "buffered", "seek"]
Backend = Literal["auto", "pyav", "torchcodec", "decord"]

STRATEGIES: tuple[str, ...] = ("auto", "sequential", "buffered", "seek")
BACKENDS: tuple[str, ...] = ("auto", "pyav", "torchcodec", "decord")

# Above this file size "auto" seeks instead of holding the packets in memory: a 10-s Kinetics clip
# is well under 1 MB, a 64 MB file is minutes of HD video, per DataLoader worker.
BUFFER_LIMIT_BYTES = 64 << 20

# Environment variable naming the backend that ``backend="auto"`` uses (the dataset passes none).
BACKEND_ENV = "PROMPTCOUPLE_VIDEO_BACKEND"

log = logging.getLogger(__name__)

# What a broken file can raise while being opened or decoded. PyAV's errors subclass FFmpegError
# (InvalidDataError is also a ValueError); PIL raises OSError subclasses; a frame whose size
# changes mid-stream makes np.stack raise ValueError.
DECODE_ERRORS: tuple[type[BaseException], ...] = (VideoDecodeError, av.FFmpegError, OSError, EOFError, ValueError)


# ----------------------------------------------------------------------------- sequential (reference)


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


def _set_threads(stream: "av.video.stream.VideoStream", threads: int | None) -> None:
    """``None`` keeps PyAV's defaults; 1 decodes on the calling thread; 0 lets FFmpeg pick a count."""
    if threads is None:
        return
    cc = stream.codec_context
    cc.thread_count = int(threads)
    cc.thread_type = "SLICE" if threads == 1 else "AUTO"  # frame threads only where asked for


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
    """(N, 3, H, W) uint8, contiguous: one strided copy per frame (numpy's is ~10x torch's for uint8)."""
    h, w = frames[indices[0]].shape[:2]
    out = np.empty((len(indices), 3, h, w), np.uint8)
    for j, i in enumerate(indices):
        out[j] = frames[i].transpose(2, 0, 1)  # a frame of another size raises ValueError, as np.stack did
    return torch.from_numpy(out)


def _read_sequential(
    path: str, sample: Callable[[int], Sequence[int]], threads: int | None = None, indices: Sequence[int] | None = None
) -> torch.Tensor:
    """The original reader. ``indices``: already drawn from ``sample`` for the header count."""
    with av.open(path) as container:
        stream = _video_stream(container, path)
        _set_threads(stream, threads)
        n = _header_frame_count(container, stream)
        if indices is not None or n > 0:
            indices = list(sample(n)) if indices is None else list(indices)
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
        stream = _video_stream(container, path)
        _set_threads(stream, threads)
        frames, _ = _decode(container, stream, set(indices))
    if len(frames) < len(set(indices)):
        raise VideoDecodeError(f"{path}: decoded {len(frames)} of {len(set(indices))} requested frames")
    return _stack(frames, indices)


_mismatches = 0


def _report_mismatch(path: str, err: BaseException) -> None:
    """Warns on the first file per process whose decoding broke the index's promises; the rest at debug level."""
    global _mismatches
    _mismatches += 1
    level = logging.WARNING if _mismatches == 1 else logging.DEBUG
    log.log(level, "%s: %s: %s; decoded sequentially instead (same frames, slower)%s", path, type(err).__name__, err,
            "; further files like it are logged at DEBUG level" if _mismatches == 1 else "")


def _read_planned(path: str, sample: Callable[[int], Sequence[int]], strategy: str, threads: int | None):
    """``"buffered"`` / ``"seek"``; falls back to the sequential reader where the index cannot be trusted."""
    indices: list[int] | None = None
    with av.open(path) as container:
        stream = _video_stream(container, path)
        _set_threads(stream, 1 if threads is None else threads)
        header = _header_frame_count(container, stream)
        if strategy == "buffered":
            packets, index, why = _demux_index(container, stream)
            source = _BufferSource(packets) if index is not None else None
        else:
            index, why = _cached_index(path, container, stream)
            source = _SeekSource(container, stream, index) if index is not None else None
        if index is not None:
            indices = _draw(path, sample, header, index.num_frames)
            try:
                frames = _decode_planned(stream, source, index, indices)
                return _stack(frames, indices)
            except (_PlanMismatch, av.FFmpegError) as err:
                # the sequential reader decides, as it always did: same frames, or the same error
                _report_mismatch(path, err)
        else:
            log.debug("%s: %s; decoding it sequentially", path, why)
    return _read_sequential(path, sample, threads, indices)


# ---------------------------------------------------------------------------------- other backends


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """Backends that import here: ``"pyav"`` always, then the optional ones installed."""
    return ["pyav"] + [b for b in ("torchcodec", "decord") if _installed(b)]


def _header_count(path: str) -> int:
    """The header's frame count as the PyAV reader reads it, so ``sample`` sees the same count with every backend."""
    with av.open(path) as container:
        return _header_frame_count(container, _video_stream(container, path))


def _read_torchcodec(path: str, sample: Callable[[int], Sequence[int]], threads: int | None) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    # "exact" scans the file for a frame index in presentation order, as the PyAV reader counts frames
    decoder = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=1 if threads is None else threads,
                           dimension_order="NCHW")
    indices = _draw(path, sample, _header_count(path), decoder.metadata.num_frames_from_content or 0)
    return decoder.get_frames_at(indices).data.contiguous()


def _read_decord(path: str, sample: Callable[[int], Sequence[int]], threads: int | None) -> torch.Tensor:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1 if threads is None else threads)
    indices = _draw(path, sample, _header_count(path), len(reader))
    return torch.from_numpy(np.ascontiguousarray(reader.get_batch(indices).asnumpy().transpose(0, 3, 1, 2)))


_BACKEND_READERS = {"torchcodec": _read_torchcodec, "decord": _read_decord}

# What backend="auto" takes, best first, among those installed. PyAV's planned decoding measured
# fastest in benchmarks/bench_decode.py; see that script's results before reordering.
_AUTO_ORDER: tuple[str, ...] = ("pyav",)


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "") or "auto"
        if backend not in BACKENDS:
            raise InvalidInputError(f"{BACKEND_ENV}={backend!r}: expected one of {BACKENDS}")
    if backend == "auto":
        installed = available_backends()
        return next(b for b in _AUTO_ORDER + ("pyav",) if b in installed)
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "pyav" and not _installed(backend):
        raise ImportError(
            f"video backend {backend!r} is not installed (installed: {available_backends()}); "
            "pip install 'promptcouple[decode]', or use backend='pyav'"
        )
    return backend


# -------------------------------------------------------------------------------------------- API


def read_video_frames(
    path: PathLike,
    sample: Callable[[int], Sequence[int]],
    *,
    strategy: Strategy = "auto",
    backend: Backend = "auto",
    threads: int | None = None,
) -> torch.Tensor:
    """Decodes the frames that ``sample(num_frames)`` asks for from a video file.

    Frame ``i`` is the ``i``-th frame in presentation order, whichever strategy or backend. The
    frame count given to ``sample`` is the container header's (exact for mp4/avi, estimated from
    the duration for webm); when it over-states the true count or there is none, ``sample`` is
    called again with the true count. Every strategy returns the same frames as ``"sequential"``,
    bit for bit (see the module docstring for how each decodes).

    Args:
        path: The video file.
        sample: Maps the frame count to the 0-based indices to return (any order, repeats allowed).
        strategy: ``"auto"``, ``"sequential"``, ``"buffered"`` or ``"seek"`` (PyAV backend only).
        backend: ``"auto"`` (PyAV unless :data:`BACKEND_ENV` names another), ``"pyav"``,
            ``"torchcodec"`` or ``"decord"`` (optional: ``pip install 'promptcouple[decode]'``).
        threads: Codec threads. ``None``: one for the planned strategies and the optional backends
            (DataLoader workers already decode one video per core, and frame threads delay every
            frame by the thread count after each jump), PyAV's defaults for ``"sequential"``;
            ``0``: FFmpeg picks (frame and slice threads; for decoding in the main process).

    Returns:
        uint8 tensor ``(len(indices), 3, H, W)`` in the order of the indices.

    Raises:
        VideoDecodeError, av.FFmpegError, OSError: The file cannot be decoded (see ``DECODE_ERRORS``).
        ValueError: Unknown strategy or backend, or a strategy given with a non-PyAV backend.
        ImportError: The requested optional backend is not installed.
    """
    path = str(path)
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if threads is not None and threads < 0:
        raise InvalidInputError(f"threads must be >= 0 (0: FFmpeg's choice), got {threads}")
    if strategy != "auto":
        if backend not in ("auto", "pyav"):
            raise InvalidInputError(f"strategy={strategy!r} is a PyAV strategy; with backend={backend!r} pass strategy='auto'")
        backend = "pyav"
    backend = _resolve_backend(backend)
    if backend != "pyav":
        return _BACKEND_READERS[backend](path, sample, threads)
    if strategy == "sequential":
        return _read_sequential(path, sample, threads)
    if strategy == "auto":
        strategy = "buffered" if os.path.getsize(path) <= BUFFER_LIMIT_BYTES else "seek"
    return _read_planned(path, sample, strategy, threads)


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
