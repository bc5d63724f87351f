"""Prompt training: one process or ``torchrun`` + DistributedDataParallel, resumable bit for bit.

``train(config)`` runs the protocol of docs/METHOD.md: AdamW on the prompt parameters only, a linear
warm-up then a cosine decay stepped per optimizer step, cross-entropy over the training classes plus
the anchor term and, optionally, the KgCoOp-style text-consistency term (``loss.text_consistency``),
optional mixed precision, gradient accumulation and gradient checkpointing. Every epoch ends with
an atomic checkpoint; ``resume=True`` continues a stopped run and reaches the same prompts as an
uninterrupted run (bit-identical on CPU), because the data order and every random draw of an epoch
are functions of (seed, epoch, rank) alone, never of what ran before.

Outputs in ``run.output_dir``: ``config.yaml`` (the resolved config, overrides included, which
``promptcouple eval RUN_DIR`` and ``predict`` read), ``checkpoint.pt`` (last epoch), ``log.jsonl``
(one line per logged step, epoch and evaluation), ``results.json``, ``prompts.safetensors`` (final
prompts, with the class names and backbone they were trained on) and ``eval/`` (per set: per-clip
predictions, per-class accuracy, confusion matrix).

Checkpointing and resuming are :class:`promptcouple.train.resume.ResumableRun`'s; the evaluations
are :func:`promptcouple.train.evaluation.evaluate_sets` (also the benchmarks' scorer).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from promptcouple.anchors import AnchorRegularizer
from promptcouple.errors import PromptcoupleError, TrainingDivergedError
from promptcouple.fileio import PathLike, atomic_write_text
from promptcouple.io import save_prompts
from promptcouple.guards import GaussianPromptAverage, SelfRegularizer
from promptcouple.text_consistency import TextConsistencyRegularizer
from promptcouple.train.config import (CHECKPOINT, LOG, PROMPTS, RESULTS, ConfigError, TrainConfig, check_files,
                                       load_config)
from promptcouple.train.data import Datasets, build_datasets
from promptcouple.train.distributed import all_mean, setup_distributed, teardown_distributed
from promptcouple.train.evaluation import evaluate_sets, format_eval, report_files
from promptcouple.train.hosts import build_wrapper
from promptcouple.train.lock import RunLock
from promptcouple.train.resume import JsonlLog, ResumableRun
from promptcouple.train.run_info import RUN_CONFIG, run_info, write_run_config
from promptcouple.train.seeding import epoch_seed, seed_everything, seed_worker
from promptcouple.train.step import TrainStep, autocast

logger = logging.getLogger(__name__)

EVAL_DIR = "eval"  # the final evaluation's per-set reports, inside run.output_dir

def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warm-up to 1 over ``warmup_steps``, then cosine to 0 at ``total_steps`` (per step)."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


# ---------------------------------------------------------------------------------- the trainer

class Trainer(ResumableRun):
    """A training run; ``Trainer(config).fit()`` is :func:`train`.

    Everything that can be wrong with the config or the data raises :class:`ConfigError` here, in
    the constructor, before the model is built or any step runs.

    Args:
        config: A :class:`TrainConfig` or a YAML path.
        resume: Continue from ``run.output_dir/checkpoint.pt`` (start afresh, with a message, when
            there is none yet: the same command line can be resubmitted after preemption; a run
            that has finished is left as it is, and :meth:`fit` returns its results).
        reports: After the final evaluation, write each set's per-clip predictions, per-class
            accuracy and confusion matrix into ``run.output_dir/eval/`` (about 0.5 s a set, mostly
            the plot; benchmarks of hundreds of short runs may turn it off).

    While it runs, the run holds ``run.output_dir``'s lock (:mod:`promptcouple.train.lock`): a
    second run into the same folder raises :class:`~promptcouple.errors.RunLockedError`.

    Attributes:
        cfg: The config. ``wrapper``: the prompted model. ``datasets``: the built datasets.
        ctx: The distributed context. ``output_dir``: where the run writes.
    """

    def __init__(self, config: Union[TrainConfig, PathLike], *, resume: bool = False, reports: bool = True):
        cfg = config if isinstance(config, TrainConfig) else load_config(config)
        self.cfg = cfg
        self.reports = reports
        if cfg.run.precision == "fp16" and not (cfg.run.device != "cpu" and torch.cuda.is_available()):
            raise ConfigError("run.precision: fp16 needs a CUDA device (its GradScaler does not run on CPU); "
                              "use bf16 or fp32 on CPU")
        check_files(cfg)
        self.datasets: Datasets = build_datasets(cfg, train=True)
        self.ctx = setup_distributed(cfg.run.device)
        try:
            self._setup(resume)
        except BaseException:
            self._release()
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
        if ds.anchor is not None:
            try:  # builds nothing yet; checks that every process gets a full anchor batch
                self._anchor_batches(0)
            except ValueError as err:
                raise ConfigError(f"anchors: {err} (anchors.batch_size={cfg.anchors.batch_size})") from None
        self.output_dir = Path(cfg.run.output_dir)
        # The lock comes before anything is read or written there: a second run into the folder
        # is refused while the first one writes it.
        self.lock = RunLock(self.output_dir)
        self._take_lock()
        ckpt_path = self.output_dir / CHECKPOINT
        if ckpt_path.exists() and not resume:
            raise ConfigError(f"run.output_dir: {str(self.output_dir)!r} already holds a checkpoint; pass "
                              "--resume to continue that run, or choose another output directory")
        self.finished, ckpt = None, None
        if resume and ckpt_path.exists():
            ckpt = self._resume_checkpoint(ckpt_path)
            self.finished = self._finished_results(ckpt)
            if self.finished is not None:  # a resubmitted job: nothing to do, nothing to change
                return
        if ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(cfg, self.output_dir)  # so that eval and predict need no repeated --set

        self.wrapper = build_wrapper(cfg, ctx.device)
        # Training, every evaluation and the prompt file's record use the configured descriptions.
        self.wrapper.descriptions = ds.descriptions
        self.regularizer = None
        if ds.anchor is not None:
            a = cfg.anchors
            self.regularizer = AnchorRegularizer(self.wrapper, ds.anchor_labels, mode=a.mode, weight=a.weight,
                                                    classnames=ds.classnames, template=a.template,
                                                    allow_overlap=a.allow_overlap)
        text_regularizer = None
        if cfg.loss.text_consistency > 0:
            text_regularizer = TextConsistencyRegularizer(self.wrapper, ds.classnames,
                                                          weight=cfg.loss.text_consistency,
                                                          template=cfg.loss.text_consistency_template)
        self_regularizer = None
        if cfg.loss.self_regularization:
            lo = cfg.loss
            self_regularizer = SelfRegularizer(self.wrapper, ds.classnames, text_weight=lo.self_reg_text,
                                               vision_weight=lo.self_reg_vision, kl_weight=lo.self_reg_kl)
        self.prompt_average = None
        if o.prompt_average:
            default = GaussianPromptAverage.for_epochs(o.epochs)
            self.prompt_average = GaussianPromptAverage(
                default.mean if o.prompt_average_mean is None else o.prompt_average_mean,
                default.std if o.prompt_average_std is None else o.prompt_average_std)
        self.step_module = TrainStep(self.wrapper, self.regularizer, text_regularizer, self_regularizer)
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
                                 worker_init_fn=seed_worker)

        self.log = JsonlLog(self.output_dir / LOG, ctx.is_main)
        self.start_epoch, self.global_step = 0, 0
        self._history: list[dict] = []  # epoch records of the epochs a resumed run does not repeat
        self._log(self._summary(warmup))
        if ckpt is not None:
            self._resume(ckpt_path, ckpt)
        else:
            if resume:
                self._log(f"--resume: no checkpoint at {ckpt_path} yet; starting from epoch 1")
            self.log.truncate_after_epoch(0)  # the lines of a run killed before its first checkpoint

    def _summary(self, warmup_steps: int) -> str:
        """The start-up lines: data, model, schedule, device and where the run writes."""
        cfg, ctx, ds, o = self.cfg, self.ctx, self.datasets, self.cfg.optim
        evals = ", ".join(f"{n} {len(ev.dataset)} clips / {len(ev.classnames)} classes" for n, ev in ds.evals.items())
        anchors = f"; anchors {len(ds.anchor)} clips / {len(ds.anchor_labels)} labels ({cfg.anchors.mode})" \
            if ds.anchor is not None else ""
        n_train = self.wrapper.num_trainable_parameters()
        n_total = sum(p.numel() for p in self.wrapper.model.parameters())
        return "\n".join([
            f"train: {len(ds.train)} clips / {len(ds.classnames)} classes; eval: {evals or 'none'}{anchors}",
            f"model: {cfg.model.name}, {cfg.data.num_frames} frames of {cfg.data.image_size}px; "
            f"trainable parameters {n_train:,} (host {n_total:,}, frozen)",
            f"schedule: {o.epochs} epochs x {self.steps_per_epoch} steps, warm-up {warmup_steps} steps, "
            f"global batch {o.batch_size * ctx.world_size * o.grad_accum}, lr {o.lr:g}",
            f"device: {ctx.device} x {ctx.world_size} process(es), {cfg.run.precision}; output: {self.output_dir}",
        ])

    def _take_lock(self) -> None:
        """Rank 0 takes the run folder's lock; under torchrun every rank learns whether it did."""
        error = None
        if self.ctx.is_main:
            try:
                self.lock.acquire()
            except PromptcoupleError as err:
                error = err
        if self.ctx.distributed:
            shared = [error]
            dist.broadcast_object_list(shared, src=0)
            error = shared[0]
        if error is not None:
            raise error

    def _release(self) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()
        teardown_distributed(self.ctx)

    def _log(self, msg: str) -> None:
        if self.ctx.is_main:
            logger.info("%s", msg)

    # ------------------------------------------------------------------------------ training

    def _anchor_batches(self, epoch: int) -> Iterator:
        """Anchor batches for one epoch, cycling; pass r of epoch e is shuffled with ``(e << 16) + r``,
        so the anchor order, too, is a function of the epoch alone."""
        from promptcouple.data import anchor_loader  # imported here: the video decoders load only if used

        cfg, ctx = self.cfg, self.ctx
        generator = torch.Generator().manual_seed(epoch_seed(cfg.run.seed, epoch, ctx.rank, stream=2))
        return anchor_loader(self.datasets.anchor, cfg.anchors.batch_size, seed=cfg.run.seed + 1, rank=ctx.rank,
                             world_size=ctx.world_size, start_epoch=epoch << 16, num_workers=cfg.data.num_workers,
                             pin_memory=ctx.device.type == "cuda", generator=generator, worker_init_fn=seed_worker)

    def _train_epoch(self, epoch: int, bar: tqdm) -> dict:
        cfg, ctx = self.cfg, self.ctx
        seed = cfg.run.seed
        # Everything random in this epoch (dropout, augmentation, worker seeds, order) restarts from
        # (seed, epoch, rank): a resumed run replays the epoch exactly.
        seed_everything(epoch_seed(seed, epoch, ctx.rank))
        self.data_generator.manual_seed(epoch_seed(seed, epoch, ctx.rank, stream=1))
        self.sampler.set_epoch(epoch)
        self.model.train()
        self.wrapper.model.eval()  # the frozen backbone runs as at inference (no dropout of its own)
        anchors = self._anchor_batches(epoch) if self.datasets.anchor is not None else None
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
                with autocast(cfg.run.precision, ctx.device):
                    loss, parts = self.model(frames, labels, classnames, a_clips, a_labels)
                scaled = loss / group
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDivergedError(f"loss is {value} at epoch {epoch + 1}, micro-step {i + 1}; lower "
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
                    loss_avg, ce_avg, anchor_avg = all_mean([window["loss"] / m, window["ce"] / m,
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
        loss_avg, ce_avg, anchor_avg = all_mean([sums[k] / n for k in ("loss", "ce", "anchor")], ctx)
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

    def evaluate_all(self, report_dir: Optional[Path] = None) -> dict:
        """Evaluate on every configured evaluation set (all ranks take part); ``report_dir``: also
        write the per-clip reports there. The periodic and the final evaluation both come here."""
        return evaluate_sets(self.wrapper, self.datasets, self.cfg, ctx=self.ctx, report_dir=report_dir)

    def fit(self) -> dict:
        """Train to ``optim.epochs`` (or ``run.stop_after_epochs`` more), then evaluate and save.

        Returns:
            The results (also written to ``results.json`` by rank 0): per-epoch losses, the final
            evaluation and bookkeeping (steps, time, world size, trainable parameters).
        """
        cfg, ctx = self.cfg, self.ctx
        try:
            if self.finished is not None:
                self._log(f"--resume: the run in {self.output_dir} has finished ({cfg.optim.epochs} epochs; results in "
                          f"{self.output_dir / RESULTS}); nothing to do, nothing changed. To train again, choose "
                          "another run.output_dir")
                return self.finished
            t0 = time.perf_counter()
            epochs = cfg.optim.epochs
            stop_at = epochs if cfg.run.stop_after_epochs is None else \
                min(epochs, self.start_epoch + cfg.run.stop_after_epochs)
            if self.start_epoch == 0:
                self.log.write(kind="start", epoch=0, world_size=ctx.world_size, steps_per_epoch=self.steps_per_epoch,
                               trainable_parameters=self.wrapper.num_trainable_parameters(),
                               global_batch=cfg.optim.batch_size * ctx.world_size * cfg.optim.grad_accum,
                               time=time.time())
            history = list(self._history)
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
                if self.prompt_average is not None:
                    self.prompt_average.update(self._trained_prompt_state(), epoch + 1)
                self._save_checkpoint(epoch + 1)
                self._log(f"epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f} ({stats['epoch_time']:.1f}s)")
            results = {"epochs_completed": stop_at, "epochs": epochs, "global_step": self.global_step,
                       "world_size": ctx.world_size,
                       "trainable_parameters": self.wrapper.num_trainable_parameters(),
                       "history": history, "time_s": time.perf_counter() - t0}
            if stop_at < epochs:
                results["status"] = "stopped"
                self._log(f"stopped after epoch {stop_at} (run.stop_after_epochs); continue with --resume")
                return results
            results["status"] = "finished"
            if self.prompt_average is not None:  # the averaged prompts are the run's prompts
                self._load_prompt_average()
            report_dir = self.output_dir / EVAL_DIR if self.reports else None
            results["eval"] = self.evaluate_all(report_dir) if self.datasets.evals else {}
            if ctx.is_main:
                info = run_info(cfg, self.datasets.classnames,
                                {n: ev.classnames for n, ev in self.datasets.evals.items()})
                save_prompts(self.wrapper, self.output_dir / PROMPTS, run_info=info)
                results["prompts"] = str(self.output_dir / PROMPTS)
                self.log.write(kind="eval", epoch=epochs, step=self.global_step, **results["eval"],
                               time=time.time())
                atomic_write_text(self.output_dir / RESULTS, json.dumps(results, indent=2) + "\n")
                self._log(format_eval(results["eval"]))
                written = [PROMPTS, RESULTS, RUN_CONFIG, LOG, CHECKPOINT]
                if report_dir is not None and self.datasets.evals:
                    written.append(f"{EVAL_DIR}/ ({', '.join(report_files(self.datasets.evals))})")
                self._log(f"saved to {self.output_dir}: {', '.join(written)}")
            return results
        finally:
            self._release()


def train(config: Union[TrainConfig, PathLike], *, resume: bool = False, reports: bool = True) -> dict:
    """Train prompts as the config says; see :class:`Trainer` and :meth:`Trainer.fit`."""
    return Trainer(config, resume=resume, reports=reports).fit()
