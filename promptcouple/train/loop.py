"""Deprecated: the names of this module moved to modules of their own in ``promptcouple.train``.

Kept for one release so that ``from promptcouple.train.loop import X`` keeps working (with a
``DeprecationWarning`` naming the new home); import from ``promptcouple.train`` instead.
"""

from __future__ import annotations

import importlib
import warnings

_MOVED = {
    "DistContext": "distributed", "setup_distributed": "distributed", "teardown_distributed": "distributed",
    "epoch_seed": "seeding",
    "tiny_clip": "hosts", "build_host": "hosts", "build_wrapper": "hosts",
    "TrainStep": "step",
    "Trainer": "trainer", "train": "trainer", "lr_lambda": "trainer",
    "hm": "evaluation", "evaluate": "evaluation", "evaluate_sets": "evaluation", "evaluate_config": "evaluation",
    "CHECKPOINT": "config", "LOG": "config", "RESULTS": "config", "PROMPTS": "config",
}


def __getattr__(name: str):
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'promptcouple.train.loop' has no attribute {name!r}")
    warnings.warn(f"promptcouple.train.loop.{name} moved to promptcouple.train.{module}.{name}; "
                  "promptcouple.train.loop goes away in the next release", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(f"promptcouple.train.{module}"), name)
