"""Base/novel class splits and K-shot training lists (the `promptcouple split` command).

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

import argparse
import math
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

from promptcouple.constants import class_key
from promptcouple.errors import InvalidInputError
from promptcouple.fileio import PathLike

from .lists import ListFormatError, VideoRecord, read_label_csv, read_video_list, write_label_csv, write_video_list

__all__ = [
    "ClassSplit",
    "base_novel_split",
    "split_from_names",
    "subset_records",
    "k_shot_split",
    "k_shot_splits",
    "select_classes",
    "cli_main",
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


# ----------------------------------------------------------------------------------------- CLI


def _read_checked(list_file: PathLike, classnames: Sequence[str]) -> list[VideoRecord]:
    return read_video_list(list_file, num_classes=len(classnames))


def _cmd_base_novel(args: argparse.Namespace) -> None:
    names = read_label_csv(args.labels)
    train = _read_checked(args.train, names)
    if args.base_labels:
        split = split_from_names(
            names, read_label_csv(args.base_labels), read_label_csv(args.novel_labels) if args.novel_labels else None
        )
    else:
        split = base_novel_split(names, method=args.method, num_base=args.num_base, seed=args.seed, records=train)
    out = Path(args.out)
    write_label_csv(out / "base_labels.csv", [names[c] for c in split.base])
    write_label_csv(out / "novel_labels.csv", [names[c] for c in split.novel])
    base_train = subset_records(train, split.base)
    write_video_list(out / "base_train.txt", base_train)
    written = ["base_labels.csv", "novel_labels.csv", "base_train.txt"]
    if args.val:
        val = _read_checked(args.val, names)
        write_video_list(out / "base_val.txt", subset_records(val, split.base))
        write_video_list(out / "novel_val.txt", subset_records(val, split.novel))
        written += ["base_val.txt", "novel_val.txt"]
    if args.shots > 0:
        splits = k_shot_splits(
            base_train, args.shots, args.seeds, disjoint=args.disjoint,
            num_classes=len(split.base), allow_fewer=args.allow_fewer,
        )
        for s, recs in splits.items():
            write_video_list(out / f"fs_base_s{s}_train.txt", recs)
            written.append(f"fs_base_s{s}_train.txt")
    print(f"{len(split.base)} base / {len(split.novel)} novel classes; wrote {', '.join(written)} to {out}")


def _cmd_few_shot(args: argparse.Namespace) -> None:
    names = read_label_csv(args.labels)
    train = _read_checked(args.train, names)
    out = Path(args.out)
    written = []
    for k in args.shots:
        splits = k_shot_splits(
            train, k, args.seeds, disjoint=args.disjoint, num_classes=len(names), allow_fewer=args.allow_fewer
        )
        for s, recs in splits.items():
            write_video_list(out / f"train_{k}shot_s{s}.txt", recs)
            written.append(f"train_{k}shot_s{s}.txt")
    print(f"{len(names)} classes; wrote {', '.join(written)} to {out}")


def _cmd_classes(args: argparse.Namespace) -> None:
    if not (args.train or args.val):
        raise InvalidInputError("give --train and/or --val: the lists to take the classes' videos from")
    if args.shots > 0 and not args.train:
        raise InvalidInputError("--shots draws from the training list: give --train")
    names = read_label_csv(args.labels)
    exclude = [n for f in args.exclude for n in read_label_csv(f)]
    keep = read_label_csv(args.classes) if args.classes else None
    ids = select_classes(names, exclude=exclude, keep=keep, num=args.num, seed=args.seed)
    out = Path(args.out)
    write_label_csv(out / "labels.csv", [names[c] for c in ids])
    written = ["labels.csv"]
    for flag, name in ((args.train, "train.txt"), (args.val, "val.txt")):
        if flag:
            write_video_list(out / name, subset_records(_read_checked(flag, names), ids))
            written.append(name)
    if args.shots > 0:
        train = subset_records(_read_checked(args.train, names), ids)
        recs = k_shot_split(train, args.shots, args.seed, num_classes=len(ids), allow_fewer=args.allow_fewer)
        write_video_list(out / f"train_{args.shots}shot.txt", recs)
        written.append(f"train_{args.shots}shot.txt")
    dropped = {class_key(n) for n in exclude}
    excluded = sum(class_key(n) in dropped for n in names)
    note = f" ({excluded} excluded by name)" if exclude else ""
    print(f"{len(ids)} of {len(names)} classes{note}; wrote {', '.join(written)} to {out}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="promptcouple split", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--labels", required=True, help="full label CSV 'id,name'")
        q.add_argument("--train", required=True, help="full training list ('path label' or 'folder num_frames label')")
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="K-shot split seeds (default 1 2 3)")
        q.add_argument("--disjoint", action="store_true", help="make the K-shot splits of different seeds disjoint")
        q.add_argument("--allow-fewer", action="store_true", help="take all videos of classes with fewer than K")

    b = sub.add_parser(
        "base-novel",
        help="base/novel class split: label files, base_train/base_val/novel_val lists, fs_base_s{seed}_train K-shot lists",
    )
    common(b)
    b.add_argument("--val", help="full evaluation list (writes base_val.txt and novel_val.txt)")
    b.add_argument("--method", choices=["id", "frequency", "random"], default="id",
                   help="id: lowest ids are base; frequency: most frequent in --train (ViFi-CLIP rule); random: seeded")
    b.add_argument("--num-base", type=int, default=None, help="number of base classes (default ceil(K/2))")
    b.add_argument("--seed", type=int, default=0, help="seed of --method random")
    b.add_argument("--base-labels", help="take the base classes from this label CSV (e.g. ViFi-CLIP's), by name")
    b.add_argument("--novel-labels", help="with --base-labels: the novel classes (default: all others)")
    b.add_argument("--shots", type=int, default=16, help="K-shot per base class (0: no K-shot lists; default 16)")
    b.set_defaults(func=_cmd_base_novel)

    f = sub.add_parser("few-shot", help="K-shot lists over all classes: train_{K}shot_s{seed}.txt")
    common(f)
    f.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8, 16], help="K values (default 2 4 8 16)")
    f.set_defaults(func=_cmd_few_shot)

    c = sub.add_parser(
        "classes",
        help="a class subset (not in other datasets, N drawn by seed, or a released label file): "
             "labels.csv, train.txt, val.txt, train_{K}shot.txt",
    )
    c.add_argument("--labels", required=True, help="full label CSV 'id,name' of the lists")
    c.add_argument("--train", help="full training list (writes train.txt, and train_{K}shot.txt with --shots)")
    c.add_argument("--val", help="full evaluation list (writes val.txt)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--exclude", nargs="+", default=[], metavar="LABELS_CSV",
                   help="leave out the classes named in these label files (e.g. Kinetics-400's)")
    c.add_argument("--classes", metavar="LABELS_CSV",
                   help="keep exactly these classes, in this order (e.g. ViFi-CLIP's ZS_split1_K600.csv)")
    c.add_argument("--num", type=int, default=None, help="draw this many of the remaining classes (seeded)")
    c.add_argument("--seed", type=int, default=1, help="seed of --num and --shots (default 1)")
    c.add_argument("--shots", type=int, default=0, help="also write a K-shot training list (default 0: none)")
    c.add_argument("--allow-fewer", action="store_true", help="take all videos of classes with fewer than K")
    c.set_defaults(func=_cmd_classes)
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``promptcouple split``; returns the exit status (2 on bad input)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.cmd == "classes" and args.classes and (args.exclude or args.num is not None):
        print("promptcouple split: error: --classes takes the classes as given; drop --exclude/--num", file=sys.stderr)
        return 2
    if args.cmd == "base-novel" and args.novel_labels and not args.base_labels:
        print("promptcouple split: error: --novel-labels needs --base-labels", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except (ListFormatError, ValueError, FileNotFoundError) as err:
        print(f"promptcouple split {args.cmd}: error: {err}", file=sys.stderr)
        return 2
    return 0
