"""Merged prompts: a coupled prompt set with its coupling computed once, for deployment.

In evaluation the coupled context ``ReLU(Linear([hard; soft]))`` is the same for every class and
every video, so it can be computed once and stored as a plain context. The merged file needs
neither the hard prompt nor the mapping layer (no ``text.hard``, no ``coupling.*`` tensors): it
is an IVLP-shaped prompt file that any wrapper of the same backbone loads
(``CouplingPromptWrapper.from_pretrained(host, "merged.safetensors")``), giving the coupled
wrapper's evaluation logits. Its metadata ``merged_from`` (JSON) names the source and its
SHA-256. Training from a merged file trains a plain context: the coupling is gone (as after
peft's ``merge_and_unload``).
"""

from __future__ import annotations

import json
from typing import Optional, Union

import torch

from promptcouple.errors import PromptFileError
from promptcouple.fileio import PathLike
from promptcouple.io import PromptFile, read_prompt_file, run_info_of, write_prompt_file, wrapper_tensors

# The metadata every prompt file gets from write_prompt_file; anything else is carried over as it is.
_WRITTEN_KEYS = ("format", "format_version", "promptcouple_version", "config", "text_width", "vision_width",
                 "coupled", "host", "train_host")
_COUPLING_KEYS = ("text.hard", "coupling.weight", "coupling.bias")


def save_prompt_file(pf: PromptFile, path: PathLike) -> None:
    """Write a :class:`PromptFile` built in memory, keeping its run information and extra metadata."""
    meta = pf.metadata
    extra = {k: v for k, v in meta.items() if k not in _WRITTEN_KEYS and k not in run_info_of(meta)}
    write_prompt_file(path, pf.tensors, pf.config, host=meta.get("host", ""),
                      train_host=json.loads(meta.get("train_host", "[]")), run_info=run_info_of(meta), extra=extra)


def merge_prompts(pf: PromptFile, *, source: str = "", hard_prompts: Union[None, PathLike, torch.Tensor] = None,
                  sha256: Optional[str] = None) -> PromptFile:
    """The merged form of a prompt file (a plain file is returned unchanged but for the metadata).

    Args:
        pf: The prompt file, as read.
        source: What it was read from (recorded in ``merged_from``).
        hard_prompts: The hard prompt, for a converted GA2-CLIP file that does not hold it (a tensor
            or a prompt file, whose effective context is taken).
        sha256: The source file's hash (recorded).

    Raises:
        PromptFileError: A coupled file without its hard prompt and none given.
    """
    tensors = dict(pf.tensors)
    if pf.coupled and "text.hard" not in tensors:
        if hard_prompts is None:
            raise PromptFileError(f"{source or 'the prompt file'} is coupled to a hard prompt it does not contain "
                                  "(converted from a GA2-CLIP checkpoint); fix: pass the hard prompt it was trained "
                                  "with (--hard-prompt FILE, or hard_prompts=)")
        hard = hard_prompts if torch.is_tensor(hard_prompts) else read_prompt_file(hard_prompts).effective_context()
        tensors["text.hard"] = hard.float()
    merged = PromptFile(tensors, pf.config, dict(pf.metadata)).effective_context()
    out = {k: v for k, v in tensors.items() if k not in _COUPLING_KEYS}
    out["text.ctx"] = merged
    metadata = dict(pf.metadata)
    metadata["coupled"] = json.dumps(False)
    metadata["merged_from"] = json.dumps({"source": source, "sha256": sha256, "coupled": pf.coupled})
    return PromptFile(out, pf.config, metadata)


def merged(wrapper) -> PromptFile:
    """``wrapper.merged()``: the active prompts with the coupling computed once (see the module docstring)."""
    tensors = {k: v.detach().to("cpu", torch.float32).clone() for k, v in wrapper_tensors(wrapper).items()}
    metadata = {"host": wrapper.host.kind, "train_host": json.dumps(list(wrapper.train_host)),
                "coupled": json.dumps(wrapper.prompts.coupled)}
    pf = merge_prompts(PromptFile(tensors, wrapper.config, metadata), source=f"a {type(wrapper).__name__} in memory")
    return pf


def merge_prompt_file(src: PathLike, dst: PathLike, *,
                      hard_prompts: Union[None, PathLike, torch.Tensor] = None) -> PromptFile:
    """Read ``src`` (a file, folder or Hub reference), merge it and write ``dst`` atomically."""
    from promptcouple.convert import _check_destination
    from promptcouple.hub import resolve_prompt_source
    from promptcouple.train.run_info import sha256_of

    path = resolve_prompt_source(src)
    _check_destination(dst, [path])
    pf = merge_prompts(read_prompt_file(path), source=str(src), hard_prompts=hard_prompts, sha256=sha256_of(path))
    save_prompt_file(pf, dst)
    return read_prompt_file(dst)
