"""Shared machinery of the benchmark scripts: methods as Trainer configs, runs, tables and plots.

Every trained number comes from :class:`promptcouple.train.Trainer`; a method is nothing but a
set of overrides of a :class:`promptcouple.train.TrainConfig` (prompt layout, hard prompt, anchor
mode, text-consistency weight). ``base2novel.py``, ``few_shot.py`` and ``zero_shot.py`` build the
list of runs, hand them to :func:`run_jobs` and format what comes back.

Two data sources, one code path:

* the embedded world (default, ``--model world``): ``data.world`` sections, the world's anchor
  set and hard-prompt source;
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
import contextlib
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from promptcouple.train import TrainConfig, Trainer, build_wrapper, hm
from promptcouple.train.data import build_datasets
from promptcouple.train import evaluate_config, evaluate_sets, setup_distributed

WORLD_DATASETS = ("wk400", "whmdb", "wucf", "wssv2")
ZERO_SHOT_TEMPLATE = "a video of a {}."  # the caption style the world CLIP was pretrained on
REFERENCE_ANCHOR_LABEL = "else"  # the one label of the released anchor label file


# ------------------------------------------------------------------------------------ methods

@dataclass(frozen=True)
class Method:
    """One row of a table: how a run's config differs from the shared one.

    Attributes:
        name: Key used by ``--methods`` and in the JSON.
        label: Row label of the tables.
        trained: ``False``: the frozen model with the hand-crafted template (zero-shot CLIP).
        deep: Deep prompts in both towers (IVLP); ``False``: CoOp (layer-0 text context only).
        hard: Couple the soft context to the hard prompt (GA2's coupling).
        anchors: Anchor mode (``consistency``, ``negative``, ``reference``) or ``None``.
        text_consistency: Weight of the KgCoOp-style term (0: off).
    """

    name: str
    label: str
    trained: bool = True
    deep: bool = True
    hard: bool = False
    anchors: Optional[str] = None
    text_consistency: float = 0.0


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("zero-shot", "zero-shot (frozen, template)", trained=False),
    Method("coop", "CoOp", deep=False),
    Method("ivlp", "IVLP (ViFi-CLIP VL prompting)"),
    Method("kgcoop", "KgCoOp-style (IVLP + text consistency)", text_consistency=8.0),
    Method("ga2-reference", "GA2, released anchor computation", hard=True, anchors="reference"),
    Method("ga2", "GA2, ours (coupling + anchor consistency)", hard=True, anchors="consistency"),
    Method("ga2-negative", "GA2, ours (coupling + negative anchors)", hard=True, anchors="negative"),
    Method("coupling", "ablation: coupling only", hard=True),
    Method("anchors", "ablation: anchors only (IVLP + consistency)", anchors="consistency"),
)}


def resolve_methods(names: Optional[Sequence[str]], default: Sequence[str]) -> list[Method]:
    """``--methods`` values (or ``default``) as :class:`Method` objects, in the registry's order.

    Raises:
        SystemExit: An unknown method name (with the known ones).
    """
    wanted = list(names or default)
    unknown = [n for n in wanted if n not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    return [m for m in METHODS.values() if m.name in wanted]


# ----------------------------------------------------------------------------------- settings

@dataclass
class Setting:
    """Everything shared by the runs of one benchmark invocation.

    Attributes:
        epochs, warmup_epochs, batch_size, lr: The optimiser section.
        shots: K, training clips per class.
        num_frames: Frames per clip.
        image_size: Frame side.
        test_per_class: World test clips per class (``None``: the world's default).
        anchor_per_class: World anchor clips per anchor class.
        anchor_weight: Weight of the anchor term.
        n_ctx, n_vision_ctx, depth: Prompt layout (``depth`` layers in each tower for deep methods).
        ctx_init: Phrase initialising the soft text context (its token count sets ``n_ctx``);
            ``None``: ``n_ctx`` random tokens.
        hard_epochs: Epochs of the hard-prompt run on the hard-prompt source.
        eval_every: Evaluate every N epochs for the curves (0: only at the end).
        seed: Base seed; split ``s`` runs with ``seed + s``.
        precision, device: The run section.
        world_shift, world_context: The world's knobs for the downstream clips (``None``: the
            world's defaults); ignored for real data.
        template: The hand-crafted prompt: the zero-shot row, the KgCoOp-style target and the
            anchors' negative prompts.
    """

    epochs: int = 12
    warmup_epochs: float = 2.0
    batch_size: int = 8
    lr: float = 4e-3
    shots: int = 16
    num_frames: int = 8
    image_size: int = 224
    test_per_class: Optional[int] = None
    anchor_per_class: int = 8
    anchor_weight: float = 1.0
    n_ctx: int = 16
    ctx_init: Optional[str] = None
    n_vision_ctx: int = 16
    depth: int = 9
    hard_epochs: int = 12
    eval_every: int = 1
    seed: int = 1024
    precision: str = "fp32"
    device: str = "auto"
    world_shift: Optional[float] = None
    world_context: Optional[float] = None
    template: str = ZERO_SHOT_TEMPLATE


# The world presets, measured on this project's shared 2-core CPU machine (1 thread per run, 2 runs
# side by side), world CLIP sha1 64c8f819d133 (MODEL_CARD.md), default shift 0.25:
# - 4 frames of 32x32, 4 vision tokens (appended to only 16 patch tokens, more dominate the
#   tower), the soft context initialised from the template "a video of a" (so training starts from
#   the zero-shot classifier), prompts in all 4 layers of both towers;
# - context 1.0 (every downstream clip in its class's own scene: a cue tuning can learn on base
#   classes and that does not transfer to novel ones; the world's default is 0.5), lr 1e-2, 8
#   epochs: IVLP over zero-shot, 3 splits, average base gain / base-novel gap widening:
#   context 0.5, lr 5e-3, 5 epochs +1.8 / +3.0; lr 1e-2 +3.6 / -; context 1.0, lr 5e-3, 5 epochs
#   +8.5 / +9.8; context 1.0, lr 1e-2, 8 epochs +10.8 / +12.6 (benchmarks/results/);
# - 12 test clips per class (the world has 50) and evaluation after every epoch for the curves.
# Wall times of base2novel.py: see the README (full) and the script's docstring (quick).
WORLD_PRESETS = {
    "quick": dict(epochs=3, warmup_epochs=0.5, batch_size=16, lr=1e-2, num_frames=4, image_size=32,
                  test_per_class=8, anchor_per_class=4, ctx_init="a video of a", n_vision_ctx=4, depth=4,
                  hard_epochs=3, world_context=1.0),
    "full": dict(epochs=8, warmup_epochs=1.0, batch_size=16, lr=1e-2, num_frames=4, image_size=32,
                 test_per_class=12, anchor_per_class=8, ctx_init="a video of a", n_vision_ctx=4, depth=4,
                 hard_epochs=5, world_context=1.0),
}
# Real backbones: the paper's protocol (docs/METHOD.md section 1), prompts at the effective 4e-3.
REAL_PRESET = dict(epochs=12, warmup_epochs=2.0, batch_size=8, lr=4e-3, num_frames=32, image_size=224,
                   n_ctx=16, n_vision_ctx=16, depth=9, hard_epochs=12, precision="bf16",
                   template="a video of a person {}.")


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark script's parser: its docstring's first paragraph as the description, the whole
    docstring as the epilog, and the options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    return parser


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script takes."""
    g = parser.add_argument_group("backbone and data")
    g.add_argument("--model", default="world", help="'world' (embedded world CLIP), an open_clip name, or 'tiny'")
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (openai) or checkpoint path")
    g.add_argument("--backbone-checkpoint", default=None,
                   help="ViFi-CLIP / GA2-CLIP checkpoint to load the backbone from")
    g.add_argument("--data-config", default=None, help="YAML with per-dataset data sections (real data)")
    g.add_argument("--frames", type=int, default=None, help="frames per clip")
    g.add_argument("--image-size", type=int, default=None, help="frame side (default: the model's)")
    g.add_argument("--hard-prompts", default=None, help="prompt file to use as the hard prompt (skips training one)")
    g.add_argument("--world-seed", type=int, default=0, help="seed of the generated world")
    g.add_argument("--split-seed", type=int, default=1,
                   help="first training split: splits are SPLIT_SEED, SPLIT_SEED+1, ... (1 = s1, s2, s3)")
    g.add_argument("--shift", type=float, default=None, help="world: domain shift of the downstream data")
    g.add_argument("--context", type=float, default=None, help="world: probability of a class's own scene")
    g = parser.add_argument_group("what to run")
    g.add_argument("--quick", action="store_true", help="the quick setting (< 5 minutes on 2 cores)")
    g.add_argument("--methods", nargs="+", default=None, help=f"subset of {list(METHODS)}")
    g.add_argument("--datasets", nargs="+", default=None, help="subset of the datasets")
    g.add_argument("--splits", type=int, default=None, help="number of training splits (default 3, quick 1)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--shots", type=int, default=None)
    g.add_argument("--test-per-class", type=int, default=None, help="world: test clips per class")
    g.add_argument("--anchor-weight", type=float, default=None)
    g.add_argument("--template", default=None, help="hand-crafted prompt with {} (default: the backbone's)")
    g = parser.add_argument_group("output and resources")
    g.add_argument("--out", default="runs/benchmarks", help="output directory (runs, hard prompts, plot)")
    g.add_argument("--json", default=None, help="write the results here (default OUT/<script>.json)")
    g.add_argument("--workers", type=int, default=None,
                   help="runs in parallel, one process each (default: 2 on a CPU-only machine with >= 2 cores, else 1)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: 1 for the world's small models, else torch's default)")
    g.add_argument("--device", default="auto")
    g.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"))


def make_setting(args: argparse.Namespace) -> Setting:
    """The preset of the data source (world quick / full, or real data), then the options on top."""
    world_data = args.data_config is None
    base = dict(WORLD_PRESETS["quick" if args.quick else "full"]) if world_data else dict(REAL_PRESET)
    if args.model == "tiny":  # the random two-layer test model (smoke runs)
        base.update(image_size=32, depth=2, n_ctx=4, n_vision_ctx=4, precision="fp32")
    s = Setting(**base)
    for key, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                       ("shots", args.shots), ("num_frames", args.frames), ("image_size", args.image_size),
                       ("test_per_class", args.test_per_class), ("anchor_weight", args.anchor_weight),
                       ("precision", args.precision), ("template", args.template),
                       ("world_shift", args.shift), ("world_context", args.context)):
        if value is not None:
            setattr(s, key, value)
    if args.epochs is not None:
        s.warmup_epochs = min(s.warmup_epochs, s.epochs)
        s.hard_epochs = min(s.hard_epochs, max(1, s.epochs))
    s.device = args.device
    return s


# --------------------------------------------------------------------------------- data sources

class DataSource:
    """Where a run's ``data`` and ``anchors`` sections come from (the world or a YAML file)."""

    world = False
    base_dir: Optional[Path] = None  # relative paths of the data sections are resolved against it

    def datasets(self, protocol: str) -> list[str]:
        raise NotImplementedError

    def data(self, dataset: str, protocol: str, split: int, shots: int) -> dict:
        raise NotImplementedError

    def anchors(self, setting: Setting, mode: str, out: Path) -> dict:
        raise NotImplementedError

    def hard_prompt_data(self, setting: Setting) -> Optional[dict]:
        raise NotImplementedError


class WorldSource(DataSource):
    """The embedded world (:mod:`promptcouple.world`)."""

    world = True

    def __init__(self, world_seed: int = 0, setting: Optional[Setting] = None):
        self.world_seed = world_seed
        self.setting = setting or Setting()  # its world_shift / world_context are the world's knobs

    def datasets(self, protocol: str) -> list[str]:
        return list(WORLD_DATASETS)

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

    def anchors(self, setting: Setting, mode: str, out: Path) -> dict:
        if mode == "reference":
            # The released label file holds one label: the world's anchor clips under "else".
            return {"list": str(self._reference_anchor_file(setting, out)), "mode": mode, "batch_size": 1,
                    "template": setting.template}
        return {"world": True, "per_class": setting.anchor_per_class, "mode": mode, "weight": setting.anchor_weight,
                "template": setting.template}

    def _reference_anchor_file(self, setting: Setting, out: Path) -> Path:
        from promptcouple import world
        from promptcouple.train import write_clip_file

        path = out / "cache" / f"anchors_else_world{self.world_seed}_n{setting.anchor_per_class}.safetensors"
        if not path.exists():
            shift = self.setting.world_shift
            kw = {"shift": shift} if shift is not None else {}
            clips, _ = world.anchor_set(per_class=setting.anchor_per_class, world_seed=self.world_seed, **kw)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            write_clip_file(tmp, clips.frames_uint8, [0] * len(clips), [REFERENCE_ANCHOR_LABEL])
            os.replace(tmp, path)
        return path

    def hard_prompt_data(self, setting: Setting) -> dict:
        w = self._world("hardsrc", "few_shot", 1, setting.shots)
        return {"world": w, "num_frames": setting.num_frames, "image_size": setting.image_size}

    def prepare(self, datasets: Sequence[str], protocol: str, splits: Sequence[int], shots: Sequence[int],
                hard: bool, eval_only: Sequence[str] = ()) -> float:
        """Render every clip the runs will read, once, in this process: the forked workers inherit
        the world's in-memory clip cache. Returns the seconds it took."""
        t0 = time.perf_counter()
        items = [(self.data(d, protocol, s, k), True) for d in datasets for s in splits for k in shots]
        items += [(self.data(d, protocol, splits[0], shots[0]), False) for d in eval_only]
        if hard:
            items.append((self.hard_prompt_data(self.setting), True))
        for data, train in items:
            raw = {"model": {"name": "world"}, "data": data,
                   "anchors": {"world": True, "per_class": self.setting.anchor_per_class}}
            build_datasets(TrainConfig.from_dict(raw), train=train)
        return time.perf_counter() - t0


class ListSource(DataSource):
    """Real data from a YAML file of per-dataset ``data`` sections (see the module docstring)."""

    def __init__(self, path: str, setting: Setting):
        self.path = Path(path).resolve()
        self.base_dir = self.path.parent
        try:
            self.spec = yaml.safe_load(self.path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise SystemExit(f"--data-config {path}: {err}") from None
        if not isinstance(self.spec.get("datasets"), dict) or not self.spec["datasets"]:
            raise SystemExit(f"--data-config {path}: needs a 'datasets:' mapping (see benchmarks/protocols.py)")
        self.setting = setting

    def datasets(self, protocol: str) -> list[str]:
        return [name for name, sections in self.spec["datasets"].items() if protocol in (sections or {})]

    def _resolve(self, section: dict) -> dict:
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
        return self._resolve(filled)

    def anchors(self, setting: Setting, mode: str, out: Path) -> dict:
        key = "reference_anchors" if mode == "reference" and "reference_anchors" in self.spec else "anchors"
        if key not in self.spec:
            raise SystemExit(f"--data-config: methods with anchors need an 'anchors:' section ({self.path})")
        a = dict(self.spec[key], mode=mode, template=setting.template)
        if mode != "reference":
            a["weight"] = setting.anchor_weight
        return a

    def hard_prompt_data(self, setting: Setting) -> Optional[dict]:
        src = self.spec.get("hard_prompt_source")
        return self._resolve(src) if src else None

    @property
    def hard_prompts(self) -> Optional[str]:
        p = self.spec.get("hard_prompts")
        return str((self.path.parent / p).resolve()) if p else None


def make_source(args: argparse.Namespace, setting: Setting) -> DataSource:
    """The world for ``--model world`` (or ``tiny`` without a data file), else the YAML file."""
    if args.data_config is not None:
        return ListSource(args.data_config, setting)
    if args.model not in ("world", "tiny"):
        raise SystemExit(f"--model {args.model}: real backbones need --data-config (list files per dataset)")
    return WorldSource(args.world_seed, setting)


# ----------------------------------------------------------------------------------- configs

def model_section(args: argparse.Namespace) -> dict:
    m = {"name": args.model}
    if args.pretrained is not None:
        m["pretrained"] = args.pretrained
    if args.backbone_checkpoint is not None:
        m["backbone_checkpoint"] = args.backbone_checkpoint
    return m


def prompt_section(method: Method, setting: Setting, hard_prompts: Optional[str]) -> dict:
    """The ``prompts`` section: CoOp (layer-0 text only), IVLP (deep, both towers) or coupled."""
    p = {"ctx_init": setting.ctx_init} if setting.ctx_init else {"n_ctx": setting.n_ctx}
    if method.deep:
        p.update(text_depth=setting.depth, vision_depth=setting.depth, n_vision_ctx=setting.n_vision_ctx)
    else:
        p.update(text_depth=1, vision_depth=0, n_vision_ctx=0)
    if method.hard:
        if hard_prompts is None:
            raise SystemExit(f"method {method.name!r} needs a hard prompt: --hard-prompts, or a "
                             "'hard_prompts' / 'hard_prompt_source' entry in --data-config")
        p["hard_prompts"] = hard_prompts
    return p


def run_config(method: Method, setting: Setting, model: dict, data: dict, out_dir: Path, *,
               seed: int, hard_prompts: Optional[str] = None, anchors: Optional[dict] = None,
               base_dir: Optional[Path] = None, eval_every: Optional[int] = None) -> dict:
    """The whole training config of one run, as the nested dict ``TrainConfig.from_dict`` takes."""
    every = setting.eval_every if eval_every is None else eval_every
    cfg = {
        "model": dict(model),
        "prompts": prompt_section(method, setting, hard_prompts),
        "data": copy.deepcopy(data),
        "optim": {"epochs": setting.epochs, "warmup_epochs": min(setting.warmup_epochs, setting.epochs),
                  "batch_size": setting.batch_size, "lr": setting.lr},
        "loss": {"text_consistency": method.text_consistency, "text_consistency_template": setting.template},
        "eval": {"batch_size": 64, "every_epochs": every},
        "run": {"output_dir": str(out_dir), "seed": seed, "precision": setting.precision,
                "device": setting.device, "progress": False},
    }
    if anchors is not None:
        cfg["anchors"] = anchors
    return {"config": cfg, "base_dir": str(base_dir) if base_dir is not None else None}


# ---------------------------------------------------------------------------------- running

class HandCrafted(torch.nn.Module):
    """The frozen, un-prompted model with a hand-crafted template: zero-shot CLIP.

    Called like the wrapper (``model(frames, classnames) -> logits``), so
    :func:`promptcouple.train.loop.evaluate_sets` scores it like any prompted model.
    """

    def __init__(self, wrapper: torch.nn.Module, template: str):
        super().__init__()
        self.wrapper, self.template = wrapper, template
        self._text: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        import promptcouple as pc

        key = tuple(classnames)
        if key not in self._text:  # the frozen text tower's template features, as KgCoOp's target
            reg = pc.TextConsistencyRegularizer(self.wrapper, classnames, template=self.template)
            self._text[key] = reg.frozen_features()
        with self.wrapper.prompts_disabled():
            return self.wrapper.logits(self.wrapper.encode_video(frames), self._text[key])


@dataclass
class Job:
    """One run: a training config (or a zero-shot evaluation) and where its record goes.

    Attributes:
        key: ``(method, dataset, split, shots)``, the record's identity.
        config: ``run_config`` output.
        trained: Train with the Trainer (else: evaluate the frozen model with ``template``).
        template: Template of the zero-shot evaluation.
        extra_evals: ``{name: run_config output}`` evaluated with the trained prompts afterwards
            (cross-dataset zero-shot transfer).
    """

    key: tuple
    config: dict
    trained: bool = True
    template: str = ZERO_SHOT_TEMPLATE
    extra_evals: dict = field(default_factory=dict)
    threads: int = 1


def _metrics(ev: dict) -> dict:
    """Top-1 numbers of one evaluation: base/novel/hm, or top1 of a single set."""
    if "hm" in ev:
        return {"base": ev["base"]["top1"], "novel": ev["novel"]["top1"], "hm": ev["hm"]}
    sets = [v for v in ev.values() if isinstance(v, dict)]
    return {"top1": sets[0]["top1"]} if sets else {}  # no evaluation set (a hard-prompt source list)


def _config(spec: dict) -> TrainConfig:
    return TrainConfig.from_dict(spec["config"], base_dir=spec["base_dir"])


def _evaluate(cfg: TrainConfig, template: str, prompts: Optional[str] = None) -> dict:
    """The config's evaluation sets scored with a prompt file, or (``None``) with the frozen model
    and the hand-crafted template."""
    if prompts is not None:
        return evaluate_config(cfg, prompts)
    ctx = setup_distributed(cfg.run.device)
    return evaluate_sets(HandCrafted(build_wrapper(cfg, ctx.device), template), build_datasets(cfg, train=False),
                         cfg, ctx=ctx)


def run_job(job: Job) -> dict:
    """Run one job; the record holds the final metrics, the curve, the seconds and the prompt file."""
    torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    cfg = _config(job.config)
    # The Trainer's own report lines would garble the progress bar; everything is in the record.
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), warnings.catch_warnings():
        # The reference anchor mode warns that it is inert: measuring that is what its row is for.
        warnings.filterwarnings("ignore", message=r"AnchorRegularizer\(mode='reference'\)")
        prompts = None
        if job.trained:
            shutil.rmtree(cfg.run.output_dir, ignore_errors=True)  # our own run of a previous invocation
            results = Trainer(cfg).fit()
            prompts = results["prompts"]
            final = _metrics(results["eval"])
            curve = [{"epoch": h["epoch"], **_metrics(h["eval"])} for h in results["history"] if "eval" in h]
            record = {**final, "curve": curve + [{"epoch": results["epochs"], **final}],
                      "train_seconds": results["time_s"], "prompts": prompts}
        else:
            record = _metrics(_evaluate(cfg, job.template))
        for name, spec in job.extra_evals.items():
            record.setdefault("transfer", {})[name] = _metrics(_evaluate(_config(spec), job.template, prompts))
    record["seconds"] = time.perf_counter() - t0
    method, dataset, split, shots = job.key
    return {"method": method, "dataset": dataset, "split": split, "shots": shots, **record}


def default_workers() -> int:
    """Two single-threaded runs side by side use two cores better than one two-threaded run:
    the steps of the small models are too short for intra-op threads to pay off. On a GPU, one."""
    return 2 if (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available() else 1


def run_jobs(jobs: Sequence[Job], workers: int, desc: str) -> list[dict]:
    """Run jobs (in ``workers`` forked processes when > 1) with a progress bar; records in job order."""
    records: list[Optional[dict]] = [None] * len(jobs)
    with tqdm(total=len(jobs), desc=desc, unit="run") as bar:
        if workers <= 1:
            for i, job in enumerate(jobs):
                bar.set_postfix_str("/".join(str(k) for k in job.key[:3]))
                records[i] = run_job(job)
                bar.update(1)
        else:
            # fork: the workers inherit the clips the parent rendered (WorldSource.prepare)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    records[i] = fut.result()
                    bar.set_postfix_str("/".join(str(k) for k in jobs[i].key[:3]))
                    bar.update(1)
    return records  # type: ignore[return-value]


def hard_prompt_file(args: argparse.Namespace, source: DataSource, setting: Setting, out: Path,
                     notes: Optional[dict] = None) -> Optional[str]:
    """The hard prompt: ``--hard-prompts``, the data file's, or IVLP prompts trained on the
    hard-prompt source, cached in ``OUT/cache`` per world seed and prompt layout.

    Returns:
        The prompt file path, or ``None`` when there is no source.
    """
    if args.hard_prompts is not None:
        return str(Path(args.hard_prompts).resolve())
    if isinstance(source, ListSource) and source.hard_prompts is not None:
        return source.hard_prompts
    data = source.hard_prompt_data(setting)
    if data is None:
        return None
    ivlp = METHODS["ivlp"]
    hard_setting = dataclasses.replace(setting, epochs=setting.hard_epochs,
                                       warmup_epochs=min(setting.warmup_epochs, setting.hard_epochs))
    spec = run_config(ivlp, hard_setting, model_section(args), data, Path("."), seed=setting.seed,
                      base_dir=source.base_dir, eval_every=0)
    tag = "world{}".format(args.world_seed) if source.world else "data"
    digest = _digest({"config": spec["config"], "inputs": _input_identity(args, source)})
    run_dir = out / "cache" / f"hard_prompts_{tag}_{digest}"
    prompts = run_dir / "prompts.safetensors"
    if not prompts.exists():
        spec["config"]["run"]["output_dir"] = str(run_dir)
        rec = run_job(Job(("hard-prompt", "source", 1, setting.shots), spec, threads=max(1, args.threads)))
        if notes is not None:
            notes.update(hard_prompt={"seconds": rec["seconds"], "source_accuracy": rec.get("top1")})
    elif notes is not None:
        notes.update(hard_prompt={"cached": str(prompts)})
    return str(prompts)


def _digest(obj: Any) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _input_identity(args: argparse.Namespace, source: DataSource) -> dict:
    """What a cached hard prompt depends on besides its config: the world's code (its defaults
    and renderer) and checkpoint, or the size and time of the files the config names."""
    def stamp(path: Optional[str]) -> Optional[list]:
        return [os.path.getsize(path), os.path.getmtime(path)] if path and os.path.isfile(path) else None

    ident = {"pretrained": stamp(args.pretrained), "backbone_checkpoint": stamp(args.backbone_checkpoint)}
    if args.model == "world" or source.world:
        import hashlib

        import promptcouple.world as world
        from promptcouple.world import model as world_model

        h = hashlib.sha1()
        for path in sorted(Path(world.__file__).parent.glob("*.py")):
            h.update(path.read_bytes())
        ident["world_code"] = h.hexdigest()[:12]
        if os.path.isfile(world_model.CHECKPOINT):
            ident["world_checkpoint"] = hashlib.sha1(Path(world_model.CHECKPOINT).read_bytes()).hexdigest()[:12]
        ident["world_defaults"] = {"shift": world.DEFAULT_SHIFT, "context": world.DEFAULT_CONTEXT}
    if isinstance(source, ListSource):
        ident["data_config"] = stamp(str(source.path))
    return ident


# ---------------------------------------------------------------------------------- summaries

def mean_over_splits(records: Sequence[dict], metrics: Sequence[str]) -> dict:
    """``{(method, dataset, shots): {metric: mean, metric_sd: sample sd, n: splits}}``; with base
    and novel, ``hm`` is the HM of the mean base and mean novel accuracy (``hm_sd`` stays the
    spread of the per-split HMs)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["dataset"], r["shots"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        row = {"n": len(rs)}
        for m in metrics:
            vals = [r[m] for r in rs]
            row[m] = statistics.fmean(vals)
            row[m + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        if "base" in row and "novel" in row:
            row["hm"] = hm(row["base"], row["novel"])
        row["seconds"] = sum(r["seconds"] for r in rs)
        out[key] = row
    return out


def base_novel_table(records: Sequence[dict], methods: Sequence[Method], datasets: Sequence[str]) -> dict:
    """Mean over splits per method and dataset, plus the average over datasets.

    The average row takes the mean base and mean novel accuracy over datasets and their HM (the
    convention of the CoOp/ViFi-CLIP tables), so every HM in the table is ``2BN/(B+N)``.

    Returns:
        ``{method: {dataset | "average": {"base", "novel", "hm", ...}}}``.
    """
    means = mean_over_splits(records, ("base", "novel", "hm"))
    table: dict[str, dict] = {}
    for m in methods:
        row = {d: means[(m.name, d, r_shots)] for (mn, d, r_shots) in means if mn == m.name and d in datasets}
        if not row:
            continue
        b = statistics.fmean(v["base"] for v in row.values())
        n = statistics.fmean(v["novel"] for v in row.values())
        row["average"] = {"base": b, "novel": n, "hm": hm(b, n)}
        table[m.name] = row
    return table


def format_base_novel(table: dict, methods: Sequence[Method], datasets: Sequence[str], digits: int = 1) -> str:
    """A markdown table in the layout of the paper's: one row per method, one ``B / N / HM``
    column per dataset, then the average."""
    cols = [d for d in datasets] + ["average"]
    lines = ["| method | " + " | ".join(f"{c} B / N / HM" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for m in methods:
        if m.name not in table:
            continue
        cells = []
        for c in cols:
            v = table[m.name].get(c)
            cells.append("-" if v is None else " / ".join(f"{v[k]:.{digits}f}" for k in ("base", "novel", "hm")))
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_grid(values: dict, rows: Sequence[tuple[str, str]], cols: Sequence[tuple[Any, str]],
                digits: int = 1) -> str:
    """A markdown table of numbers: ``values[(row_key, col_key)]`` (``-`` where missing)."""
    lines = ["| method | " + " | ".join(label for _, label in cols) + " |", "|---|" + "---|" * len(cols)]
    for rk, rl in rows:
        cells = [f"{values[(rk, ck)]:.{digits}f}" if (rk, ck) in values else "-" for ck, _ in cols]
        lines.append(f"| {rl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(records: Sequence[dict], methods: Sequence[Method], path: Path, title: str) -> Optional[Path]:
    """Base and novel accuracy over epochs per method (mean over datasets and splits), with the
    frozen model's zero-shot accuracy as horizontal lines: the narrowing made visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    zs = [r for r in records if r["method"] == "zero-shot"]
    trained = [m for m in methods if m.trained and any(r["method"] == m.name for r in records)]
    if not trained:
        return None
    cols = min(3, len(trained))
    rows = math.ceil(len(trained) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(trained):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, trained):
        rs = [r for r in records if r["method"] == m.name]
        by_epoch: dict[int, list[dict]] = {}
        for r in rs:
            for p in r["curve"]:
                by_epoch.setdefault(p["epoch"], []).append(p)
        epochs = sorted(e for e, ps in by_epoch.items() if len(ps) == len(rs))  # every run has the point
        for metric, style in (("base", "-o"), ("novel", "--o")):
            ax.plot(epochs, [statistics.fmean(p[metric] for p in by_epoch[e]) for e in epochs], style,
                    label=metric, markersize=3)
        if zs:
            datasets = {r["dataset"] for r in rs}
            for metric, ls in (("base", "-"), ("novel", "--")):
                v = statistics.fmean(r[metric] for r in zs if r["dataset"] in datasets)
                ax.axhline(v, color="grey", linestyle=ls, linewidth=1, label=f"zero-shot {metric}")
        ax.set_title(m.label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine_state() -> dict:
    """What the timings depend on: the CPU, the load when measured, versions."""
    return {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ a whole script

@dataclass
class Context:
    """What a benchmark script works with after :func:`start`."""

    args: argparse.Namespace
    setting: Setting
    source: DataSource
    methods: list[Method]
    datasets: list[str]
    splits: list[int]
    out: Path
    hard_prompts: Optional[str]
    timing: dict
    notes: dict
    t0: float

    def jobs(self, protocol: str, shots: Sequence[int], *, eval_every: int = 0,
             extra_evals: Optional[Callable[[Method, int, int], dict]] = None) -> list[Job]:
        """One job per method x dataset x split x K (zero-shot: one per dataset and K, no split).

        Larger datasets come first, so parallel workers finish together.
        """
        s, jobs = self.setting, []
        model = model_section(self.args)
        for dataset in sorted(self.datasets, key=self._cost, reverse=True):
            for k in shots:
                for m in self.methods:
                    for split in (self.splits if m.trained else [None]):
                        leaf = f"s{split}" if split else "frozen"
                        run_dir = self.out / protocol / m.name / dataset / f"k{k}" / leaf
                        data = self.source.data(dataset, protocol, split or self.splits[0], k)
                        anchors = self.source.anchors(s, m.anchors, self.out) if m.anchors else None
                        spec = run_config(m, s, model, data, run_dir, seed=s.seed + (split or 0),
                                          hard_prompts=self.hard_prompts, anchors=anchors,
                                          base_dir=self.source.base_dir,
                                          eval_every=eval_every)
                        extra = extra_evals(m, split or self.splits[0], k) if extra_evals else {}
                        jobs.append(Job((m.name, dataset, split, k), spec, trained=m.trained, template=s.template,
                                        extra_evals=extra, threads=self.args.threads))
        return jobs

    def _cost(self, dataset: str) -> int:
        if self.source.world and dataset in WORLD_DATASETS:
            from promptcouple.world import dataset_info

            return len(dataset_info(dataset)["classnames"])
        return 0

    def run(self, jobs: Sequence[Job], desc: str) -> list[dict]:
        t = time.perf_counter()
        workers = self.args.workers or default_workers()
        records = run_jobs(jobs, min(workers, len(jobs)) if jobs else 1, desc)
        self.timing["runs_s"] = self.timing.get("runs_s", 0.0) + time.perf_counter() - t
        self.notes["workers"] = workers
        return records

    def finish(self, name: str, results: dict, markdown: str) -> dict:
        """Add the bookkeeping, write the JSON, print the markdown; returns the whole document."""
        self.timing["total_s"] = time.perf_counter() - self.t0
        # CPU seconds of this process and its finished workers: with other jobs on the machine,
        # wall time alone says little; cpu_s / cores is the wall time on otherwise idle cores.
        self.timing["cpu_s"] = sum(getattr(resource.getrusage(who), f) for who in
                                   (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
        doc = {
            "benchmark": name, "setting": "quick" if self.args.quick else "full",
            "model": model_section(self.args), "data": "world" if self.source.world else str(self.args.data_config),
            "world_seed": self.args.world_seed if self.source.world else None,
            "world_knobs": ({"shift": self.setting.world_shift, "context": self.setting.world_context}
                            if self.source.world else None),
            "inputs": _input_identity(self.args, self.source),
            "splits": self.splits, "methods": [m.name for m in self.methods], "datasets": self.datasets,
            "hyperparameters": dataclasses.asdict(self.setting), "hard_prompts": self.hard_prompts,
            **results, "markdown": markdown, "timing": self.timing,
            "machine": {**self.notes.pop("machine_start"), "loadavg_end": list(os.getloadavg()),
                        "threads_per_run": self.args.threads, **self.notes},
        }
        default = self.out / f"{name}{'_quick' if self.args.quick else ''}.json"
        path = Path(self.args.json) if self.args.json else default
        write_json(path, doc)
        print(markdown)
        print(f"\n{name}: {self.timing['total_s']:.0f} s wall, {self.timing['cpu_s']:.0f} CPU-s "
              f"(load average {doc['machine']['loadavg'][0]:.1f} at the start); results in {path}")
        return doc


def start(args: argparse.Namespace, protocol: str, default_methods: Sequence[str], *,
          shots: Sequence[int], extra_datasets: Sequence[str] = ()) -> Context:
    """Parse-time work shared by the scripts: setting, data source, method and dataset lists,
    rendering of the world (timed), and the hard prompt (trained once and cached when needed)."""
    t0 = time.perf_counter()
    notes = {"machine_start": machine_state()}
    if args.threads is None:
        args.threads = 1 if args.model in ("world", "tiny") else torch.get_num_threads()
    setting = make_setting(args)
    source = make_source(args, setting)
    methods = resolve_methods(args.methods, default_methods)
    known = source.datasets(protocol)
    datasets = list(args.datasets or known)
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown} for {protocol}; choose from {known}")
    n_splits = args.splits or (1 if args.quick else 3)
    splits = [args.split_seed + i for i in range(n_splits)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timing: dict = {}
    if isinstance(source, WorldSource):
        timing["render_s"] = source.prepare(datasets, protocol, splits, shots, hard=any(m.hard for m in methods),
                                            eval_only=extra_datasets)
    hard = None
    if any(m.hard for m in methods):
        t = time.perf_counter()
        hard = hard_prompt_file(args, source, setting, out, notes)
        timing["hard_prompt_s"] = time.perf_counter() - t
    return Context(args, setting, source, methods, datasets, splits, out, hard, timing, notes, t0)
