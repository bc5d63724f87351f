"""Downstream datasets, the hard-prompt source and the anchor set of the embedded world.

All clips are rendered on demand, deterministically from ``(world_seed, dataset, split,
split_seed)``, and cached in memory as uint8 (set ``PROMPTCOUPLE_WORLD_CACHE`` to a folder to
also cache them on disk across processes).
"""

from __future__ import annotations

import collections
import os
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from . import render as R
from . import vocab as V
from .model import normalize_frames

# Downstream defaults: how far the evaluated datasets are shifted from the pretraining style and
# how often a clip shows its class's own scene (the two knobs that leave room for tuning).
DEFAULT_SHIFT = 0.25
DEFAULT_CONTEXT = 0.5
DEFAULT_TEST_PER_CLASS = 50
DEFAULT_POOL = 16  # K-shot splits with K <= 16 are nested prefixes of the same per-class pool

SPLITS = ("base_train", "base_test", "novel_train", "novel_test", "train", "test")
_SPLIT_CODE = {"train": 1, "test": 2}
_CACHE: "collections.OrderedDict[tuple, Tuple[torch.Tensor, torch.Tensor, Dict]]" = collections.OrderedDict()
_CACHE_MAX = 24


class WorldDataset(Dataset):
    """Rendered clips with labels.

    Items are ``(frames, label)``: frames float (T, 3, H, W), CLIP-normalised; label an int index
    into :attr:`classnames`.

    Attributes:
        classnames: Class names in label order.
        frames_uint8: All clips, uint8 (N, T, 3, H, W).
        labels: int64 (N,).
        attributes: Per-clip attribute indices (shape, colour, size, texture, motion), for analysis.
    """

    def __init__(self, frames_uint8: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                 attributes: Optional[Dict[str, np.ndarray]] = None):
        self.frames_uint8 = frames_uint8
        self.labels = labels
        self.classnames = list(classnames)
        self.attributes = attributes or {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return normalize_frames(self.frames_uint8[i]), int(self.labels[i])

    def videos(self) -> torch.Tensor:
        """All clips as one float tensor (N, T, 3, H, W), CLIP-normalised."""
        return normalize_frames(self.frames_uint8)


def dataset_names() -> List[str]:
    """Names of the evaluated datasets."""
    return list(V.DATASETS)


def dataset_info(name: str) -> Dict:
    """Role, all class names, and the fixed base / novel class names of a dataset."""
    role, build = V.DATASETS[name]
    classes, is_base = build()
    return {
        "role": role,
        "classnames": [c.name for c in classes],
        "base": [c.name for c, b in zip(classes, is_base) if b],
        "novel": [c.name for c, b in zip(classes, is_base) if not b],
        "trail": 0.0 if name == "wssv2" else 1.0,
    }


def class_descriptions(name: str) -> Dict[str, List[str]]:
    """Every class of a dataset with its description set (:func:`promptcouple.world.vocab.class_descriptions`):
    the class name and its motion paraphrases, the world's stand-in for an LLM's descriptions
    (synonyms only; they add no information the name lacks)."""
    if name not in V.DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {dataset_names()}")
    classes, _ = V.DATASETS[name][1]()
    return {c.name: list(V.class_descriptions(c)) for c in classes}


def _seed(*parts) -> List[int]:
    return [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]


def _scenes(name: str, n: int, world_seed: int) -> np.ndarray:
    """Per-class scene: background colour (3), gradient (3), gradient direction (1), padding."""
    rng = np.random.default_rng(_seed(world_seed, name, "scenes"))
    sc = np.zeros((n, 9), np.float32)
    sc[:, 0:3] = rng.uniform(0.05, 0.5, (n, 1)) * rng.uniform(0.4, 1.0, (n, 3))
    sc[:, 3:6] = rng.uniform(-0.15, 0.15, (n, 3))
    sc[:, 6] = rng.uniform(0, 2 * np.pi, n)
    return sc


def _render_classes(key: tuple, classes: Sequence[V.ClassDef], per_class: int, seed: List[int], style: R.Style,
                    scenes: Optional[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor, Dict]:
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    disk = os.environ.get("PROMPTCOUPLE_WORLD_CACHE")
    path = None
    if disk:
        path = os.path.join(disk, "world_" + "_".join(str(k) for k in key).replace("/", "-") + ".pt")
        if os.path.exists(path):
            out = torch.load(path)
            _CACHE[key] = (out["frames"], out["labels"], out["attributes"])
            return _CACHE[key]
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), per_class)
    attrs = R.sample_attributes(rng, classes, labels)
    batch = R.sample_clips(rng, attrs, style, scenes=scenes, labels=labels)
    chunks = []
    for i in range(0, len(labels), 512):  # bounded memory
        sub = R.ClipBatch(*(a[i:i + 512] for a in (batch.shape, batch.colour, batch.size, batch.texture, batch.motion)),
                          params={k: (v[i:i + 512] if k != "noise_seed" else v + i) for k, v in batch.params.items()})
        chunks.append(R.render(sub, style))
    out = (torch.cat(chunks), torch.as_tensor(labels), attrs)
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_MAX:
        _CACHE.popitem(last=False)
    if path:
        os.makedirs(disk, exist_ok=True)
        torch.save({"frames": out[0], "labels": out[1], "attributes": out[2]}, path)
    return out


def get_dataset(name: str, split: str = "base_train", shots: int = 16, split_seed: int = 1, world_seed: int = 0,
                shift: Optional[float] = None, context: Optional[float] = None, test_per_class: Optional[int] = None,
                frames: int = 8, res: int = 32) -> WorldDataset:
    """One split of an evaluated dataset.

    Args:
        name: One of :func:`dataset_names`.
        split: ``base_train`` / ``novel_train`` / ``train`` (K-shot per class of the base, novel or
            all classes), ``base_test`` / ``novel_test`` / ``test`` (fixed test clips).
            Labels index the split's own :attr:`WorldDataset.classnames`.
        shots: K for the training splits (clips of K <= 16 are prefixes of the same pool).
        split_seed: Training split s1, s2, s3 (1, 2, 3); test splits do not depend on it.
        world_seed: Seed of the whole world (scenes, test clips).
        shift: Domain shift from the pretraining style (default :data:`DEFAULT_SHIFT`).
        context: Probability of the class's own scene (default :data:`DEFAULT_CONTEXT`).
        test_per_class: Test clips per class (default :data:`DEFAULT_TEST_PER_CLASS`).
        frames: Frames per clip.
        res: Frame size in pixels (the shipped model takes 32).

    Returns:
        A :class:`WorldDataset`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name not in V.DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {dataset_names()}")
    info = dataset_info(name)
    classes, _ = V.DATASETS[name][1]()
    shift = DEFAULT_SHIFT if shift is None else float(shift)
    context = DEFAULT_CONTEXT if context is None else float(context)
    part, kind = (split.split("_") + [None])[:2] if "_" in split else ("all", split)
    wanted = info["classnames"] if part == "all" else info[part]
    style = R.Style(frames=frames, res=res, shift=shift, trail=info["trail"], context=context)
    scenes = _scenes(name, len(classes), world_seed)
    if kind == "train":
        per_class = max(shots, DEFAULT_POOL)
        seed = _seed(world_seed, name, "train", split_seed, per_class)
    else:
        per_class = test_per_class or DEFAULT_TEST_PER_CLASS
        seed = _seed(world_seed, name, "test", per_class)
    key = (name, kind, per_class, split_seed if kind == "train" else 0, world_seed, shift, context, frames, res)
    frames_u8, labels, attrs = _render_classes(key, classes, per_class, seed, style, scenes)
    keep_cls = [info["classnames"].index(c) for c in wanted]
    idx = []
    for c in keep_cls:
        rows = np.nonzero(labels.numpy() == c)[0]
        idx.extend(rows[:shots] if kind == "train" else rows)
    idx = np.asarray(idx)
    remap = {c: i for i, c in enumerate(keep_cls)}
    new_labels = torch.as_tensor([remap[int(l)] for l in labels[idx]])
    sub_attrs = {k: v[idx] for k, v in attrs.items()}
    return WorldDataset(frames_u8[idx], new_labels, wanted, sub_attrs)


def hard_prompt_source(split: str = "train", shots: int = 16, split_seed: int = 1, world_seed: int = 0,
                       shift: Optional[float] = None, test_per_class: Optional[int] = None) -> WorldDataset:
    """The disjoint class set on which hard prompts are learned ((texture, motion) classes).

    Args:
        split: ``train`` (K-shot) or ``test``.
        shots, split_seed, world_seed, shift, test_per_class: As in :func:`get_dataset`.

    Returns:
        A :class:`WorldDataset` whose class names share no name with any evaluated dataset.
    """
    return _aux("hardsrc", V.hard_prompt_classes(), split, shots, split_seed, world_seed, shift, test_per_class)


def anchor_set(per_class: int = 8, world_seed: int = 0, shift: Optional[float] = None) -> Tuple[WorldDataset, List[str]]:
    """Anchor clips from the irrelevant class set and their labels (the negative prompts).

    Args:
        per_class: Clips per anchor label.
        world_seed: World seed.
        shift: Domain shift (default :data:`DEFAULT_SHIFT`, like the downstream data).

    Returns:
        ``(clips, anchor_labels)``: a :class:`WorldDataset` (``clips.videos()`` gives the tensor)
        and the anchor label strings (its class names).
    """
    ds = _aux("anchors", V.anchor_classes(), "test", per_class, 1, world_seed, shift, per_class)
    return ds, list(ds.classnames)


def _aux(name, classes, split, shots, split_seed, world_seed, shift, test_per_class):
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    shift = DEFAULT_SHIFT if shift is None else float(shift)
    style = R.Style(shift=shift, trail=1.0, context=0.0)
    if split == "train":
        per_class, seed = max(shots, DEFAULT_POOL), _seed(world_seed, name, "train", split_seed, max(shots, DEFAULT_POOL))
    else:
        per_class = test_per_class or DEFAULT_TEST_PER_CLASS
        seed = _seed(world_seed, name, "test", per_class)
    key = (name, split, per_class, split_seed if split == "train" else 0, world_seed, shift, 0.0, 8, 32)
    frames_u8, labels, attrs = _render_classes(key, classes, per_class, seed, style, None)
    if split == "train" and shots < per_class:
        idx = np.concatenate([np.nonzero(labels.numpy() == c)[0][:shots] for c in range(len(classes))])
        return WorldDataset(frames_u8[idx], labels[idx], [c.name for c in classes], {k: v[idx] for k, v in attrs.items()})
    return WorldDataset(frames_u8, labels, [c.name for c in classes], attrs)
