"""Class descriptions: several texts per class, encoded with the prompts and averaged per class.

A description file gives each class one or more descriptions, as a person or an LLM writes them
(CuPL-style "a video of someone swinging a bat at a ball"). Two formats:

* CSV, one description per row: ``class,description`` (a header ``class,description`` is
  optional; a description may hold commas, quoted or not: every field after the first is joined);
  a class takes as many rows as it has descriptions.
* JSON, one object: ``{"class name": ["description", ...], ...}`` (a single string is one
  description).

Class names are matched as label files compare them (case, underscores and spacing ignored:
``playing_guitar`` matches ``Playing guitar``), and the result is keyed by the dataset's own
spelling. With the dataset's class names given, a class the file names that the dataset does not
have, an empty description and a class without any description are errors that name the file and
the line, so that a description set meant for another dataset never trains silently.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from promptcouple.constants import class_key
from promptcouple.errors import InvalidInputError, InvalidTypeError, MissingFileError
from promptcouple.fileio import PathLike

__all__ = ["Descriptions", "read_descriptions", "check_descriptions", "descriptions_for"]

#: Class name -> its descriptions, in the order given.
Descriptions = Mapping[str, Sequence[str]]

_HEADERS = {("class", "description"), ("class", "descriptions"), ("name", "description"),
            ("classname", "description"), ("class_name", "description")}


def read_descriptions(path: PathLike, classnames: Optional[Sequence[str]] = None) -> dict[str, tuple[str, ...]]:
    """Read a description file (CSV or JSON, by its content: JSON starts with ``{``).

    Args:
        path: The file.
        classnames: The dataset's classes. With them every class the file names must be one of
            them, every one of them must have a description, and the result is keyed by these
            spellings; without them the file's own spellings are kept.

    Returns:
        ``{class name: (description, ...)}`` in the file's order (or ``classnames``' order).

    Raises:
        MissingFileError: The file does not exist.
        InvalidInputError: A malformed file, an empty description, a class the dataset does not
            have, or a class of the dataset without a description (the message names the file and
            the line, and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"description file {str(path)!r} does not exist; expected a CSV "
                               "(class,description per row) or a JSON object {class: [descriptions]}")
    text = path.read_text(encoding="utf-8-sig")
    rows = _json_rows(path, text) if text.lstrip().startswith("{") else _csv_rows(path, text)
    if not rows:
        raise InvalidInputError(f"{path}: no descriptions; expected a CSV (class,description per row) or "
                                "a JSON object {class: [descriptions]}")
    out: dict[str, list[str]] = {}
    spelled: dict[str, str] = {}  # class_key -> the dataset's (or the file's first) spelling
    known = {class_key(n): n for n in classnames} if classnames is not None else None
    for line, name, description in rows:
        where = f"{path}:{line}"
        if not name.strip():
            raise InvalidInputError(f"{where}: a description without a class name; expected 'class,description'")
        if not description.strip():
            raise InvalidInputError(f"{where}: class {name!r} has an empty description; write the description "
                                    "or remove the row")
        key = class_key(name)
        if known is not None and key not in known:
            raise InvalidInputError(f"{where}: class {name!r} is not a class of this dataset "
                                    f"({_sample(classnames)}); fix the name or remove its descriptions")
        own = spelled.setdefault(key, known[key] if known is not None else name.strip())
        out.setdefault(own, []).append(" ".join(description.split()))
    if classnames is not None:
        missing = [n for n in classnames if n not in out]
        if missing:
            raise InvalidInputError(
                f"{path}: class(es) {_sample(missing)} have no description (the file describes {len(out)} of "
                f"{len(classnames)} classes, up to line {rows[-1][0]}); add a row 'class,description' for each "
                "(the class name itself is a valid description)")
        return {n: tuple(out[n]) for n in classnames}
    return {n: tuple(d) for n, d in out.items()}


def check_descriptions(descriptions: Any, source: str = "descriptions") -> dict[str, tuple[str, ...]]:
    """A description mapping as ``{class: (description, ...)}``, refusing what would silently
    encode the wrong texts: not a mapping, a class with a plain string (one description per
    letter) or with none, an empty description."""
    if not isinstance(descriptions, Mapping):
        raise InvalidTypeError(f"{source} must be a mapping {{class name: [description, ...]}} (read one with "
                               f"promptcouple.descriptions.read_descriptions), got {type(descriptions).__name__}")
    out = {}
    for name, texts in descriptions.items():
        if isinstance(texts, str):
            raise InvalidInputError(f"{source}[{name!r}] is the string {texts!r}; expected a list of descriptions: "
                                    f"[{texts!r}] for one")
        texts = tuple(texts)
        if not texts:
            raise InvalidInputError(f"{source}[{name!r}] is empty; give the class at least one description, or "
                                    "leave it out to use its name")
        for i, t in enumerate(texts):
            if not (isinstance(t, str) and t.strip()):
                raise InvalidInputError(f"{source}[{name!r}][{i}] is {t!r}, expected a non-empty string")
        out[str(name)] = texts
    return out


def descriptions_for(descriptions: Optional[Descriptions], classnames: Sequence[str]) -> Optional[dict]:
    """The part of ``descriptions`` that ``classnames`` use (``None`` when none of them has one):
    what a prompt file records beside the classes it was trained or evaluated on."""
    if not descriptions:
        return None
    used = {n: list(descriptions[n]) for n in classnames if n in descriptions}
    return used or None


def _sample(names: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(repr(x) for x in list(names)[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _csv_rows(path: Path, text: str) -> list[tuple[int, str, str]]:
    rows = []
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        if line == 1 and tuple(f.strip().lower() for f in row[:2]) in _HEADERS:
            continue
        if len(row) < 2:
            raise InvalidInputError(f"{path}:{line}: {row[0]!r} has no description; expected 'class,description' "
                                    "(one description per row)")
        rows.append((line, row[0], ",".join(row[1:])))
    return rows


def _json_rows(path: Path, text: str) -> list[tuple[int, str, str]]:
    try:
        pairs = json.loads(text, object_pairs_hook=list)
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); expected an object "
                                "{class: [descriptions]}") from None
    rows, pos = [], 0
    for name, value in pairs:
        # json reports no positions of values: find the key in the text, after the previous one
        found = text.find(json.dumps(name, ensure_ascii=False)[1:-1], pos)
        pos = found if found >= 0 else pos
        line = text.count("\n", 0, pos) + 1
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InvalidInputError(f"{path}:{line}: class {name!r} has {json.dumps(value)[:60]}; expected a list "
                                    "of description strings")
        if not texts:
            raise InvalidInputError(f"{path}:{line}: class {name!r} has no description (an empty list); write "
                                    "at least one or remove the class")
        rows.extend((line, name, t) for t in texts)
    return rows


def description_rows(classnames: Sequence[str], descriptions: Optional[Descriptions]) -> Optional[list[tuple]]:
    """The text rows of one pass over ``classnames``: ``(class index, description)`` per description
    of a described class, ``(class index, None)`` (its name) for the others; ``None`` when no class
    has descriptions (then nothing changes: one row per class name)."""
    if not descriptions or not any(n in descriptions for n in classnames):
        return None
    return [(i, t) for i, n in enumerate(classnames) for t in (descriptions[n] if n in descriptions else (None,))]


def average_rows(features, rows: Sequence[tuple], num_classes: int):
    """``(K, D)`` class features from the ``(N, D)`` features of :func:`description_rows`' rows: a
    described class is the mean of its descriptions' L2-normalised features (not renormalised: the
    logits normalise anyway), a class given by its name keeps its row as it is."""
    owner = torch.as_tensor([i for i, _ in rows], device=features.device)
    described = torch.as_tensor([t is not None for _, t in rows], device=features.device)
    counts = torch.bincount(owner, minlength=num_classes).to(features.dtype)
    x = torch.where(described[:, None], F.normalize(features, dim=-1), features)
    out = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    return out.index_add(0, owner, x / counts[owner][:, None])
