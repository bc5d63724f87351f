"""Cross-dataset zero-shot transfer (docs/METHOD.md section 3): train on the large dataset, test on others.

Each method (``--methods``, see ``base2novel.py``) is trained with :class:`promptcouple.train.Trainer`
on K shots of every class of the source dataset (``--source``, the world's ``wk400`` by default,
the Kinetics-400 role), then its prompt file is evaluated, untouched, on every class of each target
dataset (``--datasets``, default: all others). The anchor set and the hard-prompt source are
disjoint from all of them. Mean top-1 over the training splits; the average is over the targets.

Examples::

    python benchmarks/zero_shot.py --quick                      # < 5 minutes on 2 cores
    nice -n 5 python benchmarks/zero_shot.py
    python benchmarks/zero_shot.py --model ViT-B-16-quickgelu --pretrained openai --data-config data.yaml \\
        --source k400 --datasets hmdb51 ucf101 --frames 32
"""

from __future__ import annotations

import statistics

from protocol.context import run_script, start
from protocol.methods import METHODS, Method, run_config
from protocol.reports import format_grid
from protocol.setting import make_parser, make_setting, model_section
from protocol.sources import make_source

DEFAULT_METHODS = ("zero-shot", "coop", "ivlp", "kgcoop", "ga2", "ga2-negative")


def transfer_values(records: list[dict], source: str) -> dict:
    """``{(method, dataset): mean top-1 over splits}`` for the source and every target."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["method"], source), []).append(r["top1"])
        for target, res in r.get("transfer", {}).items():
            groups.setdefault((r["method"], target), []).append(res["top1"])
    return {k: statistics.fmean(v) for k, v in groups.items()}


def main(argv=None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--source", default=None, help="dataset trained on (default wk400, or the data file's first)")
    args = parser.parse_args(argv)
    # Resolve the source and targets before start(), which renders (and checks) the datasets.
    setting = make_setting(args)
    known = make_source(args, setting).datasets("zero_shot")
    source = args.source or ("wk400" if "wk400" in known else known[0])
    if source not in known:
        raise SystemExit(f"--source {source!r}: choose from {known}")
    targets = [d for d in (args.datasets or known) if d != source]
    if not targets:
        raise SystemExit("no target datasets: --datasets must name at least one dataset besides the source")
    args.datasets = [source]
    ctx = start(args, "zero_shot", DEFAULT_METHODS, shots=[setting.shots], extra_datasets=targets)
    model, s = model_section(args), ctx.setting

    def evals(method: Method, split: int, shots: int) -> dict:
        # Evaluation-only configs of the targets: the trained prompt file brings its own layout.
        return {t: run_config(METHODS["ivlp"], s, model, ctx.source.data(t, "zero_shot", split, shots),
                              ctx.out / "zero_shot" / "eval", seed=s.seed, base_dir=ctx.source.base_dir)
                for t in targets}

    jobs = ctx.jobs("zero_shot", [s.shots], extra_evals=evals)
    records = ctx.run(jobs, "zero-shot transfer")
    values = transfer_values(records, source)
    for m in ctx.methods:
        have = [values[(m.name, t)] for t in targets if (m.name, t) in values]
        if len(have) == len(targets):
            values[(m.name, "average")] = statistics.fmean(have)
    cols = [(source, f"{source} (trained)")] + [(t, t) for t in targets] + [("average", "targets average")]
    rows = [(m.name, m.label) for m in ctx.methods]
    markdown = (f"Zero-shot transfer, top-1 % on all classes: trained on {source} (K={s.shots}, {s.epochs} epochs), "
                f"mean of splits {ctx.splits}:\n\n" + format_grid(values, rows, cols))
    table = {m: {d: v for (mm, d), v in values.items() if mm == m} for m, _ in rows}
    ctx.datasets = [source] + targets
    return ctx.finish("zero_shot", {"source": source, "targets": targets, "runs": records, "table": table}, markdown)


if __name__ == "__main__":
    run_script(main)
