"""Quick check of the room the embedded world leaves for prompt tuning.

Zero-shot accuracy of the frozen world CLIP (template "a video of a {}.") against IVLP prompt
tuning (text and vision prompts at every layer, no hard prompt) trained with cross-entropy on a
K-shot base split of one world dataset, evaluated on base and novel test classes. One split, one
seed: a coarse check for calibrating the world, not a benchmark.

Example::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/world_room_check.py --name wk400 --shift 0.25 --nv 4 --lr 2e-3
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import promptcouple.world as W  # noqa: E402
from promptcouple.config import CouplingConfig  # noqa: E402
from promptcouple.wrapper import CouplingPromptWrapper  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="wk400")
    ap.add_argument("--shift", type=float, default=None)
    ap.add_argument("--context", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--nv", type=int, default=16, help="vision prompt tokens")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--per-class", type=int, default=12, help="test clips per class")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    t0 = time.time()
    model, tok = W.load_world_clip(path=a.ckpt)
    kw = dict(shift=a.shift, context=a.context)
    tr = W.get_dataset(a.name, "base_train", shots=a.shots, split_seed=1, **kw)
    bt = W.get_dataset(a.name, "base_test", test_per_class=a.per_class, **kw)
    nt = W.get_dataset(a.name, "novel_test", test_per_class=a.per_class, **kw)
    zs_b = W.zero_shot_accuracy(model, tok, bt.videos(), bt.labels, bt.classnames)
    zs_n = W.zero_shot_accuracy(model, tok, nt.videos(), nt.labels, nt.classnames)
    print(f"zero-shot base {zs_b:.1f} novel {zs_n:.1f}", flush=True)
    depth_t, depth_v = len(model.transformer.resblocks), len(model.visual.transformer.resblocks)
    cfg = CouplingConfig(n_ctx=a.n_ctx, n_vision_ctx=a.nv, text_depth=depth_t, vision_depth=depth_v if a.nv else 0)
    w = CouplingPromptWrapper(model, cfg, tokenizer=tok)
    opt = torch.optim.AdamW(w.trainable_parameters(), lr=a.lr, weight_decay=1e-3)
    x, y = tr.videos(), tr.labels
    steps = a.epochs * math.ceil(len(x) / a.bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for ep in range(a.epochs):
        w.train()
        perm, total = torch.randperm(len(x)), 0.0
        for i in range(0, len(x), a.bs):
            idx = perm[i:i + a.bs]
            loss = F.cross_entropy(w(x[idx], tr.classnames), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {ep} loss {total / math.ceil(len(x) / a.bs):.3f} ({time.time() - t0:.0f} s)", flush=True)

    def accuracy(ds):
        w.eval()
        with torch.no_grad():
            txt, v, hit = w.encode_text(ds.classnames), ds.videos(), 0
            for i in range(0, len(v), 128):
                hit += w.logits(w.encode_video(v[i:i + 128]), txt).argmax(-1).eq(ds.labels[i:i + 128]).sum().item()
        return 100.0 * hit / len(v)

    b, n = accuracy(bt), accuracy(nt)
    print(json.dumps({"name": a.name, "shift": a.shift, "context": a.context, "nv": a.nv, "lr": a.lr,
                      "zs_base": round(zs_b, 1), "zs_novel": round(zs_n, 1), "ivlp_base": round(b, 1),
                      "ivlp_novel": round(n, 1), "base_gain": round(b - zs_b, 1),
                      "gap_widening": round((b - n) - (zs_b - zs_n), 1), "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
