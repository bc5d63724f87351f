"""Convert reference checkpoints (GA2-CLIP, ViFi-CLIP) into prompt files.

Formats are recognised by marker keys, after stripping DistributedDataParallel's ``module.``:

* GA2-CLIP: ``{'model_state_dict': {...}}`` with ``prompt_learner.ctx_VPT`` (and, when trained with
  a hard prompt, ``prompt_learner.proj_b2n_VPT.0.{weight,bias}``; the hard prompt itself is not
  saved there: pass it with ``hard_prompts=``);
* ViFi-CLIP: ``{'model': {...}, 'config': yacs}`` with ``prompt_learner.ctx``.

Deep prompts in both: ``{image_encoder|visual}.VPT`` (vision layer 0),
``{image_encoder|visual}.transformer.resblocks.{i}.VPT_shallow`` and
``[text_encoder.]transformer.resblocks.{i}.VPT_shallow``.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Optional, Union

import torch

from promptcouple.config import CouplingConfig
from promptcouple.io import PromptFile, load_prompts, write_prompt_file

MARKERS = {
    "prompt_learner.ctx_VPT": "ga2-clip",
    "prompt_learner.ctx": "vifi-clip",
}
_VISION_CTX = re.compile(r"(?:^|\.)(?:image_encoder|visual)\.VPT$")
_VISION_DEEP = re.compile(r"(?:^|\.)(?:image_encoder|visual)\.transformer\.resblocks\.(\d+)\.VPT_shallow$")
_TEXT_DEEP = re.compile(r"(?:^|\.)transformer\.resblocks\.(\d+)\.VPT_shallow$")


def read_checkpoint(path: Union[str, Path], *, trust: bool = False) -> dict:
    """``torch.load`` with ``weights_only=True`` unless the user trusts the file (pickled configs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and not magic.startswith(b"\x80"):  # torch's zip format, or a legacy pickle
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (neither torch.save's zip format "
                         "nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if trust:
            raise
        raise ValueError(f"{path} holds pickled Python objects (a ViFi-CLIP yacs config?) that a safe load "
                         "refuses; pass trust=True (CLI: --trust) only if you trust where the file came from. "
                         f"Details: {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated?): {err}") from None


def _state_dict(ckpt: dict) -> dict[str, torch.Tensor]:
    for key in ("model_state_dict", "model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict):
        raise ValueError(f"unknown checkpoint format: a {type(ckpt).__name__}, expected a dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items() if torch.is_tensor(v)}


def _layers(state: dict[str, torch.Tensor], pattern: re.Pattern, exclude: Optional[re.Pattern] = None) -> dict[int, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = pattern.search(key)
        if m and not (exclude and exclude.search(key)):
            out[int(m.group(1))] = value
    if out and sorted(out) != list(range(1, len(out) + 1)):
        raise ValueError(f"deep prompts at layers {sorted(out)}: expected consecutive layers 1..{len(out)}")
    return out


def convert_state_dict(state: dict[str, torch.Tensor], *, dropout: float = 0.5) -> tuple[str, dict[str, torch.Tensor], CouplingConfig]:
    """Map a reference state dict to (format name, prompt file tensors, config)."""
    fmt = next((name for marker, name in MARKERS.items() if marker in state), None)
    if fmt is None:
        sample = sorted(state)[:8]
        raise ValueError(f"unknown checkpoint format: none of the marker keys {sorted(MARKERS)} found "
                         f"(first keys: {sample}); expected a GA2-CLIP or ViFi-CLIP checkpoint")
    ctx = state["prompt_learner.ctx_VPT" if fmt == "ga2-clip" else "prompt_learner.ctx"]
    if ctx.ndim != 2:
        raise ValueError(f"text context of shape {tuple(ctx.shape)}: only a shared (n_ctx, width) context "
                         "converts (class-specific contexts have no place in a prompt file)")
    tensors = {"text.ctx": ctx}
    text_deep = _layers(state, _TEXT_DEEP, exclude=_VISION_DEEP)
    tensors.update({f"text.deep.{i}": p for i, p in text_deep.items()})
    vision_ctx = next((v for k, v in state.items() if _VISION_CTX.search(k)), None)
    vision_deep = _layers(state, _VISION_DEEP)
    if vision_ctx is not None:
        tensors["vision.ctx"] = vision_ctx
        tensors.update({f"vision.deep.{i}": p for i, p in vision_deep.items()})
    elif vision_deep:
        raise ValueError("deep vision prompts without the layer-0 vision prompt (…visual.VPT): incomplete checkpoint")
    proj = "prompt_learner.proj_b2n_VPT.0."
    if proj + "weight" in state:
        tensors["coupling.weight"], tensors["coupling.bias"] = state[proj + "weight"], state[proj + "bias"]
    config = CouplingConfig(
        n_ctx=ctx.shape[0], text_depth=1 + len(text_deep),
        n_vision_ctx=vision_ctx.shape[0] if vision_ctx is not None else 0,
        vision_depth=(1 + len(vision_deep)) if vision_ctx is not None else 0,
        dropout=dropout)
    return fmt, {k: v.float() for k, v in tensors.items()}, config


def convert_checkpoint(src: Union[str, Path], dst: Optional[Union[str, Path]] = None, *, trust: bool = False,
                       hard_prompts: Union[None, str, Path, torch.Tensor] = None) -> PromptFile:
    """Convert a GA2-CLIP or ViFi-CLIP checkpoint; write it to ``dst`` if given.

    Args:
        src: The reference checkpoint (``.pth``).
        dst: Where to write the prompt file (atomically); ``None`` to only return it.
        trust: Allow pickled objects (``torch.load(weights_only=False)``): trusted files only.
        hard_prompts: The hard prompt a coupled GA2-CLIP checkpoint was trained with (a tensor,
            a prompt file, or a GA2-CLIP hard-prompt checkpoint), stored so the file is complete.
    """
    fmt, tensors, config = convert_state_dict(_state_dict(read_checkpoint(src, trust=trust)))
    if hard_prompts is not None:
        if "coupling.weight" not in tensors:
            raise ValueError(f"{src} has no coupling layer, so a hard prompt has no place in it")
        hard = _hard_prompt_tensor(hard_prompts, trust=trust)
        if tuple(hard.shape) != tuple(tensors["text.ctx"].shape):
            raise ValueError(f"hard prompt of shape {tuple(hard.shape)}, the checkpoint's context is "
                             f"{tuple(tensors['text.ctx'].shape)}")
        tensors["text.hard"] = hard.float()
    if dst is not None:
        write_prompt_file(dst, tensors, config, host=f"converted from {fmt}")
    return PromptFile(tensors, config, {"source_format": fmt})


def _hard_prompt_tensor(source, *, trust: bool) -> torch.Tensor:
    if torch.is_tensor(source):
        return source
    path = Path(source)
    if path.suffix == ".safetensors":
        return load_prompts(path).effective_context()
    # A GA2-CLIP hard-prompt checkpoint: its own (uncoupled) text context.
    return convert_state_dict(_state_dict(read_checkpoint(path, trust=trust)))[1]["text.ctx"]


def cli_main(argv: Optional[list[str]] = None) -> int:
    """``promptcouple convert SRC DST [--hard-prompt FILE] [--trust]``."""
    parser = argparse.ArgumentParser(prog="promptcouple convert",
                                     description="Convert a GA2-CLIP or ViFi-CLIP checkpoint into a prompt file.")
    parser.add_argument("src", help="reference checkpoint (.pth)")
    parser.add_argument("dst", help="output prompt file (.safetensors)")
    parser.add_argument("--hard-prompt", help="hard prompt the checkpoint was coupled to (prompt file or GA2-CLIP .pth)")
    parser.add_argument("--trust", action="store_true",
                        help="allow pickled objects in the checkpoint (only for files you trust)")
    args = parser.parse_args(argv)
    pf = convert_checkpoint(args.src, args.dst, trust=args.trust, hard_prompts=args.hard_prompt)
    print(f"{args.src} ({pf.metadata['source_format']}) -> {args.dst}: {pf.config}")
    if pf.coupled and "text.hard" not in pf.tensors:
        print("note: coupled checkpoint without its hard prompt; pass hard_prompts= when loading, or --hard-prompt")
    return 0
