"""Frame exactness of every decoding strategy and backend against the original sequential reader.

Small files are generated with PyAV: h264 with its default B-frames at several keyframe spacings
(every frame a keyframe, 5, 12, a single keyframe), an open GOP, variable frame durations in a
1/90000 time base starting at an odd pts, mkv (pts-only seeking, first dts unset), hevc with CRA
keyframes, and AVI (decode-order timestamps). Every frame carries its own noise, so a frame off by
one, or decoded from the wrong references, differs.
"""

from __future__ import annotations

import fractions
import json
import logging
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import promptcouple.data.decode as decode
from promptcouple.data import VideoListDataset, clip_indices, read_video_frames

ROOT = Path(__file__).resolve().parents[1]
N = 40
W, H = 96, 64


def frames(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(n):
        base = np.sin((xx + 3 * i) / 5.0) * 60 + np.cos((yy - 2 * i) / 7.0) * 60 + 128
        img = np.stack([base, np.roll(base, i, 0), 255 - base], -1) + rng.normal(0, 12, (H, W, 3))
        yield np.clip(img, 0, 255).astype(np.uint8)


def write(path: Path, *, codec: str = "libx264", gop: int = 12, options: dict | None = None,
          time_base: fractions.Fraction | None = None, pts: list[int] | None = None) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        opts = {"g": str(gop), "keyint_min": str(gop)}
        if codec == "libx264":
            opts["sc_threshold"] = "0"  # keyframes exactly every gop frames
        s.options = {**opts, **(options or {})}
        if time_base is not None:
            s.time_base = s.codec_context.time_base = time_base
        for i, img in enumerate(frames(N)):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


TB = fractions.Fraction(1, 90000)
VFR_PTS = [int(t) for t in 12345 + np.cumsum(np.random.default_rng(1).integers(2000, 5000, N))]

FILES = {
    "h264_all_key": dict(gop=1),
    "h264_gop5": dict(gop=5),
    "h264_gop12": dict(gop=12),
    "h264_one_key": dict(gop=1000),
    "h264_open_gop": dict(gop=12, options={"x264-params": "open-gop=1"}),
    "h264_vfr_90k": dict(gop=10, time_base=TB, pts=VFR_PTS),
    "h264_gop12.mkv": dict(gop=12),
    "h264_vfr.mkv": dict(gop=10, time_base=TB, pts=VFR_PTS),
    "hevc_cra": dict(codec="libx265", gop=12,
                     options={"x265-params": "keyint=12:min-keyint=12:scenecut=0:log-level=error"}),
    "h264.avi": dict(gop=12),
    "mpeg4_bframes.avi": dict(codec="mpeg4", gop=12, options={"bf": "2"}),
}
PLANNED = [name for name in FILES if name != "h264.avi"]  # AVI h264: decode-order timestamps


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode")
    out = {}
    for name, kwargs in FILES.items():
        if kwargs.get("codec", "libx264") not in av.codecs_available:
            continue
        out[name] = write(root / (name if "." in name else name + ".mp4"), **kwargs)
    return out


def file(media: dict[str, Path], name: str) -> Path:
    if name not in media:
        pytest.skip(f"no {FILES[name].get('codec')} encoder in this PyAV build")
    return media[name]


def index_sets(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    sets = [list(range(n)), [0], [n - 1], [n - 1, 0, n // 2, n // 2], list(range(n - 1, -1, -7))]
    sets += [clip_indices(n, t, train=True, generator=g) for t in (3, 8, 16) for _ in range(3)]
    sets += [clip_indices(n, 8, train=False, num_clips=2)]  # two eval clips: interleaved, with repeats
    return sets


def sequential(path: Path, indices: list[int]) -> torch.Tensor:
    return read_video_frames(path, lambda n: indices, strategy="sequential")


def test_generated_frames_are_distinct(media: dict[str, Path]) -> None:
    x = sequential(media["h264_gop12"], list(range(N))).float()
    d = (x[:, None] - x[None]).abs().mean(dim=(2, 3, 4))
    assert (d + torch.eye(N) * 99).min() > 5  # a wrong frame cannot pass for the right one
    with av.open(str(media["h264_gop12"])) as c:
        assert c.streams.video[0].codec_context.has_b_frames  # B-frames, as libx264 makes by default


@pytest.mark.parametrize("name", list(FILES))
def test_pyav_strategies_are_bit_exact(media: dict[str, Path], name: str) -> None:
    path = file(media, name)
    for indices in index_sets(N):
        ref = sequential(path, indices)
        assert ref.shape == (len(indices), 3, H, W) and ref.is_contiguous()
        for strategy in ("auto", "buffered", "seek"):
            for threads in (None, 2):
                decode._index_cache.clear()
                x = read_video_frames(path, lambda n: indices, strategy=strategy, threads=threads)
                assert torch.equal(x, ref), (name, strategy, threads, indices)
                assert x.is_contiguous()


@pytest.mark.parametrize("name", PLANNED)
@pytest.mark.parametrize("strategy", ["buffered", "seek"])
def test_planned_strategies_do_not_fall_back(media: dict[str, Path], name: str, strategy: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = file(media, name)

    def no_fallback(*args, **kwargs):
        raise AssertionError(f"{name}: {strategy} fell back to sequential decoding")

    monkeypatch.setattr(decode, "_read_sequential", no_fallback)
    decode._index_cache.clear()
    read_video_frames(path, lambda n: [1, n // 2, n - 1], strategy=strategy)


def test_decode_order_timestamps_fall_back(media: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    # h264 with B-frames in AVI: packet pts count decode order, so only decoding tells the order
    with caplog.at_level(logging.DEBUG, logger="promptcouple.data.decode"):
        x = read_video_frames(media["h264.avi"], lambda n: [3, 4, 5], strategy="buffered")
    assert "timestamps in decode order" in caplog.text
    assert torch.equal(x, sequential(media["h264.avi"], [3, 4, 5]))


class Recorder:
    """Wraps the buffered packet source, recording jumps and packets fed to the decoder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.jumps: list[int] = []
        self.fed = 0
        orig_jump, orig_next = decode._BufferSource.jump, decode._BufferSource.next

        def jump(source, pos):
            self.jumps.append(pos)
            orig_jump(source, pos)

        def next_(source):
            self.fed += 1
            return orig_next(source)

        monkeypatch.setattr(decode._BufferSource, "jump", jump)
        monkeypatch.setattr(decode._BufferSource, "next", next_)


def test_plan_jumps_forward_to_keyframes_and_decodes_less(media: dict[str, Path], monkeypatch) -> None:
    rec = Recorder(monkeypatch)
    read_video_frames(media["h264_gop12"], lambda n: [2, 15, 16, 38], strategy="buffered")
    assert rec.jumps == [0, 12, 36]  # one run per GOP holding a sampled frame; GOP 24-35 never decoded
    assert rec.fed < 30

    rec = Recorder(monkeypatch)
    read_video_frames(media["h264_one_key"], lambda n: [2, 15, 30], strategy="buffered")
    assert rec.jumps == [0]  # one keyframe: decoded sequentially
    assert rec.fed < N


def test_mismatch_falls_back_to_sequential(media: dict[str, Path], monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise decode._PlanMismatch("simulated")

    monkeypatch.setattr(decode, "_decode_planned", broken)
    indices = [5, 1, 30]
    with caplog.at_level(logging.WARNING, logger="promptcouple.data.decode"):
        x = read_video_frames(media["h264_gop12"], lambda n: indices)
    assert torch.equal(x, sequential(media["h264_gop12"], indices))
    assert "simulated" in caplog.text


@pytest.mark.parametrize("header", [N + 25, 0, N - 10])
def test_frame_count_is_asked_as_the_sequential_reader_asks(media: dict[str, Path], monkeypatch, header) -> None:
    # The header over-states, is missing, or under-states the count: sample() sees the same counts
    # in the same order with every strategy (a training sampler draws random numbers on each call).
    monkeypatch.setattr(decode, "_header_frame_count", lambda c, s: header)
    results = {}
    for strategy in ("sequential", "buffered", "seek"):
        calls: list[int] = []

        def sample(n: int) -> list[int]:
            calls.append(n)
            return [min(n - 1, N + 20), 0, n // 2]

        decode._index_cache.clear()
        results[strategy] = (read_video_frames(media["h264_gop12"], sample, strategy=strategy), calls)
    ref_frames, ref_calls = results["sequential"]
    assert ref_calls == {N + 25: [N + 25, N], 0: [N], N - 10: [N - 10]}[header]
    for x, calls in results.values():
        assert calls == ref_calls and torch.equal(x, ref_frames)


def test_auto_seeks_above_the_buffer_limit(media: dict[str, Path], monkeypatch) -> None:
    used = []
    real = decode._read_planned
    monkeypatch.setattr(decode, "_read_planned", lambda p, s, strategy, t: used.append(strategy) or real(p, s, strategy, t))
    read_video_frames(media["h264_gop12"], lambda n: [3])
    monkeypatch.setattr(decode, "BUFFER_LIMIT_BYTES", 0)
    read_video_frames(media["h264_gop12"], lambda n: [3])
    assert used == ["buffered", "seek"]


def test_seek_index_is_cached_per_file_version(media: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(media["h264_gop12"].read_bytes())
    decode._index_cache.clear()
    read_video_frames(path, lambda n: [1], strategy="seek")
    read_video_frames(path, lambda n: [2], strategy="seek")
    assert len(decode._index_cache) == 1
    path.write_bytes(media["h264_gop5"].read_bytes())  # same name, new content: a new index
    assert torch.equal(read_video_frames(path, lambda n: [7], strategy="seek"), sequential(media["h264_gop5"], [7]))
    assert len(decode._index_cache) == 2


def test_options_are_checked(media: dict[str, Path], monkeypatch) -> None:
    path = media["h264_gop12"]
    with pytest.raises(ValueError, match="strategy must be one of"):
        read_video_frames(path, lambda n: [0], strategy="fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        read_video_frames(path, lambda n: [0], backend="opencv")
    with pytest.raises(ValueError, match="PyAV strategy"):
        read_video_frames(path, lambda n: [0], strategy="seek", backend="torchcodec")
    with pytest.raises(ValueError, match="threads must be >= 0"):
        read_video_frames(path, lambda n: [0], threads=-1)
    with pytest.raises(decode.VideoDecodeError, match="outside"):
        read_video_frames(path, lambda n: [n])
    monkeypatch.setattr(decode, "_installed", lambda module: False)
    assert decode.available_backends() == ["pyav"]
    with pytest.raises(ImportError, match=r"promptcouple\[decode\]"):
        read_video_frames(path, lambda n: [0], backend="torchcodec")
    monkeypatch.setenv(decode.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=decode.BACKEND_ENV):
        read_video_frames(path, lambda n: [0])
    monkeypatch.setenv(decode.BACKEND_ENV, "pyav")
    assert read_video_frames(path, lambda n: [0]).shape == (1, 3, H, W)


def test_data_loader_workers_after_a_read_in_the_parent(media: dict[str, Path], tmp_path: Path) -> None:
    # the kept colour-conversion context must survive the fork into workers (a threaded one hangs)
    read_video_frames(media["h264_gop12"], lambda n: [0, 1])
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{media['h264_gop12']} 0\n" for _ in range(4)))
    ds = VideoListDataset(lst, ["a"], train=True, num_frames=4, size=32)
    batches = list(DataLoader(ds, batch_size=2, num_workers=1, timeout=60))
    assert len(batches) == 2 and batches[0][0].shape == (2, 4, 3, 32, 32)


# ----------------------------------------------------------------------------- optional backends

# Measured on these files: torchcodec agrees bit for bit on mp4 and mkv, except that it cannot
# return the last frames of the open-GOP h264 file; decord also returns other frames on open-GOP
# h264 and on hevc. Both return other frames (torchcodec sometimes none) on B-frame AVI files.
AVI = {"h264.avi", "mpeg4_bframes.avi"}
BACKEND_DIFFERS = {"torchcodec": {"h264_open_gop"} | AVI, "decord": {"h264_open_gop", "hevc_cra"} | AVI}


@pytest.mark.parametrize("backend", ["torchcodec", "decord"])
@pytest.mark.parametrize("name", list(FILES))
def test_optional_backends_against_sequential(media: dict[str, Path], backend: str, name: str) -> None:
    pytest.importorskip(backend)
    path = file(media, name)
    failed, differ = [], []
    for indices in index_sets(N):
        ref = sequential(path, indices)
        try:
            x = read_video_frames(path, lambda n: indices, backend=backend)
        except RuntimeError as err:
            failed.append(f"{indices[:4]}: {err}")
            continue
        assert x.shape == ref.shape and x.dtype == torch.uint8 and x.is_contiguous()
        if not torch.equal(x, ref):
            differ.append(f"{indices[:4]}: max |diff| {int((x.int() - ref.int()).abs().max())}")
    problems = f"{len(failed)} sets failed ({failed[:1]}), {len(differ)} differ ({differ[:1]})"
    if name in BACKEND_DIFFERS[backend]:
        if not failed and not differ:
            pytest.fail(f"{backend} now agrees on {name}: remove it from BACKEND_DIFFERS")
        pytest.xfail(f"{backend} on {name} (known, measured): {problems}")
    assert not failed and not differ, f"{backend} on {name}: {problems}"


# --------------------------------------------------------------------------------------- benchmark


def test_bench_decode_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_decode.py"), "--quick", "--json", str(out),
           "--cache-dir", str(tmp_path / "clips")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(out.read_text())
    names = {r["method"] for r in data["decode"]}
    assert {"sequential", "buffered", "seek"} <= names
    for row in data["decode"]:
        assert {"clips_per_s", "clips_per_cpu_s", "ratio_to_sequential", "readable", "load_before", "load_after"} <= set(row)
        spread = row["clips_per_s"]
        assert spread["n"] == 2 and spread["min"] <= spread["median"] <= spread["max"]
    assert all(v["identical"] for m in ("buffered", "seek") for v in data["exact"][m].values())
    assert {r["workers"] for r in data["loader"]} == {1}
    assert set(data["done_when"]) >= {"ratio_8_frames_1s_spacing", "ratio_8_frames_single_keyframe", "holds"}
    assert data["load_start"] and data["machine"]["cpus"]
