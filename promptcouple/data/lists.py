"""Video list files and label files in the formats ViFi-CLIP and GA2-CLIP / Text4Vis users already have.

Two list formats, one entry per line, fields separated by white space:

* ``path label`` (ViFi-CLIP, GA2-CLIP video lists): ``path`` is a video file.
* ``folder num_frames label`` (GA2-CLIP / Text4Vis "rgb" lists): ``folder`` holds the decoded frames
  ``img_00001.jpg`` ... ``img_{num_frames:05d}.jpg`` (1-based, as in those repositories).
  A three-field line whose path ends in a video extension (``.mp4``, ``.avi``, ...) is a video file
  with a frame-count column; the count is kept for writing the list back but the real count is
  read from the container.

The format is detected from the first entry and every other line must match it. Empty lines are
ignored; there are no comment lines, since real file names start with ``#`` (HMDB-51:
``#437_How_To_Ride_A_Bike_...avi``). Paths may contain spaces (the numeric fields are taken from
the right). A frame count of 0 is accepted (GA2-CLIP's HMDB-51 rgb lists hold such entries for
videos whose frame extraction failed); the dataset skips those entries.

Label files are CSV ``id,name`` with an optional header; ids must be exactly ``0..K-1``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

from promptcouple.errors import InvalidInputError, ListFormatError, MissingFileError
from promptcouple.fileio import PathLike

__all__ = [
    "ListFormatError",
    "VideoRecord",
    "VIDEO_EXTENSIONS",
    "read_label_csv",
    "read_video_list",
    "write_label_csv",
    "write_video_list",
]

ListFormat = Literal["auto", "video", "frames"]

# Extensions that mark a three-field line as "video file + frame count" instead of a frame folder.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")



@dataclass(frozen=True)
class VideoRecord:
    """One entry of a video list.

    Attributes:
        path: The path as written in the list (relative to the dataset root, or absolute).
        label: Class id, an index into the label file.
        kind: ``"video"`` for a video file, ``"frames"`` for a folder of numbered frames.
        num_frames: Frame count from the list (always set for ``"frames"``, may be 0 for a failed
            extraction; for videos only when the list has a frame-count column, and then informational).
        line: 1-based line number in the list file, for error messages (not part of equality).
    """

    path: str
    label: int
    kind: Literal["video", "frames"] = "video"
    num_frames: int | None = None
    line: int = field(default=0, compare=False)


def _as_int(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        return None


def _detect(tokens: list[str]) -> tuple[str, int] | None:
    """Returns ``(kind, number of fields)`` for the first entry, or None if it fits no format."""
    if len(tokens) >= 3 and _as_int(tokens[-1]) is not None and _as_int(tokens[-2]) is not None:
        path = " ".join(tokens[:-2])
        return ("video" if path.lower().endswith(VIDEO_EXTENSIONS) else "frames"), 3
    if len(tokens) >= 2 and _as_int(tokens[-1]) is not None:
        return "video", 2
    return None


_FORMAT_TEXT = {2: "'path label'", 3: "'folder num_frames label'"}


def read_video_list(
    list_file: PathLike,
    *,
    list_format: ListFormat = "auto",
    num_classes: int | None = None,
) -> list[VideoRecord]:
    """Reads a ViFi-CLIP (``path label``) or GA2-CLIP/Text4Vis (``folder num_frames label``) list.

    Args:
        list_file: The list file.
        list_format: ``"auto"`` detects the format from the first entry; ``"video"`` forces
            ``path label`` (or ``path num_frames label`` when the first entry has three fields) and
            ``"frames"`` forces ``folder num_frames label``.
        num_classes: If given, every label must lie in ``[0, num_classes)``.

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: The list file does not exist.
        ListFormatError: A malformed line (named with its line number), a label out of range, or a
            list without entries.
    """
    if list_format not in ("auto", "video", "frames"):
        raise InvalidInputError(f"list_format must be 'auto', 'video' or 'frames', got {list_format!r}")
    list_file = Path(list_file)
    if not list_file.is_file():
        raise MissingFileError(f"video list {str(list_file)!r} does not exist")

    records: list[VideoRecord] = []
    kind: str | None = None
    n_fields = 0
    with open(list_file, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text:
                continue
            where = f"{list_file}:{lineno}"
            tokens = text.split()
            if kind is None:
                detected = _detect(tokens)
                if detected is None:
                    raise ListFormatError(
                        f"{where}: cannot read {text!r}: expected 'path label' (ViFi-CLIP) or "
                        "'folder num_frames label' (GA2-CLIP/Text4Vis), with integer label and frame count"
                    )
                kind, n_fields = detected
                if list_format == "frames":
                    if n_fields != 3:
                        raise ListFormatError(
                            f"{where}: list_format='frames' expects 'folder num_frames label', found {text!r}"
                        )
                    kind = "frames"
                elif list_format == "video":
                    kind = "video"
            elif n_fields == 2 and _detect(tokens) == ("frames", 3):
                raise ListFormatError(
                    f"{where}: {text!r} looks like 'folder num_frames label' but the list is in the "
                    "'path label' format (detected from its first entry); use one format per file"
                )
            parts = text.rsplit(None, n_fields - 1)
            if len(parts) != n_fields:
                raise ListFormatError(
                    f"{where}: expected {n_fields} fields {_FORMAT_TEXT[n_fields]} (format detected from the "
                    f"first entry), found {len(parts)} in {text!r}"
                )
            label = _as_int(parts[-1])
            if label is None or label < 0:
                raise ListFormatError(f"{where}: label {parts[-1]!r} is not a non-negative integer in {text!r}")
            if num_classes is not None and label >= num_classes:
                raise ListFormatError(
                    f"{where}: label {label} is out of range for {num_classes} classes (valid 0..{num_classes - 1}); "
                    "is this list meant for another label file (e.g. full vs base/novel labels)?"
                )
            num_frames = None
            if n_fields == 3:
                num_frames = _as_int(parts[1])
                if num_frames is None or num_frames < 0:
                    raise ListFormatError(f"{where}: frame count {parts[1]!r} is not a non-negative integer in {text!r}")
            records.append(VideoRecord(parts[0], label, kind, num_frames, lineno))  # type: ignore[arg-type]
    if not records:
        raise ListFormatError(f"video list {str(list_file)!r} has no entries (empty file or only blank lines)")
    return records


def read_label_csv(label_file: PathLike) -> list[str]:
    """Reads a label file ``id,name`` (header optional) into class names ordered by id.

    Names may contain commas (the remaining fields are joined) and may be quoted.

    Args:
        label_file: The CSV file.

    Returns:
        ``names`` with ``names[i]`` the name of class ``i``.

    Raises:
        FileNotFoundError: The file does not exist.
        ListFormatError: Non-integer or duplicate ids, missing ids, empty or duplicate names, or no classes.
    """
    label_file = Path(label_file)
    if not label_file.is_file():
        raise MissingFileError(f"label file {str(label_file)!r} does not exist")
    names: dict[int, str] = {}
    lines: dict[str, int] = {}  # name -> the line it was first given on
    with open(label_file, encoding="utf-8-sig", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            where = f"{label_file}:{lineno}"
            class_id = _as_int(row[0].strip())
            if class_id is None:
                if lineno == 1:  # header such as "id,name"
                    continue
                raise ListFormatError(f"{where}: id {row[0]!r} is not an integer; expected 'id,name'")
            name = ",".join(row[1:]).strip()
            if not name:
                raise ListFormatError(f"{where}: class {class_id} has no name; expected 'id,name'")
            if class_id in names:
                raise ListFormatError(f"{where}: class id {class_id} appears twice ({names[class_id]!r} and {name!r})")
            if class_id < 0:
                raise ListFormatError(f"{where}: class id {class_id} is negative")
            if name in lines:  # two ids with one name would train two classes no prompt can tell apart
                raise ListFormatError(f"{where}: class name {name!r} (id {class_id}) is also on line {lines[name]}; "
                                      "expected one name per class: give each class a distinct name")
            names[class_id] = name
            lines[name] = lineno
    if not names:
        raise ListFormatError(f"label file {str(label_file)!r} has no classes; expected lines 'id,name'")
    missing = sorted(set(range(len(names))) - set(names))
    if missing:
        raise ListFormatError(
            f"label file {str(label_file)!r}: ids must be 0..{len(names) - 1} without gaps; missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} (largest id {max(names)})"
        )
    return [names[i] for i in range(len(names))]


def write_label_csv(label_file: PathLike, classnames: Sequence[str]) -> None:
    """Writes class names as ``id,name`` with a header, quoting names that need it."""
    Path(label_file).parent.mkdir(parents=True, exist_ok=True)
    with open(label_file, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "name"])
        for i, name in enumerate(classnames):
            writer.writerow([i, name])


def write_video_list(list_file: PathLike, records: Iterable[VideoRecord]) -> None:
    """Writes records in the format they were read in (``path label`` or ``path num_frames label``)."""
    Path(list_file).parent.mkdir(parents=True, exist_ok=True)
    with open(list_file, "w", encoding="utf-8") as f:
        for r in records:
            middle = f" {r.num_frames}" if r.num_frames is not None else ""
            f.write(f"{r.path}{middle} {r.label}\n")
