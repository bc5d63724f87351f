"""Top-1 / top-5 accuracy of prompted classification, on one dataset or every set of a config."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from promptcouple.fileio import PathLike, atomic_write_text
from promptcouple.train.config import PROMPTS, ConfigError, TrainConfig, check_files, load_config
from promptcouple.train.data import Datasets, build_datasets
from promptcouple.train.distributed import DistContext, current_context, setup_distributed, teardown_distributed
from promptcouple.train.hosts import build_wrapper
from promptcouple.train.step import TrainStep, autocast

logger = logging.getLogger(__name__)


def hm(base: float, novel: float) -> float:
    """Harmonic mean of base and novel accuracy: 2BN/(B+N) (0 when both are 0)."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def format_eval(ev: dict) -> str:
    """One line of an evaluation's results: each set's top-1 / top-5, then HM if there is one."""
    parts = [f"{k}: top1 {v['top1']:.2f} top5 {v['top5']:.2f} ({v['num_clips']} clips)"
             for k, v in ev.items() if isinstance(v, dict)]
    if "hm" in ev:
        parts.append(f"HM {ev['hm']:.2f}")
    return "; ".join(parts)


@torch.no_grad()
def evaluate(model: Union[nn.Module, TrainConfig, PathLike], dataset: Dataset, classnames: Sequence[str], *,
             prompts: Optional[PathLike] = None, batch_size: int = 8, reduce: str = "softmax",
             precision: str = "fp32", device: Union[str, torch.device, None] = None, num_workers: int = 0,
             progress: bool = False, ctx: Optional[DistContext] = None) -> dict:
    """Top-1 / top-5 accuracy (percent) of prompted classification over a dataset.

    Items are ``(frames, label)`` with frames ``(V, T, 3, H, W)`` (or ``(T, 3, H, W)``, one view); the
    views' softmax outputs (``reduce="softmax"``) or logits (``"logits"``) are averaged per clip.
    In a process group every rank scores a shard (DistributedSampler) and the results are gathered,
    with the sampler's padding removed, so every clip counts exactly once.

    Args:
        model: A ``CouplingPromptWrapper`` (or DDP around one), or a config / YAML path: then the
            configured model is wrapped with the prompt file ``prompts`` (default
            ``run.output_dir/prompts.safetensors``), whose own prompt config and hard prompt apply.
        dataset: The evaluation set.
        classnames: Names its labels index (base classes only for base accuracy, novel only for
            novel accuracy).
        prompts: Prompt file to load when ``model`` is a config.
        batch_size: Clips per batch and rank.
        reduce: ``"softmax"`` or ``"logits"``.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast.
        device: Where to run (default: the model's device).
        num_workers: DataLoader workers.
        progress: Show a progress bar (rank 0).
        ctx: Distributed context (default: the current process group, if any).

    Returns:
        ``{"top1", "top5", "num_clips", "num_classes"}``.
    """
    if reduce not in ("softmax", "logits"):
        raise ValueError(f"reduce={reduce!r}: expected 'softmax' or 'logits'")
    if isinstance(model, (TrainConfig, str, os.PathLike)):
        cfg = model if isinstance(model, TrainConfig) else load_config(model)
        model = build_wrapper(cfg, device or "cpu", prompts=prompts or Path(cfg.run.output_dir) / PROMPTS)
    wrapper = model.module if isinstance(model, DistributedDataParallel) else model
    wrapper = wrapper.wrapper if isinstance(wrapper, TrainStep) else wrapper
    device = torch.device(device if device is not None else next(wrapper.parameters()).device)
    ctx = ctx if ctx is not None else current_context(device)
    classnames = list(classnames)
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False) \
        if ctx.distributed else None
    indices = list(sampler) if sampler is not None else list(range(len(dataset)))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was_training = wrapper.training
    wrapper.eval()
    k = min(5, len(classnames))
    rows, pos = [], 0
    try:
        with tqdm(total=len(loader), desc="eval", leave=False, disable=not (progress and ctx.is_main)) as bar:
            for frames, labels in loader:
                frames = frames.to(device, non_blocking=True)
                if frames.ndim == 5:
                    frames = frames.unsqueeze(1)
                b, v = frames.shape[:2]
                with autocast(precision, device):
                    logits = wrapper(frames.flatten(0, 1), classnames)
                logits = logits.float().view(b, v, -1)
                scores = logits.softmax(-1).mean(1) if reduce == "softmax" else logits.mean(1)
                top = scores.topk(k, dim=-1).indices.cpu()
                for j in range(b):
                    rows.append((indices[pos + j], int(labels[j]), top[j].tolist()))
                pos += b
                bar.update(1)
    finally:
        wrapper.train(was_training)
    if ctx.distributed:
        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    unique = {idx: (label, top) for idx, label, top in rows}  # the sampler pads with repeats
    n = len(unique)
    top1 = sum(top[0] == label for label, top in unique.values())
    top5 = sum(label in top for label, top in unique.values())
    return {"top1": 100.0 * top1 / max(n, 1), "top5": 100.0 * top5 / max(n, 1), "num_clips": n,
            "num_classes": len(classnames)}


def evaluate_sets(wrapper: nn.Module, datasets: Datasets, cfg: TrainConfig, *,
                  ctx: Optional[DistContext] = None) -> dict:
    """Evaluate on each of ``datasets.evals``; with base and novel sets also report HM of top-1."""
    e = cfg.eval
    out = {}
    for name, ev in datasets.evals.items():
        out[name] = evaluate(wrapper, ev.dataset, ev.classnames, batch_size=e.batch_size, reduce=e.reduce,
                             precision=cfg.run.precision,
                             num_workers=cfg.data.num_workers, progress=cfg.run.progress, ctx=ctx)
    if datasets.base_to_novel:
        out["hm"] = hm(out["base"]["top1"], out["novel"]["top1"])
    return out


def evaluate_config(config: Union[TrainConfig, PathLike], prompts: PathLike, *,
                    output: Optional[PathLike] = None) -> dict:
    """Wrap the configured model with the prompt file ``prompts`` (its own prompt config and hard
    prompt) and evaluate on every configured evaluation set.

    Runs under ``torchrun`` as well (every rank scores a shard). Rank 0 writes ``output`` (JSON).
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    check_files(cfg)
    if not os.path.isfile(prompts):
        raise ConfigError(f"--prompts: {str(prompts)!r} does not exist")
    datasets = build_datasets(cfg, train=False)
    if not datasets.evals:
        raise ConfigError("data: no evaluation set configured (data.val_list, data.novel_list or data.world)")
    ctx = setup_distributed(cfg.run.device)
    try:
        wrapper = build_wrapper(cfg, ctx.device, prompts=prompts)
        results = evaluate_sets(wrapper, datasets, cfg, ctx=ctx)
        if ctx.is_main:
            if output is not None:
                atomic_write_text(output, json.dumps({"prompts": str(prompts), "eval": results}, indent=2) + "\n")
            logger.info("%s", format_eval(results))
        return results
    finally:
        teardown_distributed(ctx)
