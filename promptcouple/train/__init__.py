"""Training and evaluation of prompts: YAML configs, a resumable DDP-ready loop, backbone loading.

::

    from promptcouple.train import load_config, train, evaluate
    results = train(load_config("cfg.yaml"))                      # or: promptcouple train cfg.yaml
    metrics = evaluate(wrapper, dataset, classnames)               # {"top1", "top5", ...}
"""

from promptcouple.train.backbone import BackboneLoadError, BackboneReport, load_backbone
from promptcouple.train.config import ConfigError, TrainConfig, load_config
from promptcouple.train.data import ClipTensorDataset, write_clip_file
from promptcouple.train.loop import Trainer, build_wrapper, evaluate, evaluate_config, hm, train

__all__ = [
    "BackboneLoadError",
    "BackboneReport",
    "ClipTensorDataset",
    "ConfigError",
    "TrainConfig",
    "Trainer",
    "build_wrapper",
    "evaluate",
    "evaluate_config",
    "hm",
    "load_backbone",
    "load_config",
    "train",
    "write_clip_file",
]
