"""Datasets of a training config, built (and so checked) before any model is loaded.

Three sources, each giving items ``(frames (T, 3, H, W), label)`` in training and
``(frames (V, T, 3, H, W), label)`` in evaluation:

* list files read by :class:`promptcouple.data.VideoListDataset` (ViFi-CLIP / GA2-CLIP lists);
* clip files: pre-decoded clips in one ``.safetensors`` file (:class:`ClipTensorDataset`), handy for
  tests, for clips decoded once and reused, and for data that never was a video;
* the generated world (:mod:`promptcouple.world`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from promptcouple.anchors import AnchorOverlapError, check_anchor_overlap
from promptcouple.constants import CLIP_MEAN, CLIP_STD
from promptcouple.errors import InvalidInputError
from promptcouple.fileio import PathLike, atomic_save_safetensors
from promptcouple.train.config import ConfigError, TrainConfig


class ClipTensorDataset(Dataset):
    """Pre-decoded clips stored in one ``.safetensors`` file.

    The file holds ``frames`` ``(N, T, 3, H, W)`` (or ``(N, V, T, 3, H, W)`` with views), float
    (used as is) or uint8 (scaled to [0, 1] and normalised with CLIP's mean and std), ``labels``
    ``(N,)`` integers, and optionally the class names as JSON in the metadata key ``classnames``.
    Write one with :func:`write_clip_file`.

    Args:
        path: The file.
        labels_csv: Label CSV (``id,name``); overrides the names stored in the file.
        train: Training items are one view ``(T, 3, H, W)`` (the first view of a multi-view file);
            evaluation items are ``(V, T, 3, H, W)``.

    Raises:
        ValueError: Missing tensors, wrong shapes, no clips, or labels outside the class range.
    """

    def __init__(self, path: PathLike, labels_csv: Optional[PathLike] = None, *, train: bool = True):
        from safetensors import safe_open

        self.path, self.train = str(path), train
        with safe_open(self.path, framework="pt") as f:
            keys, meta = set(f.keys()), f.metadata() or {}
            missing = {"frames", "labels"} - keys
            if missing:
                raise InvalidInputError(f"clip file {self.path!r} lacks tensor(s) {sorted(missing)}; "
                                 "expected 'frames' (N, T, 3, H, W) and 'labels' (N,)")
            frames, labels = f.get_tensor("frames"), f.get_tensor("labels")
        if frames.ndim == 5:
            frames = frames.unsqueeze(1)
        if frames.ndim != 6 or frames.shape[3] != 3:
            raise InvalidInputError(f"clip file {self.path!r}: frames have shape {tuple(frames.shape)}, "
                             "expected (N, T, 3, H, W) or (N, V, T, 3, H, W)")
        if labels.ndim != 1 or labels.shape[0] != frames.shape[0] or labels.is_floating_point():
            raise InvalidInputError(f"clip file {self.path!r}: labels must be ({frames.shape[0]},) integers, "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        if frames.shape[0] == 0:
            raise InvalidInputError(f"clip file {self.path!r} holds no clips")
        if labels_csv is not None:
            from promptcouple.data.lists import read_label_csv

            self.classnames = read_label_csv(labels_csv)
        elif "classnames" in meta:
            self.classnames = list(json.loads(meta["classnames"]))
        else:
            raise InvalidInputError(f"clip file {self.path!r} stores no class names; give a label CSV")
        k = len(self.classnames)
        if labels.min() < 0 or labels.max() >= k:
            raise InvalidInputError(f"clip file {self.path!r}: labels span {labels.min().item()}..{labels.max().item()} "
                             f"but there are {k} classes (ids 0..{k - 1})")
        self.frames, self.labels = frames, labels.long()

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, index: int):
        clip = self.frames[index]
        if clip.dtype == torch.uint8:  # stored as pixels: normalise as CLIP expects (float files are ready)
            mean = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)
            std = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
            clip = (clip.float() / 255 - mean) / std
        else:
            clip = clip.float()
        return (clip[0] if self.train else clip), int(self.labels[index])


def write_clip_file(path: PathLike, frames: torch.Tensor, labels: Sequence[int],
                    classnames: Optional[Sequence[str]] = None) -> None:
    """Write clips for :class:`ClipTensorDataset` (``frames`` ``(N, [V,] T, 3, H, W)``), atomically:
    an interrupted write leaves any earlier file in place."""
    meta = {"classnames": json.dumps(list(classnames))} if classnames is not None else None
    atomic_save_safetensors(path, {"frames": frames.contiguous(), "labels": torch.as_tensor(labels, dtype=torch.long)},
                            metadata=meta)


@dataclass
class EvalSet:
    """One evaluation set: its dataset and the class names its labels index."""

    dataset: Dataset
    classnames: list[str]


@dataclass
class Datasets:
    """Everything a run reads: training set, evaluation sets by name, anchors."""

    train: Dataset
    classnames: list[str]
    evals: dict[str, EvalSet] = field(default_factory=dict)
    anchor: Optional[Dataset] = None
    anchor_labels: Optional[list[str]] = None
    descriptions: Optional[dict[str, tuple[str, ...]]] = None  # class -> its descriptions (data.descriptions)

    @property
    def base_to_novel(self) -> bool:
        return "base" in self.evals and "novel" in self.evals


def _list_dataset(list_file: str, labels: Optional[str], root: Optional[str], cfg: TrainConfig, *,
                  train: bool, key: str) -> Dataset:
    """A list-file or clip-file dataset; any data error is re-raised naming the config key."""
    try:
        if list_file.endswith(".safetensors"):
            return ClipTensorDataset(list_file, labels, train=train)
        try:
            from promptcouple.data import VideoListDataset
        except ImportError as err:
            raise ConfigError(f"{key}: reading list files needs promptcouple.data.VideoListDataset ({err})") from None
        d = cfg.data
        kwargs = dict(root=root, num_frames=d.num_frames, train=train, size=d.image_size)
        if train:
            kwargs.update(crop=d.crop, flip=d.flip, grayscale=d.grayscale)
        else:
            kwargs.update(num_clips=cfg.eval.num_clips, num_crops=cfg.eval.num_crops)
        return VideoListDataset(list_file, labels, **kwargs)
    except ConfigError:
        raise
    except (OSError, ValueError) as err:  # FileNotFoundError, ListFormatError, bad shapes...
        raise ConfigError(f"{key}: {err}") from None


def _check_nonempty(dataset: Dataset, key: str) -> None:
    if len(dataset) == 0:
        raise ConfigError(f"{key}: the split is empty")


def build_datasets(cfg: TrainConfig, *, train: bool = True) -> Datasets:
    """Build (and so validate) every dataset the config names.

    Args:
        cfg: The run's config.
        train: Also build the training and anchor sets (``False`` for evaluation only).

    Raises:
        ConfigError: A missing file, a malformed list, a class id out of range, an empty split, or
            anchor classes that overlap trained/evaluated classes (unless allowed).
    """
    d, a = cfg.data, cfg.anchors
    if d.world is not None:
        ds = _world_datasets(cfg, train=train)
    else:
        train_set = _list_dataset(d.train_list, d.labels, d.root, cfg, train=True, key="data.train_list") \
            if train else None
        classnames = list(train_set.classnames) if train_set is not None else _names(d.labels, d.train_list)
        evals = {}
        if d.val_list is not None:
            name = "base" if d.novel_list is not None else "val"
            ev = _list_dataset(d.val_list, d.val_labels or d.labels, d.root, cfg, train=False, key="data.val_list")
            evals[name] = EvalSet(ev, list(ev.classnames))
        if d.novel_list is not None:
            ev = _list_dataset(d.novel_list, d.novel_labels, d.root, cfg, train=False, key="data.novel_list")
            evals["novel"] = EvalSet(ev, list(ev.classnames))
        ds = Datasets(train_set, classnames, evals)
    if train and a.list is not None:
        ds.anchor = _list_dataset(a.list, a.labels, a.root or d.root, cfg, train=True, key="anchors.list")
        ds.anchor_labels = list(ds.anchor.classnames)
    elif train and a.world:
        ds.anchor, ds.anchor_labels = _world_anchors(cfg)
    ds.descriptions = _descriptions(ds, cfg)
    if ds.train is not None:
        _check_nonempty(ds.train, "data.train_list")
    for name, ev in ds.evals.items():
        _check_nonempty(ev.dataset, f"data ({name} evaluation set)")
    if ds.anchor is not None:
        _check_nonempty(ds.anchor, "anchors.list")
        _check_anchor_overlap(ds, cfg)
    return ds


def _descriptions(ds: Datasets, cfg: TrainConfig) -> Optional[dict[str, tuple[str, ...]]]:
    """The descriptions of every trained and evaluated class (``data.descriptions`` or the world's
    paraphrases), checked against those classes; ``None`` when none are configured."""
    d = cfg.data
    classes = list(dict.fromkeys([*ds.classnames, *(n for ev in ds.evals.values() for n in ev.classnames)]))
    if d.world is not None and d.world.descriptions:
        from promptcouple import world

        if d.world.dataset not in world.dataset_names():
            raise ConfigError(f"data.world.descriptions: the world has description sets for {world.dataset_names()}, "
                              f"not {d.world.dataset!r}; fix: descriptions: false")
        sets = world.class_descriptions(d.world.dataset)
        return {n: tuple(sets[n]) for n in classes}
    if d.descriptions is None:
        return None
    from promptcouple.descriptions import read_descriptions

    try:
        return read_descriptions(d.descriptions, classes)
    except (OSError, ValueError) as err:
        raise ConfigError(f"data.descriptions: {err}") from None


def _names(labels: Optional[str], list_file: Optional[str]) -> list[str]:
    if labels is not None:
        from promptcouple.data.lists import read_label_csv

        try:
            return read_label_csv(labels)
        except (OSError, ValueError) as err:
            raise ConfigError(f"data.labels: {err}") from None
    return list(ClipTensorDataset(list_file).classnames)


def _check_anchor_overlap(ds: Datasets, cfg: TrainConfig) -> None:
    """Before any model is built: anchor classes must not be trained or evaluated classes."""
    classes = {"training": ds.classnames, **{f"{n} evaluation": ev.classnames for n, ev in ds.evals.items()}}
    try:
        check_anchor_overlap(ds.anchor_labels, classes, allow=cfg.anchors.allow_overlap)
    except AnchorOverlapError as err:
        raise ConfigError(f"anchors: {err}") from None


def _world_datasets(cfg: TrainConfig, *, train: bool) -> Datasets:
    """Datasets generated by :mod:`promptcouple.world` (``data.world``)."""
    from promptcouple import world

    w, d = cfg.data.world, cfg.data
    common = dict(world_seed=w.world_seed, frames=d.num_frames, res=d.image_size, shift=w.shift,
                  context=w.context, test_per_class=w.test_per_class)
    try:
        if w.dataset == "hardsrc":  # the hard-prompt source: all its classes, train / test
            get = lambda split: world.hard_prompt_source(split, shots=w.shots, split_seed=w.split_seed,  # noqa: E731
                                                          world_seed=w.world_seed, shift=w.shift,
                                                          test_per_class=w.test_per_class)
            train_set, evals = (get("train") if train else None), {"val": get("test")}
        else:
            get = lambda split: world.get_dataset(w.dataset, split, shots=w.shots,  # noqa: E731
                                                  split_seed=w.split_seed, **common)
            if w.protocol == "base_to_novel":
                train_set = get("base_train") if train else None
                evals = {"base": get("base_test"), "novel": get("novel_test")}
            else:
                train_set, evals = (get("train") if train else None), {"val": get("test")}
    except (KeyError, ValueError) as err:
        raise ConfigError(f"data.world: {err.args[0] if err.args else err}") from None
    if w.dataset == "hardsrc":
        classnames = list(evals["val"].classnames)
    elif w.protocol == "base_to_novel":
        classnames = list(evals["base"].classnames)
    else:
        classnames = list(evals["val"].classnames)
    return Datasets(train_set, classnames, {k: EvalSet(v, list(v.classnames)) for k, v in evals.items()})


def _world_anchors(cfg: TrainConfig) -> tuple[Dataset, list[str]]:
    from promptcouple import world

    w = cfg.data.world
    ds, labels = world.anchor_set(per_class=cfg.anchors.per_class, world_seed=w.world_seed if w else 0,
                                  shift=w.shift if w else None)
    return ds, list(labels)


def synthetic_clips(num_clips: int, num_classes: int, *, num_frames: int = 2, image_size: int = 32,
                    num_views: Optional[int] = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clips whose class is visible: each class has its own colour, plus noise.

    For tests, examples and smoke runs (with :func:`write_clip_file`); labels cycle ``0..K-1``.

    Returns:
        ``frames`` float ``(N, T, 3, S, S)`` (``(N, V, T, 3, S, S)`` with ``num_views``) and
        ``labels`` ``(N,)``.
    """
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, generator=torch.Generator().manual_seed(1234)) * 2 - 1
    labels = torch.arange(num_clips) % num_classes
    frames = 0.3 * torch.randn(num_clips, num_frames, 3, image_size, image_size, generator=g)
    frames += colours[labels].view(num_clips, 1, 3, 1, 1)
    if num_views is not None:
        jitter = 0.05 * torch.randn(num_clips, num_views, *frames.shape[1:], generator=g)
        frames = frames.unsqueeze(1) + jitter
    return frames, labels
