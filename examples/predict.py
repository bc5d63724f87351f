"""Classify videos with trained prompts: `promptcouple predict`, its Python class, and pc.load_video.

    python examples/predict.py [--out DIR]   # default: a new temporary folder

Offline and in seconds: writes a few small mp4 files (a square of the class colour sliding right),
trains prompts on them for a few steps on a tiny random CLIP, then classifies one video three ways
that agree: the command line, :class:`promptcouple.predict.Predictor`, and by hand with
``pc.load_video`` and the wrapper. The prompt file records its class names, backbone, frames and
image size, so nothing else is needed (``promptcouple inspect`` shows them).
"""

import argparse
import tempfile
from pathlib import Path

import torch

import promptcouple as pc
from promptcouple.cli import main as promptcouple_command
from promptcouple.data.synthetic import write_sliding_square_videos
from promptcouple.predict import Predictor

CLASSES = ["red", "green", "blue", "white"]


def write_videos(folder: Path, n: int = 8) -> None:
    write_sliding_square_videos(folder, n, classnames=CLASSES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="working folder (default: a new temporary folder)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="predict_"))
    videos, run = root / "videos", root / "run"
    write_videos(videos)
    (root / "cfg.yaml").write_text(
        "model: {name: tiny}\n"
        "prompts: {n_ctx: 4, text_depth: 2, vision_depth: 2, n_vision_ctx: 4}\n"
        "data: {train_list: videos/list.txt, labels: videos/labels.csv, val_list: videos/list.txt, root: videos,\n"
        "       image_size: 32, num_frames: 4}\n"
        "optim: {epochs: 3, warmup_epochs: 1, batch_size: 4, lr: 1.0e-2}\n"
        f"run: {{progress: false, output_dir: {run}}}\n")
    promptcouple_command(["train", str(root / "cfg.yaml")])
    prompts, video = run / "prompts.safetensors", videos / "clip2.mp4"

    # 1. The command line (also takes a folder, --classes "a,b,c" or a label CSV, --json out.json).
    promptcouple_command(["predict", str(video), "--prompts", str(prompts), "--topk", "3"])

    # 2. The same from Python.
    predictor = Predictor(prompts)
    result = predictor.predict([video], topk=3)[0]
    print("Predictor:", ", ".join(f"{c} {p:.3f}" for c, p in result.top))

    # 3. By hand: the video read as evaluation reads it, then the prompted model's softmax.
    info = predictor.cfg.data
    frames = pc.load_video(video, num_frames=info.num_frames, image_size=info.image_size)  # (T, 3, S, S)
    with torch.no_grad():
        probs = predictor.wrapper(frames[None], predictor.classnames).softmax(-1)[0]
    best = probs.argsort(descending=True)[:3]
    print("by hand:  ", ", ".join(f"{predictor.classnames[i]} {probs[i]:.3f}" for i in best))
    print("same probabilities as predict:", torch.allclose(probs, torch.tensor(result.probabilities), atol=1e-6))


if __name__ == "__main__":
    main()
