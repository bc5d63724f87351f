"""`VideoListDataset`: videos or frame folders from a list file, sampled TSN-style, CLIP-normalised."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from torch.utils.data import Dataset

from promptcouple.errors import InvalidInputError, MissingFileError, RunError
from promptcouple.fileio import PathLike

from .decode import DECODE_ERRORS, VideoDecodeError, read_frame_folder, read_video_frames
from .lists import ListFormat, VideoRecord, read_label_csv, read_video_list
from .sampling import clip_indices
from .transforms import MULTISCALE_SCALES, EvalTransform, TrainTransform

__all__ = ["VideoListDataset"]

_MAX_LISTED_MISSING = 20


class VideoListDataset(Dataset):
    """Video classification dataset over a ViFi-CLIP or GA2-CLIP/Text4Vis list file.

    Items:
        * training: ``(frames, label)`` with ``frames`` float32 ``(T, 3, size, size)``;
        * evaluation: ``(frames, label)`` with ``frames`` float32 ``(V, T, 3, size, size)``,
          ``V = num_clips * num_crops`` views ordered clip-major (``v = clip * num_crops + crop``);
          average the logits over ``V``.

    Frames: ``T`` segments per clip, a random frame in each in training, evenly spaced positions
    inside each in evaluation (see :func:`~promptcouple.data.segment_indices`).

    Checked when the dataset is built, so errors come before training starts: the list format
    (with file and line), labels in ``[0, len(classnames))``, and that every video file / frame
    folder exists (all missing paths reported at once; ``check_files=False`` skips the file
    system walk for huge lists on slow storage). Frame-folder entries listed with 0 frames
    (GA2-CLIP's HMDB-51 lists have some) are reported in one warning and skipped as below.

    Undecodable videos: with ``on_error="skip"`` (default) a video that fails to decode is
    reported once with a ``RuntimeWarning`` naming the file, remembered in :attr:`skipped`, and the
    item is replaced by the next decodable entry of the list (index ``i+1, i+2, ...`` wrapping
    around), frames and label together. Substituting keeps the dataset length and batch sizes
    fixed (DistributedSampler shards, ``drop_last`` and collate are unaffected) and is
    deterministic for a given sampler order; the cost is that the substitute is seen twice in that
    epoch (and in evaluation, counted twice: the warning says so). After ``max_failures``
    consecutive failures in one lookup it raises, since then the data or the codec setup is broken,
    not one file. ``on_error="raise"`` raises on the first failure. With DataLoader workers the
    warning and :attr:`skipped` are per worker process.

    Args:
        list_file: List file, ``path label`` or ``folder num_frames label`` per line.
        labels: Label CSV (``id,name``) or the class names themselves.
        train: Training sampling and augmentation if True, evaluation views otherwise.
        root: Folder the list's relative paths are relative to (default: as written, i.e.
            relative to the working directory).
        num_frames: Frames per clip ``T``.
        size: Output side length.
        num_clips: Evaluation clips per video (training uses one).
        num_crops: Evaluation crops per clip, 1 (centre) or 3.
        flip: Random horizontal flip in training (off by default; flips reverse direction words
            such as "left to right").
        crop: Training crop, ``"multiscale"`` (TSN, as ViFi-CLIP/GA2-CLIP) or ``"random_resized"``.
        scales: Scales of the multi-scale crop.
        grayscale: Probability of a grayscale clip in training (GA2-CLIP: 0.2).
        list_format: ``"auto"``, ``"video"`` or ``"frames"``; see :func:`read_video_list`.
        frame_template: Frame file names in a frame folder.
        frame_start_index: Number of the first frame file (1 for ``img_00001.jpg``).
        check_files: Check at construction that every listed path exists.
        on_error: ``"skip"`` or ``"raise"`` for undecodable videos.
        max_failures: Consecutive decode failures in one lookup before giving up.
        transform: Replaces the built-in transform: called on each clip, uint8 ``(T, 3, H, W)``;
            must return ``(T, 3, h, w)`` in training and ``(crops, T, 3, h, w)`` in evaluation.
    """

    def __init__(
        self,
        list_file: PathLike,
        labels: PathLike | Sequence[str],
        *,
        train: bool,
        root: PathLike | None = None,
        num_frames: int = 8,
        size: int = 224,
        num_clips: int = 1,
        num_crops: int = 1,
        flip: bool = False,
        crop: Literal["multiscale", "random_resized"] = "multiscale",
        scales: Sequence[float] = MULTISCALE_SCALES,
        grayscale: float = 0.0,
        list_format: ListFormat = "auto",
        frame_template: str = "img_{:05d}.jpg",
        frame_start_index: int = 1,
        check_files: bool = True,
        on_error: Literal["skip", "raise"] = "skip",
        max_failures: int = 20,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if num_frames < 1:
            raise InvalidInputError(f"num_frames must be >= 1, got {num_frames}")
        if train and (num_clips != 1 or num_crops != 1):
            raise InvalidInputError(
                f"num_clips={num_clips} / num_crops={num_crops} are evaluation views; training samples one "
                "random clip and crop per item. Pass train=False for multi-view evaluation."
            )
        if num_clips < 1:
            raise InvalidInputError(f"num_clips must be >= 1, got {num_clips}")
        if on_error not in ("skip", "raise"):
            raise InvalidInputError(f"on_error must be 'skip' or 'raise', got {on_error!r}")

        if isinstance(labels, (str, os.PathLike)):
            self.classnames: list[str] = read_label_csv(labels)
        else:
            self.classnames = [str(n) for n in labels]
            if not self.classnames:
                raise InvalidInputError("labels is an empty list of class names")
        self.list_file = Path(list_file)
        self.records: list[VideoRecord] = read_video_list(
            list_file, list_format=list_format, num_classes=len(self.classnames)
        )
        self.labels: list[int] = [r.label for r in self.records]
        self.list_format = self.records[0].kind
        self.root = Path(root) if root is not None else None
        self.train = bool(train)
        self.num_frames = int(num_frames)
        self.num_clips = 1 if train else int(num_clips)
        self.num_crops = 1 if train else int(num_crops)
        self.frame_template = frame_template
        self.frame_start_index = int(frame_start_index)
        self.on_error = on_error
        self.max_failures = int(max_failures)
        if transform is not None:
            self.transform = transform
        elif train:
            self.transform = TrainTransform(size, crop=crop, scales=scales, flip=flip, grayscale=grayscale)
        else:
            self.transform = EvalTransform(size, num_crops)
        self.skipped: list[str] = []  # paths that failed to decode in this process
        self._bad: set[int] = set()
        if check_files:
            self._check_files()
        self._skip_empty_frame_folders()

    def path(self, index: int) -> Path:
        """Full path of entry ``index`` (root joined unless the listed path is absolute)."""
        p = Path(self.records[index].path)
        return p if self.root is None else self.root / p

    def _check_files(self) -> None:
        missing = []
        for i, r in enumerate(self.records):
            p = self.path(i)
            if not (p.is_dir() if r.kind == "frames" else p.is_file()):
                missing.append(f"  line {r.line}: {p}")
        if missing:
            kind = "frame folders" if self.list_format == "frames" else "video files"
            shown = "\n".join(missing[:_MAX_LISTED_MISSING])
            more = f"\n  ... and {len(missing) - _MAX_LISTED_MISSING} more" if len(missing) > _MAX_LISTED_MISSING else ""
            raise MissingFileError(
                f"{len(missing)} of {len(self.records)} {kind} listed in {self.list_file} do not exist "
                f"(root={str(self.root) if self.root else None!r}):\n{shown}{more}\n"
                "Fix the root (paths in the list are relative to it), or remove these lines from the list."
            )

    def _skip_empty_frame_folders(self) -> None:
        """Entries listed with 0 frames (failed extraction) are known bad before any decoding: say so once."""
        empty = [i for i, r in enumerate(self.records) if r.kind == "frames" and r.num_frames == 0]
        if not empty:
            return
        if len(empty) == len(self.records):
            raise InvalidInputError(f"every entry of {self.list_file} is listed with 0 frames; re-extract the frames")
        if self.on_error == "raise":
            lines = [self.records[i].line for i in empty]
            raise VideoDecodeError(
                f"{len(empty)} entries of {self.list_file} are listed with 0 frames (lines {lines[:10]}"
                f"{' ...' if len(lines) > 10 else ''}); re-extract them or remove them from the list"
            )
        self._bad.update(empty)
        self.skipped += [str(self.path(i)) for i in empty]
        shown = ", ".join(f"line {self.records[i].line}: {self.records[i].path}" for i in empty[:5])
        warnings.warn(
            f"promptcouple.data: {len(empty)} entries of {self.list_file} are listed with 0 frames ({shown}"
            f"{' ...' if len(empty) > 5 else ''}). Skipped: each is replaced by the next decodable item. "
            "Re-extract their frames or remove them from the list.",
            RuntimeWarning,
            stacklevel=3,
        )

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> torch.Tensor:
        r = self.records[index]
        t, clips = self.num_frames, self.num_clips

        def sample(n: int) -> list[int]:
            return clip_indices(n, t, train=self.train, num_clips=clips)

        if r.kind == "frames":
            assert r.num_frames is not None  # guaranteed by read_video_list
            frames = read_frame_folder(
                self.path(index), sample(r.num_frames), template=self.frame_template, start_index=self.frame_start_index
            )
        else:
            frames = read_video_frames(self.path(index), sample)
        frames = frames.view(clips, t, *frames.shape[1:])
        if self.train:
            return self.transform(frames[0])
        views = torch.stack([self.transform(c) for c in frames])  # (clips, crops, T, 3, h, w)
        return views.flatten(0, 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} videos")
        index %= n
        failures = 0
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                return self._load(j), self.records[j].label
            except DECODE_ERRORS as err:
                if self.on_error == "raise":
                    raise VideoDecodeError(
                        f"cannot decode {self.path(j)} (line {self.records[j].line} of {self.list_file}): "
                        f"{type(err).__name__}: {err}"
                    ) from err
                self._report(j, err)
                failures += 1
                if failures >= self.max_failures:
                    break
        if failures < self.max_failures:
            raise RunError(
                f"no item of {self.list_file} can be decoded any more ({len(self._bad)} of {n} failed or are empty); "
                "check the root, the list format and that PyAV decodes one file by hand"
            )
        raise RunError(
            f"{failures} videos in a row failed to decode starting at item {index} of {self.list_file} "
            f"(last: {self.skipped[-1] if self.skipped else None}); the data or the PyAV/FFmpeg setup is broken, "
            "not a single file. Check the root, the list format and that PyAV decodes one file by hand."
        )

    def _report(self, j: int, err: BaseException) -> None:
        self._bad.add(j)
        self.skipped.append(str(self.path(j)))
        use = "training" if self.train else "evaluation (the substitute is counted twice)"
        warnings.warn(
            f"promptcouple.data: cannot decode {self.path(j)} (line {self.records[j].line} of {self.list_file}): "
            f"{type(err).__name__}: {err}. Skipped: in this {use} it is replaced by the next decodable item. "
            "Re-encode the file or remove it from the list.",
            RuntimeWarning,
            stacklevel=3,
        )

    def __repr__(self) -> str:
        views = "" if self.train else f", views={self.num_clips}x{self.num_crops}"
        return (
            f"{type(self).__name__}({len(self)} {self.list_format} items, {len(self.classnames)} classes, "
            f"train={self.train}, T={self.num_frames}{views}, list={str(self.list_file)!r})"
        )
