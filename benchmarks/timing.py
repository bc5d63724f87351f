"""Timing that can be read on a shared machine: interleaved repetitions, spreads, load, warnings.

On a loaded machine absolute times move by 2-3x, so a figure is only worth its spread. Two
commands are timed alternately (A B A B ...), so that load hits both alike, and their ratio is
taken per pair: a burst of load changes one pair, not the median. Every figure carries its
spread and the load average before and after; a ratio whose spread is too wide is flagged.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

log = logging.getLogger("promptcouple.benchmarks")

#: A ratio is called readable when its interquartile range is within this fraction of its median.
READABLE_SPREAD = 0.10


def load_average() -> Optional[float]:
    """The 1-minute load average (``None`` where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _sync(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: Optional[torch.device] = None) -> float:
    """Seconds ``fn`` takes, waiting for the GPU where there is one."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@dataclass
class Spread:
    """Median, quartiles and extremes of repeated measurements."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        q1, q2, q3 = quartiles(values)
        return cls(median=q2, q1=q1, q3=q3, min=min(values), max=max(values), n=len(values))

    @property
    def relative_iqr(self) -> float:
        return (self.q3 - self.q1) / self.median if self.median else float("inf")

    def __str__(self) -> str:
        return f"{self.median:.4g} (IQR {self.q1:.4g}-{self.q3:.4g}, n={self.n})"


@dataclass
class Comparison:
    """Two commands timed side by side."""

    a: Spread
    b: Spread
    ratio: Spread  # per pair a_i / b_i
    load_before: Optional[float]
    load_after: Optional[float]

    @property
    def readable(self) -> bool:
        return self.ratio.relative_iqr <= READABLE_SPREAD

    def as_dict(self) -> dict:
        out = {k: asdict(getattr(self, k)) for k in ("a", "b", "ratio")}
        out.update(load_before=self.load_before, load_after=self.load_after, readable=self.readable)
        return out


def compare(a: Callable[[], object], b: Callable[[], object], *, reps: int = 10, warmup: int = 1,
            device: Optional[torch.device] = None, label: str = "") -> Comparison:
    """Time ``a`` and ``b`` alternately ``reps`` times after ``warmup`` rounds; ratio a/b per pair.

    The order inside a pair alternates too (A B, B A, ...), so neither side always runs on a
    warmer cache.
    """
    for _ in range(warmup):
        a(), b()
    load_before = load_average()
    ta, tb = [], []
    for i in range(reps):
        if i % 2 == 0:
            ta.append(timed(a, device))
            tb.append(timed(b, device))
        else:
            tb.append(timed(b, device))
            ta.append(timed(a, device))
    result = Comparison(Spread.of(ta), Spread.of(tb), Spread.of([x / y for x, y in zip(ta, tb)]),
                        load_before, load_average())
    if not result.readable:
        log.warning("%s: the ratio's spread (IQR %.0f%% of the median over %d pairs, load %s -> %s) is too "
                    "wide to read; rerun on a quieter machine or with more --reps", label or "comparison",
                    100 * result.ratio.relative_iqr, reps, result.load_before, result.load_after)
    return result
