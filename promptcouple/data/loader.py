"""Anchor clips cycled alongside the training loader."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

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
            raise ValueError(
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
    **loader_kwargs: Any,
) -> Iterator[Any]:
    """An endless, reshuffled stream of anchor batches to draw next to each training batch.

    Under ``torch.distributed`` each rank gets a different shard (``DistributedSampler``);
    otherwise a ``RandomSampler`` with its own seeded generator, so the anchor order does not
    depend on how many draws the training loader made. GA2-CLIP appends one anchor clip per
    training batch: ``batch_size=1``.

    Args:
        dataset: The anchor (irrelevant-class) videos, e.g. a training-mode ``VideoListDataset``.
        batch_size: Anchor clips per training step.
        num_workers: DataLoader workers (kept alive between passes).
        seed: Shuffling seed.
        drop_last: Keep every anchor batch the same size.
        **loader_kwargs: Passed to ``DataLoader`` (``pin_memory``, ``collate_fn``, ...).

    Returns:
        The iterator from :func:`cycle`; ``next(it)`` gives one batch.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("anchor_loader: the anchor dataset is empty")
    if drop_last and len(dataset) < batch_size:  # type: ignore[arg-type]
        raise ValueError(
            f"anchor_loader: {len(dataset)} anchor videos < batch_size={batch_size} with drop_last=True; "  # type: ignore[arg-type]
            "lower batch_size or pass drop_last=False"
        )
    if dist.is_available() and dist.is_initialized():
        sampler: Any = DistributedSampler(dataset, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        **loader_kwargs,
    )
    return cycle(loader)
