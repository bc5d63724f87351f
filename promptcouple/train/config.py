"""The training configuration: a dataclass tree read from YAML, checked before anything runs.

A config file has one section per field of :class:`TrainConfig` (``model``, ``prompts``, ``data``,
``anchors``, ``optim``, ``loss``, ``eval``, ``run``), each a dataclass of
:mod:`promptcouple.train.sections` that documents and checks its keys. Unknown keys, values of
the wrong type and out-of-range values raise :class:`ConfigError` naming the dotted key; relative
paths in the file are resolved against the file's directory, relative paths given with ``--set``
against the working directory.

Example (GA2-CLIP base-to-novel on HMDB-51, split 1; every key with its default is documented on
the section dataclasses)::

    model: {name: ViT-B-16-quickgelu, pretrained: openai}          # or a local file; `tiny`, `world`
    prompts:                                              # CouplingConfig fields + hard_prompts
      hard_prompts: runs/k400_base/prompts.safetensors   # coupling; omit for IVLP
      n_ctx: 16
      text_depth: 9
      vision_depth: 9
    data:
      train_list: splits/hmdb/fs_base_s1_train.txt
      labels: labels/hmdb_base.csv
      val_list: splits/hmdb/base_val.txt                  # base classes -> base accuracy
      novel_list: splits/hmdb/novel_val.txt               # novel classes -> novel accuracy, HM
      novel_labels: labels/hmdb_novel.csv
      root: hmdb51/videos
      num_frames: 32
    anchors: {list: splits/k400_anchors.txt, labels: labels/k400_anchors.csv, mode: consistency}
    optim: {epochs: 12, warmup_epochs: 2, batch_size: 8, lr: 4.0e-3}
    eval: {num_clips: 1, num_crops: 1}
    run: {output_dir: runs/hmdb_s1, precision: bf16, seed: 1024}

Run it with ``promptcouple train cfg.yaml`` or ``torchrun --nproc_per_node=8 -m promptcouple train
cfg.yaml``; override any value with ``--set optim.lr=2e-3``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from promptcouple.train.sections import (ANCHOR_MODES, PRECISIONS, VIEW_REDUCTIONS, WORLD_PROTOCOLS,  # noqa: F401
                                         AnchorConfig, DataConfig, EvalConfig, LossConfig, ModelConfig,
                                         OptimConfig, PromptsConfig, RunConfig, WorldDataConfig)
from promptcouple.train.yaml_dataclass import (ConfigError, build, is_path_field, parse_override, path_field,  # noqa: F401
                                               read_yaml_mapping, resolve_paths, set_dotted, unknown_key_message)

BUILTIN_MODELS = ("tiny", "tiny-quickgelu", "world")

# What a run writes into run.output_dir.
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
RESULTS = "results.json"
PROMPTS = "prompts.safetensors"


@dataclass
class TrainConfig:
    """The whole run. Build it with :func:`load_config` or :meth:`from_dict`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, data: dict, base_dir: Union[str, Path, None] = None) -> "TrainConfig":
        """Build and check a config from nested dicts (relative paths resolved against ``base_dir``).

        Raises:
            ConfigError: Unknown keys, wrong types or values out of range.
        """
        data = _flatten_prompts(dict(data or {}))
        cfg = build(cls, data, "", Path(base_dir) if base_dir is not None else None)
        cfg.check()
        return cfg

    def to_dict(self) -> dict:
        """Plain nested dicts, with the prompts' coupling fields back at the section's top level."""
        d = dataclasses.asdict(self)
        coupling = d["prompts"].pop("coupling")
        d["prompts"].update(coupling)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    def coupling_config(self):
        """The :class:`promptcouple.CouplingConfig` of the prompts section."""
        return self.prompts.coupling_config()

    def check(self) -> None:
        """Check values and their combinations (not files: :func:`check_files` does that).

        Each section checks its own keys (``promptcouple.train.sections``), in file order.

        Raises:
            ConfigError: The first problem found.
        """
        for f in dataclasses.fields(self):
            getattr(self, f.name).check()


def check_files(cfg: TrainConfig) -> None:
    """Check that every configured input file exists (before any model is built).

    Raises:
        ConfigError: Naming the key and the missing path.
    """
    items = [
        ("model.backbone_checkpoint", cfg.model.backbone_checkpoint),
        ("prompts.hard_prompts", cfg.prompts.hard_prompts),
        ("anchors.list", cfg.anchors.list), ("anchors.labels", cfg.anchors.labels),
    ]
    items += [(f"data.{f.name}", getattr(cfg.data, f.name)) for f in dataclasses.fields(DataConfig)
              if is_path_field(f)]
    for key, value in items:
        if value is not None and not os.path.exists(value):
            raise ConfigError(f"{key}: {value!r} does not exist")
    if cfg.model.name in BUILTIN_MODELS and cfg.model.pretrained is not None:
        raise ConfigError(f"model.pretrained: the built-in model {cfg.model.name!r} takes no pretrained weights")


def load_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read a YAML config and apply ``key=value`` overrides (values parsed as YAML).

    Args:
        path: The YAML file. Relative paths inside it are resolved against its directory.
        overrides: ``["optim.lr=1e-3", "data.num_frames=4"]``; relative paths in them are
            resolved against the working directory.

    Returns:
        The checked config.

    Raises:
        ConfigError: Unreadable file, bad YAML, unknown keys, wrong types or values.
    """
    path = Path(path)
    raw = resolve_paths(TrainConfig, _flatten_prompts(read_yaml_mapping(path)), path.resolve().parent)
    for item in overrides or []:
        key, value = parse_override(item)
        key = _dotted_key(key)
        set_dotted(raw, key, value)
        raw = resolve_paths(TrainConfig, raw, Path.cwd(), only=key)
    return TrainConfig.from_dict(raw)


# --- the prompts section: CouplingConfig's fields sit flat beside hard_prompts in YAML ------------

def _flatten_prompts(raw: dict) -> dict:
    """Move the coupling fields of ``prompts`` into ``prompts.coupling`` (YAML keeps them flat)."""
    prompts = raw.get("prompts")
    if isinstance(prompts, dict):
        prompts = dict(prompts)
        coupling = dict(prompts.pop("coupling", None) or {})
        for key in list(prompts):
            if key != "hard_prompts":
                coupling[key] = prompts.pop(key)
        if coupling:
            _check_coupling_keys(coupling)
        prompts["coupling"] = coupling
        raw = {**raw, "prompts": prompts}
    return raw


def _dotted_key(key: str) -> str:
    """An override's key in the built tree: ``prompts.n_ctx`` is ``prompts.coupling.n_ctx``."""
    parts = key.split(".")
    if parts[0] == "prompts" and len(parts) == 2 and parts[1] != "hard_prompts":
        _check_coupling_keys({parts[1]: None})
        return f"prompts.coupling.{parts[1]}"
    return key


def _check_coupling_keys(coupling: dict) -> None:
    try:
        from promptcouple import CouplingConfig
    except ImportError:
        return
    known = {f.name for f in dataclasses.fields(CouplingConfig)}
    for key in coupling:
        if key not in known:
            raise ConfigError(unknown_key_message("prompts." + key, key, sorted(known | {"hard_prompts"})))
