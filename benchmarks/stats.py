"""Intervals a reader can trust: paired differences between methods, over cells and over clips.

Two methods are compared on the same cells (dataset x split x world seed) and, inside a cell, on
the same test clips. Two intervals answer two questions:

* over cells (:func:`paired_interval`): would the difference hold on another split or world? A
  Student-t interval of the mean paired difference in HM, with ``n - 1`` degrees of freedom.
* over clips (:func:`bootstrap_hm_difference`): how much of the difference is the luck of which
  test clips were drawn? Test clips are resampled with replacement inside each cell and class
  half (base, novel), the same resample for both methods (paired), and the average HM difference
  recomputed; the interval is the 2.5th to 97.5th percentile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


@dataclass
class Interval:
    """A mean difference and its 95% interval."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n,
                "excludes_zero": self.excludes_zero}

    def __str__(self) -> str:
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``a_i - b_i`` over paired cells with its Student-t interval.

    With one pair there is no spread to estimate: the interval is unbounded.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_interval needs two equally long, non-empty sequences, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, n = float(d.mean()), len(d)
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass
class CellClips:
    """Per-clip correctness of two methods in one cell, on the same clips (1 = top-1 right).

    ``base_*`` and ``novel_*`` are 0/1 arrays over the cell's base and novel test clips.
    """

    base_a: np.ndarray
    novel_a: np.ndarray
    base_b: np.ndarray
    novel_b: np.ndarray

    def __post_init__(self) -> None:
        for name in ("base", "novel"):
            a, b = getattr(self, f"{name}_a"), getattr(self, f"{name}_b")
            if len(a) != len(b) or not len(a):
                raise ValueError(f"{name}: the two methods must be scored on the same, non-empty clips "
                                 f"(got {len(a)} and {len(b)})")


def _hm(base: np.ndarray, novel: np.ndarray) -> np.ndarray:
    """HM in percent of (resamples x clips) correctness arrays."""
    b, n = 100 * base.mean(-1), 100 * novel.mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b + n > 0, 2 * b * n / (b + n), 0.0)


def bootstrap_hm_difference(cells: Sequence[CellClips], *, resamples: int = 2000, seed: int = 0,
                            confidence: float = 0.95) -> Interval:
    """Average over cells of HM(a) - HM(b), with a paired percentile bootstrap over test clips."""
    if not cells:
        raise ValueError("bootstrap_hm_difference needs at least one cell")
    rng = np.random.default_rng(seed)
    observed, total = 0.0, np.zeros(resamples)
    for cell in cells:
        hm_a = _hm(cell.base_a[None].astype(float), cell.novel_a[None].astype(float))[0]
        hm_b = _hm(cell.base_b[None].astype(float), cell.novel_b[None].astype(float))[0]
        observed += hm_a - hm_b
        ib = rng.integers(0, len(cell.base_a), size=(resamples, len(cell.base_a)))
        inn = rng.integers(0, len(cell.novel_a), size=(resamples, len(cell.novel_a)))
        total += (_hm(cell.base_a[ib].astype(float), cell.novel_a[inn].astype(float))
                  - _hm(cell.base_b[ib].astype(float), cell.novel_b[inn].astype(float)))
    k = len(cells)
    tail = (1 - confidence) / 2
    low, high = np.quantile(total / k, [tail, 1 - tail])
    return Interval(observed / k, float(low), float(high), k)


def compare_methods(hm_by_cell: Mapping[str, Mapping[str, float]], reference: str,
                    clips_by_cell: Optional[Mapping[str, Mapping[str, dict]]] = None, **bootstrap) -> dict:
    """Every method against ``reference``: the paired interval over cells and, with per-clip
    correctness, the bootstrap over clips.

    Args:
        hm_by_cell: ``{method: {cell: HM}}``.
        reference: The method the others are compared with (IVLP in the paper's tables).
        clips_by_cell: ``{method: {cell: {"base": 0/1 list, "novel": 0/1 list}}}``.
    """
    if reference not in hm_by_cell:
        raise ValueError(f"reference method {reference!r} is not among {sorted(hm_by_cell)}")
    out = {}
    ref = hm_by_cell[reference]
    for method, cells in hm_by_cell.items():
        if method == reference:
            continue
        shared = sorted(set(cells) & set(ref))
        entry = {"cells": paired_interval([cells[c] for c in shared], [ref[c] for c in shared]).as_dict()}
        if clips_by_cell and method in clips_by_cell and reference in clips_by_cell:
            mine, theirs = clips_by_cell[method], clips_by_cell[reference]
            paired = [CellClips(np.asarray(mine[c]["base"]), np.asarray(mine[c]["novel"]),
                                np.asarray(theirs[c]["base"]), np.asarray(theirs[c]["novel"]))
                      for c in shared if c in mine and c in theirs]
            if paired:
                entry["clips"] = bootstrap_hm_difference(paired, **bootstrap).as_dict()
        out[method] = entry
    return out
