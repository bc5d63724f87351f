"""Top-1 / top-5 accuracy of prompted classification, on one dataset or every set of a config.

:func:`predict_clips` scores every clip (its top classes and their probabilities); :func:`evaluate`
reduces that to accuracy; :func:`write_report` writes a set's per-clip predictions and per-class
accuracy (CSV) and its confusion matrix (PNG). ``evaluate_config(cfg, prompts=None)`` evaluates
zero-shot: the frozen backbone with the hand-crafted template.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from promptcouple.errors import InvalidInputError, OutputConflictError
from promptcouple.fileio import PathLike, atomic_write, atomic_write_text
from promptcouple.train.config import PROMPTS, ConfigError, TrainConfig, check_files, load_config
from promptcouple.train.data import Datasets, build_datasets
from promptcouple.train.distributed import (DistContext, current_context, is_main_process, setup_distributed,
                                            teardown_distributed)
from promptcouple.train.hosts import build_wrapper
from promptcouple.train.step import TrainStep, autocast

logger = logging.getLogger(__name__)

METRICS = "metrics.json"  # what an evaluation writes into its report folder, beside each set's files
REPORT_PARTS = ("predictions.csv", "per_class.csv", "confusion.png")


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


@dataclass
class Predictions:
    """Per-clip results of an evaluation: each clip's top classes and their scores.

    Scores are the views' mean softmax probabilities (``reduce="softmax"``) or mean logits
    (``"logits"``); ``top[i]`` holds the ``min(5, K)`` best class ids of clip ``i``, best first.

    Attributes:
        classnames: The classes scored. ``indices``: dataset index of each clip. ``labels``: true class ids.
        top: Top class ids per clip. ``scores``: their scores. ``reduce``: how the views were combined.
        videos: A name per clip (the video path for list datasets, else the dataset index).
    """

    classnames: list[str]
    indices: list[int]
    labels: list[int]
    top: list[list[int]]
    scores: list[list[float]]
    reduce: str = "softmax"
    videos: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def metrics(self) -> dict:
        """``{"top1", "top5", "num_clips", "num_classes"}`` (percent)."""
        n = len(self)
        top1 = sum(t[0] == y for y, t in zip(self.labels, self.top))
        top5 = sum(y in t for y, t in zip(self.labels, self.top))
        return {"top1": 100.0 * top1 / max(n, 1), "top5": 100.0 * top5 / max(n, 1), "num_clips": n,
                "num_classes": len(self.classnames)}

    def correct(self) -> str:
        """Each clip's top-1 correctness in clip order, ``"1"`` right, ``"0"`` wrong (``"0110..."``):
        what paired intervals over clips are computed from (``benchmarks/stats.py``)."""
        return "".join("1" if t[0] == y else "0" for y, t in zip(self.labels, self.top))

    def confusion(self) -> torch.Tensor:
        """``(K, K)`` counts: row = true class, column = predicted class."""
        k = len(self.classnames)
        m = torch.zeros(k, k, dtype=torch.long)
        for y, t in zip(self.labels, self.top):
            m[y, t[0]] += 1
        return m

    def per_class(self) -> list[dict]:
        """Top-1 accuracy (percent) of each class: ``{"class", "clips", "top1"}`` in class order
        (``top1`` is ``None`` for a class without clips)."""
        m = self.confusion()
        clips = m.sum(1).tolist()
        return [{"class": name, "clips": c, "top1": 100.0 * m[i, i].item() / c if c else None}
                for i, (name, c) in enumerate(zip(self.classnames, clips))]


def score_views(model: nn.Module, frames: torch.Tensor, classnames: Sequence[str], *, reduce: str = "softmax",
                precision: str = "fp32") -> torch.Tensor:
    """``(B, K)`` scores of ``frames`` ``(B, V, T, 3, H, W)``: the views' mean probabilities
    (``reduce="softmax"``) or mean logits (``"logits"``). Evaluation and ``predict`` both score here."""
    b, v = frames.shape[:2]
    with autocast(precision, frames.device):
        logits = model(frames.flatten(0, 1), list(classnames))
    logits = logits.float().view(b, v, -1)
    return logits.softmax(-1).mean(1) if reduce == "softmax" else logits.mean(1)


def _video_names(dataset: Dataset, indices: Sequence[int]) -> list[str]:
    path = getattr(dataset, "path", None)
    return [str(path(i)) for i in indices] if callable(path) else [str(i) for i in indices]


@torch.no_grad()
def predict_clips(model: Union[nn.Module, TrainConfig, PathLike], dataset: Dataset, classnames: Sequence[str], *,
                  prompts: Optional[PathLike] = None, batch_size: int = 8, reduce: str = "softmax",
                  precision: str = "fp32", device: Union[str, torch.device, None] = None, num_workers: int = 0,
                  progress: bool = False, ctx: Optional[DistContext] = None) -> Predictions:
    """Every clip's top classes and scores; the arguments are :func:`evaluate`'s."""
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
                scores = score_views(wrapper, frames, classnames, reduce=reduce, precision=precision)
                top = scores.topk(k, dim=-1)
                values, ids = top.values.cpu(), top.indices.cpu()
                for j in range(frames.shape[0]):
                    rows.append((indices[pos + j], int(labels[j]), ids[j].tolist(), values[j].tolist()))
                pos += frames.shape[0]
                bar.update(1)
    finally:
        wrapper.train(was_training)
    if ctx.distributed:
        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    unique = {r[0]: r for r in rows}  # the sampler pads with repeats
    rows = [unique[i] for i in sorted(unique)]
    order = [r[0] for r in rows]
    return Predictions(classnames, order, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                       reduce, _video_names(dataset, order))


def evaluate(model: Union[nn.Module, TrainConfig, PathLike], dataset: Dataset, classnames: Sequence[str], *,
             prompts: Optional[PathLike] = None, batch_size: int = 8, reduce: str = "softmax",
             precision: str = "fp32", device: Union[str, torch.device, None] = None, num_workers: int = 0,
             progress: bool = False, ctx: Optional[DistContext] = None) -> dict:
    """Top-1 / top-5 accuracy (percent) of prompted classification over a dataset.

    Items are ``(frames, label)`` with frames ``(V, T, 3, H, W)`` (or ``(T, 3, H, W)``, one view); the
    views' softmax outputs (``reduce="softmax"``) or logits (``"logits"``) are averaged per clip.
    In a process group every rank scores a shard (DistributedSampler) and the results are gathered,
    with the sampler's padding removed, so every clip counts exactly once. :func:`predict_clips`
    gives the per-clip results behind these numbers.

    Args:
        model: A ``CouplingPromptWrapper`` (or DDP around one, or a ``ZeroShotClassifier``), or a
            config / YAML path: then the configured model is wrapped with the prompt file ``prompts``
            (default ``run.output_dir/prompts.safetensors``), whose own prompt config and hard prompt apply.
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
    return predict_clips(model, dataset, classnames, prompts=prompts, batch_size=batch_size, reduce=reduce,
                         precision=precision, device=device, num_workers=num_workers, progress=progress,
                         ctx=ctx).metrics()


def write_report(predictions: Predictions, folder: PathLike, name: str) -> list[Path]:
    """Write ``{name}_predictions.csv`` (one row per clip: video, true and predicted class, the top
    classes with their scores), ``{name}_per_class.csv`` (top-1 per class) and
    ``{name}_confusion.png`` into ``folder``; returns the paths written."""
    folder = Path(folder)
    names = predictions.classnames
    k = max((len(t) for t in predictions.top), default=0)
    score = "probability" if predictions.reduce == "softmax" else "logit"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video", "true_class", "predicted_class", "correct"]
               + [c for i in range(1, k + 1) for c in (f"class_{i}", f"{score}_{i}")])
    for video, y, top, scores in zip(predictions.videos, predictions.labels, predictions.top, predictions.scores):
        w.writerow([video, names[y], names[top[0]], int(top[0] == y)]
                   + [c for t, s in zip(top, scores) for c in (names[t], f"{s:.6g}")])
    paths = [folder / f"{name}_{part}" for part in REPORT_PARTS]
    atomic_write_text(paths[0], buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class_id", "class", "clips", "top1"])
    for i, row in enumerate(predictions.per_class()):
        w.writerow([i, row["class"], row["clips"], "" if row["top1"] is None else f"{row['top1']:.2f}"])
    atomic_write_text(paths[1], buf.getvalue())
    _plot_confusion(predictions, paths[2], title=name)
    return paths


def report_files(set_names) -> list[str]:
    """The file names :func:`write_report` writes for each evaluation set."""
    return [f"{n}_{part}" for n in set_names for part in REPORT_PARTS]


def _plot_confusion(predictions: Predictions, path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: the caller's matplotlib backend stays as it is

    m = predictions.confusion().float()
    rows = m.sum(1, keepdim=True).clamp(min=1)
    k = m.shape[0]
    side = min(4 + 0.25 * k, 16)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow((m / rows).numpy(), vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if k <= 50:  # beyond that the names are unreadable; the per-class CSV names them
        ax.set_xticks(range(k), predictions.classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(k), predictions.classnames, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}: top-1 {predictions.metrics()['top1']:.1f}% ({len(predictions)} clips)")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def evaluate_sets(wrapper: nn.Module, datasets: Datasets, cfg: TrainConfig, *,
                  ctx: Optional[DistContext] = None, report_dir: Optional[PathLike] = None) -> dict:
    """Evaluate on each of ``datasets.evals``; with base and novel sets also report HM of top-1.

    The one scorer of training (periodic and final evaluations), ``promptcouple eval`` and the
    benchmarks. Per set: ``{"top1", "top5", "num_clips", "num_classes", "correct"}``, where
    ``correct`` is each clip's top-1 correctness in the set's order (:meth:`Predictions.correct`),
    the same on every rank; and ``hm`` for base-to-novel sets. ``report_dir``: also write each set's
    per-clip predictions, per-class accuracy and confusion matrix there (:func:`write_report`; rank
    0). The results are the same either way.
    """
    e = cfg.eval
    out = {}
    for name, ev in datasets.evals.items():
        pred = predict_clips(wrapper, ev.dataset, ev.classnames, batch_size=e.batch_size, reduce=e.reduce,
                             precision=cfg.run.precision, num_workers=cfg.data.num_workers,
                             progress=cfg.run.progress, ctx=ctx)
        out[name] = {**pred.metrics(), "correct": pred.correct()}
        if report_dir is not None and (ctx.is_main if ctx is not None else is_main_process()):
            write_report(pred, report_dir, name)
    if datasets.base_to_novel:
        out["hm"] = hm(out["base"]["top1"], out["novel"]["top1"])
    return out


def _file_above(path: Path) -> Optional[Path]:
    """The nearest existing ancestor of ``path`` if it is not a folder (then nothing can be written there)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_file(path: PathLike, name: str = "output") -> None:
    """Refuse an output file path that is a folder or lies under a file, before anything runs.

    Raises:
        OutputConflictError: ``path`` is a folder.
        InvalidInputError: A part of ``path`` above it is a file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputConflictError(f"{name} {path} is a folder; expected a JSON file name, e.g. {path / 'metrics.json'}")
    above = _file_above(path)
    if above is not None:
        raise InvalidInputError(f"{name} {path}: {above} is a file, so nothing can be written under it; "
                                "choose a path in a folder")


def check_report_dir(path: PathLike, name: str = "report_dir") -> None:
    """Refuse a report folder that is a file or lies under a file, before anything runs.

    Raises:
        OutputConflictError: ``path`` is a file.
        InvalidInputError: A part of ``path`` above it is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputConflictError(f"{name} {path} is a file; expected a folder for the reports")
    above = _file_above(path)
    if above is not None:
        raise InvalidInputError(f"{name} {path}: {above} is a file, so no folder can be made under it; "
                                "choose a path in a folder")


def zero_shot_classifier(wrapper: nn.Module) -> nn.Module:
    """The frozen backbone inside ``wrapper``, prompts off, scored with the hand-crafted template
    (filled with each class's descriptions where the wrapper has them)."""
    from promptcouple.world.model import ZeroShotClassifier

    return ZeroShotClassifier.from_wrapper(wrapper, descriptions=getattr(wrapper, "descriptions", None))


def evaluate_config(config: Union[TrainConfig, PathLike],
                    prompts: Union[None, PathLike, Sequence[PathLike]] = None, *, output: Optional[PathLike] = None,
                    report_dir: Union[None, PathLike, Sequence[PathLike]] = None) -> dict:
    """Wrap the configured model with the prompt file ``prompts`` (its own prompt config and hard
    prompt) and evaluate on every configured evaluation set; ``prompts=None``: zero-shot, the frozen
    backbone with the hand-crafted template (``"a video of a {}."``).

    ``prompts`` may be a list of files trained on one backbone: the backbone is built once, each
    file is a named prompt set (:func:`promptcouple.predict.prompt_set_names`) evaluated in turn,
    one table row each, and the result is ``{name: results}``; ``report_dir`` is then a folder per
    file (a list), or one folder holding a sub-folder per name. A file may be a folder holding
    ``prompts.safetensors`` or ``hf-hub:org/repo``.

    Runs under ``torchrun`` as well (every rank scores a shard). Rank 0 writes ``output`` (JSON)
    and, with ``report_dir``, ``metrics.json`` and each set's report (:func:`write_report`) there.
    """
    from promptcouple.hub import resolve_prompt_source
    from promptcouple.predict import prompt_set_names

    several = prompts is not None and not isinstance(prompts, (str, os.PathLike))
    files = [resolve_prompt_source(p) for p in prompts] if several else [prompts]
    if several and not files:
        raise InvalidInputError("evaluate_config: an empty list of prompt files; give one or more, or None (zero-shot)")
    names = prompt_set_names(list(prompts)) if several else [None]
    if isinstance(report_dir, (list, tuple)):
        if len(report_dir) != len(files):
            raise InvalidInputError(f"report_dir: {len(report_dir)} folders for {len(files)} prompt files")
        dirs = list(report_dir)
    else:
        dirs = [Path(report_dir) / n for n in names] if several and report_dir is not None else [report_dir]
    if output is not None:
        check_output_file(output)
    for folder in dirs:
        if folder is not None:
            check_report_dir(folder)
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    check_files(cfg)
    for path in files:
        if path is None:
            continue
        if not os.path.isfile(path):
            raise ConfigError(f"--prompts: {str(path)!r} does not exist; expected a prompt file "
                              "(run.output_dir/prompts.safetensors of a finished run); fix: check the path")
        from promptcouple.io import read_prompt_file, run_info_of
        from promptcouple.train.run_info import check_backbone

        check_backbone(cfg, run_info_of(read_prompt_file(path).metadata))  # other backbones score nonsense
    datasets = build_datasets(cfg, train=False)
    if not datasets.evals:
        raise ConfigError("data: no evaluation set configured (data.val_list, data.novel_list or data.world)")
    ctx = setup_distributed(cfg.run.device)
    try:
        wrapper = build_wrapper(cfg, ctx.device, prompts=files[0])
        set_names = [getattr(wrapper, "active_prompts", None)] + names[1:]
        for name, path in zip(names[1:], files[1:]):
            wrapper.add_prompts(name, path)  # with the descriptions its file records
        table = {}
        for name, set_name, path, folder in zip(names, set_names, files, dirs):
            if ctx.is_main:
                sets = ", ".join(f"{n} {len(ev.dataset)} clips / {len(ev.classnames)} classes"
                                 for n, ev in datasets.evals.items())
                what = f"prompts {path}" if path is not None else "zero-shot (frozen backbone, no prompts)"
                logger.info("eval: %s on %s; model %s; %s; device %s x %d", what, sets, cfg.model.name,
                            f"{cfg.data.num_frames} frames of {cfg.data.image_size}px", ctx.device, ctx.world_size)
            if several:
                wrapper.set_prompts(set_name)
            if datasets.descriptions is not None:  # the config's (data.descriptions) over the prompt file's record
                wrapper.descriptions = datasets.descriptions
            model = wrapper if path is not None else zero_shot_classifier(wrapper)
            results = evaluate_sets(model, datasets, cfg, ctx=ctx, report_dir=folder)
            table[name] = results
            if not ctx.is_main:
                continue
            written = []
            if output is not None and not several:
                record = {"prompts": str(path) if path is not None else None, "eval": results}
                atomic_write_text(output, json.dumps(record, indent=2) + "\n")
                written.append(str(output))
            if folder is not None:
                record = {"prompts": str(path) if path is not None else None, "eval": results}
                atomic_write_text(Path(folder) / METRICS, json.dumps(record, indent=2) + "\n")
                written.append(f"{folder}/ ({', '.join([METRICS] + report_files(datasets.evals))})")
            logger.info("%s", format_eval(results))
            if written:
                logger.info("saved to %s", "; ".join(written))
        if ctx.is_main and several:
            logger.info("%s", format_eval_table(table))
            if output is not None:
                record = {"prompts": {n: str(p) for n, p in zip(names, files)}, "eval": table}
                atomic_write_text(output, json.dumps(record, indent=2) + "\n")
                logger.info("saved to %s", output)
        return table if several else table[None]
    finally:
        teardown_distributed(ctx)


def format_eval_table(table: dict) -> str:
    """One row per prompt set: each evaluation set's top-1 and top-5, then HM if there is one."""
    first = next(iter(table.values()))
    sets = [k for k, v in first.items() if isinstance(v, dict)]
    header = ["prompts"] + [f"{s} {m}" for s in sets for m in ("top1", "top5")] + (["HM"] if "hm" in first else [])
    rows = [[str(name)] + [f"{ev[s][m]:.2f}" for s in sets for m in ("top1", "top5")]
            + ([f"{ev['hm']:.2f}"] if "hm" in ev else []) for name, ev in table.items()]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header] + rows)
