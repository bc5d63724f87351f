"""What makes a training run resumable: its per-epoch checkpoint, its log, and the checks a resume makes.

:class:`ResumableRun` is the part of :class:`promptcouple.train.Trainer` that saves the training
state at the end of every epoch (prompts, optimizer, scheduler, grad scaler, prompt average, every
rank's RNG states; :mod:`promptcouple.train.checkpoint` writes and reads the file) and restores it,
refusing a checkpoint whose config differs in what it trains, and recognising a run that has
already finished. :class:`JsonlLog` is the run's ``log.jsonl``, cut back to the last checkpoint
when a run resumes so that no epoch appears twice.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from promptcouple.fileio import atomic_write_text
from promptcouple.train.checkpoint import (FORMAT, FORMAT_VERSION, atomic_torch_save, load_checkpoint, rng_state,
                                           set_rng_state)
from promptcouple.train.config import CHECKPOINT, RESULTS, ConfigError

# Config keys that may change between a run and its resumption without changing the result.
_RESUME_FREE = {"run.output_dir", "run.progress", "run.log_every", "run.stop_after_epochs", "run.device",
                "data.num_workers", "model.grad_checkpointing", "model.trust_checkpoint"}
_RESUME_FREE_SECTIONS = ("eval.",)
_PATH_KEYS = {"model.pretrained", "model.backbone_checkpoint", "prompts.hard_prompts", "data.train_list",
              "data.labels", "data.val_list", "data.val_labels", "data.novel_list", "data.novel_labels",
              "data.root", "anchors.list", "anchors.labels", "anchors.root"}


class JsonlLog:
    """Append-only JSON-lines log written by rank 0."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **record: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after_epoch(self, epochs_done: int) -> list[dict]:
        """Drop lines of epochs a resumed run repeats (they were lost with the interrupted epoch);
        with ``epochs_done=0`` (no checkpoint yet) every line goes, the start record too, since the
        run starts again. Returns the records kept (every rank reads; rank 0 rewrites)."""
        if not self.path.exists():
            return []
        kept, records = [], []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if epochs_done > 0 and record.get("epoch", 0) <= epochs_done:
                kept.append(line)
                records.append(record)
        if self.enabled:
            atomic_write_text(self.path, "".join(x + "\n" for x in kept))
        return records


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "coupling":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resume_differences(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in _RESUME_FREE or key.startswith(_RESUME_FREE_SECTIONS) or key in _PATH_KEYS:
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


class ResumableRun:
    """Checkpointing and resuming of a :class:`~promptcouple.train.Trainer` (a mixin: it uses the
    Trainer's ``cfg``, ``ctx``, ``wrapper``, ``optimizer``, ``scheduler``, ``scaler``,
    ``prompt_average``, ``data_generator``, ``log``, ``output_dir`` and step counters)."""

    def _resume_checkpoint(self, path: Path) -> dict:
        """The checkpoint to resume from, refused if the config changed what it trains."""
        ckpt = load_checkpoint(path, map_location="cpu")
        diffs = _resume_differences(ckpt["config"], self.cfg.to_dict())
        if diffs:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in what it trains: "
                              f"{'; '.join(diffs)}; restore those values or start a new run.output_dir")
        return ckpt

    def _finished_results(self, ckpt: dict) -> Optional[dict]:
        """The results of the run if it had finished (all epochs, results written), else ``None``."""
        results_path = self.output_dir / RESULTS
        if int(ckpt["epoch"]) < self.cfg.optim.epochs or not results_path.is_file():
            return None
        try:
            results = json.loads(results_path.read_text())
        except (OSError, ValueError):
            return None  # a results file cut short: the final evaluation runs again and rewrites it
        return results if isinstance(results, dict) and results.get("status") == "finished" else None

    def _resume(self, path: Path, ckpt: dict) -> None:
        if ckpt["world_size"] != self.ctx.world_size:
            warnings.warn(f"resuming a run of {ckpt['world_size']} process(es) with {self.ctx.world_size}: "
                          "the global batch and data order change, so the result will not match an "
                          "uninterrupted run")
        self.wrapper.prompts.load_state_dict(ckpt["prompts"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.prompt_average is not None and ckpt.get("prompt_average") is not None:
            self.prompt_average.load_state_dict(ckpt["prompt_average"])
        rng = ckpt["rng"][self.ctx.rank] if self.ctx.rank < len(ckpt["rng"]) else ckpt["rng"][0]
        set_rng_state(rng, self.data_generator)
        self.start_epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        kept = self.log.truncate_after_epoch(self.start_epoch)
        self._history = [r for r in kept if r.get("kind") == "epoch"]
        self._log(f"resumed from {path}: {self.start_epoch} epoch(s), {self.global_step} step(s) done")

    def _save_checkpoint(self, epochs_done: int) -> None:
        # Every rank's RNG state is kept (gathered to rank 0), so each rank resumes its own streams.
        state = rng_state(self.data_generator)
        states = [None] * self.ctx.world_size if self.ctx.distributed else [state]
        if self.ctx.distributed:
            dist.all_gather_object(states, state)
        if self.ctx.is_main:
            atomic_torch_save({
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "epoch": epochs_done, "global_step": self.global_step,
                "prompts": {k: v.detach().cpu() for k, v in self.wrapper.prompts.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "prompt_average": self.prompt_average.state_dict() if self.prompt_average is not None else None,
                "rng": states, "world_size": self.ctx.world_size, "config": self.cfg.to_dict(),
            }, self.output_dir / CHECKPOINT)
        if self.ctx.distributed:
            dist.barrier()  # once per epoch: no rank runs ahead of the checkpoint it may resume from

    def _trained_prompt_state(self) -> dict:
        """The trainable prompt tensors (what Gaussian prompt aggregation averages)."""
        return {n: p.detach() for n, p in self.wrapper.prompts.named_parameters() if p.requires_grad}

    def _load_prompt_average(self) -> None:
        average = self.prompt_average.average()
        with torch.no_grad():
            for name, p in self.wrapper.prompts.named_parameters():
                if name in average:
                    p.copy_(average[name].to(device=p.device, dtype=p.dtype))
