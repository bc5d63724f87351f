"""Training checkpoints: written atomically, restored exactly, readable with ``weights_only=True``.

A checkpoint holds the prompt state (``wrapper.prompts.state_dict()``), the optimizer, scheduler and
grad-scaler states, the epoch and global step, every RNG state (torch, CUDA, numpy, python and the
data-order generator) and the config. RNG states are stored as tensors and plain lists so loading
never unpickles arbitrary objects.
"""

from __future__ import annotations

import pickle
import random
from typing import Any, Optional, Union

import numpy as np
import torch

from promptcouple.errors import CheckpointError
from promptcouple.fileio import PathLike, atomic_write

FORMAT = "promptcouple.train_checkpoint"
FORMAT_VERSION = 1
# What a resume reads from a checkpoint.
REQUIRED_KEYS = ("epoch", "global_step", "prompts", "optimizer", "scheduler", "rng", "world_size", "config")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``.

    A crash or error at any point leaves the previous file at ``path`` untouched: the rename is
    atomic on POSIX and Windows, and the temporary file is removed on failure.
    """
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def rng_state(data_generator: Optional[torch.Generator] = None) -> dict:
    """Every RNG state as tensors and plain Python values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def set_rng_state(state: dict, data_generator: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "data" in state and data_generator is not None:
        data_generator.set_state(state["data"])


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read a training checkpoint (``weights_only=True``) and check its format.

    Raises:
        CheckpointError: The file is unreadable (truncated: checkpoints are written atomically, so
            only a copy or another program leaves one), not a promptcouple training checkpoint, a
            newer one, or one without the entries a resume needs (a ``ValueError``).
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path} is not a readable training checkpoint (truncated or damaged: {err}); "
                              "restore it from a copy, or remove it to train that run from the start") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a promptcouple training checkpoint "
                              "(a prompt file is loaded with wrapper.load_prompts, not --resume)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format_version']}, newer than this "
                              f"promptcouple reads ({FORMAT_VERSION}); upgrade promptcouple")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: training checkpoint without {missing}; it is damaged: restore it from a "
                              "copy, or remove it to train that run from the start")
    return ckpt
