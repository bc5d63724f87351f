"""Base/novel class splits and K-shot training lists (``promptcouple split`` writes them as files).

Base/novel (``base_novel_split``), methods:

* ``"id"``: the ``num_base`` lowest class ids are base, the rest novel (deterministic, no data needed).
* ``"frequency"``: the ViFi-CLIP rule ("the most frequent classes are base"), counted on a
  training list; ties go to the lower id.
* ``"random"``: a seeded random choice (``random.Random(seed)``, stable across Python versions).

``num_base`` defaults to ``ceil(K/2)``: HMDB-51 26/25, UCF-101 51/50, SSv2 87/87, K400 200/200.
No rule reproduces the released ViFi-CLIP / GA2-CLIP split files exactly (their HMDB-51 base classes
are ids 25-50, the *upper* half; their UCF-101 base classes are the most frequent up to ties and
listed in no sorted order). To train on exactly those splits, pass their label files
(``--base-labels``/``--novel-labels``): classes are then taken by name, in the order of those files,
so the written lists use the same ids as the released ones.

The split files relabel classes ``0..len(subset)-1`` in the subset's order and come with their own
label CSV, as ViFi-CLIP's ``*_base_labels.csv`` / ``*_novel_labels.csv`` do.

Class subsets (``select_classes``, ``promptcouple split classes``): the classes of one dataset that
are not in others (names compared after lower-casing and turning ``_`` into spaces), optionally
``num`` of them drawn with a seed, or exactly the classes of a given label file in its order. The
protocols need three: the zero-shot K600 splits (160 of the K600 classes not in K400, per split; or
ViFi-CLIP's ``ZS_split{1,2,3}_K600.csv`` by name), the hard-prompt source of K400 (100 K600 classes
not in K400) and anchor sets (classes of another dataset disjoint from the target's).

K-shot (``k_shot_split``): for each class, ``k`` distinct entries drawn without replacement from
that class's entries in list order, with a generator seeded by ``(seed, class id)``: the same
list and seed always give the same file, and a class's draw does not depend on the other classes.
Frame-folder entries listed with 0 frames are never drawn (the dataset would skip them).
The protocol's three training splits are seeds 1, 2, 3 (``s1``, ``s2``, ``s3``). They are drawn
independently by default and may share videos, as ViFi-CLIP's released ``fs_base_s{1,2,3}``
files do; ``disjoint=True`` makes them pairwise disjoint (needs ``k * len(seeds)`` videos per class).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from promptcouple.constants import class_key
from promptcouple.errors import InvalidInputError

from .lists import VideoRecord

__all__ = [
    "ClassSplit",
    "base_novel_split",
    "split_from_names",
    "subset_records",
    "k_shot_split",
    "k_shot_splits",
    "select_classes",
]

SplitMethod = Literal["id", "frequency", "random"]


@dataclass(frozen=True)
class ClassSplit:
    """Class ids (into the full label file) of the base and novel classes, in label order of each subset."""

    base: tuple[int, ...]
    novel: tuple[int, ...]


def base_novel_split(
    classnames: Sequence[str],
    *,
    method: SplitMethod = "id",
    num_base: int | None = None,
    seed: int = 0,
    records: Sequence[VideoRecord] | None = None,
) -> ClassSplit:
    """Splits classes into base and novel halves.

    Args:
        classnames: All class names (ids ``0..K-1``).
        method: ``"id"``, ``"frequency"`` or ``"random"`` (see the module docstring).
        num_base: Base classes (default ``ceil(K/2)``).
        seed: Seed of the ``"random"`` method.
        records: Training entries, needed by ``"frequency"``.

    Returns:
        The split, each side in increasing id order.
    """
    k = len(classnames)
    num_base = math.ceil(k / 2) if num_base is None else int(num_base)
    if not 0 < num_base < k:
        raise InvalidInputError(f"num_base must be in [1, {k - 1}] for {k} classes, got {num_base}")
    if method == "id":
        base = list(range(num_base))
    elif method == "random":
        base = random.Random(seed).sample(range(k), num_base)
    elif method == "frequency":
        if records is None:
            raise InvalidInputError("method='frequency' counts videos per class: pass records=read_video_list(train_list)")
        counts = Counter(r.label for r in records)
        base = sorted(range(k), key=lambda c: (-counts.get(c, 0), c))[:num_base]
    else:
        raise InvalidInputError(f"method must be 'id', 'frequency' or 'random', got {method!r}")
    base_set = set(base)
    return ClassSplit(tuple(sorted(base)), tuple(c for c in range(k) if c not in base_set))


def split_from_names(
    classnames: Sequence[str], base_names: Sequence[str], novel_names: Sequence[str] | None = None
) -> ClassSplit:
    """Builds a split from subset label files (e.g. ViFi-CLIP's ``*_base_labels.csv``), keeping their order.

    Args:
        classnames: All class names.
        base_names: Names of the base classes, in the order their new ids should follow.
        novel_names: Names of the novel classes (default: every other class, in id order).

    Raises:
        ValueError: Unknown names, duplicates, or base and novel overlapping.
    """
    ids = {name: i for i, name in enumerate(classnames)}

    def lookup(names: Sequence[str], what: str) -> tuple[int, ...]:
        unknown = [n for n in names if n not in ids]
        if unknown:
            raise InvalidInputError(f"{what} classes not in the full label file: {unknown[:10]} (names must match exactly)")
        if len(set(names)) != len(names):
            dup = [n for n, c in Counter(names).items() if c > 1]
            raise InvalidInputError(f"{what} classes listed twice: {dup[:10]}")
        return tuple(ids[n] for n in names)

    base = lookup(base_names, "base")
    novel = (
        tuple(c for c in range(len(classnames)) if c not in set(base))
        if novel_names is None
        else lookup(novel_names, "novel")
    )
    overlap = set(base) & set(novel)
    if overlap:
        raise InvalidInputError(f"base and novel share classes: {[classnames[c] for c in sorted(overlap)][:10]}")
    return ClassSplit(base, novel)


def subset_records(records: Sequence[VideoRecord], class_ids: Sequence[int]) -> list[VideoRecord]:
    """Keeps the entries of ``class_ids`` and relabels them ``0..len(class_ids)-1`` in that order."""
    new_id = {c: i for i, c in enumerate(class_ids)}
    return [replace(r, label=new_id[r.label]) for r in records if r.label in new_id]


def _by_class(records: Sequence[VideoRecord]) -> dict[int, list[VideoRecord]]:
    groups: dict[int, list[VideoRecord]] = defaultdict(list)
    for r in records:
        if r.kind == "frames" and r.num_frames == 0:  # failed extraction: the dataset would skip it
            continue
        groups[r.label].append(r)
    return groups


def _check_enough(groups: dict[int, list[VideoRecord]], need: int, num_classes: int | None) -> None:
    labels = range(num_classes) if num_classes is not None else sorted(groups)
    short = [(c, len(groups.get(c, []))) for c in labels if len(groups.get(c, [])) < need]
    if short:
        listed = ", ".join(f"class {c}: {n}" for c, n in short[:10])
        raise InvalidInputError(
            f"{len(short)} classes have fewer than {need} videos ({listed}{' ...' if len(short) > 10 else ''}); "
            "lower the shots, or pass allow_fewer=True (--allow-fewer) to take all videos of those classes"
        )


def k_shot_split(
    records: Sequence[VideoRecord],
    shots: int,
    seed: int,
    *,
    num_classes: int | None = None,
    allow_fewer: bool = False,
) -> list[VideoRecord]:
    """Draws ``shots`` entries per class, deterministically from ``seed``.

    Args:
        records: The full training list.
        shots: Entries per class (K).
        seed: Split seed (the protocol uses 1, 2, 3).
        num_classes: If given, every class ``0..num_classes-1`` must have entries.
        allow_fewer: Take all entries of classes with fewer than ``shots`` instead of raising.

    Returns:
        Entries grouped by class (increasing id), in drawing order within a class.
    """
    if shots < 1:
        raise InvalidInputError(f"shots must be >= 1, got {shots}")
    groups = _by_class(records)
    if not allow_fewer:
        _check_enough(groups, shots, num_classes)
    out: list[VideoRecord] = []
    for c in sorted(groups):
        members = groups[c]
        rng = random.Random(f"promptcouple-kshot:{seed}:{c}")  # str seeds hash with sha512: stable everywhere
        out += rng.sample(members, min(shots, len(members)))
    return out


def k_shot_splits(
    records: Sequence[VideoRecord],
    shots: int,
    seeds: Sequence[int] = (1, 2, 3),
    *,
    disjoint: bool = False,
    num_classes: int | None = None,
    allow_fewer: bool = False,
) -> dict[int, list[VideoRecord]]:
    """K-shot lists for several seeds (``{seed: entries}``); pairwise disjoint if ``disjoint``.

    Disjoint splits shuffle each class once (seeded by all the seeds) and give consecutive chunks
    of ``shots`` entries to the seeds in order. With ``allow_fewer`` a short class is shared out as
    far as it goes (later seeds may get fewer or none of it).
    """
    if not disjoint:
        return {s: k_shot_split(records, shots, s, num_classes=num_classes, allow_fewer=allow_fewer) for s in seeds}
    if shots < 1:
        raise InvalidInputError(f"shots must be >= 1, got {shots}")
    if len(set(seeds)) != len(seeds):
        raise InvalidInputError(f"seeds must be distinct, got {list(seeds)}")
    groups = _by_class(records)
    if not allow_fewer:
        _check_enough(groups, shots * len(seeds), num_classes)
    out: dict[int, list[VideoRecord]] = {s: [] for s in seeds}
    tag = ",".join(map(str, seeds))
    for c in sorted(groups):
        members = list(groups[c])
        random.Random(f"promptcouple-kshot-disjoint:{tag}:{c}").shuffle(members)
        for i, s in enumerate(seeds):
            out[s] += members[i * shots : (i + 1) * shots]
    return out


def select_classes(
    classnames: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    keep: Sequence[str] | None = None,
    num: int | None = None,
    seed: int = 1,
) -> tuple[int, ...]:
    """Class ids of a subset of ``classnames`` (names compared lower-case, ``_`` as a space).

    Args:
        classnames: All class names (ids ``0..K-1``).
        exclude: Names to leave out (e.g. every class of Kinetics-400); names not among
            ``classnames`` are ignored.
        keep: Exactly these classes, in this order (a released split's label file); not with
            ``exclude`` or ``num``.
        num: Draw this many of the remaining classes (``random.Random`` seeded by ``seed``,
            stable across Python versions); ``None`` keeps them all.
        seed: Seed of the draw.

    Returns:
        The ids, in ``keep`` order, else in increasing id order.

    Raises:
        ValueError: ``keep`` names unknown or repeated classes, ``num`` exceeds what remains, or
            nothing remains.
    """
    index: dict[str, int] = {}
    for i, name in enumerate(classnames):
        index.setdefault(class_key(name), i)
    if keep is not None:
        if exclude or num is not None:
            raise InvalidInputError("keep takes the classes as given; it does not combine with exclude or num")
        unknown = [n for n in keep if class_key(n) not in index]
        if unknown:
            raise InvalidInputError(f"{len(unknown)} classes to keep are not in the label file: {unknown[:10]}")
        ids = [index[class_key(n)] for n in keep]
        dup = sorted({classnames[i] for i in ids if ids.count(i) > 1})
        if dup:
            raise InvalidInputError(f"classes to keep listed twice: {dup[:10]}")
        return tuple(ids)
    dropped = {class_key(n) for n in exclude}
    remaining = [i for i, name in enumerate(classnames) if class_key(name) not in dropped]
    if not remaining:
        raise InvalidInputError(f"all {len(classnames)} classes are excluded")
    if num is not None:
        if not 0 < num <= len(remaining):
            raise InvalidInputError(f"num must be in [1, {len(remaining)}] (classes left after exclusion), got {num}")
        remaining = sorted(random.Random(f"promptcouple-classes:{seed}").sample(remaining, num))
    return tuple(remaining)
