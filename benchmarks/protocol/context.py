"""A benchmark script from start to finish: :func:`start`, then :class:`Context` builds the jobs,
runs them and writes the results."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .methods import Method, resolve_methods, run_config
from .reports import machine_state, write_json
from .runs import Job, default_threads, default_workers, hard_prompt_file, run_jobs
from .setting import SPLITS, Setting, make_setting, model_section, quick_differences
from .sources import DataSource, input_identity, make_source

log = logging.getLogger("promptcouple.benchmarks")


@dataclass
class Context:
    """What a benchmark script works with after :func:`start`."""

    args: argparse.Namespace
    setting: Setting
    source: DataSource
    methods: list[Method]
    datasets: list[str]
    splits: list[int]
    out: Path
    hard_prompts: Optional[str]
    timing: dict
    notes: dict
    t0: float

    def jobs(self, protocol: str, shots: Sequence[int], *, eval_every: int = 0,
             extra_evals: Optional[Callable[[Method, int, int], dict]] = None) -> list[Job]:
        """One job per method x dataset x split x K (zero-shot: one per dataset and K, no split).

        Larger datasets come first, so parallel workers finish together.
        """
        s, jobs = self.setting, []
        model = model_section(self.args)
        for dataset in sorted(self.datasets, key=self.source.cost, reverse=True):
            for k in shots:
                for m in self.methods:
                    for split in (self.splits if m.trained else [None]):
                        leaf = f"s{split}" if split else "frozen"
                        run_dir = self.out / protocol / m.name / dataset / f"k{k}" / leaf
                        data = self.source.data(dataset, protocol, split or self.splits[0], k)
                        anchors = self.source.anchors(m.anchors, self.out) if m.anchors else None
                        spec = run_config(m, s, model, data, run_dir, seed=s.seed + (split or 0),
                                          hard_prompts=self.hard_prompts, anchors=anchors,
                                          base_dir=self.source.base_dir, eval_every=eval_every)
                        extra = extra_evals(m, split or self.splits[0], k) if extra_evals else {}
                        jobs.append(Job((m.name, dataset, split, k), spec, trained=m.trained, template=s.template,
                                        extra_evals=extra, threads=self.args.threads))
        return jobs

    def run(self, jobs: Sequence[Job], desc: str) -> list[dict]:
        t = time.perf_counter()
        workers = self.args.workers or default_workers()
        records = run_jobs(jobs, min(workers, len(jobs)) if jobs else 1, desc)
        self.timing["runs_s"] = self.timing.get("runs_s", 0.0) + time.perf_counter() - t
        self.notes["workers"] = workers
        return records

    def finish(self, name: str, results: dict, markdown: str) -> dict:
        """Add the bookkeeping, write the JSON, log the markdown; returns the whole document."""
        self.timing["total_s"] = time.perf_counter() - self.t0
        # CPU seconds of this process and its finished workers: with other jobs on the machine,
        # wall time alone says little; cpu_s / cores is the wall time on otherwise idle cores.
        self.timing["cpu_s"] = sum(getattr(resource.getrusage(who), f) for who in
                                   (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
        doc = {
            "benchmark": name, "setting": "quick" if self.args.quick else "full",
            "model": model_section(self.args), **self.source.describe(),
            "inputs": input_identity(self.args, self.source),
            "splits": self.splits, "methods": [m.name for m in self.methods], "datasets": self.datasets,
            "hyperparameters": dataclasses.asdict(self.setting), "hard_prompts": self.hard_prompts,
            **results, "markdown": markdown, "timing": self.timing,
            "machine": {**self.notes.pop("machine_start"), "loadavg_end": list(os.getloadavg()),
                        "threads_per_run": self.args.threads, **self.notes},
        }
        default = self.out / f"{name}{'_quick' if self.args.quick else ''}.json"
        path = Path(self.args.json) if self.args.json else default
        write_json(path, doc)
        log.info("%s", markdown)
        if self.args.quick:
            log.info("\n%s", quick_differences(self.args))
        log.info("\n%s: %.0f s wall, %.0f CPU-s (load average %.1f at the start); results in %s", name,
                 self.timing["total_s"], self.timing["cpu_s"], doc["machine"]["loadavg"][0], path)
        return doc


def start(args: argparse.Namespace, protocol: str, default_methods: Sequence[str], *,
          shots: Sequence[int], extra_datasets: Sequence[str] = ()) -> Context:
    """Parse-time work shared by the scripts: setting, data source, method and dataset lists,
    preparing the data (the world's rendering, timed), and the hard prompt (trained once and
    cached when needed)."""
    t0 = time.perf_counter()
    notes = {"machine_start": machine_state()}
    if args.threads is None:
        args.threads = default_threads(args.model)
    setting = make_setting(args)
    source = make_source(args, setting)
    methods = resolve_methods(args.methods, default_methods, descriptions=getattr(args, "descriptions", False))
    known = source.datasets(protocol)
    datasets = list(args.datasets or known)
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown} for {protocol}; choose from {known}")
    n_splits = args.splits or SPLITS["quick" if args.quick else "full"]
    splits = [args.split_seed + i for i in range(n_splits)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timing: dict = {}
    hard = any(m.hard for m in methods)
    prepared = source.prepare(datasets, protocol, splits, shots, hard=hard, eval_only=extra_datasets)
    if prepared is not None:
        timing["render_s"] = prepared
    hard_prompts = None
    if hard:
        t = time.perf_counter()
        hard_prompts = hard_prompt_file(args, source, setting, out, notes, protocol)
        timing["hard_prompt_s"] = time.perf_counter() - t
    return Context(args, setting, source, methods, datasets, splits, out, hard_prompts, timing, notes, t0)


def run_script(main: Callable[[], Any]) -> None:
    """Run a benchmark script's ``main`` with its report (the ``promptcouple.benchmarks`` log) on stdout."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
