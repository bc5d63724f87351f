"""``promptcouple split {base-novel,few-shot,classes}``: class splits and K-shot lists as files.

The splitting itself is :mod:`promptcouple.data.splits`; this module reads the files the command
names, writes the lists and label files, and says what it wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from promptcouple.commands import command_parser
from promptcouple.constants import class_key
from promptcouple.data.lists import read_label_csv, read_video_list, write_label_csv, write_video_list
from promptcouple.data.splits import (base_novel_split, k_shot_split, k_shot_splits, select_classes,
                                      split_from_names, subset_records)
from promptcouple.errors import InvalidInputError, MissingFileError, PromptcoupleError


def _read_list(list_file, classnames: Sequence[str]):
    return read_video_list(list_file, num_classes=len(classnames))


def _cmd_base_novel(args: argparse.Namespace) -> None:
    names = read_label_csv(args.labels)
    train = _read_list(args.train, names)
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
        val = _read_list(args.val, names)
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
    train = _read_list(args.train, names)
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
            write_video_list(out / name, subset_records(_read_list(flag, names), ids))
            written.append(name)
    if args.shots > 0:
        train = subset_records(_read_list(args.train, names), ids)
        recs = k_shot_split(train, args.shots, args.seed, num_classes=len(ids), allow_fewer=args.allow_fewer)
        write_video_list(out / f"train_{args.shots}shot.txt", recs)
        written.append(f"train_{args.shots}shot.txt")
    dropped = {class_key(n) for n in exclude}
    excluded = sum(class_key(n) in dropped for n in names)
    note = f" ({excluded} excluded by name)" if exclude else ""
    print(f"{len(ids)} of {len(names)} classes{note}; wrote {', '.join(written)} to {out}")


def _parser() -> argparse.ArgumentParser:
    from promptcouple.data import splits

    p = command_parser("split", splits.__doc__.split("\n\n")[0])
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


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``promptcouple split``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "classes" and args.classes and (args.exclude or args.num is not None):
        parser.error("--classes takes the classes as given; drop --exclude/--num")
    if args.cmd == "base-novel" and args.novel_labels and not args.base_labels:
        parser.error("--novel-labels needs --base-labels")
    try:
        args.func(args)
    except PromptcoupleError:
        raise
    except FileNotFoundError as err:  # what the command was given, so exit status 2, as before
        raise MissingFileError(f"{args.cmd}: {err}") from None
    except ValueError as err:
        raise InvalidInputError(f"{args.cmd}: {err}") from None
    return 0
