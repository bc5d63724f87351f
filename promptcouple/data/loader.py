"""Anchor clips cycled alongside the training loader."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Optional

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from promptcouple.errors import InvalidInputError

__all__ = ["cycle", "anchor_loader"]


def _set_epoch(loader: Iterable, epoch: int) -> None:
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return


def cycle(loader: Iterable, *, start_epoch: int = 0) -> Iterator[Any]:
    """Iterates over ``loader`` forever, one pass after another.

    Unlike ``itertools.cycle`` it stores nothing and starts a fresh pass each time, so a shuffling
    loader reshuffles: before each pass it calls ``set_epoch(epoch)`` on the loader's sampler (or
    its batch sampler's sampler) when there is one, as ``DistributedSampler`` needs; a
    ``RandomSampler`` reshuffles by itself.

    Args:
        loader: A DataLoader or any re-iterable.
        start_epoch: Epoch given to ``set_epoch`` for the first pass (to resume).

    Yields:
        The loader's batches.

    Raises:
        ValueError: A pass yielded nothing (empty dataset, or ``drop_last`` with fewer items than
            the batch size), which would otherwise loop forever.
    """
    epoch = start_epoch
    while True:
        _set_epoch(loader, epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise InvalidInputError(
                "cycle(): the loader yielded no batch in a whole pass (empty dataset, or drop_last=True with "
                "fewer items than batch_size); give it at least one full batch"
            )
        epoch += 1


def anchor_loader(
    dataset: Dataset,
    batch_size: int = 1,
    *,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = True,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    start_epoch: int = 0,
    **loader_kwargs: Any,
) -> Iterator[Any]:
    """An endless, reshuffled stream of anchor batches to draw next to each training batch.

    The Trainer draws its anchors through this function too. Each rank gets its own shard
    (``DistributedSampler``; one shard of everything in a single process), and pass ``r`` is
    shuffled with ``seed`` and epoch ``start_epoch + r`` alone: the order never depends on how many
    draws the training loader made, and a resumed run replays it. GA2-CLIP appends one anchor clip
    per training batch: ``batch_size=1``.

    Args:
        dataset: The anchor (irrelevant-class) videos, e.g. a training-mode ``VideoListDataset``.
        batch_size: Anchor clips per training step and rank.
        num_workers: DataLoader workers (kept alive between passes).
        seed: Shuffling seed.
        drop_last: Keep every anchor batch the same size.
        rank: This process's shard (default: its rank in the process group, else 0).
        world_size: Number of shards (default: the process group's size, else 1).
        start_epoch: Epoch of the first pass's shuffle.
        **loader_kwargs: Passed to ``DataLoader`` (``pin_memory``, ``generator``, ``worker_init_fn``, ...).

    Returns:
        The iterator from :func:`cycle`; ``next(it)`` gives one batch.

    Raises:
        ValueError: The dataset is empty, or (with ``drop_last``) a shard holds fewer than
            ``batch_size`` videos.
    """
    in_group = dist.is_available() and dist.is_initialized()
    world_size = world_size if world_size is not None else (dist.get_world_size() if in_group else 1)
    rank = rank if rank is not None else (dist.get_rank() if in_group else 0)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise InvalidInputError("anchor_loader: the anchor dataset is empty")
    per_rank = math.ceil(n / world_size)
    if drop_last and per_rank < batch_size:
        shards = f" ({per_rank} per process of {world_size})" if world_size > 1 else ""
        raise InvalidInputError(f"anchor_loader: {n} anchor videos{shards} < batch_size={batch_size} with drop_last=True; "
                         "lower batch_size, add anchor videos or pass drop_last=False")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        **loader_kwargs,
    )
    return cycle(loader, start_epoch=start_epoch)
