"""Training and evaluation of prompts: YAML configs, a resumable DDP-ready Trainer, backbone loading.

::

    from promptcouple.train import load_config, train, evaluate
    results = train(load_config("cfg.yaml"))                      # or: promptcouple train cfg.yaml
    metrics = evaluate(wrapper, dataset, classnames)               # {"top1", "top5", ...}

One concern per module: ``config`` (the schema) on ``yaml_dataclass`` (the generic YAML engine),
``data`` (the datasets a config names), ``hosts`` (backbone and wrapper), ``distributed``
(process group and device), ``seeding``, ``step`` (one micro-step's loss), ``trainer``,
``evaluation``, ``checkpoint`` (resumable training state) and ``backbone`` (reference checkpoints'
CLIP weights); the ``train`` and ``eval`` commands are in :mod:`promptcouple.commands`.
"""

from promptcouple.train.backbone import BackboneLoadError, BackboneReport, load_backbone
from promptcouple.train.config import ConfigError, TrainConfig, load_config
from promptcouple.train.data import ClipTensorDataset, write_clip_file
from promptcouple.train.distributed import DistContext, setup_distributed, teardown_distributed
from promptcouple.train.evaluation import evaluate, evaluate_config, evaluate_sets, hm
from promptcouple.train.hosts import build_host, build_wrapper, tiny_clip
from promptcouple.train.step import TrainStep
from promptcouple.train.trainer import Trainer, lr_lambda, train

__all__ = [
    "BackboneLoadError",
    "BackboneReport",
    "ClipTensorDataset",
    "ConfigError",
    "DistContext",
    "TrainConfig",
    "TrainStep",
    "Trainer",
    "build_host",
    "build_wrapper",
    "evaluate",
    "evaluate_config",
    "evaluate_sets",
    "hm",
    "load_backbone",
    "load_config",
    "lr_lambda",
    "setup_distributed",
    "teardown_distributed",
    "tiny_clip",
    "train",
    "write_clip_file",
]
