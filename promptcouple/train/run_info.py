"""What a run records about itself, so that its outputs can be used without repeating the command.

* ``config.yaml`` in ``run.output_dir``: the resolved config, ``--set`` overrides included, with
  absolute paths; ``promptcouple eval RUN_DIR`` and ``promptcouple predict`` read it.
* the prompt file's run information (:data:`promptcouple.io.RUN_INFO_KEYS`): class names, the
  backbone (name, pretrained tag or file, checkpoint hashes), frames and image size, so that the
  prompt file alone rebuilds the model it was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

from promptcouple.fileio import PathLike, atomic_write_text
from promptcouple.train.config import BUILTIN_MODELS, ConfigError, TrainConfig, load_config

logger = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"

_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: a checkpoint is hashed once per process


def sha256_of(path: PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (cached per path, size and modification time)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def backbone_info(cfg: TrainConfig) -> dict:
    """The backbone as the prompt file records it: enough to rebuild it and to notice a different one."""
    m = cfg.model
    info = {"name": m.name, "pretrained": m.pretrained, "backbone_checkpoint": m.backbone_checkpoint}
    for key in ("pretrained", "backbone_checkpoint"):
        value = info[key]
        if value is not None and os.path.isfile(value):
            info[f"{key}_sha256"] = sha256_of(value)
    if m.name in BUILTIN_MODELS and m.name != "world":
        info["seed"] = cfg.run.seed  # the random built-in models are built from run.seed
    if m.trust_checkpoint:
        info["trust_checkpoint"] = True
    return info


def run_info(cfg: TrainConfig, classnames: list, eval_classnames: dict) -> dict:
    """The prompt file's run information for a run of ``cfg`` (see :data:`promptcouple.io.RUN_INFO_KEYS`)."""
    e = cfg.eval
    return {
        "classnames": list(classnames),
        "eval_classnames": {name: list(names) for name, names in eval_classnames.items()},
        "backbone": backbone_info(cfg),
        "num_frames": cfg.data.num_frames,
        "image_size": cfg.data.image_size,
        "eval_views": {"num_clips": e.num_clips, "num_crops": e.num_crops, "reduce": e.reduce,
                       "precision": cfg.run.precision},
    }


def _absolute_paths(cfg: TrainConfig) -> dict:
    """``cfg.to_dict()`` with every relative path made absolute against the working directory, where
    the run reads it: the file is read back from its own folder, which would resolve them there."""
    from promptcouple.train.yaml_dataclass import is_path_field

    out = cfg.to_dict()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            path = getattr(value, f.name)
            if not (is_path_field(f) and isinstance(path, str)) or os.path.isabs(path):
                continue
            if f.metadata.get("only_if_exists") and not os.path.exists(path):
                continue  # a tag such as pretrained: openai
            out[section.name][f.name] = os.path.abspath(path)
    return out


def write_run_config(cfg: TrainConfig, folder: PathLike) -> Path:
    """Write the resolved config to ``folder/config.yaml`` (loadable with :func:`load_config`)."""
    import yaml

    path = Path(folder) / RUN_CONFIG
    text = ("# The resolved config of this run (overrides included), written by promptcouple.\n"
            "# promptcouple eval / predict read it from this folder.\n")
    atomic_write_text(path, text + yaml.safe_dump(_absolute_paths(cfg), sort_keys=False))
    return path


def run_config_path(path: PathLike) -> Optional[Path]:
    """``config.yaml`` of the run folder ``path`` (or of the folder holding the file ``path``), if any."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    candidate = folder / RUN_CONFIG
    return candidate if candidate.is_file() else None


def load_run_config(path: PathLike, overrides: Optional[list] = None) -> TrainConfig:
    """The config of the run folder ``path`` (a run folder, or a file inside one).

    Raises:
        ConfigError: No ``config.yaml`` there.
    """
    found = run_config_path(path)
    if found is None:
        raise ConfigError(f"{str(path)!r}: found no {RUN_CONFIG} there; expected a run folder written by "
                          "`promptcouple train` (it writes its resolved config there); "
                          "fix: give the run's YAML config instead")
    return load_config(found, overrides)


def _check_files(recorded: dict, used: dict) -> None:
    """Each local file ``used`` names (``pretrained``, ``backbone_checkpoint``) has the recorded hash."""
    for key in ("pretrained", "backbone_checkpoint"):
        value, digest = used.get(key), recorded.get(f"{key}_sha256")
        if digest is None:
            continue
        if value is None or not os.path.isfile(value):
            raise ConfigError(f"model.{key}: the prompts were trained on {recorded.get(key)!r} "
                              f"(sha256 {digest[:12]}...), but {value!r} does not exist here; "
                              "fix: pass --config with a config naming its new place")
        found = sha256_of(value)
        if found != digest:
            raise ConfigError(f"model.{key}: {value!r} has sha256 {found[:12]}..., but the prompts were trained "
                              f"on a file with sha256 {digest[:12]}...; expected the same backbone; "
                              "fix: restore that file, or pass --config naming the right one")


def check_backbone(cfg: TrainConfig, info: dict) -> None:
    """The backbone ``cfg`` builds is the one the prompt file was trained on, as far as it records:
    the same model name and files with the same hashes.

    Raises:
        ConfigError: Another model, or a checkpoint that is missing or changed.
    """
    b = info.get("backbone")
    if not b:
        return  # nothing recorded (converted or older files): nothing to compare
    if cfg.model.name != b["name"]:
        raise ConfigError(f"model.name: the config names {cfg.model.name!r}, but the prompts were trained on "
                          f"{b['name']!r}; expected the same backbone; fix: a config with model.name: {b['name']}")
    if "seed" in b and cfg.run.seed != b["seed"]:  # a random built-in model is a function of its seed
        raise ConfigError(f"run.seed: {cfg.run.seed}, but the prompts were trained on the random {b['name']!r} "
                          f"model of seed {b['seed']}; fix: --set run.seed={b['seed']}")
    _check_files(b, {"pretrained": cfg.model.pretrained, "backbone_checkpoint": cfg.model.backbone_checkpoint})


def config_from_run_info(info: dict) -> TrainConfig:
    """A config that rebuilds the backbone a prompt file records (model, frames, image size, seed).

    Only the model, data and run sections that building the host reads are set: the result is not
    meant for training and is not checked as a training config.

    Raises:
        ConfigError: The file records no backbone, or a recorded checkpoint is missing or changed.
    """
    from promptcouple.train.config import DataConfig, ModelConfig, RunConfig

    b = info.get("backbone")
    if not b:
        raise ConfigError("the prompt file records no backbone (written before promptcouple recorded it, or by "
                          "`promptcouple convert`); expected run information from `promptcouple train`; "
                          "fix: pass --config with the run's YAML config, or keep the prompt file in its run folder")
    _check_files(b, b)
    model = ModelConfig(name=b["name"], pretrained=b.get("pretrained"),
                        backbone_checkpoint=b.get("backbone_checkpoint"),
                        trust_checkpoint=bool(b.get("trust_checkpoint", False)))
    data = DataConfig(num_frames=int(info.get("num_frames", DataConfig.num_frames)),
                      image_size=int(info.get("image_size", DataConfig.image_size)))
    run = RunConfig(seed=int(b.get("seed", RunConfig.seed)), progress=False)
    views = info.get("eval_views") or {}
    cfg = TrainConfig(model=model, data=data, run=run)
    cfg.eval.num_clips = int(views.get("num_clips", cfg.eval.num_clips))
    cfg.eval.num_crops = int(views.get("num_crops", cfg.eval.num_crops))
    cfg.eval.reduce = views.get("reduce", cfg.eval.reduce)
    cfg.run.precision = views.get("precision", cfg.run.precision)
    return cfg
