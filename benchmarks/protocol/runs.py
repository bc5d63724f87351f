"""Running the benchmark's runs: one job per Trainer run or zero-shot evaluation, in a worker pool.

Every trained number comes from :class:`promptcouple.train.Trainer`; the zero-shot row is
:class:`promptcouple.world.model.ZeroShotClassifier`, scored by the same evaluation as the
trained prompts. Both are scored by :func:`promptcouple.train.evaluate_sets`, the one scorer of
training, ``promptcouple eval`` and the benchmarks, which keeps each test clip's top-1 correctness
(``"0110..."`` per evaluation set, in the set's order) so that intervals over clips can be
recomputed from the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from promptcouple.constants import ZERO_SHOT_TEMPLATE
from promptcouple.train import TrainConfig, Trainer, build_wrapper, evaluate_sets, setup_distributed
from promptcouple.train.data import build_datasets
from promptcouple.world.model import ZeroShotClassifier

from .methods import METHODS, run_config
from .setting import Setting, model_section
from .sources import DataSource, input_identity


@dataclass
class Job:
    """One run: a training config (or a zero-shot evaluation) and where its record goes.

    Attributes:
        key: ``(method, dataset, split, shots)``, the record's identity.
        config: ``run_config`` output.
        trained: Train with the Trainer (else: evaluate the frozen model with ``template``).
        template: Template of the zero-shot evaluation.
        extra_evals: ``{name: run_config output}`` evaluated with the trained prompts afterwards
            (cross-dataset zero-shot transfer).
        threads: Torch threads of the run.
    """

    key: tuple
    config: dict
    trained: bool = True
    template: str = ZERO_SHOT_TEMPLATE
    extra_evals: dict = field(default_factory=dict)
    threads: int = 1


def _metrics(ev: dict, correct: bool = False) -> dict:
    """Top-1 numbers of one evaluation: base/novel/hm, or top1 of a single set; with ``correct``
    also the per-clip correctness strings (``{"correct": {set: "0110..."}}``)."""
    if "hm" in ev:
        out = {"base": ev["base"]["top1"], "novel": ev["novel"]["top1"], "hm": ev["hm"]}
    else:
        sets = [v for v in ev.values() if isinstance(v, dict)]
        out = {"top1": sets[0]["top1"]} if sets else {}  # no evaluation set (a hard-prompt source list)
    if correct:
        clips = {name: v["correct"] for name, v in ev.items() if isinstance(v, dict) and "correct" in v}
        if clips:
            out["correct"] = clips
    return out


def _config(spec: dict) -> TrainConfig:
    return TrainConfig.from_dict(spec["config"], base_dir=spec["base_dir"])


def _evaluate(cfg: TrainConfig, template: str, prompts: Optional[str] = None) -> dict:
    """The config's evaluation sets scored with a prompt file, or (``None``) with the frozen model
    and the hand-crafted template."""
    ctx = setup_distributed(cfg.run.device)
    datasets = build_datasets(cfg, train=False)
    if prompts is not None:
        model = build_wrapper(cfg, ctx.device, prompts=prompts)
        if datasets.descriptions is not None:  # this dataset's own descriptions, not the training set's
            model.descriptions = datasets.descriptions
    else:
        model = ZeroShotClassifier.from_wrapper(build_wrapper(cfg, ctx.device), template, datasets.descriptions)
    return evaluate_sets(model, datasets, cfg)


@contextlib.contextmanager
def quiet_library() -> Iterator[None]:
    """Keep the Trainer's and the evaluation's report lines (``promptcouple.train`` log records
    below warnings) out of the progress bar: everything they say is in the record. The reference
    anchor mode's warning that it is inert is expected: measuring that is what its row is for."""
    logger = logging.getLogger("promptcouple.train")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"AnchorRegularizer\(mode='reference'\)")
            yield
    finally:
        logger.setLevel(previous)


def run_job(job: Job) -> dict:
    """Run one job; the record holds the final metrics, the curve, the seconds and the prompt file."""
    torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    cfg = _config(job.config)
    with quiet_library():
        prompts = None
        if job.trained:
            shutil.rmtree(cfg.run.output_dir, ignore_errors=True)  # our own run of a previous invocation
            results = Trainer(cfg, reports=False).fit()  # the benchmarks write no reports
            prompts = results["prompts"]
            final = _metrics(results["eval"])
            curve = [{"epoch": h["epoch"], **_metrics(h["eval"])} for h in results["history"] if "eval" in h]
            record = {**final, "curve": curve + [{"epoch": results["epochs"], **final}],
                      "train_seconds": results["time_s"], "prompts": prompts,
                      **{k: v for k, v in _metrics(results["eval"], correct=True).items() if k == "correct"}}
        else:
            record = _metrics(_evaluate(cfg, job.template), correct=True)
        for name, spec in job.extra_evals.items():
            record.setdefault("transfer", {})[name] = _metrics(_evaluate(_config(spec), job.template, prompts))
    record["seconds"] = time.perf_counter() - t0
    method, dataset, split, shots = job.key
    return {"method": method, "dataset": dataset, "split": split, "shots": shots, **record}


def default_workers() -> int:
    """Two single-threaded runs side by side use two cores better than one two-threaded run:
    the steps of the small models are too short for intra-op threads to pay off. On a GPU, one."""
    return 2 if (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available() else 1


def default_threads(model: str) -> int:
    """Torch threads per run: 1 for the world's small models (see :func:`default_workers`),
    torch's default for real backbones."""
    return 1 if model in ("world", "tiny") else torch.get_num_threads()


def run_jobs(jobs: Sequence[Job], workers: int, desc: str) -> list[dict]:
    """Run jobs (in ``workers`` forked processes when > 1) with a progress bar; records in job order."""
    records: list[Optional[dict]] = [None] * len(jobs)
    with tqdm(total=len(jobs), desc=desc, unit="run") as bar:
        if workers <= 1:
            for i, job in enumerate(jobs):
                bar.set_postfix_str("/".join(str(k) for k in job.key[:3]))
                records[i] = run_job(job)
                bar.update(1)
        else:
            # fork: the workers inherit the clips the parent rendered (DataSource.prepare)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    records[i] = fut.result()
                    bar.set_postfix_str("/".join(str(k) for k in jobs[i].key[:3]))
                    bar.update(1)
    return records  # type: ignore[return-value]


def hard_prompt_file(args: argparse.Namespace, source: DataSource, setting: Setting, out: Path,
                     notes: Optional[dict] = None, protocol: str = "base_to_novel") -> Optional[str]:
    """The hard prompt: ``--hard-prompts``, the data file's, or IVLP prompts trained on the
    hard-prompt source, cached in ``OUT/cache`` per source, prompt layout and inputs.

    Returns:
        The prompt file path, or ``None`` when there is no source.
    """
    if args.hard_prompts is not None:
        return str(Path(args.hard_prompts).resolve())
    if source.hard_prompts is not None:
        return source.hard_prompts
    data = source.hard_prompt_data(protocol)
    if data is None:
        return None
    hard_setting = dataclasses.replace(setting, epochs=setting.hard_epochs,
                                       warmup_epochs=min(setting.warmup_epochs, setting.hard_epochs))
    spec = run_config(METHODS["ivlp"], hard_setting, model_section(args), data, Path("."), seed=setting.seed,
                      base_dir=source.base_dir, eval_every=0)
    digest = _digest({"config": spec["config"], "inputs": input_identity(args, source)})
    run_dir = out / "cache" / f"hard_prompts_{source.cache_tag}_{digest}"
    prompts = run_dir / "prompts.safetensors"
    trained = None
    if not prompts.exists():
        spec["config"]["run"]["output_dir"] = str(run_dir)
        trained = run_job(Job(("hard-prompt", "source", 1, setting.shots), spec, threads=max(1, args.threads)))
    if notes is not None:
        # What the hard prompt knows: its own top-1 on the source's test clips (from the run's
        # results file when cached), so a reader can tell how much the coupling couples to.
        results = run_dir / "results.json"
        ev = json.loads(results.read_text()).get("eval", {}) if results.exists() else {}
        scored = ev.get("base") or next((v for v in ev.values() if isinstance(v, dict)), {})
        notes.update(hard_prompt={"source": data.get("world", {}).get("dataset", "data file"),
                                  "source_top1": scored.get("top1"), "source_classes": scored.get("num_classes"),
                                  **({"seconds": trained["seconds"]} if trained else {"cached": str(prompts)})})
    return str(prompts)


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]
