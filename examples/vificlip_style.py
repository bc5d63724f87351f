"""ViFi-CLIP style video recognition with coupled prompts: train the prompts, then evaluate.

The ViFi-CLIP pipeline is a frozen image CLIP applied to every frame, the frame features averaged
over time, and prompted class names on the text side. ``CouplingPromptWrapper`` adds the prompts to
an unmodified open_clip model with hooks; this script shows each piece of that pipeline and a
plain training loop (AdamW, warm-up then cosine, as in docs/METHOD.md) around it.

Offline by default: a tiny random open_clip CLIP and generated clips (a square of the class colour
moving over noise), under a minute on two CPU cores::

    python examples/vificlip_style.py

Online, with OpenAI's ViT-B/16 (the colour names are real words for it, so zero-shot already works)::

    python examples/vificlip_style.py --model ViT-B-16-quickgelu --pretrained openai --frames 8 --epochs 2

Real data in ViFi-CLIP / GA2-CLIP list format, starting from a ViFi-CLIP (or GA2-CLIP) checkpoint's
backbone (its prompt tensors are skipped: convert those with ``promptcouple convert``)::

    python examples/vificlip_style.py --model ViT-B-16-quickgelu --pretrained openai \\
        --backbone vifi_clip_k400.pth --trust-checkpoint \\
        --train-list train.txt --val-list val.txt --labels labels.csv --root videos/
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import promptcouple as pc
from promptcouple.constants import CLIP_MEAN, CLIP_STD
from promptcouple.train import evaluate, load_backbone, lr_lambda

COLOURS = {  # RGB in [0, 1]; the class names are the colour words
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.9, 0.1),
    "purple": (0.6, 0.15, 0.8), "orange": (1.0, 0.55, 0.05), "white": (0.95, 0.95, 0.95), "cyan": (0.1, 0.85, 0.9),
}
MEAN, STD = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)


def colour_clips(per_class: int, frames: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips ``(N, T, 3, S, S)``, CLIP-normalised: a square of the class colour moving over noise."""
    g = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    labels = torch.arange(len(names)).repeat_interleave(per_class)
    n, side = len(labels), size // 3
    clips = 0.35 + 0.15 * torch.rand(n, frames, 3, size, size, generator=g)
    start = torch.randint(0, size - side, (n, 2), generator=g)
    step = torch.randint(-2, 3, (n, 2), generator=g)
    for i in range(n):
        rgb = torch.tensor(COLOURS[names[labels[i]]]).view(3, 1, 1)
        for t in range(frames):
            y, x = (start[i] + t * step[i]).clamp(0, size - side).tolist()
            clips[i, t, :, y:y + side, x:x + side] = rgb
    return (clips - MEAN) / STD, labels


def build_clip(args) -> tuple[torch.nn.Module, int]:
    """The frozen image-text model and its input size."""
    if args.model == "tiny":
        torch.manual_seed(args.seed)
        clip = open_clip.CLIP(embed_dim=64, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=4),
                              text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=4, layers=4))
    else:  # pretrained: an open_clip tag ("openai") or a local checkpoint file
        clip = open_clip.create_model(args.model, pretrained=args.pretrained)
    if args.backbone:
        # ViFi-CLIP / GA2-CLIP checkpoints: 'module.'-prefixed, under 'model' or 'model_state_dict';
        # loaded strictly, and the report lists anything kept, skipped or ignored.
        print(load_backbone(clip, args.backbone, trust=args.trust_checkpoint))
    size = clip.visual.image_size
    return clip, size if isinstance(size, int) else size[0]


def build_data(args, size: int):
    """Training and evaluation sets with their class names."""
    if args.train_list:
        from promptcouple.data import VideoListDataset

        train = VideoListDataset(args.train_list, args.labels, root=args.root, train=True, num_frames=args.frames,
                                 size=size)
        val = VideoListDataset(args.val_list, args.labels, root=args.root, train=False, num_frames=args.frames,
                               size=size)
        return train, val, train.classnames
    train = TensorDataset(*colour_clips(args.shots, args.frames, size, seed=args.seed))
    val = TensorDataset(*colour_clips(8, args.frames, size, seed=args.seed + 1))
    return train, val, list(COLOURS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="open_clip model name (ViT-B-16) or 'tiny' (offline)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local checkpoint path")
    p.add_argument("--backbone", default=None, help="ViFi-CLIP / GA2-CLIP checkpoint whose backbone to load")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling (ViFi-CLIP stores a yacs config)")
    p.add_argument("--hard-prompts", default=None, help="prompt file learned on another dataset (coupling)")
    p.add_argument("--train-list"), p.add_argument("--val-list"), p.add_argument("--labels"), p.add_argument("--root")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--shots", type=int, default=8, help="generated training clips per class")
    p.add_argument("--epochs", type=int, default=None, help="default: 30 for tiny, 2 otherwise")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None,
                   help="default: 5e-2 for the random tiny model, 4e-3 (GA2-CLIP's prompt rate) otherwise")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice; 1 for tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="where to save the trained prompts (default: a new temporary folder, not the current one)")
    args = p.parse_args()
    tiny = args.model == "tiny"
    args.epochs = args.epochs or (30 if tiny else 2)
    args.lr = args.lr or (5e-2 if tiny else 4e-3)
    threads = args.threads or (1 if tiny else None)
    if threads:  # tiny steps: one thread avoids OpenMP threads waiting on each other
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    clip, size = build_clip(args)
    train_set, val_set, classnames = build_data(args, size)
    config = pc.CouplingConfig(n_ctx=4, n_vision_ctx=4, text_depth=3, vision_depth=3) if tiny else pc.CouplingConfig()
    torch.manual_seed(args.seed)
    model = pc.CouplingPromptWrapper(clip.to(device), config, hard_prompts=args.hard_prompts)
    print(f"{model.extra_repr()}\n{len(train_set)} training clips, {len(val_set)} evaluation clips, "
          f"{len(classnames)} classes")
    before = evaluate(model, val_set, classnames, batch_size=args.batch_size)
    print(f"before training: top-1 {before['top1']:.1f}%  top-5 {before['top5']:.1f}%")

    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    params = model.trainable_parameters()  # prompts only: the CLIP is frozen
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-3)
    total = args.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(min(len(loader), total // 4), total))
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for frames, labels in loader:
            frames, labels = frames.to(device), labels.to(device)  # frames (B, T, 3, H, W)
            # The ViFi-CLIP computation, piece by piece (model(frames, classnames) does the same):
            video = model.encode_video(frames)     # every frame through the prompted image tower, mean over T
            text = model.encode_text(classnames)   # "X X X X {class}." with the (coupled) context, deep prompts
            logits = model.logits(video, text)     # logit_scale * cosine similarity, (B, K)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % max(1, args.epochs // 5) == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}")
    after = evaluate(model, val_set, classnames, batch_size=args.batch_size)
    print(f"after training ({time.perf_counter() - start:.1f}s): top-1 {after['top1']:.1f}%  "
          f"top-5 {after['top5']:.1f}%  ({after['num_clips']} clips, chance {100 / len(classnames):.1f}%)")
    out = args.out or str(Path(tempfile.mkdtemp(prefix="vificlip_")) / "prompts.safetensors")
    model.save_pretrained(out)
    print(f"prompts saved to {out} ({model.num_trainable_parameters():,} trainable parameters); "
          f"reload with pc.CouplingPromptWrapper.from_pretrained(clip, {out!r})")


if __name__ == "__main__":
    main()
