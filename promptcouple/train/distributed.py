"""Where a process runs: its rank in the ``torchrun`` process group (if any) and its device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.distributed as dist

from promptcouple.train.config import ConfigError


@dataclass
class DistContext:
    """Where this process runs: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes (gloo on CPU, nccl on GPU), if any.

    A group that already exists is used as is (and not destroyed by :func:`teardown_distributed`).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {device!r} but CUDA is not available; use run.device: cpu")
    if want_cuda:
        index = int(device.split(":")[1]) if ":" in device else local_rank
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=True)
    return DistContext(device=dev)


def teardown_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def current_context(device: Union[str, torch.device]) -> DistContext:
    """The context of the process group this process already belongs to (one process if none)."""
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), device=device)
    return DistContext(device=device)


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job, or the only process; callable before any group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def all_mean(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Mean over ranks of a few scalars (a no-op in one process)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return (t / ctx.world_size).tolist()
