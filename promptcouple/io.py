"""Prompt files: every prompt tensor of a wrapper in one self-describing ``.safetensors`` file.

Tensor keys are stable and name the place a tensor enters the model::

    text.ctx            (n_ctx, d_text)        soft text context, layer 0
    text.deep.{i}       (n_ctx, d_text)        text layer i = 1 .. text_depth-1
    text.hard           (n_ctx, d_text)        the frozen hard prompt (coupled files)
    coupling.weight     (d_text, 2 d_text)     mapping layer [hard; soft] -> context
    coupling.bias       (d_text,)
    vision.ctx          (n_vision_ctx, d_vis)  appended before ln_pre
    vision.deep.{i}     (n_vision_ctx, d_vis)  vision layer i = 1 .. vision_depth-1
    host.{name}         any                    a host module trained beside the prompts (``train_host``)

String metadata: ``format``, ``format_version``, ``promptcouple_version``, ``config`` (JSON),
``text_width``, ``vision_width``, ``coupled``, and ``host`` (the layout it was trained on).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from promptcouple.config import CouplingConfig
from promptcouple.fileio import PathLike, atomic_write_bytes
from promptcouple.prompts import coupled_context

FORMAT = "promptcouple.prompts"
FORMAT_VERSION = "1"


@dataclass
class PromptFile:
    """The contents of a prompt file: tensors under stable keys, the config and the metadata."""

    tensors: dict[str, torch.Tensor]
    config: CouplingConfig
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def coupled(self) -> bool:
        return "coupling.weight" in self.tensors

    @property
    def text_width(self) -> int:
        return int(self.tensors["text.ctx"].shape[1])

    def effective_context(self) -> torch.Tensor:
        """The layer-0 text context as evaluation computes it: what another run takes as hard prompt."""
        ctx = self.tensors["text.ctx"].float()
        if not self.coupled:
            return ctx.clone()
        if "text.hard" not in self.tensors:
            raise ValueError("this prompt file is coupled to a hard prompt it does not contain, so its "
                             "effective context is unknown; convert it with the hard prompt")
        t = self.tensors
        return coupled_context(t["text.hard"].float(), ctx, t["coupling.weight"].float(), t["coupling.bias"].float())


def prompt_tensors(prompts) -> dict[str, torch.Tensor]:
    """A ``PromptLearner``'s tensors under the file keys (shared storage; callers copy)."""
    out = {"text.ctx": prompts.ctx}
    out.update({f"text.deep.{i}": p for i, p in enumerate(prompts.text_deep, start=1)})
    if prompts.vision_ctx is not None:
        out["vision.ctx"] = prompts.vision_ctx
        out.update({f"vision.deep.{i}": p for i, p in enumerate(prompts.vision_deep, start=1)})
    if prompts.coupled:
        out["text.hard"] = prompts.hard
        out["coupling.weight"] = prompts.coupling.weight
        out["coupling.bias"] = prompts.coupling.bias
    return out


def wrapper_tensors(wrapper) -> dict[str, torch.Tensor]:
    """Everything a wrapper trains, under the file keys: the prompts and its ``train_host`` modules."""
    out = prompt_tensors(wrapper.prompts)
    out.update({f"{HOST_PREFIX}{n}": p for n, p in wrapper.host_trainable_parameters()})
    return out


HOST_PREFIX = "host."


def _metadata(config: CouplingConfig, tensors: dict[str, torch.Tensor], host: str = "",
              train_host: Sequence[str] = ()) -> dict[str, str]:
    from promptcouple import __version__

    vision = tensors.get("vision.ctx")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "promptcouple_version": __version__,
        "config": config.to_json(),
        "text_width": str(tensors["text.ctx"].shape[1]),
        "vision_width": str(vision.shape[1]) if vision is not None else "0",
        "coupled": json.dumps("coupling.weight" in tensors),
        "host": host,
        "train_host": json.dumps(list(train_host)),
    }


def write_prompt_file(path: PathLike, tensors: dict[str, torch.Tensor], config: CouplingConfig,
                      host: str = "", train_host: Sequence[str] = ()) -> None:
    """Write tensors + metadata atomically: a crash leaves either the old file or the new one."""
    from safetensors.torch import save

    data = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=_metadata(config, data, host, train_host)))


def save_prompts(wrapper, path: PathLike) -> None:
    """Save a wrapper's prompts (with hard prompt and config) to ``path``."""
    write_prompt_file(path, wrapper_tensors(wrapper), wrapper.config, wrapper.host.kind, wrapper.train_host)


def read_prompt_file(path: PathLike) -> PromptFile:
    """Read a prompt file (tensors, config, metadata; no model needed), checking that it is one.

    To load one into a wrapper: ``wrapper.load_prompts(path)`` or
    ``CouplingPromptWrapper.from_pretrained(model, path)``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated, or another format? "
                         f"convert reference checkpoints with `promptcouple convert`): {err}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a promptcouple prompt file "
                         f"(metadata format={metadata.get('format')!r}, expected {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has prompt file format version {metadata.get('format_version')}, "
                         f"this promptcouple reads version {FORMAT_VERSION}; upgrade promptcouple")
    if "text.ctx" not in tensors:
        raise ValueError(f"{path}: missing key 'text.ctx'")
    return PromptFile(tensors, CouplingConfig.from_json(metadata["config"]), metadata)


def load_prompts(path: PathLike) -> PromptFile:
    """Deprecated name of :func:`read_prompt_file` (it reads a file; it loads nothing into a model)."""
    warnings.warn("promptcouple.load_prompts is deprecated and goes away in the next release: it reads a prompt "
                  "file, so it is now pc.read_prompt_file (wrapper.load_prompts loads one into a wrapper)",
                  DeprecationWarning, stacklevel=2)
    return read_prompt_file(path)


def load_prompts_into(wrapper, source: Union[PathLike, PromptFile]) -> None:
    """Copy a prompt file's tensors into ``wrapper.prompts``; nothing changes unless all keys fit."""
    pf = source if isinstance(source, PromptFile) else read_prompt_file(source)
    name = "prompt file" if isinstance(source, PromptFile) else str(source)
    expected = wrapper_tensors(wrapper)
    missing = sorted(set(expected) - set(pf.tensors))
    unexpected = sorted(set(pf.tensors) - set(expected))
    if pf.coupled and not wrapper.prompts.coupled:
        raise ValueError(f"{name} was trained with a hard prompt (coupling layer) but this wrapper has none; "
                         "use CouplingPromptWrapper.from_pretrained, or pass hard_prompts=")
    if missing == ["text.hard"] and pf.coupled:
        missing = []  # converted reference checkpoints keep the hard prompt the wrapper was given
    if missing or unexpected:
        raise ValueError(f"{name} does not match this wrapper's prompts: missing keys {missing}, "
                         f"unexpected keys {unexpected} (file config {pf.config}, wrapper config {wrapper.config})")
    for key, target in expected.items():
        if key not in pf.tensors:
            continue
        got = tuple(pf.tensors[key].shape)
        if got != tuple(target.shape):
            raise ValueError(
                f"{name}: key {key!r} has shape {got}, this wrapper expects {tuple(target.shape)}; "
                f"the file was trained for text width {pf.metadata.get('text_width')} and vision width "
                f"{pf.metadata.get('vision_width')} (trained for another backbone, e.g. ViT-B/16 = 512/768?)")
    with torch.no_grad():
        for key, target in expected.items():
            if key in pf.tensors:
                target.copy_(pf.tensors[key].to(target.device, target.dtype))


def cli_main(argv: Optional[list[str]] = None) -> int:
    """``promptcouple inspect FILE``: config, tensor shapes and metadata of a prompt file."""
    import argparse

    parser = argparse.ArgumentParser(prog="promptcouple inspect", description=cli_main.__doc__)
    parser.add_argument("file")
    args = parser.parse_args(argv)
    pf = read_prompt_file(args.file)
    print(f"{args.file}: {pf.config}")
    for key in sorted(pf.tensors):
        print(f"  {key:<18} {tuple(pf.tensors[key].shape)}")
    for key, value in sorted(pf.metadata.items()):
        if key != "config":
            print(f"  [{key}] {value}")
    return 0
