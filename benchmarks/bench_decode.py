"""Clips/s of the training data path (decode + TSN sampling + TrainTransform), every decoder side by side.

Measures, on generated Kinetics-like files (10 s, 30 fps, 340x256, libx264 with its default
B-frames, several keyframe spacings; made once and kept in --cache-dir):

1. per core: one process, one torch thread, one codec thread, clips/s by wall clock and clips per
   CPU second, for 8 and 32 frames, for each PyAV strategy (``sequential`` is the original reader),
   PyAV with two codec threads, and torchcodec / decord where installed;
2. the data loader: ``VideoListDataset`` + ``DataLoader`` clips/s at 1, 2 and N (= CPU count)
   workers, original reader against the default one.

Every method first decodes the same frames as ``sequential`` on every file, and the result records
whether they are identical. Timings interleave the methods (one short repetition of each, in a
shuffled order, then the next repetition), report the median with the interquartile range and
min/max, and take each method's ratio to ``sequential`` per repetition; the load average is
recorded before and after each part, and a ratio whose spread is too wide to read is flagged.

    python benchmarks/bench_decode.py --json benchmarks/results/decode_cpu.json
    python benchmarks/bench_decode.py --quick          # seconds: a smoke run on small files
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import promptcouple.data.dataset as dataset_mod
import promptcouple.data.decode as decode
from promptcouple.data import TrainTransform, VideoListDataset, clip_indices, read_video_frames
from timing import Spread  # the spread statistics every benchmark reports

log = logging.getLogger("promptcouple.benchmarks.decode")


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # no load average on this platform
        return []


# ---------------------------------------------------------------------------------------- files


def write_clip(path: Path, *, keyint: int, seconds: float, fps: int, width: int, height: int, seed: int) -> None:
    """A moving texture with a moving block and sensor-like noise: Kinetics-like bitrates with libx264's defaults.

    ``keyint``: frames between keyframes, 0 for a single keyframe. Scene-cut keyframes are off so
    the spacing is the one asked for.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    f1, f2 = rng.uniform(6, 14, 2)
    texture = np.sin(xx / f1) * 45 + np.cos(yy / f2) * 45 + 128
    gop = keyint if keyint > 0 else n + 1
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(n):
            base = np.roll(texture, 2 * i, axis=1)
            img = np.stack([base, np.roll(base, i, axis=0), 255 - base], axis=-1)
            cx = int(width / 2 + width / 3 * np.sin(i / 20))
            cy = int(height / 2 + height / 3 * np.cos(i / 15))
            img[max(cy - 30, 0):cy + 30, max(cx - 30, 0):cx + 30] = (i * 5) % 255
            img += rng.normal(0, 5, img.shape).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clip_files(args) -> dict[float, list[Path]]:
    """Generated files per keyframe spacing in seconds (0: one keyframe), made once per setting."""
    root = Path(args.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[float, list[Path]] = {}
    todo = []
    for spacing in args.spacings:
        keyint = int(round(spacing * args.fps))
        out[spacing] = []
        for k in range(args.files):
            name = f"clip_{args.width}x{args.height}_{args.seconds:g}s_{args.fps}fps_key{keyint}_{k}.mp4"
            out[spacing].append(root / name)
            if not (root / name).exists():
                todo.append((root / name, keyint, k))
    for path, keyint, k in tqdm(todo, desc="generating clips", disable=not todo):
        tmp = path.with_suffix(".part.mp4")
        write_clip(tmp, keyint=keyint, seconds=args.seconds, fps=args.fps, width=args.width, height=args.height,
                   seed=k)
        tmp.rename(path)
    return out


def describe(path: Path) -> dict:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        packets = [p for p in c.demux(s) if p.size]
        ctx = s.codec_context
        return dict(name=path.name, frames=len(packets), keyframes=sum(p.is_keyframe for p in packets),
                    kbit_per_s=round(c.bit_rate / 1000) if c.bit_rate else None, bytes=path.stat().st_size,
                    size=f"{ctx.width}x{ctx.height}", b_frames=bool(ctx.has_b_frames))


# -------------------------------------------------------------------------------------- methods


def methods(threads2: bool) -> dict[str, dict]:
    """Name -> read_video_frames keyword arguments; ``seek`` drops its index cache before each file."""
    out = {
        "sequential": dict(strategy="sequential"),
        "buffered": dict(strategy="buffered", threads=1),
        "seek": dict(strategy="seek", threads=1),
    }
    if threads2:
        out["buffered_2threads"] = dict(strategy="buffered", threads=2)
    installed = decode.available_backends()
    for backend in ("torchcodec", "decord"):
        if backend in installed:
            out[backend] = dict(backend=backend, threads=1)
    return out


def read(path: Path, indices: list[int], kwargs: dict) -> torch.Tensor:
    if kwargs.get("strategy") == "seek":
        decode._index_cache.clear()  # cold: in training a worker reads each file about once an epoch
    return read_video_frames(path, lambda n: indices, **kwargs)


def check_exact(files: dict[float, list[Path]], table: dict[str, dict], frames: list[int]) -> dict:
    """Per method and spacing: do its frames equal ``sequential``'s (largest |difference| when not)?"""
    out: dict[str, dict] = {}
    g = torch.Generator().manual_seed(1)
    for spacing, paths in files.items():
        for path in paths:
            n = describe(path)["frames"]
            for t in frames:
                indices = clip_indices(n, t, train=True, generator=g)
                ref = read(path, indices, table["sequential"])
                for name, kwargs in table.items():
                    x = read(path, indices, kwargs)
                    diff = int((x.int() - ref.int()).abs().max()) if x.shape == ref.shape else -1
                    entry = out.setdefault(name, {}).setdefault(str(spacing), {"identical": True, "max_abs_diff": 0})
                    entry["identical"] &= diff == 0
                    entry["max_abs_diff"] = max(entry["max_abs_diff"], diff) if diff >= 0 else -1
    return out


def time_decoding(files: dict[float, list[Path]], table: dict[str, dict], args) -> list[dict]:
    """Interleaved repetitions: each repetition runs every (spacing, frames, method) once, shuffled."""
    transform = TrainTransform(224)
    n_frames = {p: describe(p)["frames"] for paths in files.values() for p in paths}
    cells = [(s, t, m) for s in files for t in args.frames for m in table]
    wall: dict[tuple, list[float]] = {c: [] for c in cells}
    cpu: dict[tuple, list[float]] = {c: [] for c in cells}
    order = random.Random(0)
    before = load()
    for rep in tqdm(range(args.reps), desc="decode repetitions"):
        for cell in order.sample(cells, len(cells)):
            spacing, t, name = cell
            g = torch.Generator().manual_seed(1000 * rep + t)  # every method samples the same frames
            samples = [(p, clip_indices(n_frames[p], t, train=True, generator=g))
                       for p in files[spacing] for _ in range(args.samples)]
            torch.manual_seed(rep)  # and gets the same crops
            w0, c0 = time.perf_counter(), time.process_time()
            for path, indices in samples:
                transform(read(path, indices, table[name]))
            wall[cell].append(len(samples) / (time.perf_counter() - w0))
            cpu[cell].append(len(samples) / max(time.process_time() - c0, 1e-9))
    after = load()
    rows = []
    for spacing, t, name in cells:
        ref = (spacing, t, "sequential")
        ratio = Spread.of([a / b for a, b in zip(wall[(spacing, t, name)], wall[ref])])
        readable = ratio.relative_iqr <= args.max_spread
        rows.append(dict(keyframe_spacing_s=spacing, frames=t, method=name,
                         clips_per_s=asdict(Spread.of(wall[(spacing, t, name)])),
                         clips_per_cpu_s=asdict(Spread.of(cpu[(spacing, t, name)])),
                         ratio_to_sequential=asdict(ratio), readable=readable, load_before=before, load_after=after))
        if name != "sequential" and not readable:
            log.warning("spacing %ss, %d frames, %s: the ratio to sequential spreads over %.0f%% of its median "
                        "(load %s -> %s): too wide to read; rerun on a quieter machine or with more --reps",
                        spacing, t, name, 100 * ratio.relative_iqr, before, after)
    return rows


# --------------------------------------------------------------------------------------- loader


def time_loader(files: list[Path], args) -> list[dict]:
    """DataLoader clips/s, original reader against the default, at each worker count (interleaved)."""
    root = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    lines = [f"{files[i % len(files)]} 0" for i in range(args.loader_clips + args.loader_batch)]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    original = dataset_mod.read_video_frames
    strategies = {"sequential": dict(strategy="sequential"), "default": {}}
    cells = [(w, s) for w in args.workers for s in strategies]
    rates: dict[tuple, list[float]] = {c: [] for c in cells}
    before = load()
    try:
        for rep in tqdm(range(args.loader_reps), desc="loader repetitions"):
            for workers, name in random.Random(rep).sample(cells, len(cells)):
                # the dataset module's name is what its workers call (forked, so they inherit the patch)
                dataset_mod.read_video_frames = functools.partial(original, **strategies[name])
                ds = VideoListDataset(root / "list.txt", ["a"], train=True, num_frames=8, size=224)
                loader = DataLoader(ds, batch_size=args.loader_batch, num_workers=workers, shuffle=False)
                it = iter(loader)
                next(it)  # workers started and warm: their start-up is not the decoder's cost
                start, clips = time.perf_counter(), 0
                for clip_batch, _ in it:
                    clips += len(clip_batch)
                rates[(workers, name)].append(clips / (time.perf_counter() - start))
                del it, loader
    finally:
        dataset_mod.read_video_frames = original
    after = load()
    rows = []
    for workers, name in cells:
        ratio = Spread.of([a / b for a, b in zip(rates[(workers, name)], rates[(workers, "sequential")])])
        rows.append(dict(workers=workers, reader=name, clips_per_s=asdict(Spread.of(rates[(workers, name)])),
                         ratio_to_sequential=asdict(ratio), readable=ratio.relative_iqr <= args.max_spread,
                         load_before=before, load_after=after))
    return rows


# ------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds: small files, 2 repetitions, 1 worker")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per method (default 6, quick 2)")
    parser.add_argument("--files", type=int, default=None, help="files per keyframe spacing (default 2, quick 1)")
    parser.add_argument("--samples", type=int, default=None,
                        help="clips sampled from each file in one repetition (default 2, quick 1)")
    parser.add_argument("--spacings", default="0.5,1,2,0", help="keyframe spacings in seconds, 0: one keyframe")
    parser.add_argument("--frames", default="8,32", help="frames per clip")
    parser.add_argument("--workers", default="1,2,N", help="loader worker counts, N: the CPU count")
    parser.add_argument("--loader-clips", type=int, default=None, help="clips timed per loader run (default 48)")
    parser.add_argument("--loader-reps", type=int, default=None, help="loader repetitions (default 3, quick 1)")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader part")
    parser.add_argument("--no-threads2", action="store_true", help="skip PyAV with two codec threads")
    parser.add_argument("--max-spread", type=float, default=0.15,
                        help="ratios whose IQR exceeds this fraction of the median are flagged unreadable")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "promptcouple_bench_decode"),
                        help="where the generated clips are kept between runs")
    args = parser.parse_args(argv)
    args.spacings = [float(s) for s in args.spacings.split(",")]
    args.frames = [int(t) for t in args.frames.split(",")]
    cpus = os.cpu_count() or 1
    args.workers = sorted({cpus if w.strip() == "N" else int(w) for w in args.workers.split(",")})
    if args.quick:
        args.seconds, args.fps, args.width, args.height = 2.0, 30, 128, 96
        args.spacings = [s for s in args.spacings if s in (1.0, 0.0)] or args.spacings[:2]
        args.workers = [1]
        defaults = dict(reps=2, files=1, samples=1, loader_clips=4, loader_reps=1)
    else:
        args.seconds, args.fps, args.width, args.height = 10.0, 30, 340, 256
        defaults = dict(reps=6, files=2, samples=2, loader_clips=48, loader_reps=3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.loader_batch = 4
    return args


def machine() -> dict:
    info = dict(cpus=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, av=av.__version__,
                libavcodec=".".join(map(str, av.library_versions["libavcodec"])))
    for name in ("torchcodec", "decord"):
        if name in decode.available_backends():
            info[name] = getattr(__import__(name), "__version__", "?")
    return info


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(1)  # per core: the transform on one thread, as in a DataLoader worker
    start = time.perf_counter()
    result = dict(command=" ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
                  machine=machine(), load_start=load(),
                  settings=dict(quick=args.quick, seconds=args.seconds, fps=args.fps, size=f"{args.width}x{args.height}",
                                spacings_s=args.spacings, frames=args.frames, reps=args.reps,
                                files_per_spacing=args.files, clips_per_file_and_rep=args.samples,
                                max_spread=args.max_spread))
    files = clip_files(args)
    result["files"] = {str(s): [describe(p) for p in paths] for s, paths in files.items()}
    table = methods(not args.no_threads2)
    result["methods"] = {k: {a: v for a, v in kw.items()} for k, kw in table.items()}
    parts = result["part_seconds"] = {"generate": round(time.perf_counter() - start, 1)}
    t0 = time.perf_counter()
    result["exact"] = check_exact(files, table, args.frames)
    parts["exact"], t0 = round(time.perf_counter() - t0, 1), time.perf_counter()
    result["decode"] = time_decoding(files, table, args)
    parts["decode"], t0 = round(time.perf_counter() - t0, 1), time.perf_counter()
    if not args.no_loader:
        target = 1.0 if 1.0 in files else next(iter(files))
        result["loader"] = time_loader(files[target], args)
        result["loader_files_keyframe_spacing_s"] = target
        parts["loader"] = round(time.perf_counter() - t0, 1)
    result["load_end"] = load()
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["done_when"] = done_when(result)
    report(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def done_when(result: dict) -> dict:
    """Issue 14's first criterion: >= 1.8x for 8 frames at 1-s spacing, >= 1x with one keyframe, identical frames."""
    def ratio(spacing: float) -> float | None:
        rows = [r for r in result["decode"] if r["keyframe_spacing_s"] == spacing and r["frames"] == 8
                and r["method"] == "buffered"]
        return rows[0]["ratio_to_sequential"]["median"] if rows else None

    one_s, single = ratio(1.0), ratio(0.0)
    exact = all(v["identical"] for name in ("buffered", "seek") for v in result["exact"].get(name, {}).values())
    judged = one_s is not None and single is not None and not result["settings"]["quick"]  # quick: not 10-s clips
    return dict(ratio_8_frames_1s_spacing=one_s, ratio_8_frames_single_keyframe=single, pyav_frames_identical=exact,
                holds=bool(one_s >= 1.8 and single >= 1.0 and exact) if judged else None)


def report(result: dict) -> None:
    print(f"\n{result['command']}  ({result['seconds']} s; load {result['load_start']} -> {result['load_end']})")
    print(f"{'spacing':>8} {'T':>3} {'method':<18} {'clips/s (IQR)':>22} {'clips/CPU-s':>12} {'x sequential (IQR)':>22}  "
          "identical")
    for r in result["decode"]:
        c, cpu, q = r["clips_per_s"], r["clips_per_cpu_s"], r["ratio_to_sequential"]
        same = result["exact"][r["method"]][str(r["keyframe_spacing_s"])]
        flag = "" if r["readable"] or r["method"] == "sequential" else "  (spread too wide)"
        spacing = "single" if r["keyframe_spacing_s"] == 0 else f"{r['keyframe_spacing_s']:g}s"
        print(f"{spacing:>8} {r['frames']:>3} {r['method']:<18} {c['median']:>7.1f} ({c['q1']:.1f}-{c['q3']:.1f}) "
              f"{cpu['median']:>12.1f} {q['median']:>8.2f} ({q['q1']:.2f}-{q['q3']:.2f})  "
              f"{'yes' if same['identical'] else 'no, max diff %d' % same['max_abs_diff']}{flag}")
    for r in result.get("loader", []):
        c, q = r["clips_per_s"], r["ratio_to_sequential"]
        print(f"loader {r['workers']} worker(s) {r['reader']:<10} {c['median']:7.1f} clips/s "
              f"({c['min']:.1f}-{c['max']:.1f}), x{q['median']:.2f} sequential")
    print("done-when 1:", result["done_when"])


if __name__ == "__main__":
    main()
