"""What the records become: means over splits, paired intervals against IVLP, markdown tables, the
plots, the results JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from promptcouple.fileio import atomic_write, atomic_write_text
from promptcouple.train import hm

from .methods import DESCRIPTION_SUFFIX, Method


def mean_over_splits(records: Sequence[dict], metrics: Sequence[str]) -> dict:
    """``{(method, dataset, shots): {metric: mean, metric_sd: sample sd, n: splits}}``; with base
    and novel, ``hm`` is the HM of the mean base and mean novel accuracy (``hm_sd`` stays the
    spread of the per-split HMs)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["dataset"], r["shots"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        row = {"n": len(rs)}
        for m in metrics:
            vals = [r[m] for r in rs]
            row[m] = statistics.fmean(vals)
            row[m + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        if "base" in row and "novel" in row:
            row["hm"] = hm(row["base"], row["novel"])
        row["seconds"] = sum(r["seconds"] for r in rs)
        out[key] = row
    return out


def base_novel_table(records: Sequence[dict], methods: Sequence[Method], datasets: Sequence[str]) -> dict:
    """Mean over splits per method and dataset, plus the average over datasets.

    The average row takes the mean base and mean novel accuracy over datasets and their HM (the
    convention of the CoOp/ViFi-CLIP tables), so every HM in the table is ``2BN/(B+N)``.

    Returns:
        ``{method: {dataset | "average": {"base", "novel", "hm", ...}}}``.
    """
    means = mean_over_splits(records, ("base", "novel", "hm"))
    table: dict[str, dict] = {}
    for m in methods:
        row = {d: means[(m.name, d, r_shots)] for (mn, d, r_shots) in means if mn == m.name and d in datasets}
        if not row:
            continue
        b = statistics.fmean(v["base"] for v in row.values())
        n = statistics.fmean(v["novel"] for v in row.values())
        row["average"] = {"base": b, "novel": n, "hm": hm(b, n)}
        table[m.name] = row
    return table


def format_base_novel(table: dict, methods: Sequence[Method], datasets: Sequence[str], digits: int = 1) -> str:
    """A markdown table in the layout of the paper's: one row per method, one ``B / N / HM``
    column per dataset, then the average."""
    cols = [d for d in datasets] + ["average"]
    lines = ["| method | " + " | ".join(f"{c} B / N / HM" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for m in methods:
        if m.name not in table:
            continue
        cells = []
        for c in cols:
            v = table[m.name].get(c)
            cells.append("-" if v is None else " / ".join(f"{v[k]:.{digits}f}" for k in ("base", "novel", "hm")))
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cells(records: Sequence[dict]) -> tuple[dict, dict]:
    """Per method, its HM and per-clip correctness in every cell (dataset, split, world seed).

    The frozen zero-shot row has no training split: its one record per dataset and world seed
    stands in every split's cell of that dataset (the test clips do not depend on the split).

    Returns:
        ``({method: {cell: HM}}, {method: {cell: {"base": [0/1], "novel": [0/1]}}})``, cells as
        ``"dataset/s1/w0"`` strings.
    """
    splits: dict[tuple, set] = {}
    for r in records:
        if r.get("split") is not None:
            splits.setdefault((r["dataset"], r.get("world_seed", 0)), set()).add(r["split"])
    hms: dict[str, dict] = {}
    clips: dict[str, dict] = {}
    for r in records:
        if "hm" not in r:
            continue
        w = r.get("world_seed", 0)
        for split in ([r["split"]] if r.get("split") is not None else sorted(splits.get((r["dataset"], w), ()))):
            cell = f"{r['dataset']}/s{split}/w{w}"
            hms.setdefault(r["method"], {})[cell] = r["hm"]
            if "correct" in r:
                clips.setdefault(r["method"], {})[cell] = {k: [int(c) for c in r["correct"][k]] for k in ("base", "novel")}
    return hms, clips


def paired_comparison(records: Sequence[dict], reference: str = "ivlp", *, resamples: int = 2000) -> dict:
    """Every method's HM minus ``reference``'s, paired by cell: the mean with its 95% t interval
    over cells and the 95% paired bootstrap over test clips (:func:`stats.compare_methods`).

    Returns:
        ``{method: {"cells": interval, "clips": interval}}`` (empty without the reference).
    """
    import stats  # benchmarks/stats.py, beside this package

    hms, clips = cells(records)
    if reference not in hms:
        return {}
    return stats.compare_methods(hms, reference, clips, resamples=resamples)


def description_comparison(records: Sequence[dict], methods: Sequence[Method], *, resamples: int = 2000) -> dict:
    """Every description row's HM minus its plain row's (``ivlp+desc`` - ``ivlp``), paired by cell
    as :func:`paired_comparison` pairs against IVLP: what the descriptions themselves change.

    Returns:
        ``{description method: {"cells": interval, "clips": interval, "plain": plain method}}``.
    """
    import stats

    hms, clips = cells(records)
    out = {}
    for m in methods:
        plain = m.name[:-len(DESCRIPTION_SUFFIX)] if m.descriptions else None
        if plain is None or m.name not in hms or plain not in hms:
            continue
        pair = {k: v for k, v in hms.items() if k in (m.name, plain)}
        pair_clips = {k: v for k, v in clips.items() if k in (m.name, plain)}
        out[m.name] = {**stats.compare_methods(pair, plain, pair_clips, resamples=resamples)[m.name], "plain": plain}
    return out


def plot_forest(comparison: dict, methods: Sequence[Method], path: Path, title: str,
                reference_label: str = "IVLP") -> Optional[Path]:
    """The paired differences as a forest plot: per method its mean HM - reference, the 95% t
    interval over cells (thick) and the 95% bootstrap over test clips (thin, just below), and a
    line at zero. The picture of a one-point question: bars from zero would hide it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in methods if m.name in comparison]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(shown) + 1.4))
    for y, m in enumerate(reversed(shown)):
        c = comparison[m.name]
        cell, clip = c["cells"], c.get("clips")
        colour = "tab:red" if cell["excludes_zero"] else "tab:blue"
        if math.isfinite(cell["low"]):
            ax.plot([cell["low"], cell["high"]], [y, y], color=colour, linewidth=3, solid_capstyle="butt",
                    label="95% interval over cells" if y == 0 else None)
        if clip is not None:
            ax.plot([clip["low"], clip["high"]], [y - 0.22, y - 0.22], color="black", linewidth=1,
                    label="95% bootstrap over test clips" if y == 0 else None)
        ax.plot([cell["mean"]], [y], "o", color=colour, markersize=5)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([f"{m.name} (n={comparison[m.name]['cells']['n']})" for m in reversed(shown)], fontsize=8)
    ax.set_xlabel(f"HM - {reference_label} HM (top-1 points); red: interval over cells excludes 0")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)  # off the data
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path


def _interval(iv: Optional[dict]) -> str:
    if iv is None:
        return "-"
    if not math.isfinite(iv["low"]):
        return "(one cell: none)"
    return f"[{iv['low']:+.1f}, {iv['high']:+.1f}]"


def format_comparison(comparison: dict, methods: Sequence[Method], reference_label: str) -> str:
    """The paired differences as a markdown table, one row per method."""
    lines = [f"| method | HM - {reference_label} | 95% interval over cells (n) | 95% bootstrap over test clips "
             "| interval over cells excludes 0 |", "|---|---|---|---|---|"]
    for m in methods:
        c = comparison.get(m.name)
        if c is None:
            continue
        cell = c["cells"]
        lines.append(f"| {m.label} | {cell['mean']:+.1f} | {_interval(cell)} ({cell['n']}) | "
                     f"{_interval(c.get('clips'))} | {'yes' if cell['excludes_zero'] else 'no'} |")
    return "\n".join(lines)


def readings(comparison: dict, methods: Sequence[Method], reference_short: str = "IVLP") -> list[str]:
    """One line per method: ``GA2 vs IVLP: +x HM, 95% interval [a, b] ...`` and what it says
    (against each row's own ``plain`` method where the comparison names one)."""
    out = []
    for m in methods:
        c = comparison.get(m.name)
        if c is None:
            continue
        ref = c.get("plain", reference_short)
        cell, clip = c["cells"], c.get("clips")
        if cell["excludes_zero"]:
            verdict = (f"{'better' if cell['mean'] > 0 else 'worse'} than {ref} "
                       "(the interval over cells excludes 0)")
        elif clip is not None and clip["excludes_zero"]:
            verdict = (f"{'above' if clip['mean'] > 0 else 'below'} {ref} on these test clips only "
                       "(the interval over cells includes 0)")
        else:
            verdict = f"not distinguishable from {ref} (both intervals include 0)"
        line = (f"{m.name} vs {ref}: {cell['mean']:+.1f} HM, 95% interval {_interval(cell)} over "
                f"{cell['n']} cell(s)")
        if clip is not None:
            line += f", {_interval(clip)} over test clips"
        out.append(f"{line}: {verdict}")
    return out


def format_grid(values: dict, rows: Sequence[tuple[str, str]], cols: Sequence[tuple[Any, str]],
                digits: int = 1) -> str:
    """A markdown table of numbers: ``values[(row_key, col_key)]`` (``-`` where missing)."""
    lines = ["| method | " + " | ".join(label for _, label in cols) + " |", "|---|" + "---|" * len(cols)]
    for rk, rl in rows:
        cells = [f"{values[(rk, ck)]:.{digits}f}" if (rk, ck) in values else "-" for ck, _ in cols]
        lines.append(f"| {rl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(records: Sequence[dict], methods: Sequence[Method], path: Path, title: str) -> Optional[Path]:
    """Base and novel accuracy over epochs per method (mean over datasets and splits), with the
    frozen model's zero-shot accuracy as horizontal lines: the narrowing made visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    zs = [r for r in records if r["method"] == "zero-shot"]
    trained = [m for m in methods if m.trained and any(r["method"] == m.name for r in records)]
    if not trained:
        return None
    cols = min(3, len(trained))
    rows = math.ceil(len(trained) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(trained):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, trained):
        rs = [r for r in records if r["method"] == m.name]
        by_epoch: dict[int, list[dict]] = {}
        for r in rs:
            for p in r["curve"]:
                by_epoch.setdefault(p["epoch"], []).append(p)
        epochs = sorted(e for e, ps in by_epoch.items() if len(ps) == len(rs))  # every run has the point
        for metric, style in (("base", "-o"), ("novel", "--o"), ("hm", ":s")):
            ax.plot(epochs, [statistics.fmean(p[metric] for p in by_epoch[e]) for e in epochs], style,
                    label=metric, markersize=3)
        if zs:
            datasets = {r["dataset"] for r in rs}
            for metric, ls in (("base", "-"), ("novel", "--"), ("hm", ":")):
                v = statistics.fmean(r[metric] for r in zs if r["dataset"] in datasets)
                ax.axhline(v, color="grey", linestyle=ls, linewidth=1, label=f"zero-shot {metric}")
        ax.set_title(m.label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_datasets(table: dict, methods: Sequence[Method], datasets: Sequence[str], path: Path,
                  title: str) -> Optional[Path]:
    """Base, novel and HM of every method, one panel per dataset and one for the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in methods if m.name in table]
    if not shown:
        return None
    panels = list(datasets) + ["average"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.55 * len(shown) * cols + 2, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    width = 0.27
    for ax, d in zip(axes.flat, panels):
        xs = range(len(shown))
        for j, (metric, colour) in enumerate((("base", "tab:blue"), ("novel", "tab:orange"), ("hm", "tab:green"))):
            vals = [table[m.name].get(d, {}).get(metric, float("nan")) for m in shown]
            ax.bar([x + (j - 1) * width for x in xs], vals, width, label=metric, color=colour)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([m.name for m in shown], rotation=60, ha="right", fontsize=7)
        ax.set_title(d, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def machine_state() -> dict:
    """What the timings depend on: the CPU, the load when measured, versions."""
    return {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _save(fig, path: "str | Path") -> None:
    """Write a figure atomically and free it; the format comes from the name's ending (a file
    object carries no name for matplotlib to read it from)."""
    import matplotlib.pyplot as plt

    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format=Path(path).suffix[1:] or "png")
    plt.close(fig)
