"""Classify video files with a prompt file: ``promptcouple predict`` and :class:`Predictor`.

The model is rebuilt from what the prompt file records (backbone, frames, image size, class
names; ``promptcouple inspect`` shows them) or from the resolved ``config.yaml`` of the run folder
it sits in, and every video is read and scored as ``promptcouple eval`` reads and scores its clips
(:func:`promptcouple.load_video`, :func:`promptcouple.train.evaluation.score_views`), so the
probabilities are the ones evaluation computes::

    promptcouple predict clip.mp4 --prompts runs/hmdb_s1/prompts.safetensors
    promptcouple predict videos/ --prompts prompts.safetensors --classes "archery,bowling,yoga" --json out.json

From Python::

    from promptcouple.predict import Predictor
    predictor = Predictor("runs/hmdb_s1/prompts.safetensors")
    for p in predictor.predict(["clip.mp4"]):
        print(p.video, p.top[0])
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from promptcouple.errors import InvalidInputError, MissingFileError
from promptcouple.fileio import PathLike

logger = logging.getLogger(__name__)

# Recorded class sets that --classes can name instead of a file or a list.
CLASS_SETS = ("train", "val", "base", "novel", "all")
# The prompt-set name of the frozen backbone with the hand-crafted template (what `eval` does without prompts).
ZERO_SHOT = "no prompts"


def prompt_set_names(paths: Sequence[PathLike]) -> list[str]:
    """Short distinct names for prompt files: the file's stem, or its folder's name for a run
    folder's ``prompts.safetensors``; a repeated name gets ``-2``, ``-3``..."""
    names: list[str] = []
    for path in paths:
        p = Path(str(path).removeprefix("hf-hub:"))
        base = p.parent.name if p.stem == "prompts" and p.parent.name else (p.stem or p.name)
        name, i = base, 1
        while name in names or name == ZERO_SHOT:
            i += 1
            name = f"{base}-{i}"
        names.append(name)
    return names


@dataclass
class VideoPrediction:
    """One video's result: ``top`` = ``[(class, probability), ...]`` best first, ``probabilities`` over
    all classes in order; ``error`` instead when the video could not be read."""

    video: str
    top: list = field(default_factory=list)
    probabilities: list = field(default_factory=list)
    error: Optional[str] = None

    def to_dict(self, classnames: Sequence[str]) -> dict:
        if self.error is not None:
            return {"video": self.video, "error": self.error}
        return {"video": self.video, "top": [{"class": c, "probability": p} for c, p in self.top],
                "probabilities": dict(zip(classnames, self.probabilities))}


def video_files(path: PathLike) -> list[Path]:
    """``path`` itself, or the video files under the folder ``path`` (recursively, sorted)."""
    from promptcouple.data import VIDEO_EXTENSIONS

    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise MissingFileError(f"{str(path)!r} does not exist; expected a video file or a folder of videos")
    found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
    if not found:
        raise MissingFileError(f"{str(path)!r} holds no video files (looked for {', '.join(VIDEO_EXTENSIONS)}, "
                                "recursively); fix: give a video file or a folder that holds some")
    return found


def resolve_classes(classes: Union[None, str, Sequence[str]], info: dict) -> tuple[list[str], str]:
    """The class names to score and where they came from.

    ``classes``: ``None`` (the training classes the prompt file records), a label CSV (``id,name``),
    ``"a,b,c"``, a list of names, or a recorded set: ``train``, ``val``, ``base``, ``novel``, ``all``
    (every recorded class, training classes first).
    """
    recorded = {"train": info.get("classnames")}
    recorded.update(info.get("eval_classnames") or {})
    if recorded["train"] is not None or len(recorded) > 1:
        names = [n for s in recorded.values() if s for n in s]
        recorded["all"] = list(dict.fromkeys(names))
    if classes is None:
        if recorded["train"] is None:
            raise InvalidInputError("the prompt file records no class names (written before promptcouple recorded "
                                    "them, or by `promptcouple convert`); fix: --classes labels.csv or 'a,b,c'")
        return list(recorded["train"]), "the training classes recorded in the prompt file"
    if not isinstance(classes, str):
        names, source = [str(c) for c in classes], "given"
    elif os.path.isfile(classes):
        from promptcouple.data import read_label_csv

        names, source = read_label_csv(classes), classes
    elif classes in CLASS_SETS:
        if recorded.get(classes) is None:
            have = [k for k, v in recorded.items() if v]
            raise InvalidInputError(f"--classes {classes}: the prompt file records no {classes!r} classes "
                                    f"(it records: {', '.join(have) or 'none'}); fix: name a label CSV or list the "
                                    "classes")
        names, source = list(recorded[classes]), f"the recorded {classes!r} classes"
    else:
        names, source = [n.strip() for n in classes.split(",") if n.strip()], "--classes"
    if len(names) < 2:
        raise InvalidInputError(f"--classes {classes!r}: found {len(names)} class name(s), expected at least two; "
                                f"fix: a label CSV that exists, 'a,b,c', or one of {', '.join(CLASS_SETS)}")
    return names, source


class Predictor:
    """A prompt file's model, ready to classify video files as evaluation would.

    Args:
        prompts: The prompt file (a file, a folder holding ``prompts.safetensors``, ``hf-hub:org/repo``),
            or several trained on the same backbone: the backbone is built once and each file is a
            named prompt set (:attr:`prompt_sets`, :func:`prompt_set_names`), the first one active.
        classes: The classes to score (see :func:`resolve_classes`; default: the training classes).
        config: A config (YAML path or :class:`TrainConfig`) that overrides what the prompt file
            and its run folder say about the backbone, frames, image size and views.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        batch_size: Videos per forward pass.
        descriptions: Class descriptions: a description file (CSV or JSON, every scored class
            described; :func:`promptcouple.descriptions.read_descriptions`) or a mapping ``{class:
            [descriptions]}``. ``None``: those the prompt file records (it was trained and evaluated
            with them), for the classes they describe.

    Raises:
        ConfigError: No way to rebuild the backbone, or one that differs from the recorded one.
        InvalidInputError: Bad class names, or a description file that does not fit them.
    """

    def __init__(self, prompts: Union[PathLike, Sequence[PathLike]], *, classes: Union[None, str, Sequence[str]] = None,
                 config=None, device: str = "auto", batch_size: int = 8,
                 descriptions: Union[None, PathLike, Mapping[str, Sequence[str]]] = None):
        from promptcouple.io import read_prompt_file, run_info_of
        from promptcouple.train.config import TrainConfig, load_config
        from promptcouple.train.hosts import build_wrapper
        from promptcouple.hub import resolve_prompt_source
        from promptcouple.train.run_info import check_backbone, config_from_run_info, run_config_path

        sources = [prompts] if isinstance(prompts, (str, os.PathLike)) else list(prompts)
        if not sources:
            raise InvalidInputError("Predictor: no prompt file given; expected one or more")
        prompts = resolve_prompt_source(sources[0])  # a folder's prompts.safetensors, or a Hub file (cached)
        pf = read_prompt_file(prompts)
        info = run_info_of(pf.metadata)
        if isinstance(config, TrainConfig):
            cfg, self.config_source = config, "the given config"
        elif config is not None:
            cfg, self.config_source = load_config(config), str(config)
        elif run_config_path(prompts) is not None:
            found = run_config_path(prompts)
            cfg, self.config_source = load_config(found), str(found)
        else:
            cfg, self.config_source = config_from_run_info(info), "the prompt file's run information"
        check_backbone(cfg, info)
        self.cfg = cfg
        self.classnames, self.classes_source = resolve_classes(classes, info)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.prompts = str(prompts)
        self.wrapper = build_wrapper(cfg, self.device, prompts=prompts).eval()
        names = prompt_set_names(sources)
        # display name -> the wrapper's name of that prompt set
        self.prompt_sets = {names[0]: getattr(self.wrapper, "active_prompts", names[0])}
        self._zero_shot = None
        self._given_descriptions = None  # for every prompt set, over what each file records
        if isinstance(descriptions, (str, os.PathLike)):
            from promptcouple.descriptions import read_descriptions

            self._given_descriptions = read_descriptions(descriptions, self.classnames)
            self.descriptions_source = str(descriptions)
        elif descriptions is not None:
            from promptcouple.descriptions import check_descriptions

            self._given_descriptions, self.descriptions_source = check_descriptions(descriptions), "given"
        else:
            self.descriptions_source = "recorded in the prompt file"
        if self._given_descriptions is not None:
            self.wrapper.descriptions = self._given_descriptions
        for name, source in zip(names[1:], sources[1:]):
            self.add_prompts(source, name=name)

    def add_prompts(self, source: PathLike, *, name: Optional[str] = None) -> str:
        """Load another prompt file onto the same backbone as a named prompt set; returns its name.

        Raises:
            ConfigError: The file records another backbone than this predictor's.
        """
        from promptcouple.hub import resolve_prompt_source
        from promptcouple.io import read_prompt_file, run_info_of
        from promptcouple.train.run_info import check_backbone

        path = resolve_prompt_source(source)
        check_backbone(self.cfg, run_info_of(read_prompt_file(path).metadata))
        name = name or prompt_set_names([*self.prompt_sets, source])[-1]
        if name in self.prompt_sets or name == ZERO_SHOT:
            raise InvalidInputError(f"prompt set {name!r} is already loaded; give another name")
        self.wrapper.add_prompts(name, path)
        self.prompt_sets[name] = name
        if self._given_descriptions is not None:
            active = self.wrapper.active_prompts
            self.wrapper.set_prompts(name)
            self.wrapper.descriptions = self._given_descriptions
            self.wrapper.set_prompts(active)
        return name

    def _model(self, prompt_set: Optional[str]):
        """What scores the frames: the wrapper with ``prompt_set`` active (``None``: as it is), or the
        zero-shot classifier of its backbone (:data:`ZERO_SHOT`)."""
        if prompt_set == ZERO_SHOT:
            if self._zero_shot is None:
                from promptcouple.train.evaluation import zero_shot_classifier

                self._zero_shot = zero_shot_classifier(self.wrapper)
            return self._zero_shot
        if prompt_set is not None:
            if prompt_set not in self.prompt_sets:
                raise InvalidInputError(f"prompt set {prompt_set!r} is not loaded; loaded: "
                                        f"{', '.join([*self.prompt_sets, ZERO_SHOT])}")
            if len(self.prompt_sets) > 1:
                self.wrapper.set_prompts(self.prompt_sets[prompt_set])
        return self.wrapper

    @classmethod
    def from_wrapper(cls, wrapper, classes: Sequence[str], *, config=None, batch_size: int = 8) -> "Predictor":
        """A predictor around a wrapper already built: any host, not only those a prompt file's run
        information rebuilds (OpenAI-layout, Hugging Face CLIP...). ``config``: a :class:`TrainConfig`
        giving frames, image size and views (default: its defaults)."""
        from promptcouple.train.config import TrainConfig

        self = cls.__new__(cls)
        self.cfg = config if config is not None else TrainConfig()
        self.config_source = "the given config" if config is not None else "the default config"
        self.classnames, self.classes_source = resolve_classes(list(classes), {})
        self.device, self.batch_size = wrapper.device, int(batch_size)
        self.prompts, self.descriptions_source = f"a {type(wrapper).__name__} in memory", "given"
        self._given_descriptions = None
        self.wrapper = wrapper.eval()
        self.prompt_sets = {getattr(wrapper, "active_prompts", "prompts"): getattr(wrapper, "active_prompts", "prompts")}
        self._zero_shot = None
        return self

    def summary(self, num_videos: Optional[int] = None) -> str:
        c, e = self.cfg, self.cfg.eval
        videos = f"{num_videos} video(s), " if num_videos is not None else ""
        return (f"predict: {videos}{len(self.classnames)} classes ({self.classes_source}); model {c.model.name}, "
                f"{c.data.num_frames} frames of {c.data.image_size}px, {e.num_clips}x{e.num_crops} views "
                f"(from {self.config_source}); device {self.device}{self._descriptions_summary()}")

    def _descriptions_summary(self) -> str:
        d = self.wrapper.descriptions or {}
        described = [n for n in self.classnames if n in d]
        if not described:
            return ""
        return (f"; {len(described)} of {len(self.classnames)} classes by their descriptions "
                f"({sum(len(d[n]) for n in described)} in all, {self.descriptions_source})")

    def load(self, path: PathLike) -> torch.Tensor:
        """``(V, T, 3, S, S)`` views of one video, read as evaluation reads it."""
        from promptcouple.data import load_video

        c = self.cfg
        frames = load_video(path, c.data.num_frames, c.data.image_size, num_clips=c.eval.num_clips,
                            num_crops=c.eval.num_crops)
        return frames if frames.ndim == 5 else frames.unsqueeze(0)

    @torch.no_grad()
    def probabilities(self, frames: torch.Tensor, *, classnames: Optional[Sequence[str]] = None,
                      prompt_set: Optional[str] = None) -> torch.Tensor:
        """``(B, K)`` class probabilities of ``(B, V, T, 3, S, S)`` views: with ``eval.reduce: softmax``
        the views' mean probabilities (what evaluation ranks), with ``logits`` the softmax of the mean logits.

        ``classnames``: other classes than the predictor's; ``prompt_set``: one of :attr:`prompt_sets`
        (it stays active) or :data:`ZERO_SHOT`; ``None``: the active one."""
        from promptcouple.train.evaluation import score_views

        reduce = self.cfg.eval.reduce
        classnames = self.classnames if classnames is None else resolve_classes(list(classnames), {})[0]
        scores = score_views(self._model(prompt_set), frames.to(self.device), classnames, reduce=reduce,
                             precision=self.cfg.run.precision)
        return scores if reduce == "softmax" else scores.softmax(-1)

    def predict(self, paths: Sequence[PathLike], topk: int = 5, progress: bool = False, *,
                prompt_set: Optional[str] = None) -> list[VideoPrediction]:
        """Classify video files; one that cannot be decoded gets an ``error`` (and a warning) instead.
        ``prompt_set``: as in :meth:`probabilities`."""
        return self.predict_sets(paths, [prompt_set], topk, progress)[prompt_set]

    def predict_sets(self, paths: Sequence[PathLike], prompt_sets: Sequence[Optional[str]], topk: int = 5,
                     progress: bool = False) -> dict:
        """:meth:`predict` with several prompt sets, each video decoded once: ``{set: [VideoPrediction]}``."""
        from promptcouple.data import DECODE_ERRORS

        k = min(topk, len(self.classnames))
        out: dict = {name: [] for name in prompt_sets}
        batch: list[tuple[str, torch.Tensor]] = []

        def flush() -> None:
            frames = torch.stack([f for _, f in batch])
            for name in prompt_sets:
                probs = self.probabilities(frames, prompt_set=name).cpu()
                for (video, _), p in zip(batch, probs):
                    top = p.topk(k)
                    out[name].append(VideoPrediction(video, [(self.classnames[i], float(v)) for v, i in
                                                             zip(top.values.tolist(), top.indices.tolist())], p.tolist()))
            batch.clear()

        for path in tqdm(paths, desc="predict", leave=False, disable=not progress):
            try:
                batch.append((str(path), self.load(path)))
            except DECODE_ERRORS as err:
                logger.warning("cannot decode %s: %s: %s; skipped (re-encode the file, or check that PyAV reads it)",
                               path, type(err).__name__, err)
                if batch:
                    flush()
                for name in prompt_sets:
                    out[name].append(VideoPrediction(str(path), error=f"{type(err).__name__}: {err}"))
                continue
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        return out
