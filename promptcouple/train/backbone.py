"""Load the backbone of a ViFi-CLIP / GA2-CLIP checkpoint into an open_clip (or OpenAI-layout) CLIP.

Those checkpoints hold the whole video model, usually saved from DistributedDataParallel:

* ViFi-CLIP: ``{'model': {'module.image_encoder.*', 'module.text_encoder.*', 'module.logit_scale',
  'module.prompt_learner.*'}, 'optimizer': ..., 'config': <yacs>}``; the text encoder does not own
  ``token_embedding`` (the prompt learner precomputes embeddings from it), so that weight is absent.
* GA2-CLIP / Text4Vis: ``{'model_state_dict': {...}, 'fusion_model_state_dict': {...}}``, the model in
  the same ViFi-CLIP layout, or the plain OpenAI layout (``visual.*``, ``transformer.*``,
  ``token_embedding.weight``, ...) for the pretrained backbones they start from.

The OpenAI layout is open_clip's ``CLIP`` layout, so after stripping ``module.`` and renaming the
two towers the keys load directly. Prompt tensors (``prompt_learner.*``, ``*VPT*``) are not backbone
weights: they are reported as skipped (``promptcouple convert`` turns them into a prompt file).
Loading is strict: anything that does not fit raises :class:`BackboneLoadError` listing every
missing, unexpected and mis-shaped key, and the model is left untouched.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

PathLike = Union[str, "os.PathLike[str]"]

# Where the state dict sits inside a training checkpoint, in the order they are tried.
CONTAINER_KEYS = ("model_state_dict", "model", "state_dict")
# Entries of exported (JIT) OpenAI models that are not weights.
_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
# Weights a layout is known not to carry: kept from the model being loaded into.
_ABSENT_BY_LAYOUT = {"vificlip": ("token_embedding.weight",)}


class BackboneLoadError(ValueError):
    """The checkpoint's backbone does not fit the model; the message lists every problem."""


@dataclass
class BackboneReport:
    """What :func:`load_backbone` did.

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


def read_checkpoint(path: PathLike, *, trust: bool = False) -> Any:
    """Read a checkpoint file (``weights_only`` unless ``trust``; ``.safetensors`` also works).

    Raises:
        BackboneLoadError: The file needs unpickling of arbitrary objects and ``trust`` is false.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        # torch's message is long; name just the refused object
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        detail = f" (here {found.group(1)})" if found else ""
        raise BackboneLoadError(
            f"{path} holds pickled Python objects besides tensors{detail}, which weights_only loading refuses "
            "(ViFi-CLIP checkpoints store their yacs config). If you trust the file, pass trust=True "
            "(config: model.trust_checkpoint: true)") from None


def extract_state_dict(checkpoint: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """The backbone state dict inside a checkpoint: ``(state_dict, container key, ignored entries)``."""
    if not isinstance(checkpoint, Mapping):
        raise BackboneLoadError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    ignored = []
    for key in CONTAINER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            fusion = checkpoint.get("fusion_model_state_dict")
            if isinstance(fusion, Mapping) and len(fusion):
                # GA2-CLIP's temporal head (sim_header: Transf) is not part of the CLIP backbone
                ignored.append(f"fusion_model_state_dict ({len(fusion)} tensors of the video head)")
            return dict(checkpoint[key]), key, ignored
    if checkpoint and all(torch.is_tensor(v) or k in _NON_WEIGHTS for k, v in checkpoint.items()):
        return dict(checkpoint), "", ignored
    raise BackboneLoadError(f"no state dict found: expected one of {list(CONTAINER_KEYS)} or a plain "
                            f"state dict, found keys {list(checkpoint)[:10]}")


def _is_prompt_key(key: str) -> bool:
    return key.startswith("prompt_learner.") or "VPT" in key


def convert_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Rename a ViFi-CLIP / GA2-CLIP / OpenAI state dict to the OpenAI (= open_clip CLIP) layout.

    Returns:
        ``(converted, layout, skipped prompt keys)``.
    """
    sd = {}
    for key, value in state_dict.items():
        while key.startswith("module."):  # DistributedDataParallel (sometimes nested)
            key = key[len("module."):]
        sd[key] = value
    layout = "vificlip" if any(k.startswith(("image_encoder.", "text_encoder.")) for k in sd) else "openai"
    out, skipped = {}, []
    for key, value in sd.items():
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


def load_backbone(model: nn.Module, source: Union[PathLike, Mapping[str, Any]], *, strict: bool = True,
                  trust: bool = False, activation: Optional[str] = "quick_gelu") -> BackboneReport:
    """Load a ViFi-CLIP / GA2-CLIP / OpenAI checkpoint's CLIP weights into ``model``.

    Args:
        model: An open_clip ``CLIP`` (or ``CustomTextCLIP``) or an OpenAI-layout CLIP, built with
            the checkpoint's architecture; for ViFi-CLIP files, with the pretrained weights the
            checkpoint started from (its ``token_embedding`` is kept, see :class:`BackboneReport`).
        source: A checkpoint path, a loaded checkpoint dict, or a state dict.
        strict: Raise unless every checkpoint tensor fits a model key and every model key is
            provided (apart from those the layout does not carry). ``False`` loads what fits.
        trust: Allow unpickling arbitrary objects (``torch.load(weights_only=False)``).
        activation: The MLP activation the checkpoint was trained with: ``"quick_gelu"`` for
            OpenAI's CLIP and everything fine-tuned from it (ViFi-CLIP, GA2-CLIP, X-CLIP),
            ``"gelu"`` for e.g. LAION open_clip models, ``None`` to skip the check. A model built
            with the other activation is refused: the weights would load and give other features.

    Returns:
        The report; ``print(report)`` lists what was loaded, kept, skipped and what did not fit.

    Raises:
        BackboneLoadError: In strict mode, listing every incompatible key; the model is unchanged.
    """
    from promptcouple.adapters.base import activation_of

    host_activation = activation_of(model)
    if activation is not None and host_activation is not None and host_activation != activation:
        fix = ("build it with QuickGELU: open_clip.create_model('ViT-B-16-quickgelu') (any '-quickgelu' name, "
               "or quick_gelu=True)" if activation == "quick_gelu" else
               "build it with GELU (an open_clip name without '-quickgelu')")
        raise BackboneLoadError(
            f"the checkpoint was trained with {activation} but {type(model).__name__} uses {host_activation}; the "
            f"weights would load and silently give other features (logits off by ~1e-2): {fix}, or pass "
            f"activation={host_activation!r} if the checkpoint really is a {host_activation} model")
    checkpoint = read_checkpoint(source, trust=trust) if isinstance(source, (str, os.PathLike)) else source
    state_dict, container, ignored = extract_state_dict(checkpoint)
    converted, layout, skipped = convert_state_dict(state_dict)
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
        if key not in target:
            report.unexpected.append(key)
        elif not torch.is_tensor(value):
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
