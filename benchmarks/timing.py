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
import subprocess
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


def uptime() -> str:
    """What ``uptime`` prints (the three load averages), for a figure's record of the load."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        loads = os.getloadavg() if hasattr(os, "getloadavg") else ()
        return "load average: " + ", ".join(f"{x:.2f}" for x in loads)


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


def timed_with_cpu(fn: Callable[[], object], device: Optional[torch.device] = None) -> tuple[float, float]:
    """Wall-clock and this process's CPU seconds of ``fn``. On a CPU shared with other jobs the
    CPU seconds count only the cycles this process got, so they move far less with the load than
    the wall clock (single-threaded they are the work itself; with more threads, spinning at a
    barrier while a sibling thread waits for a core counts too)."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


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


@dataclass
class Interleaved:
    """Several commands timed round by round, each as a ratio to one of them (the reference)."""

    seconds: dict  # name -> Spread of its wall-clock times
    ratio: dict  # name -> Spread of its time / the reference's time in the same round
    cpu_seconds: dict  # the same in this process's CPU seconds
    cpu_ratio: dict
    reference: str
    order: list  # the order each round ran in
    uptime_before: str
    uptime_after: str
    load_before: Optional[float]
    load_after: Optional[float]
    times: dict  # name -> its wall-clock and CPU seconds, round by round

    def readable(self, name: str, cpu: bool = False) -> bool:
        return (self.cpu_ratio if cpu else self.ratio)[name].relative_iqr <= READABLE_SPREAD

    def as_dict(self) -> dict:
        def spreads(d: dict, readable=None) -> dict:
            return {k: dict(asdict(v), **({} if readable is None else {"readable": readable(k)})) for k, v in d.items()}

        return {"reference": self.reference, "seconds": spreads(self.seconds), "ratio": spreads(self.ratio, self.readable),
                "cpu_seconds": spreads(self.cpu_seconds),
                "cpu_ratio": spreads(self.cpu_ratio, lambda k: self.readable(k, cpu=True)),
                "order": self.order, "uptime_before": self.uptime_before, "uptime_after": self.uptime_after,
                "load_before": self.load_before, "load_after": self.load_after, "times": self.times,
                "ratio_values": self._ratios(0), "cpu_ratio_values": self._ratios(1)}

    def _ratios(self, column: int) -> dict:
        ref = [t[column] for t in self.times[self.reference]]
        return {n: [t[column] / r for t, r in zip(ts, ref)] for n, ts in self.times.items() if n != self.reference}


def rotations(n: int, rounds: int) -> list[list[int]]:
    """The order of ``n`` commands in each of ``rounds`` rounds: rotated one place every two rounds,
    and reversed every other round, so no command always runs first, last or after the same one."""
    out = []
    for r in range(rounds):
        order = [(i + r // 2) % n for i in range(n)]
        out.append(order if r % 2 == 0 else order[::-1])
    return out


def interleave(commands: dict, *, reference: str, reps: int = 5, warmup: int = 1,
               device: Optional[torch.device] = None, label: str = "") -> Interleaved:
    """Time every command once a round for ``reps`` rounds after ``warmup`` rounds; each command's
    ratio is taken to the reference's time of the same round, so load that hits a round hits
    every command in it (a many-way ``compare``). Wall-clock and CPU seconds both."""
    if reference not in commands:
        raise KeyError(f"reference {reference!r} is not among the commands {list(commands)}")
    names = list(commands)
    for _ in range(warmup):
        for name in names:
            commands[name]()
    before, load_before = uptime(), load_average()
    wall: dict = {name: [] for name in names}
    cpu: dict = {name: [] for name in names}
    orders = rotations(len(names), reps)
    for order in orders:
        for i in order:
            w, c = timed_with_cpu(commands[names[i]], device)
            wall[names[i]].append(w)
            cpu[names[i]].append(c)

    def per_round(times: dict) -> dict:
        return {n: Spread.of([t / r for t, r in zip(times[n], times[reference])]) for n in names if n != reference}

    result = Interleaved({k: Spread.of(v) for k, v in wall.items()}, per_round(wall),
                         {k: Spread.of(v) for k, v in cpu.items()}, per_round(cpu),
                         reference, [[names[i] for i in o] for o in orders], before, uptime(), load_before,
                         load_average(), {n: list(zip(wall[n], cpu[n])) for n in names})
    for name in result.ratio:
        if not result.readable(name):
            log.warning("%s: %s / %s spreads %.0f%% of its median in wall-clock time (IQR over %d rounds, load "
                        "%s -> %s): too wide to read; rerun on a quieter machine or with more --reps",
                        label or "interleave", name, reference, 100 * result.ratio[name].relative_iqr, reps,
                        load_before, result.load_after)
    return result
