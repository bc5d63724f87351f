"""Reference checkpoints (ViFi-CLIP, GA2-CLIP, OpenAI CLIP): one reader and converter for every use.

``promptcouple convert`` takes their prompt tensors, ``load_backbone`` their CLIP weights; both
start here, the way open_clip's factory loads a checkpoint: read the file (safely), find the state
dict, detect the layout, convert the keys, load strictly, report what happened.

Layouts, after stripping DistributedDataParallel's ``module.`` (sometimes nested):

* ViFi-CLIP: ``{'model': {'image_encoder.*', 'text_encoder.*', 'logit_scale', 'prompt_learner.*'},
  'optimizer': ..., 'config': <yacs>}``; the text encoder does not own ``token_embedding`` (the
  prompt learner precomputes embeddings from it), so that weight is absent.
* GA2-CLIP / Text4Vis: ``{'model_state_dict': {...}, 'fusion_model_state_dict': {...}}``, the model in
  the ViFi-CLIP layout, or the plain OpenAI layout (``visual.*``, ``transformer.*``,
  ``token_embedding.weight``, ...) for the pretrained backbones they start from.
* OpenAI: open_clip's ``CLIP`` layout itself.

Prompt tensors: ``prompt_learner.ctx_VPT`` (GA2-CLIP) or ``prompt_learner.ctx`` (ViFi-CLIP), the
coupling layer ``prompt_learner.proj_b2n_VPT.0.{weight,bias}`` (GA2-CLIP with a hard prompt, which
itself is not saved there), ``{image_encoder|visual}.VPT`` (vision layer 0),
``{image_encoder|visual}.transformer.resblocks.{i}.VPT_shallow`` and
``[text_encoder.]transformer.resblocks.{i}.VPT_shallow``.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from promptcouple.errors import BackboneLoadError, CheckpointError, MissingFileError
from promptcouple.fileio import PathLike

# Where the state dict sits inside a training checkpoint, in the order they are tried.
CONTAINER_KEYS = ("model_state_dict", "model", "state_dict")
# Entries of exported (JIT) OpenAI models that are not weights.
_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
# Weights a layout is known not to carry: kept from the model being loaded into.
_ABSENT_BY_LAYOUT = {"vificlip": ("token_embedding.weight",)}

# Reference prompt formats, recognised by their text context's key.
PROMPT_MARKERS = {
    "prompt_learner.ctx_VPT": "ga2-clip",
    "prompt_learner.ctx": "vifi-clip",
}
_COUPLING = "prompt_learner.proj_b2n_VPT.0."
_VISION_CTX = re.compile(r"(?:^|\.)(?:image_encoder|visual)\.VPT$")
_VISION_DEEP = re.compile(r"(?:^|\.)(?:image_encoder|visual)\.transformer\.resblocks\.(\d+)\.VPT_shallow$")
_TEXT_DEEP = re.compile(r"(?:^|\.)transformer\.resblocks\.(\d+)\.VPT_shallow$")



# ----------------------------------------------------------------------------------- reading

def read_checkpoint(path: PathLike, *, trust: bool = False) -> Any:
    """Read a checkpoint file: ``torch.load`` with ``weights_only`` unless ``trust``; ``.safetensors`` too.

    Raises:
        FileNotFoundError: No file at ``path``.
        CheckpointError: Not a PyTorch checkpoint, truncated, or holding pickled objects that a
            safe load refuses while ``trust`` is false.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no checkpoint at {path}; expected a .pth or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated?): {err}") from None
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and not magic.startswith(b"\x80"):  # torch's zip format, or a legacy pickle
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (neither torch.save's zip format "
                              "nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if trust:
            raise
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))  # torch's message is long
        detail = f" (here {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects besides tensors{detail}, which a safe (weights_only) load "
            "refuses (ViFi-CLIP checkpoints store their yacs config). Only if you trust where the file came "
            "from, pass trust=True (CLI: --trust; config: model.trust_checkpoint: true)") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated?): {err}") from None


def extract_state_dict(checkpoint: Any) -> tuple[dict[str, Any], str, list[str]]:
    """The state dict inside a checkpoint, DDP's ``module.`` prefixes stripped.

    Returns:
        ``(state_dict, container key ("" when the checkpoint is one), ignored entries)``.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    ignored = []
    for key in CONTAINER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            fusion = checkpoint.get("fusion_model_state_dict")
            if isinstance(fusion, Mapping) and len(fusion):
                # GA2-CLIP's temporal head (sim_header: Transf) is not part of the CLIP backbone
                ignored.append(f"fusion_model_state_dict ({len(fusion)} tensors of the video head)")
            return _strip_ddp(checkpoint[key]), key, ignored
    if checkpoint and all(torch.is_tensor(v) or k in _NON_WEIGHTS for k, v in checkpoint.items()):
        return _strip_ddp(checkpoint), "", ignored
    raise CheckpointError(f"no state dict found: expected one of {list(CONTAINER_KEYS)} or a plain "
                          f"state dict, found keys {list(checkpoint)[:10]}")


def _strip_ddp(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):  # DistributedDataParallel (sometimes nested)
            key = key[len("module."):]
        out[key] = value
    return out


def _is_prompt_key(key: str) -> bool:
    return key.startswith("prompt_learner.") or "VPT" in key


# ---------------------------------------------------------------------------- prompt tensors

def reference_prompt_tensors(state: Mapping[str, Any]) -> tuple[str, dict[str, torch.Tensor]]:
    """A reference checkpoint's prompts under prompt-file keys (``text.ctx``, ``text.deep.{i}``,
    ``vision.ctx``, ``vision.deep.{i}``, ``coupling.{weight,bias}``), as float32.

    Returns:
        ``(format name, tensors)``, the format ``"ga2-clip"`` or ``"vifi-clip"``.

    Raises:
        CheckpointError: No known marker key, a class-specific context, or deep prompts at
            layers that are not consecutive.
    """
    fmt = next((name for marker, name in PROMPT_MARKERS.items() if marker in state), None)
    if fmt is None:
        raise CheckpointError(f"unknown checkpoint format: none of the marker keys {sorted(PROMPT_MARKERS)} found "
                              f"(first keys: {sorted(state)[:8]}); expected a GA2-CLIP or ViFi-CLIP checkpoint")
    for key, value in state.items():
        if _is_prompt_key(key) and not torch.is_tensor(value):
            raise CheckpointError(f"{fmt} checkpoint: {key!r} is a {type(value).__name__}, expected a tensor")
    ctx = state["prompt_learner.ctx_VPT" if fmt == "ga2-clip" else "prompt_learner.ctx"]
    if ctx.ndim != 2:
        raise CheckpointError(f"text context of shape {tuple(ctx.shape)}: only a shared (n_ctx, width) context "
                              "converts (class-specific contexts have no place in a prompt file)")
    tensors = {"text.ctx": ctx}
    tensors.update({f"text.deep.{i}": p for i, p in _layers(state, _TEXT_DEEP, exclude=_VISION_DEEP).items()})
    vision_ctx = next((v for k, v in state.items() if _VISION_CTX.search(k)), None)
    vision_deep = _layers(state, _VISION_DEEP)
    if vision_ctx is not None:
        tensors["vision.ctx"] = vision_ctx
        tensors.update({f"vision.deep.{i}": p for i, p in vision_deep.items()})
    elif vision_deep:
        raise CheckpointError("deep vision prompts without the layer-0 vision prompt (…VPT): incomplete checkpoint")
    coupling = [k for k in (_COUPLING + "weight", _COUPLING + "bias") if k in state]
    if len(coupling) == 1:
        absent = ({_COUPLING + "weight", _COUPLING + "bias"} - set(coupling)).pop()
        raise CheckpointError(f"{fmt} checkpoint: {coupling[0]!r} without {absent!r}: the coupling layer is incomplete "
                              "(a damaged or hand-edited checkpoint); convert the checkpoint as it was saved")
    if coupling:
        tensors["coupling.weight"], tensors["coupling.bias"] = state[_COUPLING + "weight"], state[_COUPLING + "bias"]
    return fmt, {k: v.float() for k, v in tensors.items()}


def _layers(state: Mapping[str, Any], pattern: re.Pattern, exclude: Optional[re.Pattern] = None) -> dict[int, Any]:
    out = {}
    for key, value in state.items():
        m = pattern.search(key)
        if m and not (exclude and exclude.search(key)):
            out[int(m.group(1))] = value
    if out and sorted(out) != list(range(1, len(out) + 1)):
        raise CheckpointError(f"deep prompts at layers {sorted(out)}: expected consecutive layers 1..{len(out)}")
    return out


# --------------------------------------------------------------------------- backbone weights

@dataclass
class BackboneReport:
    """What loading a checkpoint's backbone did.

    Attributes:
        layout: ``"openai"`` or ``"vificlip"`` (``image_encoder.`` / ``text_encoder.`` names).
        container: The checkpoint key the state dict came from (``""``: the file is one).
        loaded: Model keys that received a tensor.
        kept: Model keys the layout does not carry, left at the model's values (use the same
            pretrained CLIP the checkpoint was trained from).
        missing: Other model keys absent from the checkpoint.
        unexpected: Checkpoint keys the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` triples.
        skipped_prompts: Prompt tensors in the checkpoint (not backbone weights).
        ignored: Other checkpoint entries not loaded (e.g. a non-empty ``fusion_model_state_dict``).
    """

    layout: str
    container: str = ""
    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    skipped_prompts: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        loaded = f"{len(self.loaded)} tensors loaded" if self.loaded else "nothing loaded"
        lines = [f"backbone ({self.layout} layout{', under ' + repr(self.container) if self.container else ''}): "
                 f"{loaded}"]
        if self.kept:
            lines.append(f"  kept from the model (not in this layout): {self.kept}")
        if self.skipped_prompts:
            lines.append(f"  skipped {len(self.skipped_prompts)} prompt tensors (use `promptcouple convert`): "
                         f"{_short(self.skipped_prompts)}")
        if self.ignored:
            lines.append(f"  ignored: {self.ignored}")
        if self.missing:
            lines.append(f"  missing from the checkpoint: {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"  not in the model: {_short(self.unexpected)}")
        for key, got, want in self.mismatched:
            lines.append(f"  shape of {key!r}: checkpoint {got}, model {want}")
        return "\n".join(lines)


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def backbone_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], str, list[str]]:
    """Rename a ViFi-CLIP / GA2-CLIP / OpenAI state dict to the OpenAI (= open_clip CLIP) layout.

    Returns:
        ``(converted, layout, skipped prompt keys)``.
    """
    layout = "vificlip" if any(k.startswith(("image_encoder.", "text_encoder.")) for k in state) else "openai"
    out, skipped = {}, []
    for key, value in state.items():
        if key in _NON_WEIGHTS:
            continue
        if _is_prompt_key(key):
            skipped.append(key)
            continue
        if layout == "vificlip":
            if key.startswith("image_encoder."):
                key = "visual." + key[len("image_encoder."):]
            elif key.startswith("text_encoder."):
                key = key[len("text_encoder."):]
        out[key] = value
    return out, layout, sorted(skipped)


def load_clip_weights(model: nn.Module, source: Union[PathLike, Mapping[str, Any]], *, strict: bool = True,
                      trust: bool = False) -> BackboneReport:
    """Detect, convert, load (strictly unless told otherwise) and report a checkpoint's CLIP weights.

    Args:
        model: An open_clip ``CLIP`` / ``CustomTextCLIP`` or an OpenAI-layout CLIP of the
            checkpoint's architecture.
        source: A checkpoint path, a loaded checkpoint dict, or a state dict.
        strict: Raise unless every checkpoint tensor fits a model key and every model key is
            provided (apart from those the layout does not carry). ``False`` loads what fits.
        trust: Allow unpickling arbitrary objects (``torch.load(weights_only=False)``).

    Raises:
        BackboneLoadError: Unreadable, or (strict) incompatible, listing every key; the model is
            then unchanged.
    """
    try:
        checkpoint = read_checkpoint(source, trust=trust) if isinstance(source, (str, os.PathLike)) else source
        state, container, ignored = extract_state_dict(checkpoint)
    except CheckpointError as err:
        raise BackboneLoadError(str(err)) from None
    converted, layout, skipped = backbone_state_dict(state)
    target = model.state_dict()
    if any(k.startswith("text.") for k in target) and "positional_embedding" in converted:
        from open_clip.model import convert_to_custom_text_state_dict  # CustomTextCLIP: text tower under .text

        converted = convert_to_custom_text_state_dict(converted)
    report = BackboneReport(layout=layout, container=container, skipped_prompts=skipped, ignored=ignored)
    absent_ok = set(_ABSENT_BY_LAYOUT.get(layout, ()))
    for key in target:
        if key not in converted:
            (report.kept if key in absent_ok else report.missing).append(key)
    for key, value in converted.items():
        if key not in target or not torch.is_tensor(value):
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            # open_clip keeps logit_scale 0-d; some exports store it as (1,)
            if value.numel() == target[key].numel() == 1:
                converted[key] = value.reshape(target[key].shape)
            else:
                report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
    if strict and not report.ok:
        hint = ""
        if any(k.endswith("positional_embedding") for k, _, _ in report.mismatched):
            hint = ("\n  (positional embeddings differ: another image size, patch size or context length, "
                    "e.g. a ViT-B/32 checkpoint into ViT-B/16?)")
        raise BackboneLoadError(f"the checkpoint does not fit {type(model).__name__} (strict):\n{report}{hint}")
    bad = {k for k, _, _ in report.mismatched} | set(report.unexpected)
    loadable = {k: v for k, v in converted.items() if k not in bad}
    model.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    return report
