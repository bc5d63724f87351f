"""Few-shot recognition (docs/METHOD.md section 3): K = 2, 4, 8, 16 training clips of every class.

Each method (``--methods``, see ``base2novel.py``) is trained with :class:`promptcouple.train.Trainer`
on K shots of all classes of a dataset (the ``few_shot`` protocol) and evaluated on that dataset's
test clips; the frozen model with the hand-crafted template is the zero-shot row. Mean top-1 over
the training splits, last epoch. Writes a markdown table (one ``K=2 / 4 / 8 / 16`` cell per
dataset) and a JSON file with every run.

Examples::

    python benchmarks/few_shot.py --quick                      # < 5 minutes on 2 cores
    nice -n 5 python benchmarks/few_shot.py --shot-list 2 4 8 16
    python benchmarks/few_shot.py --model ViT-B-16-quickgelu --pretrained openai --data-config data.yaml --frames 32
"""

from __future__ import annotations

import statistics

from protocol.context import run_script, start
from protocol.methods import Method
from protocol.reports import mean_over_splits
from protocol.setting import make_parser

DEFAULT_METHODS = ("zero-shot", "coop", "ivlp", "ga2")
SHOTS = (2, 4, 8, 16)


def few_shot_table(records: list[dict], methods: list[Method], datasets: list[str],
                   shots: list[int]) -> dict:
    """``{method: {dataset | "average": {K: mean top-1 over splits}}}``; zero-shot has no K and
    is repeated under every K so the rows line up."""
    means = mean_over_splits(records, ("top1",))
    table: dict = {}
    for m in methods:
        row = {}
        for d in datasets:
            cells = {k: means[(m.name, d, k)]["top1"] for k in shots if (m.name, d, k) in means}
            if not cells and (m.name, d, None) in means:  # frozen model: one number for every K
                cells = {k: means[(m.name, d, None)]["top1"] for k in shots}
            if cells:
                row[d] = cells
        if row:
            row["average"] = {k: statistics.fmean(row[d][k] for d in datasets if d in row) for k in shots}
            table[m.name] = row
    return table


def format_few_shot(table: dict, methods: list[Method], datasets: list[str], shots: list[int]) -> str:
    """Markdown: one row per method, one ``K=...`` cell per dataset and the average."""
    cols = list(datasets) + ["average"]
    head = " / ".join(str(k) for k in shots)
    lines = ["| method | " + " | ".join(f"{c} K={head}" for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for m in methods:
        if m.name not in table:
            continue
        cells = [" / ".join(f"{table[m.name][c][k]:.1f}" for k in shots) if c in table[m.name] else "-" for c in cols]
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--shot-list", type=int, nargs="+", default=None, help=f"values of K (default {SHOTS})")
    args = parser.parse_args(argv)
    shots = sorted(args.shot_list or SHOTS)
    ctx = start(args, "few_shot", DEFAULT_METHODS, shots=shots)
    jobs = []
    for k in shots:  # the frozen model does not depend on K: evaluate it once per dataset
        jobs += [j for j in ctx.jobs("few_shot", [k]) if j.trained or k == shots[0]]
    for j in jobs:
        if not j.trained:
            j.key = (j.key[0], j.key[1], j.key[2], None)
    records = ctx.run(jobs, "few-shot")
    table = few_shot_table(records, ctx.methods, ctx.datasets, shots)
    s = ctx.setting
    markdown = (f"Few-shot, top-1 % on all classes, mean of splits {ctx.splits}, last epoch ({s.epochs} epochs):\n\n"
                + format_few_shot(table, ctx.methods, ctx.datasets, shots))
    return ctx.finish("few_shot", {"shots": shots, "runs": records, "table": table}, markdown)


if __name__ == "__main__":
    run_script(main)
