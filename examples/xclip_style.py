"""Prompt-tune an X-CLIP style video model, end to end.

An open_clip CLIP becomes an X-CLIP style video model (cross-frame message tokens, multi-frame
integration transformer, video-specific text prompts), the prompt wrapper freezes it and adds
coupled text and deep vision prompts, a few steps of training follow, and accuracy is printed
before and after. The clips are synthetic (a coloured square moving across a noisy background;
the class is its colour), so the script runs anywhere.

Offline, on a tiny randomly initialised CLIP (under a minute on two CPU cores)::

    python examples/xclip_style.py

Online, on OpenAI's ViT-B/16 (or a local checkpoint: --pretrained /path/to/open_clip_model.safetensors)::

    python examples/xclip_style.py --model ViT-B-16-quickgelu --pretrained openai --device cuda

Add ``--train-head`` to train the X-CLIP head (message layers, MIT, prompt generator) with the
prompts; by default it stays at its initialisation, where it computes exactly the frame-wise CLIP.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

import promptcouple as pc
from promptcouple.models.xclip import XCLIPStyle

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95),
           "yellow": (0.95, 0.9, 0.1), "purple": (0.6, 0.15, 0.8)}
CLASSNAMES = [f"{c} square moving" for c in COLOURS]


def build_clip(name: str, pretrained: Optional[str]) -> open_clip.CLIP:
    """A tiny random CLIP for ``--model tiny``, else an open_clip model (``pretrained``: tag or path)."""
    if name == "tiny":
        # A random ViT's CLS token hardly depends on the input, so the tiny tower pools the patch
        # tokens instead (open_clip's pool_type="avg"); pretrained towers keep their CLS pooling.
        return open_clip.CLIP(
            embed_dim=64,
            vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, pool_type="avg"),
            text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
        )
    return open_clip.create_model(name, pretrained=pretrained)


def make_clips(n: int, frames: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalised clips ``(n, T, 3, size, size)`` and their labels (the square's colour)."""
    labels = torch.randint(len(COLOURS), (n,), generator=generator)
    palette = torch.tensor(list(COLOURS.values()))
    clips = 0.25 * torch.rand(n, frames, 3, size, size, generator=generator)
    side = max(2, size // 2)
    start = torch.randint(0, size - side, (n, 2), generator=generator)
    step = torch.randint(-size // 8, size // 8 + 1, (n, 2), generator=generator)
    for i in range(n):
        for t in range(frames):
            y, x = ((start[i] + t * step[i]) % (size - side)).tolist()
            clips[i, t, :, y:y + side, x:x + side] = palette[labels[i]].view(3, 1, 1)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    return (clips - mean) / std, labels


@torch.no_grad()
def accuracy(model: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor, batch: int,
             device: torch.device) -> float:
    """Top-1 accuracy of ``model(frames, CLASSNAMES)`` over ``clips``."""
    model.eval()
    correct = 0
    for i in range(0, len(clips), batch):
        logits = model(clips[i:i + batch].to(device), CLASSNAMES)
        correct += (logits.argmax(-1).cpu() == labels[i:i + batch]).sum().item()
    return correct / len(clips)


def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (random, offline) or an open_clip model name")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai) or checkpoint path")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--steps", type=int, default=40, help="training steps")
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--lr", type=float, default=2e-2, help="AdamW learning rate")
    parser.add_argument("--train-head", action="store_true", help="train the X-CLIP head along with the prompts")
    parser.add_argument("--eval-clips", type=int, default=100, help="held-out clips to evaluate on")
    parser.add_argument("--save", default=None, help="write the trained prompts to this .safetensors file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: 1 for the tiny model, whose tensors are too small to share)")
    args = parser.parse_args(argv)
    threads = args.threads or (1 if args.model == "tiny" else None)
    if threads:
        torch.set_num_threads(threads)
    if args.model != "tiny" and args.pretrained is None:
        print(f"note: --model {args.model} without --pretrained starts from random weights")

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    start = time.time()
    clip = build_clip(args.model, args.pretrained)
    model = XCLIPStyle(clip, args.frames).to(device)
    # Paper setting for real backbones; a small one for the 2-layer tiny model.
    config = (pc.CouplingConfig(n_ctx=4, n_vision_ctx=4, text_depth=2, vision_depth=2)
              if args.model == "tiny" else pc.CouplingConfig())
    wrapper = pc.CouplingPromptWrapper(model, config)  # freezes the model, head included
    params = wrapper.trainable_parameters()
    if args.train_head:
        for _, p in model.head_parameters():
            p.requires_grad_(True)
        params += [p for _, p in model.head_parameters()]
    head_state = "trained" if args.train_head else "frozen"
    print(f"{args.model}: {sum(p.numel() for p in params):,} trainable parameters "
          f"({wrapper.num_trainable_parameters():,} in prompts, X-CLIP head {head_state})")

    size = clip.visual.image_size[0]
    data = torch.Generator().manual_seed(args.seed + 1)
    test_clips, test_labels = make_clips(args.eval_clips, args.frames, size, data)
    before = accuracy(wrapper, test_clips, test_labels, args.batch, device)
    print(f"accuracy before training: {before:.1%} (chance {1 / len(CLASSNAMES):.1%})")

    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-3)
    for step in range(1, args.steps + 1):
        wrapper.train()
        clips, labels = make_clips(args.batch, args.frames, size, data)
        loss = F.cross_entropy(wrapper(clips.to(device), CLASSNAMES), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  loss {loss.item():.3f}")

    after = accuracy(wrapper, test_clips, test_labels, args.batch, device)
    print(f"accuracy after {args.steps} steps: {after:.1%} ({time.time() - start:.0f} s)")
    if args.save:
        wrapper.save_prompts(args.save)
        print(f"prompts written to {args.save}")

    # The host is untouched underneath: unwrapping gives back the X-CLIP style model as it was.
    host = wrapper.unwrap()
    print(f"unwrapped: {type(host).__name__} with {host.num_head_parameters():,} head parameters")
    return after


if __name__ == "__main__":
    main()
