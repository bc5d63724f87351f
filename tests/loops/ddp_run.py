"""Run under ``torchrun --nproc_per_node=2`` (gloo): every codebase x method through its loop with
their DDP settings (``find_unused_parameters=False``, ``broadcast_buffers=False``); each rank saves
its state dict before and after the epoch and its validation similarities."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: loops, zoo

import promptcouple as pc  # noqa: E402
from loops import fixtures as fx  # noqa: E402
from loops import vificlip_loop, xclip_loop  # noqa: E402
from loops.common import CosineScheduler, train_one_epoch, validate  # noqa: E402
from promptcouple.integrations import vificlip, xclip  # noqa: E402


def build(codebase, method, assets, accumulation):
    # Their main.py seeds SEED + rank: the ranks build different initial prompts, and DDP's
    # construction broadcasts rank 0's.
    torch.manual_seed(1024 + dist.get_rank())
    settings = fx.settings(method, assets)
    if codebase == "vificlip":
        config = vificlip_loop.vifi_config(fx.ARCH, fx.FRAMES, 6, accumulation=accumulation)
        return config, vificlip.returnCLIP(config, None, fx.BASE, settings=settings), vificlip_loop
    config = xclip_loop.xclip_config(fx.FRAMES, 6, accumulation=accumulation)
    host = fx.tiny_xclip(0)  # X-CLIP's pretrained weights: the same on every rank
    torch.manual_seed(1024 + dist.get_rank())
    model = xclip.wrap(host, fx.BASE, pc.CouplingConfig(**fx.PROMPTS), settings=settings)
    return config, model, xclip_loop


def main(workdir: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assets = {k: workdir / v for k, v in (("weights", "clip.pt"), ("hard", "hard.safetensors"),
                                          ("anchors", "anchors.safetensors"))}
    fx.their_clip_package(assets["weights"])
    texts = xclip_loop.generate_text(fx.BASE, fx.tokenizer())
    out = {}
    for codebase in ("vificlip", "xclip"):
        for method in fx.METHODS:
            accumulation = 2 if method == "ga2_anchors" else 1  # DDP all-reduces on every backward
            config, model, loop = build(codebase, method, assets, accumulation)
            before = fx.snapshot(model)
            ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=False)
            optimizer = loop.build_optimizer(config, ddp)
            call = vificlip_loop.call if codebase == "vificlip" else xclip_loop.make_call(texts)
            data = fx.batches(2, 2, 6, seed=10 + rank)  # each rank its own shard
            losses = train_one_epoch(0, ddp, nn.CrossEntropyLoss(), optimizer, CosineScheduler(optimizer, 4),
                                     data, config, call)
            _, sims = validate(fx.batches(1, 2, 6, views=2, seed=20), ddp, config, call)
            out[f"{codebase}/{method}"] = {"before": before, "after": fx.snapshot(model), "losses": losses,
                                           "sims": sims, "trainable": sorted(fx.trainable_names(model))}
    torch.save(out, workdir / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
