"""Host families whose adapters need an optional library (transformers, timm, ...).

Each module named here imports without its library and lists its adapter classes in
``ADAPTERS``; the library itself is imported lazily inside ``claims``.
"""

from __future__ import annotations

import importlib

MODULES = ("open_clip_custom", "hf", "videox")


def register_all(register) -> None:
    for name in MODULES:
        try:
            module = importlib.import_module(f"promptcouple.adapters.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"promptcouple.adapters.{name}":
                continue  # family not written yet
            raise
        for adapter in module.ADAPTERS:
            register(adapter)
