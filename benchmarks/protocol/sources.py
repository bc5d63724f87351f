"""Where the runs' ``data`` and ``anchors`` sections come from: the embedded world or real data.

Both sources stand behind :class:`DataSource`; nothing outside this module asks which one it has.

* the embedded world (default, ``--model world``): ``data.world`` sections, the world's anchor
  set, and the hard prompt's source (``wk400``'s base classes for base-to-novel, the disjoint
  ``hardsrc`` set for few-shot and zero-shot);
* real data (``--model ViT-B-16-quickgelu --pretrained openai --data-config data.yaml``): per dataset and
  protocol a ``data`` section of the training config (list files, label CSVs, root), in which
  ``{split}`` and ``{shots}`` are filled in per run. Relative paths are resolved against the YAML
  file's directory; the format in full: docs/CONFIG.md. Example::

      datasets:
        hmdb51:
          base_to_novel: {train_list: "hmdb/b2n_train_s{split}.txt", labels: hmdb/base.csv,
                          val_list: hmdb/b2n_val_base.txt, novel_list: hmdb/b2n_val_novel.txt,
                          novel_labels: hmdb/novel.csv, root: /data/hmdb51/videos}
          few_shot: {train_list: "hmdb/fs_{shots}shot_s{split}.txt", labels: hmdb/labels.csv,
                     val_list: hmdb/val.txt, root: /data/hmdb51/videos}
          zero_shot: {val_list: hmdb/val.txt, labels: hmdb/labels.csv, root: /data/hmdb51/videos}
        k400:
          zero_shot: {train_list: k400/train.txt, labels: k400/labels.csv, root: /data/k400}
      anchors: {list: k600_only_anchors.txt, labels: k600_only_labels.csv, root: /data/k600}
      reference_anchors: {list: k600_only_anchors_else.txt, labels: else.csv}  # released: one label
      hard_prompts: k400_base_prompts.safetensors   # or hard_prompt_source: {data section}
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

from promptcouple.train import TrainConfig
from promptcouple.train.data import build_datasets

HARD_PROMPT_SOURCE = "wk400"  # the world dataset whose base classes the hard prompt is learned on

from .setting import Setting

REFERENCE_ANCHOR_LABEL = "else"  # the one label of the released anchor label file


class DataSource:
    """Where a run's ``data`` and ``anchors`` sections come from (the world or a YAML file).

    Attributes:
        setting: The invocation's setting (frames, shots, the world's knobs, anchor options).
        base_dir: The folder relative paths of the data sections are resolved against (``None``:
            the working directory).
        cache_tag: Names what the cached hard prompt was trained on.
    """

    setting: Setting
    base_dir: Optional[Path] = None
    cache_tag: str = "data"

    def datasets(self, protocol: str) -> list[str]:
        """The datasets that have a ``protocol`` section."""
        raise NotImplementedError

    def data(self, dataset: str, protocol: str, split: int, shots: int) -> dict:
        """The ``data`` section of one run."""
        raise NotImplementedError

    def anchors(self, mode: str, out: Path) -> dict:
        """The ``anchors`` section of a method with anchor mode ``mode`` (files it needs go to ``out``)."""
        raise NotImplementedError

    def hard_prompt_data(self, protocol: str = "base_to_novel") -> Optional[dict]:
        """The ``data`` section the hard prompt of ``protocol``'s runs is trained on (``None``: there is none)."""
        raise NotImplementedError

    @property
    def hard_prompts(self) -> Optional[str]:
        """A hard prompt file the source names (then none is trained)."""
        return None

    def cost(self, dataset: str) -> int:
        """A dataset's relative cost, so that the scheduler starts the larger ones first."""
        return 0

    def prepare(self, datasets: Sequence[str], protocol: str, splits: Sequence[int], shots: Sequence[int],
                hard: bool, eval_only: Sequence[str] = ()) -> Optional[float]:
        """Work to do once before the runs; the seconds it took (``None``: nothing to do)."""
        return None

    def identity(self) -> dict:
        """What results and cached hard prompts depend on besides the configs."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The results' ``data``, ``world_seed`` and ``world_knobs`` entries."""
        raise NotImplementedError


class WorldSource(DataSource):
    """The embedded world (:mod:`promptcouple.world`)."""

    def __init__(self, world_seed: int = 0, setting: Optional[Setting] = None):
        self.world_seed = world_seed
        self.setting = setting or Setting()  # its world_shift / world_context are the world's knobs
        self.cache_tag = f"world{world_seed}"

    def datasets(self, protocol: str) -> list[str]:
        from promptcouple.world import dataset_names

        return list(dataset_names())

    def _world(self, dataset: str, protocol: str, split: int, shots: int) -> dict:
        w = {"dataset": dataset, "protocol": protocol, "shots": shots, "split_seed": split,
             "world_seed": self.world_seed}
        s = self.setting
        extra = {"test_per_class": s.test_per_class, "shift": s.world_shift, "context": s.world_context}
        w.update({k: v for k, v in extra.items() if v is not None})
        return w

    def data(self, dataset: str, protocol: str, split: int, shots: int) -> dict:
        protocol = "few_shot" if protocol == "zero_shot" else protocol  # all classes of the dataset
        return {"world": self._world(dataset, protocol, split, shots),
                "num_frames": self.setting.num_frames, "image_size": self.setting.image_size}

    def anchors(self, mode: str, out: Path) -> dict:
        s = self.setting
        if mode == "reference":
            # The released label file holds one label: the world's anchor clips under "else".
            return {"list": str(self._reference_anchor_file(out)), "mode": mode, "batch_size": 1,
                    "template": s.template}
        return {"world": True, "per_class": s.anchor_per_class, "mode": mode, "weight": s.anchor_weight,
                "template": s.template}

    def _reference_anchor_file(self, out: Path) -> Path:
        from promptcouple import world
        from promptcouple.train import write_clip_file

        per_class = self.setting.anchor_per_class
        path = out / "cache" / f"anchors_else_world{self.world_seed}_n{per_class}.safetensors"
        if not path.exists():
            shift = self.setting.world_shift
            kw = {"shift": shift} if shift is not None else {}
            clips, _ = world.anchor_set(per_class=per_class, world_seed=self.world_seed, **kw)
            write_clip_file(path, clips.frames_uint8, [0] * len(clips), [REFERENCE_ANCHOR_LABEL])  # atomic
        return path

    def hard_prompt_data(self, protocol: str = "base_to_novel") -> dict:
        s = self.setting
        if protocol != "base_to_novel":
            # Few-shot and zero-shot runs evaluate every class of wk400 (few-shot) or may
            # evaluate it (zero-shot): a prompt learned on its base classes would have seen
            # evaluated classes, so these keep the world's disjoint source set.
            return {"world": self._world("hardsrc", "few_shot", 1, s.shots), "num_frames": s.num_frames,
                    "image_size": s.image_size}
        # Base-to-novel: wk400's base classes, split s1, as GA2-CLIP learns its hard prompts on
        # K400's base classes, so no novel class is seen. The disjoint hardsrc set (texture x
        # motion) is one the small CLIP barely learns (IVLP 9% top-1 on its 24 classes), so
        # coupling to it couples to little; on wk400's 32 base classes IVLP reaches about 20%
        # (chance 3%). The wk400 runs themselves then couple to prompts learned on their own base
        # classes (GA2-CLIP takes K600-only classes there, which the world has no learnable
        # counterpart of).
        return self.data(HARD_PROMPT_SOURCE, "base_to_novel", 1, s.shots)

    def cost(self, dataset: str) -> int:
        from promptcouple.world import dataset_info

        return len(dataset_info(dataset)["classnames"])

    def prepare(self, datasets: Sequence[str], protocol: str, splits: Sequence[int], shots: Sequence[int],
                hard: bool, eval_only: Sequence[str] = ()) -> float:
        """Render every clip the runs will read, once, in this process: the forked workers inherit
        the world's in-memory clip cache."""
        t0 = time.perf_counter()
        items = [(self.data(d, protocol, s, k), True) for d in datasets for s in splits for k in shots]
        items += [(self.data(d, protocol, splits[0], shots[0]), False) for d in eval_only]
        if hard:
            items.append((self.hard_prompt_data(protocol), True))
        for data, train in items:
            raw = {"model": {"name": "world"}, "data": data,
                   "anchors": {"world": True, "per_class": self.setting.anchor_per_class}}
            build_datasets(TrainConfig.from_dict(raw), train=train)
        return time.perf_counter() - t0

    def identity(self) -> dict:
        return world_identity()

    def describe(self) -> dict:
        return {"data": "world", "world_seed": self.world_seed,
                "world_knobs": {"shift": self.setting.world_shift, "context": self.setting.world_context}}


class K400FirstSource(WorldSource):
    """The world under the paper's protocol (``--protocol k400-first``): the runs' backbone is the
    world CLIP fine-tuned on all of ``wk400`` (:mod:`.backbone`), the datasets are ``whmdb``,
    ``wucf`` and ``wssv2``, and the hard prompt is learned (IVLP) from that backbone, on the
    base classes of ``wk400`` as in the from-CLIP protocol."""

    def __init__(self, world_seed: int = 0, setting: Optional[Setting] = None):
        super().__init__(world_seed, setting)
        self.cache_tag = f"world{world_seed}_k400first"

    def datasets(self, protocol: str) -> list[str]:
        from .backbone import TARGETS

        return list(TARGETS)

    def describe(self) -> dict:
        return {**super().describe(), "protocol": "k400-first"}


class ListSource(DataSource):
    """Real data from a YAML file of per-dataset ``data`` sections (see the module docstring)."""

    def __init__(self, path: str, setting: Setting):
        self.given = path
        self.path = Path(path).resolve()
        self.base_dir = self.path.parent
        try:
            self.spec = yaml.safe_load(self.path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise SystemExit(f"--data-config {path}: {err}") from None
        if not isinstance(self.spec.get("datasets"), dict) or not self.spec["datasets"]:
            found = sorted(self.spec) if isinstance(self.spec, dict) else type(self.spec).__name__
            raise SystemExit(f"--data-config {path}: found {found}, expected a non-empty 'datasets:' mapping "
                             "of per-dataset data sections (the format: docs/CONFIG.md)")
        self.setting = setting

    def datasets(self, protocol: str) -> list[str]:
        return [name for name, sections in self.spec["datasets"].items() if protocol in (sections or {})]

    def _with_frames(self, section: dict) -> dict:
        # Paths are resolved by TrainConfig.from_dict(base_dir=...); only fill in the frames here.
        return dict(section, num_frames=self.setting.num_frames, image_size=self.setting.image_size)

    def data(self, dataset: str, protocol: str, split: int, shots: int) -> dict:
        try:
            section = self.spec["datasets"][dataset][protocol]
        except (KeyError, TypeError):
            raise SystemExit(f"--data-config: dataset {dataset!r} has no {protocol!r} section") from None
        filled = {k: (v.format(split=split, shots=shots) if isinstance(v, str) else v) for k, v in section.items()}
        if "train_list" not in filled and "val_list" in filled:
            # An evaluation-only section (a zero-shot target): the config wants a training list,
            # which evaluation never reads.
            filled["train_list"] = filled["val_list"]
        return self._with_frames(filled)

    def anchors(self, mode: str, out: Path) -> dict:
        key = "reference_anchors" if mode == "reference" and "reference_anchors" in self.spec else "anchors"
        if key not in self.spec:
            raise SystemExit(f"--data-config: methods with anchors need an 'anchors:' section ({self.path})")
        a = dict(self.spec[key], mode=mode, template=self.setting.template)
        if mode != "reference":
            a["weight"] = self.setting.anchor_weight
        return a

    def hard_prompt_data(self, protocol: str = "base_to_novel") -> Optional[dict]:
        src = self.spec.get("hard_prompt_source")  # one source for every protocol: the file names it
        return self._with_frames(src) if src else None

    @property
    def hard_prompts(self) -> Optional[str]:
        p = self.spec.get("hard_prompts")
        return str((self.path.parent / p).resolve()) if p else None

    def identity(self) -> dict:
        return {"data_config": file_stamp(str(self.path))}

    def describe(self) -> dict:
        return {"data": str(self.given), "world_seed": None, "world_knobs": None}


def make_source(args: argparse.Namespace, setting: Setting) -> DataSource:
    """The world for ``--model world`` (or ``tiny`` without a data file), else the YAML file."""
    if args.data_config is not None:
        return ListSource(args.data_config, setting)
    if args.model not in ("world", "tiny"):
        raise SystemExit(f"--model {args.model}: real backbones need --data-config (list files per dataset)")
    if getattr(args, "protocol", "from-clip") == "k400-first":
        return K400FirstSource(args.world_seed, setting)
    return WorldSource(args.world_seed, setting)


def file_stamp(path: Optional[str]) -> Optional[list]:
    """A file's size and modification time (``None``: no such file, or a tag such as ``openai``)."""
    return [os.path.getsize(path), os.path.getmtime(path)] if path and os.path.isfile(path) else None


def world_identity() -> dict:
    """What the world's clips and CLIP depend on: its code (defaults and renderer) and checkpoint."""
    import promptcouple.world as world
    from promptcouple.world import model as world_model

    code = hashlib.sha1()
    for path in sorted(Path(world.__file__).parent.glob("*.py")):
        code.update(path.read_bytes())
    ident = {"world_code": code.hexdigest()[:12]}
    if os.path.isfile(world_model.CHECKPOINT):
        ident["world_checkpoint"] = hashlib.sha1(Path(world_model.CHECKPOINT).read_bytes()).hexdigest()[:12]
    ident["world_defaults"] = {"shift": world.DEFAULT_SHIFT, "context": world.DEFAULT_CONTEXT}
    return ident


def input_identity(args: argparse.Namespace, source: DataSource) -> dict:
    """What results and a cached hard prompt depend on besides their configs: the weight files,
    the world's code and checkpoint where the world CLIP or the world's data is used, and the
    data file."""
    ident = {"pretrained": file_stamp(args.pretrained), "backbone_checkpoint": file_stamp(args.backbone_checkpoint)}
    if args.model == "world":
        ident.update(world_identity())
    return {**ident, **source.identity()}
