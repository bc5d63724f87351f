"""Clips/s of the exported ONNX classifier under onnxruntime against the PyTorch Predictor.

Both score the same decoded frames (generated clips read by ``Predictor.load``), timed alternately
(``timing.compare``: A B, B A, ... with the ratio taken per pair) with the same number of threads;
the record keeps both spreads, the per-pair ratio, the load average before and after, and the
largest difference between the two sides' probabilities. The model is ViT-B/16 with random weights
(open_clip ``ViT-B-16-quickgelu``, ``pretrained=None``; random weights cost what trained ones cost)
with the paper's prompts (coupled context, 9 deep layers in each tower).

    python benchmarks/bench_export.py --json benchmarks/results/export_cpu.json
    python benchmarks/bench_export.py --quick      # seconds: the tiny test model, a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import compare, load_average  # noqa: E402

log = logging.getLogger("promptcouple.benchmarks.export")

CLASSES = ["red", "green", "blue", "white"]


def build(quick: bool, frames: int):
    """A Predictor around a freshly wrapped backbone: ViT-B/16 (random) or, with ``quick``, the tiny model."""
    import open_clip

    import promptcouple as pc
    from promptcouple.predict import Predictor
    from promptcouple.train import TrainConfig
    from promptcouple.train.hosts import tiny_clip

    torch.manual_seed(0)
    cfg = TrainConfig()
    cfg.data.num_frames = frames
    if quick:
        host, tokenizer, config, size = tiny_clip(32), None, pc.CouplingConfig(n_ctx=4, text_depth=2, n_vision_ctx=4,
                                                                              vision_depth=2), 32
    else:
        name = "ViT-B-16-quickgelu"
        host, tokenizer, config, size = open_clip.create_model(name, pretrained=None), open_clip.get_tokenizer(name), \
            pc.CouplingConfig(), 224
    cfg.model.name, cfg.data.image_size = ("tiny" if quick else "ViT-B-16-quickgelu"), size
    from promptcouple.config import DEFAULT_N_CTX

    hard = torch.randn(config.n_ctx or DEFAULT_N_CTX, host.transformer.width) * 0.02
    wrapper = pc.CouplingPromptWrapper(host.eval(), config, hard_prompts=hard, tokenizer=tokenizer)
    return Predictor.from_wrapper(wrapper, CLASSES, config=cfg, batch_size=1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--batch", type=int, default=1, help="clips per call (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    parser.add_argument("--reps", type=int, default=6, help="timed pairs (default 6)")
    parser.add_argument("--quick", action="store_true", help="the tiny test model (a smoke run)")
    parser.add_argument("--json", default=None, help="write the record here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from promptcouple.data.synthetic import write_sliding_square_videos
    from promptcouple.export import OnnxClassifier, export_onnx

    torch.set_num_threads(args.threads)
    predictor = build(args.quick, args.frames)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        folder = write_sliding_square_videos(Path(tmp) / "clips", args.batch, frames=16, width=96, height=96)
        frames = torch.stack([predictor.load(folder / f"clip{i}.mp4") for i in range(args.batch)])
        path = export_onnx(predictor, Path(tmp) / "classifier.onnx")
        size_mib = path.stat().st_size / 2 ** 20
        runtime = OnnxClassifier(path, threads=args.threads)
        difference = float((runtime.probabilities(frames) - predictor.probabilities(frames).cpu()).abs().max())
        result = compare(lambda: runtime.probabilities(frames), lambda: predictor.probabilities(frames),
                         reps=args.reps, warmup=1, label="onnxruntime / PyTorch")
    record = {
        "command": "python benchmarks/bench_export.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "tiny" if args.quick else "ViT-B-16-quickgelu (random weights), CouplingConfig() with a hard prompt",
        "frames_shape": list(frames.shape), "threads": args.threads, "onnx_mib": round(size_mib, 1),
        "max_probability_difference": difference,
        "onnxruntime_clips_per_s": args.batch / result.a.median, "pytorch_clips_per_s": args.batch / result.b.median,
        "time_ratio_onnxruntime_over_pytorch": result.ratio.median, "timing": result.as_dict(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__},
        "load_average_end": load_average(),
    }
    log.info("onnxruntime %.3f clips/s (%s s/call), PyTorch %.3f clips/s (%s s/call); time ratio %s; load %s -> %s; "
             "max |p_onnx - p_torch| %.2e", record["onnxruntime_clips_per_s"], result.a, record["pytorch_clips_per_s"],
             result.b, result.ratio, result.load_before, result.load_after, difference)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
