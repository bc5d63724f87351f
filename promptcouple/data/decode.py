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

The optional backends decode with their own FFmpeg builds. On the test files torchcodec returns
the same frames bit for bit; decord returns other frames on open-GOP h264 and on hevc, so
``backend="auto"`` never takes it.
"""

from __future__ import annotations

import bisect
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence, Union

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image

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

# A seek re-reads from the keyframe's file position and flushes the decoder; decoding on through a
# few packets (their non-reference frames skipped) is about as cheap, so jump only over more.
_SEEK_JUMP_PACKETS = 4

# Decoders whose skip_frame="NONREF" drops exactly the frames no other frame refers to.
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc"})

_INDEX_CACHE_SIZE = 1024

# Environment variable naming the backend that ``backend="auto"`` uses (the dataset passes none).
BACKEND_ENV = "PROMPTCOUPLE_VIDEO_BACKEND"

log = logging.getLogger(__name__)



# What a broken file can raise while being opened or decoded. PyAV's errors subclass FFmpegError
# (InvalidDataError is also a ValueError); PIL raises OSError subclasses; a frame whose size
# changes mid-stream makes np.stack raise ValueError.
DECODE_ERRORS: tuple[type[BaseException], ...] = (VideoDecodeError, av.FFmpegError, OSError, EOFError, ValueError)


class _PlanMismatch(Exception):
    """The decoder did not produce what the packet index predicted: decode sequentially instead."""


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


_local = threading.local()


def _rgb(frame: "av.VideoFrame") -> np.ndarray:
    """``frame.to_ndarray(format="rgb24")``, bit for bit, with one single-threaded swscale context per thread.

    ``to_ndarray`` sets up a fresh conversion context, with its own slice threads, for every frame,
    which costs several times the conversion itself at Kinetics sizes. Single-threaded, the kept
    context also survives a fork into DataLoader workers (a pool of slice threads would not: the
    child would wait forever on threads that were not forked with it).
    """
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


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


# ------------------------------------------------------------------------------------- packet index


@dataclass(frozen=True)
class _Index:
    """Timestamps of a stream's packets in decode order, and their presentation order.

    Frame ``r`` (0-based, presentation order, as the sequential reader counts) is the packet at
    decode position ``order[r]``: every packet carries one frame, and the decoder emits frames in
    increasing pts. :func:`_index` only builds an index for streams where that holds on its face.
    """

    pts: np.ndarray  # (P,) int64
    seek_ts: np.ndarray  # (P,) int64: min(pts, dts), at or before the packet in any demuxer's seek order
    keyframes: np.ndarray  # decode positions of keyframe packets, increasing, keyframes[0] == 0
    order: np.ndarray  # (P,) presentation rank -> decode position
    position: dict  # pts -> decode position

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def start(self, pos: int) -> int:
        """Decode position of the keyframe to decode packet ``pos`` from.

        The last keyframe at or before ``pos`` in decode order, unless the frame is shown before that
        keyframe (a leading picture of an open GOP, which refers to the GOP before): then the one before.
        """
        k = bisect.bisect_right(self.keyframes, pos) - 1
        while k > 0 and self.pts[self.keyframes[k]] > self.pts[pos]:
            k -= 1
        return int(self.keyframes[k])


def _index(packets: Sequence["av.Packet"], reorders: bool) -> tuple[_Index | None, str]:
    """Index of demuxed packets (the final empty flush packet dropped), or None and why not.

    ``reorders``: the codec declares frames shown in another order than decoded (B-frames).
    """
    if not packets:
        return None, "no packets"
    if any(p.pts is None for p in packets):
        return None, "packets without pts"
    if any(p.is_discard or p.is_corrupt for p in packets):
        return None, "discarded or corrupt packets"
    pts = np.fromiter((p.pts for p in packets), np.int64, len(packets))
    order = np.argsort(pts, kind="stable")
    if len(np.unique(pts)) != len(pts):
        return None, "repeated pts"
    if reorders and np.all(np.diff(pts) > 0):
        # AVI and other formats without presentation times number the packets in decode order: the
        # decoder's output order is then known only by decoding
        return None, "timestamps in decode order while the codec reorders frames"
    if not packets[0].is_keyframe or pts[0] != pts[order[0]]:
        # frames before the first keyframe: what the decoder does with them is codec- and flag-specific
        return None, "the first packet is not the first-shown keyframe"
    # mkv leaves the dts of the first packets unset: the pts is then the only time there is
    seek_ts = np.fromiter((p.pts if p.dts is None else min(p.pts, p.dts) for p in packets), np.int64, len(packets))
    keyframes = np.flatnonzero([p.is_keyframe for p in packets])
    position = {int(t): i for i, t in enumerate(pts)}
    return _Index(pts=pts, seek_ts=seek_ts, keyframes=keyframes, order=order, position=position), ""


def _demux_index(container, stream) -> tuple[list, _Index | None, str]:
    """All the stream's packets (not decoded) and their index. A file that breaks off is left to the
    sequential reader, which may still find every sampled frame before the break."""
    try:
        packets = [p for p in container.demux(stream) if p.size]
    except av.FFmpegError as err:
        return [], None, f"demuxing failed ({type(err).__name__}: {err})"
    return (packets, *_index(packets, bool(stream.codec_context.has_b_frames)))


_index_cache: "OrderedDict[tuple, tuple[_Index | None, str]]" = OrderedDict()


def _cached_index(path: str, container: "av.container.InputContainer", stream: "av.video.stream.VideoStream"):
    """The index from a demux-only pass (which leaves the container at its end), cached per file version."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _index_cache:
        _index_cache.move_to_end(key)
        return _index_cache[key]
    result = _demux_index(container, stream)[1:]
    _index_cache[key] = result
    if len(_index_cache) > _INDEX_CACHE_SIZE:
        _index_cache.popitem(last=False)
    return result


def _draw(path: str, sample: Callable[[int], Sequence[int]], header: int, count: int) -> list[int]:
    """What the sequential reader samples: from the header count, again from the true count if that is short."""
    if count == 0:
        raise VideoDecodeError(f"{path}: no decodable video frames")
    indices = list(sample(header if header > 0 else count))
    if header > 0 and any(not 0 <= i < count for i in indices):
        indices = list(sample(count))
    if any(not 0 <= i < count for i in indices):
        raise VideoDecodeError(
            f"{path}: sample({count}) returned indices outside [0, {count}): {sorted(set(indices))[:8]}; "
            "it must return 0-based frame indices below the count it is given"
        )
    return indices


# -------------------------------------------------------------------------------- planned decoding


class _BufferSource:
    """Packets from memory: a jump is free."""

    jump_cost = 0

    def __init__(self, packets: Sequence["av.Packet"]) -> None:
        self.packets = packets
        self.pos = 0

    def jump(self, pos: int) -> None:
        self.pos = pos

    def next(self) -> "av.Packet":
        p = self.packets[self.pos]
        self.pos += 1
        return p


class _SeekSource:
    """Packets read after a container seek to the keyframe, checked against the index as they come."""

    jump_cost = _SEEK_JUMP_PACKETS

    def __init__(self, container, stream, index: _Index) -> None:
        self.container, self.stream, self.index = container, stream, index
        self.pos = 0
        self._packets = iter(())
        self._first = None

    def jump(self, pos: int) -> None:
        # A backward seek lands on a keyframe at or before the target in the demuxer's own sense of
        # time (dts in mp4, pts in mkv); min(pts, dts) is at or before the keyframe in both. Where it
        # lands is read from the first packet's pts; packets up to the keyframe are dropped undecoded.
        self.container.seek(int(self.index.seek_ts[pos]), stream=self.stream, backward=True)
        self._packets = (p for p in self.container.demux(self.stream) if p.size)
        first = next(self._packets, None)
        landed = None if first is None else self.index.position.get(first.pts)
        if landed is None or landed > pos:
            raise _PlanMismatch(f"a seek to the keyframe at pts {int(self.index.pts[pos])} landed elsewhere")
        self._first, self.pos = first, landed
        while self.pos < pos:
            self.next()

    def next(self) -> "av.Packet":
        if self._first is not None:
            p, self._first = self._first, None
        else:
            p = next(self._packets, None)
            if p is None or p.pts != self.index.pts[self.pos]:
                raise _PlanMismatch(f"packet {self.pos} after a seek is not the one the index holds")
        self.pos += 1
        return p


def _decode_planned(stream, source, index: _Index, ranks: Sequence[int]) -> dict[int, np.ndarray]:
    """Decodes the frames of presentation ranks ``ranks``; returns them by rank as (H, W, 3) uint8.

    Sampled frames are visited by (keyframe, decode position). Each is decoded from its keyframe
    on, or by decoding on from where the decoder is when that keyframe is not ahead of it (by more
    than the source's jump cost): the decoder only ever moves forward, and every frame it returns
    was decoded from a keyframe through all the packets in between, as in sequential decoding.
    """
    cc = stream.codec_context
    skip = cc.name in _SKIP_NONREF_CODECS
    wanted = {int(index.pts[index.order[r]]): r for r in set(ranks)}
    plan = sorted((index.start(int(index.order[r])), int(index.order[r])) for r in set(ranks))
    got: dict[int, np.ndarray] = {}
    started, drained, skipping = False, False, False
    last_pts = key_pts = None
    for start, pos in plan:
        rank = wanted[int(index.pts[pos])]
        if rank in got:
            continue
        if not started or start > source.pos + source.jump_cost:
            if started:
                cc.flush_buffers()  # drop the frames still in flight: none is wanted (see above)
                drained = False
            source.jump(start)
            started, last_pts, key_pts = True, None, int(index.pts[start])
        while rank not in got:
            if source.pos < index.num_frames:
                packet = source.next()
                if skip and (packet.pts in wanted) == skipping:
                    # switch per packet: unsampled non-reference frames are never needed by another
                    skipping = not skipping
                    cc.skip_frame = "NONREF" if skipping else "DEFAULT"
                frames = cc.decode(packet)
            elif not drained:
                frames, drained = cc.decode(None), True  # end of stream: the reordered frames still held
            else:
                raise _PlanMismatch(f"the frame at pts {int(index.pts[pos])} never came out of the decoder")
            for frame in frames:
                # what the index promises, checked on every frame: presentation order, and that a
                # packet flagged as keyframe decodes to one (some muxers flag every packet)
                if frame.pts is None or (last_pts is not None and frame.pts <= last_pts):
                    raise _PlanMismatch(f"the decoder returned pts {frame.pts} after {last_pts}")
                if frame.pts == key_pts and not frame.key_frame:
                    raise _PlanMismatch(f"the packet at pts {key_pts} is flagged as a keyframe but is not one")
                last_pts = frame.pts
                r = wanted.get(frame.pts)
                if r is not None and r not in got:
                    got[r] = _rgb(frame)
    return got


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
