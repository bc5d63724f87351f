"""Random streams that depend on (seed, epoch, rank) alone, so a resumed epoch replays exactly."""

from __future__ import annotations

import random

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """A seed that depends on (seed, epoch, rank, stream) only: resumed epochs replay exactly."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1, dtype=np.uint32)[0])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device
    np.random.seed(seed)
    random.seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: torch seeds each worker from the loader's generator; numpy
    and ``random`` are not seeded by torch, so every worker would draw the same numbers."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
