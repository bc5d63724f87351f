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
Files written by a training run also carry what ``promptcouple predict`` needs to use them with
nothing else (:data:`RUN_INFO_KEYS`, all optional)::

    classnames        JSON list     the training classes, in label order
    eval_classnames   JSON object   evaluation set name -> its classes (``val``, or ``base`` and ``novel``)
    backbone          JSON object   model ``name``, ``pretrained`` (tag or file), ``backbone_checkpoint``,
                                    ``sha256`` of each local file, ``seed`` (random built-in models)
    num_frames        integer       frames per clip
    image_size        integer       frame side in pixels
    eval_views        JSON object   ``num_clips``, ``num_crops``, ``reduce``, ``precision`` of evaluation
    descriptions      JSON object   class -> its descriptions, where the file was trained and evaluated
                                    with class descriptions (``wrapper.descriptions``; restored on loading)
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from promptcouple.config import CouplingConfig
from promptcouple.errors import MissingFileError, PromptFileError
from promptcouple.fileio import PathLike, atomic_save_safetensors
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
            raise PromptFileError("this prompt file is coupled to a hard prompt it does not contain, so its "
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


# What a training run records about itself (see the module docstring); JSON-encoded unless integers.
RUN_INFO_KEYS = ("classnames", "eval_classnames", "backbone", "num_frames", "image_size", "eval_views",
                 "descriptions")


def _run_metadata(run_info: Optional[dict]) -> dict[str, str]:
    out = {}
    for key, value in (run_info or {}).items():
        if key not in RUN_INFO_KEYS:
            raise ValueError(f"run_info: unknown key {key!r}; expected some of {list(RUN_INFO_KEYS)}")
        if value is not None:
            out[key] = str(int(value)) if key in ("num_frames", "image_size") else json.dumps(value)
    return out


def run_info_of(metadata: dict[str, str]) -> dict:
    """The :data:`RUN_INFO_KEYS` a file's metadata holds, decoded (absent keys are left out)."""
    out = {}
    for key in RUN_INFO_KEYS:
        if key in metadata:
            out[key] = int(metadata[key]) if key in ("num_frames", "image_size") else json.loads(metadata[key])
    return out


def recorded_descriptions(pf: PromptFile) -> Optional[dict[str, tuple[str, ...]]]:
    """The class descriptions a prompt file was trained and evaluated with (``None``: class names)."""
    from promptcouple.descriptions import check_descriptions

    described = run_info_of(pf.metadata).get("descriptions")
    return check_descriptions(described, "the prompt file's recorded descriptions") if described else None


def _metadata(config: CouplingConfig, tensors: dict[str, torch.Tensor], host: str = "",
              train_host: Sequence[str] = (), run_info: Optional[dict] = None,
              extra: Optional[dict[str, str]] = None) -> dict[str, str]:
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
        **_run_metadata(run_info),
        **(extra or {}),  # e.g. what a merged file was merged from (promptcouple.merge)
    }


def write_prompt_file(path: PathLike, tensors: dict[str, torch.Tensor], config: CouplingConfig,
                      host: str = "", train_host: Sequence[str] = (), run_info: Optional[dict] = None,
                      extra: Optional[dict[str, str]] = None) -> None:
    """Write tensors + metadata atomically: a crash leaves either the old file or the new one.

    The file gets the umask's permissions, as any other program's output (see :mod:`promptcouple.fileio`).
    ``run_info``: what the training run records (:data:`RUN_INFO_KEYS`), all optional; ``extra``:
    further string metadata (a merged file's ``merged_from``).
    """
    data = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    atomic_save_safetensors(path, data, metadata=_metadata(config, data, host, train_host, run_info, extra))


def save_prompts(wrapper, path: PathLike, *, run_info: Optional[dict] = None) -> None:
    """Save a wrapper's prompts (with hard prompt and config) to ``path``.

    ``run_info``: class names, backbone, frames and image size of the run (:data:`RUN_INFO_KEYS`),
    so that ``promptcouple predict`` can use the file alone; the Trainer passes them. The wrapper's
    class descriptions (``wrapper.descriptions``) are recorded unless ``run_info`` gives them.
    """
    described = getattr(wrapper, "descriptions", None)
    if described and (run_info is None or "descriptions" not in run_info):
        run_info = {**(run_info or {}), "descriptions": {k: list(v) for k, v in described.items()}}
    write_prompt_file(path, wrapper_tensors(wrapper), wrapper.config, wrapper.host.kind, wrapper.train_host,
                      run_info=run_info)


def check_tensor_values(name: str, tensor, where: str) -> None:
    """A prompt tensor must be a floating-point tensor of finite values (NaN prompts give NaN logits).

    Raises:
        PromptFileError: Not a tensor, an integer or bool dtype, or NaN / infinite entries.
    """
    if not torch.is_tensor(tensor):
        raise PromptFileError(f"{where}: {name} is a {type(tensor).__name__}, expected a tensor")
    if not tensor.is_floating_point():
        raise PromptFileError(f"{where}: {name} has dtype {tensor.dtype}, expected a floating-point tensor "
                              "(prompt files are written by wrapper.save_prompts or `promptcouple convert`)")
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise PromptFileError(f"{where}: {name} holds {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}, "
                              "expected finite numbers; the run that wrote it diverged: retrain (lower optim.lr) "
                              "or take an earlier checkpoint's prompts")


def expected_shapes(config: CouplingConfig, text_width: int, vision_width: int, coupled: bool) -> dict[str, tuple]:
    """The key -> shape table of a prompt file of this config and these tower widths."""
    n, w = config.n_ctx, text_width
    shapes = {"text.ctx": (n, w), **{f"text.deep.{i}": (n, w) for i in range(1, config.text_depth)}}
    if config.has_vision_prompts:
        m, v = config.n_vision_ctx, vision_width
        shapes.update({"vision.ctx": (m, v), **{f"vision.deep.{i}": (m, v) for i in range(1, config.vision_depth)}})
    if coupled:
        shapes.update({"text.hard": (n, w), "coupling.weight": (w, 2 * w), "coupling.bias": (w,)})
    return shapes


def check_prompt_tensors(tensors: dict[str, torch.Tensor], config: CouplingConfig, where: str) -> None:
    """Every key, shape, dtype and value of a prompt file's tensors against its config.

    Run before a prompt file is written (``convert``) and after one is read, so that a file that
    loads is one that works.

    Raises:
        PromptFileError: Naming the key, what was found and what the config expects.
    """
    ctx = tensors.get("text.ctx")
    if ctx is None:
        raise PromptFileError(f"{where}: no tensor 'text.ctx' (the text context every prompt file holds); "
                              f"found keys {sorted(tensors)[:8]}")
    for key, tensor in tensors.items():
        check_tensor_values(f"tensor {key!r}", tensor, where)
    if ctx.ndim != 2:
        raise PromptFileError(f"{where}: tensor 'text.ctx' has shape {tuple(ctx.shape)}, expected (n_ctx, text width)")
    vision = tensors.get("vision.ctx")
    if vision is not None and vision.ndim != 2:
        raise PromptFileError(f"{where}: tensor 'vision.ctx' has shape {tuple(vision.shape)}, "
                              "expected (n_vision_ctx, vision width)")
    config = config if config.n_ctx is not None else dataclasses.replace(config, n_ctx=ctx.shape[0])
    coupled = "coupling.weight" in tensors or "coupling.bias" in tensors
    expected = expected_shapes(config, ctx.shape[1], vision.shape[1] if vision is not None else 0, coupled)
    optional = {"text.hard"}  # converted GA2-CLIP checkpoints do not store the hard prompt
    missing = sorted(set(expected) - set(tensors) - optional)
    unexpected = sorted(k for k in set(tensors) - set(expected) if not k.startswith(HOST_PREFIX))
    if missing or unexpected:
        raise PromptFileError(f"{where}: keys do not match its config {config}: missing {missing}, unexpected "
                              f"{unexpected}; the file is incomplete or its config metadata is not the one "
                              "it was trained with")
    for key, shape in expected.items():
        if key in tensors and tuple(tensors[key].shape) != shape:
            raise PromptFileError(f"{where}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {shape} "
                                  f"from its config and text.ctx {tuple(ctx.shape)}; the file is damaged or "
                                  "was assembled by hand")


def _metadata_int(metadata: dict[str, str], key: str, where: str) -> Optional[int]:
    if key not in metadata:
        return None
    try:
        return int(metadata[key])
    except ValueError:
        raise PromptFileError(f"{where}: metadata {key!r} is {metadata[key]!r}, expected an integer") from None


def read_prompt_file(path: PathLike) -> PromptFile:
    """Read a prompt file (tensors, config, metadata; no model needed), checking that it is one.

    Every key, shape, dtype, value and metadata field is checked, so a file that reads is one a
    wrapper of its config can load. To load one into a wrapper: ``wrapper.load_prompts(path)`` or
    ``CouplingPromptWrapper.from_pretrained(model, path)``.

    Raises:
        MissingFileError: No file at ``path`` (a ``FileNotFoundError``).
        PromptFileError: Not a promptcouple prompt file, a newer format version, or a bad key,
            shape, dtype, value or metadata field (a ``ValueError``).
    """
    from safetensors import SafetensorError, safe_open

    if isinstance(path, str) and path.startswith("hf-hub:"):
        from promptcouple.hub import resolve_prompt_source  # downloads or takes the Hub cache's copy

        path = resolve_prompt_source(path)
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "nothing"
        raise MissingFileError(f"no prompt file at {path} (found {what}); expected a .safetensors file written by "
                               "wrapper.save_prompts, `promptcouple train` or `promptcouple convert`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise PromptFileError(f"{path} is not a readable safetensors file (truncated, or another format? "
                              f"convert reference checkpoints with `promptcouple convert`): {err}") from None
    if metadata.get("format") != FORMAT:
        raise PromptFileError(f"{path} is a safetensors file but not a promptcouple prompt file "
                              f"(metadata format={metadata.get('format')!r}, expected {FORMAT!r})")
    version = metadata.get("format_version")
    if version is None or not version.isdigit():
        raise PromptFileError(f"{path}: metadata 'format_version' is {version!r}, expected an integer such as "
                              f"{FORMAT_VERSION!r}; the file is damaged")
    if int(version) > int(FORMAT_VERSION):
        raise PromptFileError(f"{path} has prompt file format version {version}, newer than this promptcouple "
                              f"reads (version {FORMAT_VERSION}); upgrade promptcouple")
    if int(version) != int(FORMAT_VERSION):
        raise PromptFileError(f"{path} has prompt file format version {version}, this promptcouple reads version "
                              f"{FORMAT_VERSION}")
    if "config" not in metadata:
        raise PromptFileError(f"{path}: no 'config' metadata (the CouplingConfig JSON every prompt file holds); "
                              "the file is damaged: write it again with wrapper.save_prompts")
    try:
        config = CouplingConfig.from_json(metadata["config"])
    except (ValueError, TypeError, AttributeError) as err:  # json.JSONDecodeError is a ValueError
        raise PromptFileError(f"{path}: metadata 'config' is not a valid CouplingConfig JSON ({err}); "
                              f"found {metadata['config'][:80]!r}") from None
    check_prompt_tensors(tensors, config, str(path))
    for key, tensor_key in (("text_width", "text.ctx"), ("vision_width", "vision.ctx")):
        stored, tensor = _metadata_int(metadata, key, str(path)), tensors.get(tensor_key)
        width = int(tensor.shape[1]) if tensor is not None else 0
        if stored is not None and stored != width:
            raise PromptFileError(f"{path}: metadata {key!r} is {stored} but {tensor_key} is {width} wide; "
                                  "the file is damaged")
    _check_json_metadata(metadata, tensors, str(path))
    return PromptFile(tensors, config, metadata)


def _check_json_metadata(metadata: dict[str, str], tensors: dict[str, torch.Tensor], where: str) -> None:
    """The JSON metadata fields decode to what their readers expect (``coupled``, ``train_host``, run info)."""
    def decoded(key: str, default: str):
        try:
            return json.loads(metadata.get(key, default))
        except ValueError:
            raise PromptFileError(f"{where}: metadata {key!r} is not valid JSON: {metadata[key][:80]!r}") from None

    coupled = decoded("coupled", json.dumps("coupling.weight" in tensors))
    if coupled is not ("coupling.weight" in tensors):
        raise PromptFileError(f"{where}: metadata 'coupled' is {metadata.get('coupled')!r} but the file "
                              f"{'has' if 'coupling.weight' in tensors else 'has no'} coupling layer; the file is damaged")
    train_host = decoded("train_host", "[]")
    if not (isinstance(train_host, list) and all(isinstance(m, str) for m in train_host)):
        raise PromptFileError(f"{where}: metadata 'train_host' is {metadata['train_host'][:80]!r}, expected a JSON "
                              "list of submodule names")
    try:
        run_info_of(metadata)
    except (ValueError, TypeError) as err:
        raise PromptFileError(f"{where}: run information in the metadata cannot be read ({err}); keys "
                              f"{[k for k in RUN_INFO_KEYS if k in metadata]}") from None


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
    if isinstance(source, PromptFile):  # built in memory: not checked by read_prompt_file
        check_prompt_tensors(pf.tensors, pf.config, name)
    expected = wrapper_tensors(wrapper)
    missing = sorted(set(expected) - set(pf.tensors))
    unexpected = sorted(set(pf.tensors) - set(expected))
    if pf.coupled and not wrapper.prompts.coupled:
        raise PromptFileError(f"{name} was trained with a hard prompt (coupling layer) but this wrapper has none; "
                         "use CouplingPromptWrapper.from_pretrained, or pass hard_prompts=")
    if missing == ["text.hard"] and pf.coupled:
        missing = []  # converted reference checkpoints keep the hard prompt the wrapper was given
    if missing or unexpected:
        raise PromptFileError(f"{name} does not match this wrapper's prompts: missing keys {missing}, "
                         f"unexpected keys {unexpected} (file config {pf.config}, wrapper config {wrapper.config})")
    for key, target in expected.items():
        if key not in pf.tensors:
            continue
        got = tuple(pf.tensors[key].shape)
        if got != tuple(target.shape):
            raise PromptFileError(
                f"{name}: key {key!r} has shape {got}, this wrapper expects {tuple(target.shape)}; "
                f"the file was trained for text width {pf.metadata.get('text_width')} and vision width "
                f"{pf.metadata.get('vision_width')} (trained for another backbone, e.g. ViT-B/16 = 512/768?)")
    with torch.no_grad():
        for key, target in expected.items():
            if key in pf.tensors:
                target.copy_(pf.tensors[key].to(target.device, target.dtype))
