"""Contrastive pretraining of the embedded world's small video CLIP.

Reproduces ``promptcouple/world/assets/world_clip.safetensors`` from a seed: an open_clip ``CLIP``
(config ``promptcouple.world.WORLD_CLIP_CONFIG``) trained with a symmetric InfoNCE loss on
captioned clips rendered on the fly in the pretraining style (``shift=0``, no class scenes),
frame features averaged over time. Then it measures zero-shot accuracy (template
"a video of a {}.") on every dataset's base and novel test split at the default downstream shift
and at shift 0, and writes the checkpoint (fp16) with the config in its metadata.

Example::

    nice -n 10 python benchmarks/pretrain_world_clip.py --seed 0 --steps 900 \
        --out promptcouple/world/assets/world_clip.safetensors --json pretrain.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from promptcouple import world as W
from promptcouple.fileio import atomic_write_text
from promptcouple.world import render as R
from promptcouple.world import vocab as V
from promptcouple.world.model import ZeroShotClassifier
from protocol.context import run_script

log = logging.getLogger("promptcouple.benchmarks")


class CaptionedClips(IterableDataset):
    """Endless stream of pretraining batches: (frames uint8 (B, T', 3, H, W), captions).

    Each batch uses only two colours, so colour alone rarely separates a positive from the
    negatives and the model has to learn shape and motion.
    """

    def __init__(self, seed: int, batch: int, frames_kept: int, steps: int):
        self.seed, self.batch, self.frames_kept, self.steps = seed, batch, frames_kept, steps

    def __iter__(self):
        torch.set_num_threads(1)  # the worker renders on one core while the trainer uses the rest
        style = R.Style(frames=8, shift=0.0, trail=1.0)
        for step in range(self.steps):
            rng = np.random.default_rng([self.seed, step])
            n = self.batch
            cols = rng.choice(len(V.COLOUR_NAMES), 2, replace=False)
            attrs = {
                "shape": rng.integers(0, len(V.SHAPES), n),
                "colour": cols[rng.integers(0, 2, n)],
                "size": rng.integers(0, len(V.SIZE_NAMES), n),
                "texture": rng.integers(0, len(V.TEXTURES), n),
                "motion": rng.integers(0, len(V.MOTION_IDS), n),
            }
            keep = np.sort(rng.choice(8, self.frames_kept, replace=False))
            clips = R.render(R.sample_clips(rng, attrs, style), style, frame_idx=keep)
            caps = [V.caption(rng, V.SHAPES[attrs["shape"][i]], V.COLOUR_NAMES[attrs["colour"][i]],
                              V.SIZE_NAMES[attrs["size"][i]], V.TEXTURES[attrs["texture"][i]],
                              V.MOTION_IDS[attrs["motion"][i]]) for i in range(n)]
            yield clips, caps


def encode_text_trimmed(model, text: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on the shortest prefix that holds every EOT token.

    Identical result (the causal mask keeps padding from reaching the EOT position), at a
    fraction of the cost for short captions.
    """
    n = int(text.argmax(-1).max()) + 1
    text = text[:, :n]
    x = model.token_embedding(text) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), text.argmax(-1)]
    return x @ model.text_projection


def evaluate(model, tok, per_class: int, shifts=(None, 0.0)) -> dict:
    """Zero-shot accuracy on base and novel test splits of every dataset."""
    out = {}
    for name in W.dataset_names():
        for sh in shifts:
            tag = "default" if sh is None else f"shift{sh:g}"
            for part in ("base", "novel"):
                ds = W.get_dataset(name, f"{part}_test", shift=sh, test_per_class=per_class)
                acc = W.zero_shot_accuracy(model, tok, ds.videos(), ds.labels, ds.classnames)
                out[f"{name}/{tag}/{part}"] = round(acc, 2)
                out[f"{name}/{tag}/{part}_chance"] = round(100.0 / len(ds.classnames), 2)
    return out


def linear_probe(model, name: str, shots: int = 16, split_seed: int = 1, per_class: int = 50, epochs: int = 300) -> float:
    """Base-class accuracy of a logistic regression on frozen video features (K-shot), initialised
    from the zero-shot text classifier: a cheap estimate of what tuning on base classes can reach."""
    tr = W.get_dataset(name, "base_train", shots=shots, split_seed=split_seed)
    te = W.get_dataset(name, "base_test", test_per_class=per_class)
    with torch.no_grad():
        ftr = torch.cat([W.encode_video(model, tr.videos()[i:i + 256]) for i in range(0, len(tr), 256)])
        fte = torch.cat([W.encode_video(model, te.videos()[i:i + 256]) for i in range(0, len(te), 256)])
        w0 = ZeroShotClassifier.from_clip(model, W.make_tokenizer()).class_features(tr.classnames)
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        loss = F.cross_entropy(50.0 * ftr @ F.normalize(w, dim=-1).t(), tr.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return 100.0 * (fte @ F.normalize(w, dim=-1).t()).argmax(-1).eq(te.labels).float().mean().item()


def small_eval(model, tok) -> dict:
    """The fixed small evaluation set that ``tests/test_world.py`` re-measures (6 clips per class)."""
    out = {}
    for name in ("wk400", "wucf"):
        for part in ("base", "novel"):
            ds = W.get_dataset(name, f"{part}_test", test_per_class=6, shift=0.0)
            out[f"{name}/shift0/{part}"] = round(W.zero_shot_accuracy(model, tok, ds.videos(), ds.labels, ds.classnames), 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--frames-kept", type=int, default=2, help="frames per clip used in training (of 8)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--eval-per-class", type=int, default=50)
    ap.add_argument("--out", default=W.CHECKPOINT)
    ap.add_argument("--json", default=None, help="write the measurements here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop early after this much training time (the schedule still assumes --steps); "
                         "the step reached is recorded so --stop-at reproduces it")
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this many steps (schedule assumes --steps)")
    ap.add_argument("--eval-only", default=None, help="only evaluate this checkpoint (adds linear probes)")
    ap.add_argument("--small-eval-json", default=None, help="write the small fixed evaluation (for the tests) here")
    args = ap.parse_args(argv)
    if args.eval_only:
        torch.set_num_threads(args.threads)
        t1 = time.time()
        model, tok = W.load_world_clip(path=args.eval_only)
        res = evaluate(model, tok, args.eval_per_class)
        for name in W.dataset_names():
            res[f"{name}/default/probe16_base"] = round(linear_probe(model, name, per_class=args.eval_per_class), 2)
        for k, v in res.items():
            if not k.endswith("chance"):
                log.info("%-28s %6.2f", k, v)
        small = small_eval(model, tok)
        log.info("small eval %s\nevaluation: %.0f s", small, time.time() - t1)
        if args.small_eval_json:
            atomic_write_text(args.small_eval_json, json.dumps(
                {"checkpoint": os.path.basename(args.eval_only), "accuracy": small,
                 "protocol": "zero_shot_accuracy, template 'a video of a {}.', test_per_class=6, shift=0, world_seed=0"},
                indent=1))
        if args.json:
            atomic_write_text(args.json, json.dumps(
                {"zero_shot": res, "small_eval": small, "eval_seconds": round(time.time() - t1, 1)}, indent=1))
        return res

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = W.build_world_clip()
    tok = W.make_tokenizer()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "token_embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "token_embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    loader = DataLoader(CaptionedClips(args.seed, args.batch, args.frames_kept, args.steps), batch_size=None,
                        num_workers=1, prefetch_factor=4)
    t0 = time.time()
    model.train()
    losses = []
    done = 0
    bar = tqdm(loader, total=args.steps, desc="pretrain", mininterval=10)
    for step, (clips, caps) in enumerate(bar):
        frames = W.normalize_frames(clips)
        v = W.encode_video(model, frames)
        t = F.normalize(encode_text_trimmed(model, tok(caps)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * v @ t.t()
        # Identical captions are positives of each other (multi-positive targets).
        same = torch.tensor([[a == b for b in caps] for a in caps], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() +
                      torch.sum(-target * logits.t().log_softmax(1), 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        done = step + 1
        if args.stop_at is not None and done >= args.stop_at:
            break
        if args.max_minutes is not None and time.time() - t0 > 60 * args.max_minutes:
            break
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    train_s = time.time() - t0
    log.info("pretraining: %d of %d scheduled steps in %.1f min", done, args.steps, train_s / 60)
    model.eval()
    t1 = time.time()
    W.save_world_clip(model, args.out, metadata={"seed": str(args.seed), "steps": str(args.steps), "steps_done": str(done),
                                                 "train_seconds": f"{train_s:.0f}"})
    # Evaluate the fp16 round trip, i.e. exactly what ships.
    model, tok = W.load_world_clip(path=args.out)
    res = evaluate(model, tok, args.eval_per_class)
    eval_s = time.time() - t1
    report = {
        "seed": args.seed, "steps": args.steps, "steps_done": done, "batch": args.batch, "frames_kept": args.frames_kept, "lr": args.lr,
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4), "loss_curve": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)],
        "params": sum(p.numel() for p in model.parameters()), "file_bytes": os.path.getsize(args.out),
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}, cores {os.cpu_count()}",
        "zero_shot": res,
    }
    for k, v in res.items():
        if not k.endswith("chance"):
            log.info("%-28s %6.2f  (chance %.2f)", k, v, res[k + "_chance"])
    log.info("evaluation: %.0f s; total %.1f min", eval_s, (time.time() - t0) / 60)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    run_script(main)
