"""Convert reference checkpoints (GA2-CLIP, ViFi-CLIP) into prompt files.

The checkpoint is read and its prompt tensors found by the package's one checkpoint reader
(:mod:`promptcouple.adapters.checkpoints`, which also serves ``load_backbone``); this module
derives the prompt configuration from them, adds the hard prompt a coupled GA2-CLIP checkpoint
was trained with (it is not saved there) and writes the prompt file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from promptcouple.adapters.checkpoints import extract_state_dict, read_checkpoint, reference_prompt_tensors
from promptcouple.config import CouplingConfig
from promptcouple.errors import CheckpointError, OutputConflictError, PromptFileError
from promptcouple.fileio import PathLike
from promptcouple.io import PromptFile, check_prompt_tensors, read_prompt_file, write_prompt_file


def convert_state_dict(state: dict[str, torch.Tensor], *,
                       dropout: float = 0.5) -> tuple[str, dict[str, torch.Tensor], CouplingConfig]:
    """Map a reference state dict to (format name, prompt file tensors, config)."""
    fmt, tensors = reference_prompt_tensors(state)
    text_depth = 1 + sum(k.startswith("text.deep.") for k in tensors)
    vision = tensors.get("vision.ctx")
    vision_depth = 1 + sum(k.startswith("vision.deep.") for k in tensors) if vision is not None else 0
    config = CouplingConfig(n_ctx=tensors["text.ctx"].shape[0], text_depth=text_depth,
                            n_vision_ctx=vision.shape[0] if vision is not None else 0,
                            vision_depth=vision_depth, dropout=dropout)
    return fmt, tensors, config


def _convert_file(path: PathLike, *, trust: bool) -> tuple[str, dict[str, torch.Tensor], CouplingConfig]:
    state, _, _ = extract_state_dict(read_checkpoint(path, trust=trust))
    if "prompts.ctx" in state:  # saved by ViFi-CLIP's / X-CLIP's loop around a drop-in model (docs/INTEGRATIONS.md)
        from promptcouple.integrations import checkpoint_prompt_tensors

        tensors, config, _ = checkpoint_prompt_tensors(state)
        return "promptcouple drop-in", tensors, config
    return convert_state_dict(state)


def convert_checkpoint(src: PathLike, dst: Optional[PathLike] = None, *, trust: bool = False,
                       hard_prompts: Union[None, PathLike, torch.Tensor] = None) -> PromptFile:
    """Convert a GA2-CLIP or ViFi-CLIP checkpoint; write it to ``dst`` if given.

    Args:
        src: The reference checkpoint (``.pth``).
        dst: Where to write the prompt file (atomically); ``None`` to only return it.
        trust: Allow pickled objects (``torch.load(weights_only=False)``): trusted files only.
        hard_prompts: The hard prompt a coupled GA2-CLIP checkpoint was trained with (a tensor,
            a prompt file, or a GA2-CLIP hard-prompt checkpoint), stored so the file is complete.
    """
    if dst is not None:
        inputs = [src] + ([hard_prompts] if isinstance(hard_prompts, (str, os.PathLike)) else [])
        _check_destination(dst, inputs)
    fmt, tensors, config = _convert_file(src, trust=trust)
    if hard_prompts is not None:
        if "coupling.weight" not in tensors:
            raise CheckpointError(f"{src} has no coupling layer (prompt_learner.proj_b2n_VPT), so a hard prompt "
                                  "has no place in it; convert it without --hard-prompt")
        hard = _hard_prompt_tensor(hard_prompts, trust=trust)
        if tuple(hard.shape) != tuple(tensors["text.ctx"].shape):
            raise PromptFileError(f"{hard_prompts if not torch.is_tensor(hard_prompts) else 'hard_prompts'}: hard "
                                  f"prompt of shape {tuple(hard.shape)}, the checkpoint's context is "
                                  f"{tuple(tensors['text.ctx'].shape)}; pass the hard prompt this checkpoint was "
                                  "trained with")
        tensors["text.hard"] = hard.float()
    # Everything a load would check, checked before anything is written.
    try:
        check_prompt_tensors(tensors, config, str(src))
    except PromptFileError as err:
        raise CheckpointError(f"cannot convert: {err}") from None
    if dst is not None:
        train_host = sorted({k.split(".")[1] for k in tensors if k.startswith("host.")})  # X-CLIP's mit, ...
        write_prompt_file(dst, tensors, config, host=f"converted from {fmt}", train_host=train_host)
    return PromptFile(tensors, config, {"source_format": fmt})


def _check_destination(dst: PathLike, inputs: list) -> None:
    """Refuse a destination that is a directory or one of the inputs (it would be replaced)."""
    dst = Path(dst)
    if dst.is_dir():
        raise OutputConflictError(f"destination {dst} is a directory; give a file name, e.g. {dst / 'prompts.safetensors'}")
    for source in inputs:
        source = Path(source)
        if dst.resolve() == source.resolve() or (dst.exists() and source.exists() and os.path.samefile(dst, source)):
            raise OutputConflictError(f"destination {dst} is also an input ({source}): converting would replace it; "
                                      "give another destination file")


def _hard_prompt_tensor(source, *, trust: bool) -> torch.Tensor:
    if torch.is_tensor(source):
        return source
    path = Path(source)
    if path.suffix == ".safetensors":
        return read_prompt_file(path).effective_context()
    # A GA2-CLIP hard-prompt checkpoint: its own (uncoupled) text context.
    return _convert_file(path, trust=trust)[1]["text.ctx"]
