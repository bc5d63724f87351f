"""Prompt training and evaluation: one process or ``torchrun`` + DistributedDataParallel.

``train(config)`` runs the protocol of METHOD.md: AdamW on the prompt parameters only, a linear
warm-up then a cosine decay stepped per optimizer step, cross-entropy over the training classes plus
the anchor term and, optionally, the KgCoOp-style text-consistency term (``loss.text_consistency``),
optional mixed precision, gradient accumulation and gradient checkpointing. Every epoch ends with
an atomic checkpoint; ``resume=True`` continues a stopped run and reaches the same prompts as an
uninterrupted run (bit-identical on CPU), because the data order and every random draw of an epoch
are functions of (seed, epoch, rank) alone, never of what ran before.

Outputs in ``run.output_dir``: ``checkpoint.pt`` (last epoch), ``log.jsonl`` (one line per logged
step, epoch and evaluation), ``results.json`` and ``prompts.safetensors`` (final prompts).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from promptcouple.train.checkpoint import (FORMAT, FORMAT_VERSION, atomic_torch_save, load_checkpoint,
                                           rng_state, set_rng_state)
from promptcouple.train.config import ConfigError, TrainConfig, check_files, load_config
from promptcouple.train.data import Datasets, build_datasets

PathLike = Union[str, "os.PathLike[str]"]
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
RESULTS = "results.json"
PROMPTS = "prompts.safetensors"

# Config keys that may change between a run and its resumption without changing the result.
_RESUME_FREE = {"run.output_dir", "run.progress", "run.log_every", "run.stop_after_epochs", "run.device",
                "data.num_workers", "model.grad_checkpointing", "model.trust_checkpoint"}
_RESUME_FREE_SECTIONS = ("eval.",)
_PATH_KEYS = {"model.pretrained", "model.backbone_checkpoint", "prompts.hard_prompts", "data.train_list",
              "data.labels", "data.val_list", "data.val_labels", "data.novel_list", "data.novel_labels",
              "data.root", "anchors.list", "anchors.labels", "anchors.root"}


# ------------------------------------------------------------------------------------ distributed

@dataclass
class DistContext:
    """Where this process runs: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes (gloo on CPU, nccl on GPU), if any.

    A group that already exists is used as is (and not destroyed by :func:`teardown_distributed`).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {device!r} but CUDA is not available; use run.device: cpu")
    if want_cuda:
        index = int(device.split(":")[1]) if ":" in device else local_rank
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=True)
    return DistContext(device=dev)


def teardown_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _all_mean(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Mean over ranks of a few scalars (a no-op in one process)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return (t / ctx.world_size).tolist()


# ---------------------------------------------------------------------------------- determinism

def epoch_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """A seed that depends on (seed, epoch, rank, stream) only: resumed epochs replay exactly."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1, dtype=np.uint32)[0])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device
    np.random.seed(seed)
    random.seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy is not seeded by torch
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


# --------------------------------------------------------------------------------------- models

def tiny_clip(image_size: int = 32, quick_gelu: bool = False):
    """A random tiny open_clip CLIP (embed 32, two layers per tower) for tests and smoke runs."""
    import open_clip

    if image_size % 8:
        raise ConfigError(f"data.image_size: the tiny model uses 8-pixel patches, got {image_size}")
    return open_clip.CLIP(
        embed_dim=32, quick_gelu=quick_gelu,
        vision_cfg=dict(image_size=image_size, patch_size=8, width=32, layers=2, head_width=16),
        text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=2),
    )


def build_host(cfg: TrainConfig) -> tuple[nn.Module, Any]:
    """The frozen backbone and its tokenizer (``None``: the wrapper's CLIP BPE default).

    Seeded with ``run.seed`` so random models (``tiny``) are identical on every rank and run.
    """
    m = cfg.model
    torch.manual_seed(cfg.run.seed)
    tokenizer = None
    if m.name in ("tiny", "tiny-quickgelu"):
        host = tiny_clip(cfg.data.image_size, quick_gelu=m.name == "tiny-quickgelu")
    elif m.name == "world":
        from promptcouple.world import load_world_clip

        loaded = load_world_clip()
        host, tokenizer = loaded if isinstance(loaded, tuple) else (loaded, None)
    else:
        import open_clip

        if m.name not in open_clip.list_models():
            raise ConfigError(f"model.name: {m.name!r} is not an open_clip model, 'world' or 'tiny' "
                              f"(open_clip has e.g. ViT-B-16-quickgelu, ViT-B-32, ViT-L-14)")
        if m.pretrained == "openai" and "quickgelu" not in m.name.lower():
            raise ConfigError(f"model.name: {m.name!r} with pretrained: openai builds GELU blocks, but OpenAI's "
                              f"weights need QuickGELU (features off by ~1e-2 otherwise); use {m.name + '-quickgelu'!r}")
        try:
            host = open_clip.create_model(m.name, pretrained=m.pretrained)
        except Exception as err:  # download and checkpoint errors come in many types
            raise ConfigError(f"model: cannot create {m.name!r} with pretrained={m.pretrained!r}: {err}") from err
        tokenizer = open_clip.get_tokenizer(m.name)
    size = getattr(getattr(host, "visual", None), "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    if isinstance(size, int) and size != cfg.data.image_size:
        raise ConfigError(f"data.image_size: {cfg.data.image_size}, but model {m.name!r} takes {size}x{size} frames")
    if m.backbone_checkpoint is not None:
        from promptcouple.train.backbone import BackboneLoadError, load_backbone

        try:
            report = load_backbone(host, m.backbone_checkpoint, trust=m.trust_checkpoint)
        except BackboneLoadError as err:
            raise ConfigError(f"model.backbone_checkpoint: {err}") from None
        if int(os.environ.get("RANK", "0")) == 0:
            print(report, flush=True)
    if m.grad_checkpointing:
        if not hasattr(host, "set_grad_checkpointing"):
            raise ConfigError(f"model.grad_checkpointing: {type(host).__name__} has no set_grad_checkpointing")
        host.set_grad_checkpointing(True)
    return host, tokenizer


def build_wrapper(cfg: TrainConfig, device: Union[str, torch.device] = "cpu", *,
                  prompts: Optional[PathLike] = None):
    """The host, on ``device``, wrapped with prompts.

    Args:
        cfg: The run's config.
        device: Where the model goes.
        prompts: A prompt file to evaluate: its own config and hard prompt are used and its tensors
            loaded (the config's ``prompts`` section is then ignored). ``None``: fresh prompts as
            configured, initialised from ``run.seed``.

    Raises:
        ConfigError: Bad prompt settings, or a prompt file that is missing or does not fit the model.
    """
    import promptcouple as pc

    if prompts is not None and not os.path.isfile(prompts):
        raise ConfigError(f"--prompts: {str(prompts)!r} does not exist")
    host, tokenizer = build_host(cfg)
    host = host.to(device)
    torch.manual_seed(cfg.run.seed)  # same prompt initialisation on every rank
    try:
        if prompts is not None:
            return pc.CouplingPromptWrapper.from_pretrained(host, prompts, tokenizer=tokenizer)
        return pc.CouplingPromptWrapper(host, cfg.coupling_config(), hard_prompts=cfg.prompts.hard_prompts,
                                        tokenizer=tokenizer)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(f"{'--prompts' if prompts is not None else 'prompts'}: {err}") from err


# ------------------------------------------------------------------------------------ the step

class TrainStep(nn.Module):
    """One micro-step's loss (cross-entropy, anchor term, text-consistency term), in a single forward.

    DDP wraps this module rather than the bare wrapper because the anchor term runs the prompted
    towers a second time (on anchor clips): inside one DDP forward every use of the prompts belongs
    to the same reduction, with no ``find_unused_parameters`` and no extra synchronisation.
    """

    def __init__(self, wrapper: nn.Module, regularizer: Optional[nn.Module] = None,
                 text_regularizer: Optional[nn.Module] = None):
        super().__init__()
        self.wrapper = wrapper
        object.__setattr__(self, "regularizer", regularizer)  # no parameters; keep it out of DDP
        object.__setattr__(self, "text_regularizer", text_regularizer)

    def forward(self, frames: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                anchor_clips: Optional[torch.Tensor] = None,
                anchor_labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w, reg = self.wrapper, self.regularizer
        # The wrapper's forward, unrolled so the class features can be shared with the anchor term.
        text = w.encode_text(classnames)
        video, context = w.encode_video(frames, return_tokens=True)
        logits = w.logits(video, text, context)
        parts = {}
        if reg is not None and anchor_clips is not None and reg.mode == "reference":
            logits = reg.adjust_logits(logits, anchor_clips)
        loss = F.cross_entropy(logits.float(), labels)
        parts["ce"] = loss.detach()
        if reg is not None and anchor_clips is not None and reg.mode != "reference":
            anchor = reg(anchor_clips, labels=anchor_labels, class_features=text)
            parts["anchor"] = anchor.detach()
            loss = loss + anchor
        if self.text_regularizer is not None:
            consistency = self.text_regularizer(text)
            parts["text"] = consistency.detach()
            loss = loss + consistency
        return loss, parts


def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warm-up to 1 over ``warmup_steps``, then cosine to 0 at ``total_steps`` (per step)."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _JsonlLog:
    """Append-only JSON-lines log written by rank 0."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **record: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after_epoch(self, epochs_done: int) -> None:
        """Drop lines of epochs a resumed run repeats (they were lost with the interrupted epoch)."""
        if not (self.enabled and self.path.exists()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= epochs_done:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut by the kill
                pass
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        os.replace(tmp, self.path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


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


# ---------------------------------------------------------------------------------- the trainer

class Trainer:
    """A training run; ``Trainer(config).fit()`` is :func:`train`.

    Everything that can be wrong with the config or the data raises :class:`ConfigError` here, in
    the constructor, before the model is built or any step runs.

    Args:
        config: A :class:`TrainConfig` or a YAML path.
        resume: Continue from ``run.output_dir/checkpoint.pt`` (start afresh, with a message, when
            there is none yet: the same command line can be resubmitted after preemption).

    Attributes:
        cfg: The config. ``wrapper``: the prompted model. ``datasets``: the built datasets.
        ctx: The distributed context. ``output_dir``: where the run writes.
    """

    def __init__(self, config: Union[TrainConfig, PathLike], *, resume: bool = False):
        cfg = config if isinstance(config, TrainConfig) else load_config(config)
        self.cfg = cfg
        if cfg.run.precision == "fp16" and not (cfg.run.device != "cpu" and torch.cuda.is_available()):
            raise ConfigError("run.precision: fp16 needs a CUDA device (its GradScaler does not run on CPU); "
                              "use bf16 or fp32 on CPU")
        check_files(cfg)
        self.datasets: Datasets = build_datasets(cfg, train=True)
        self.ctx = setup_distributed(cfg.run.device)
        try:
            self._setup(resume)
        except BaseException:
            teardown_distributed(self.ctx)
            raise

    # -------------------------------------------------------------------------------- set-up

    def _setup(self, resume: bool) -> None:
        cfg, ctx, ds = self.cfg, self.ctx, self.datasets
        o = cfg.optim
        per_step = o.batch_size * ctx.world_size
        micro_per_epoch = len(ds.train) // per_step
        if micro_per_epoch < 1:
            raise ConfigError(f"data.train_list: {len(ds.train)} training clips make no full batch of "
                              f"optim.batch_size={o.batch_size} x {ctx.world_size} process(es)")
        if ds.anchor is not None and math.ceil(len(ds.anchor) / ctx.world_size) < cfg.anchors.batch_size:
            raise ConfigError(f"anchors: {len(ds.anchor)} anchor clips make no batch of "
                              f"anchors.batch_size={cfg.anchors.batch_size} per process")
        self.output_dir = Path(cfg.run.output_dir)
        ckpt_path = self.output_dir / CHECKPOINT
        if ckpt_path.exists() and not resume:
            raise ConfigError(f"run.output_dir: {str(self.output_dir)!r} already holds a checkpoint; pass "
                              "--resume to continue that run, or choose another output directory")
        if ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)

        self.wrapper = build_wrapper(cfg, ctx.device)
        self.regularizer = None
        if ds.anchor is not None:
            import promptcouple as pc

            a = cfg.anchors
            self.regularizer = pc.AnchorRegularizer(self.wrapper, ds.anchor_labels, mode=a.mode, weight=a.weight,
                                                    classnames=ds.classnames, template=a.template,
                                                    allow_overlap=a.allow_overlap)
        text_regularizer = None
        if cfg.loss.text_consistency > 0:
            import promptcouple as pc

            text_regularizer = pc.TextConsistencyRegularizer(self.wrapper, ds.classnames,
                                                             weight=cfg.loss.text_consistency,
                                                             template=cfg.loss.text_consistency_template)
        self.step_module = TrainStep(self.wrapper, self.regularizer, text_regularizer)
        if ctx.distributed:
            # Only the prompts are synchronised: frozen host weights and buffers are identical on
            # every rank by construction, so DDP neither broadcasts nor reduces them.
            ignore = [n for n, p in self.step_module.named_parameters() if not p.requires_grad]
            ignore += [n for n, _ in self.step_module.named_buffers()]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.step_module, ignore)
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.step_module, device_ids=ids)
        else:
            self.model = self.step_module

        self.params = self.wrapper.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.micro_per_epoch = micro_per_epoch
        self.steps_per_epoch = math.ceil(micro_per_epoch / o.grad_accum)
        self.total_steps = self.steps_per_epoch * o.epochs
        warmup = round(o.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(warmup, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if cfg.run.precision == "fp16" else None

        seed = cfg.run.seed
        self.sampler = DistributedSampler(ds.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.data_generator = torch.Generator()
        pin = ctx.device.type == "cuda"
        self.loader = DataLoader(ds.train, batch_size=o.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=cfg.data.num_workers, pin_memory=pin, generator=self.data_generator,
                                 worker_init_fn=_seed_worker)
        self.anchor_loader = None
        if ds.anchor is not None:
            self.anchor_sampler = DistributedSampler(ds.anchor, num_replicas=ctx.world_size, rank=ctx.rank,
                                                     shuffle=True, seed=seed + 1)
            self.anchor_generator = torch.Generator()
            self.anchor_loader = DataLoader(ds.anchor, batch_size=cfg.anchors.batch_size,
                                            sampler=self.anchor_sampler, drop_last=True,
                                            num_workers=cfg.data.num_workers, pin_memory=pin,
                                            generator=self.anchor_generator, worker_init_fn=_seed_worker)

        self.log = _JsonlLog(self.output_dir / LOG, ctx.is_main)
        self.start_epoch, self.global_step = 0, 0
        if resume:
            self._resume(ckpt_path)

    def _resume(self, path: Path) -> None:
        if not path.exists():
            self._print(f"--resume: no checkpoint at {path} yet; starting from epoch 1")
            return
        ckpt = load_checkpoint(path, map_location="cpu")
        diffs = _resume_differences(ckpt["config"], self.cfg.to_dict())
        if diffs:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in what it trains: "
                              f"{'; '.join(diffs)}; restore those values or start a new run.output_dir")
        if ckpt["world_size"] != self.ctx.world_size:
            warnings.warn(f"resuming a run of {ckpt['world_size']} process(es) with {self.ctx.world_size}: "
                          "the global batch and data order change, so the result will not match an "
                          "uninterrupted run")
        self.wrapper.prompts.load_state_dict(ckpt["prompts"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"][self.ctx.rank] if self.ctx.rank < len(ckpt["rng"]) else ckpt["rng"][0]
        set_rng_state(rng, self.data_generator)
        self.start_epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.log.truncate_after_epoch(self.start_epoch)
        self._print(f"resumed from {path}: {self.start_epoch} epoch(s), {self.global_step} step(s) done")

    def _print(self, msg: str) -> None:
        if self.ctx.is_main:
            print(msg, flush=True)

    # ------------------------------------------------------------------------------ training

    def _anchor_batches(self, epoch: int) -> Iterator:
        """Anchor batches for one epoch, cycling; pass r of epoch e is shuffled with ``(e << 16) + r``,
        so the anchor order, too, is a function of the epoch alone."""
        from promptcouple.data import cycle

        self.anchor_generator.manual_seed(epoch_seed(self.cfg.run.seed, epoch, self.ctx.rank, stream=2))
        return cycle(self.anchor_loader, start_epoch=epoch << 16)

    def _train_epoch(self, epoch: int, bar: tqdm) -> dict:
        cfg, ctx = self.cfg, self.ctx
        seed = cfg.run.seed
        # Everything random in this epoch (dropout, augmentation, worker seeds, order) restarts from
        # (seed, epoch, rank): a resumed run replays the epoch exactly.
        _seed_everything(epoch_seed(seed, epoch, ctx.rank))
        self.data_generator.manual_seed(epoch_seed(seed, epoch, ctx.rank, stream=1))
        self.sampler.set_epoch(epoch)
        self.model.train()
        self.wrapper.model.eval()  # the frozen backbone runs as at inference (no dropout of its own)
        anchors = self._anchor_batches(epoch) if self.anchor_loader is not None else None
        classnames = self.datasets.classnames
        accum, n = cfg.optim.grad_accum, self.micro_per_epoch
        sums = {"loss": 0.0, "ce": 0.0, "anchor": 0.0}
        window = {"loss": 0.0, "ce": 0.0, "anchor": 0.0, "micro": 0}
        t_step = t0 = time.perf_counter()
        data_time = 0.0
        t_data = time.perf_counter()
        for i, (frames, labels) in enumerate(self.loader):
            frames = frames.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device, non_blocking=True)
            a_clips = a_labels = None
            if anchors is not None:
                a_clips, a_labels = next(anchors)
                a_clips, a_labels = a_clips.to(ctx.device), a_labels.to(ctx.device)
            data_time += time.perf_counter() - t_data
            first = (i // accum) * accum
            group = min(accum, n - first)
            sync = i - first == group - 1
            no_sync = self.model.no_sync() if (ctx.distributed and not sync) else contextlib.nullcontext()
            with no_sync:
                with _autocast(cfg.run.precision, ctx.device):
                    loss, parts = self.model(frames, labels, classnames, a_clips, a_labels)
                scaled = loss / group
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at epoch {epoch + 1}, micro-step {i + 1}; lower "
                                         "optim.lr, or use bf16/fp32 instead of fp16")
            for key, v in (("loss", value), ("ce", parts["ce"].item()), ("anchor", float(parts.get("anchor", 0.0)))):
                sums[key] += v
                window[key] += v
            window["micro"] += 1
            if sync:
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                self._optimizer_step()
                self.global_step += 1
                if self.global_step % cfg.run.log_every == 0:
                    m = window["micro"]
                    loss_avg, ce_avg, anchor_avg = _all_mean([window["loss"] / m, window["ce"] / m,
                                                              window["anchor"] / m], ctx)
                    now = time.perf_counter()
                    self.log.write(kind="step", epoch=epoch + 1, step=self.global_step, loss=loss_avg, ce=ce_avg,
                                   anchor=anchor_avg, lr=lr,
                                   step_time=(now - t_step) / cfg.run.log_every, data_time=data_time,
                                   time=time.time())
                    window = {"loss": 0.0, "ce": 0.0, "anchor": 0.0, "micro": 0}
                    t_step, data_time = now, 0.0
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            t_data = time.perf_counter()
        loss_avg, ce_avg, anchor_avg = _all_mean([sums[k] / n for k in ("loss", "ce", "anchor")], ctx)
        return {"loss": loss_avg, "ce": ce_avg, "anchor": anchor_avg, "epoch_time": time.perf_counter() - t0}

    def _optimizer_step(self) -> None:
        clip = self.cfg.optim.grad_clip
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

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
                "rng": states, "world_size": self.ctx.world_size, "config": self.cfg.to_dict(),
            }, self.output_dir / CHECKPOINT)
        if self.ctx.distributed:
            dist.barrier()  # once per epoch: no rank runs ahead of the checkpoint it may resume from

    def evaluate_all(self) -> dict:
        """Evaluate on every configured evaluation set (all ranks take part)."""
        return evaluate_sets(self.wrapper, self.datasets, self.cfg, ctx=self.ctx)

    def fit(self) -> dict:
        """Train to ``optim.epochs`` (or ``run.stop_after_epochs`` more), then evaluate and save.

        Returns:
            The results (also written to ``results.json`` by rank 0): per-epoch losses, the final
            evaluation and bookkeeping (steps, time, world size, trainable parameters).
        """
        cfg, ctx = self.cfg, self.ctx
        try:
            t0 = time.perf_counter()
            epochs = cfg.optim.epochs
            stop_at = epochs if cfg.run.stop_after_epochs is None else \
                min(epochs, self.start_epoch + cfg.run.stop_after_epochs)
            if self.start_epoch == 0:
                self.log.write(kind="start", epoch=0, world_size=ctx.world_size, steps_per_epoch=self.steps_per_epoch,
                               trainable_parameters=self.wrapper.num_trainable_parameters(),
                               global_batch=cfg.optim.batch_size * ctx.world_size * cfg.optim.grad_accum,
                               time=time.time())
            history = []
            for epoch in range(self.start_epoch, stop_at):
                with tqdm(total=self.micro_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                          disable=not (ctx.is_main and cfg.run.progress)) as bar:
                    stats = self._train_epoch(epoch, bar)
                record = {"kind": "epoch", "epoch": epoch + 1, "step": self.global_step, **stats,
                          "lr": self.optimizer.param_groups[0]["lr"], "time": time.time()}
                every = cfg.eval.every_epochs
                if every and (epoch + 1) % every == 0 and epoch + 1 < epochs and self.datasets.evals:
                    record["eval"] = self.evaluate_all()
                self.log.write(**record)
                history.append(record)
                self._save_checkpoint(epoch + 1)
                self._print(f"epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f} "
                            f"({stats['epoch_time']:.1f}s)")
            results = {"epochs_completed": stop_at, "epochs": epochs, "global_step": self.global_step,
                       "world_size": ctx.world_size,
                       "trainable_parameters": self.wrapper.num_trainable_parameters(),
                       "history": history, "time_s": time.perf_counter() - t0}
            if stop_at < epochs:
                results["status"] = "stopped"
                self._print(f"stopped after epoch {stop_at} (run.stop_after_epochs); continue with --resume")
                return results
            results["status"] = "finished"
            results["eval"] = self.evaluate_all() if self.datasets.evals else {}
            if ctx.is_main:
                self.wrapper.save_prompts(self.output_dir / PROMPTS)
                results["prompts"] = str(self.output_dir / PROMPTS)
                self.log.write(kind="eval", epoch=epochs, step=self.global_step, **results["eval"],
                               time=time.time())
                _write_json(self.output_dir / RESULTS, results)
                self._print(_format_eval(results["eval"]))
            return results
        finally:
            teardown_distributed(ctx)


def train(config: Union[TrainConfig, PathLike], *, resume: bool = False) -> dict:
    """Train prompts as the config says; see :class:`Trainer` and :meth:`Trainer.fit`."""
    return Trainer(config, resume=resume).fit()


# ----------------------------------------------------------------------------------- evaluation

def hm(base: float, novel: float) -> float:
    """Harmonic mean of base and novel accuracy: 2BN/(B+N) (0 when both are 0)."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def _format_eval(ev: dict) -> str:
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
    if device is None:
        device = next(wrapper.parameters()).device
    device = torch.device(device)
    if ctx is None:
        in_group = dist.is_available() and dist.is_initialized()
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), device=device) if in_group else \
            DistContext(device=device)
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
                with _autocast(precision, device):
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
                Path(output).parent.mkdir(parents=True, exist_ok=True)
                _write_json(Path(output), {"prompts": str(prompts), "eval": results})
            print(_format_eval(results), flush=True)
        return results
    finally:
        teardown_distributed(ctx)
