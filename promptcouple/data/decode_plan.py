"""The packet index and the decode plan behind the ``"buffered"`` and ``"seek"`` strategies.

:func:`_index` reads a stream's demuxed packets into an :class:`_Index` (presentation order,
keyframes, seek times) or says why the file cannot be trusted to follow one; :func:`_decode_planned`
then decodes only what the sampled frames need, from a packet source that either holds the
packets in memory (:class:`_BufferSource`) or seeks the container (:class:`_SeekSource`), and
raises :class:`_PlanMismatch` the moment the decoder does something the index did not predict, so
that :mod:`promptcouple.data.decode` can fall back to sequential decoding. :func:`_draw` turns a
``sample`` function into frame indices for a frame count, as every reader does.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from promptcouple.errors import VideoDecodeError

# A seek re-reads from the keyframe's file position and flushes the decoder; decoding on through a
# few packets (their non-reference frames skipped) is about as cheap, so jump only over more.
_SEEK_JUMP_PACKETS = 4

# Decoders whose skip_frame="NONREF" drops exactly the frames no other frame refers to.
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc"})

_INDEX_CACHE_SIZE = 1024


class _PlanMismatch(Exception):
    """The decoder did not produce what the packet index predicted: decode sequentially instead."""


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
