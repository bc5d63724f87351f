"""The host protocol: what the wrapper asks of a CLIP-style model, answered once per host family.

A host family (open_clip ``CLIP``, Hugging Face ``CLIPModel``, a timm trunk, ...) is described by a
:class:`HostAdapter` subclass. The adapter names the modules whose inputs or outputs carry the
token sequences (:class:`TextSite`, :class:`VisionSite`) and runs the towers; the wrapper only
registers hooks at those sites, so no host code is edited and nothing outside ``adapters/`` needs
to know a host's attribute names.

Adapters hold only modules and plain data, and their callables are methods: ``copy.deepcopy``
and ``pickle`` of a wrapper then give a copy whose hooks and towers belong to the copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from promptcouple.errors import InvalidInputError, InvalidTypeError, UnsupportedHostError


@dataclass
class TextSite:
    """Where the text tower's tokens can be read and replaced.

    Attributes:
        embedding: Module whose output ``(N, L, D)`` holds the token embeddings; the layer-0
            context replaces the placeholder positions there (before position embeddings are added).
        blocks: The text transformer's residual blocks (deep text prompts enter their inputs).
        seq_first: Whether the blocks take ``(L, N, D)``.
        width: Token width ``D``.
        context_length: Sequence length the host was built for.
        causal: Whether attention is causal. Only then can the tower run on ``ids[:, :L]`` exactly.
    """

    embedding: nn.Module
    blocks: Sequence[nn.Module]
    seq_first: bool
    width: int
    context_length: int
    causal: bool


@dataclass
class VisionSite:
    """Where the image tower's tokens can be extended and stripped again.

    Attributes:
        insert: Module at which the prompt tokens join the sequence, ``(N, L, D)`` batch-first there.
        insert_on: ``"input"`` (a forward pre-hook on its first tensor argument) or ``"output"``.
        strip: Module at which the prompt tokens leave the sequence again, before any pooling.
        strip_on: ``"input"`` or ``"output"`` (tensor, tuple or ``BaseModelOutput``).
        strip_seq_first: Whether the sequence at ``strip`` is ``(L, N, D)``.
        blocks: The image transformer's residual blocks (deep vision prompts enter their inputs).
        seq_first: Whether the blocks take ``(L, N, D)``.
        width: Token width.
        offset: ``None``: prompt tokens go last. ``k``: they go right after the first ``k`` tokens
            (the CLS/prefix tokens), as rotary hosts need: there the position code covers the
            tokens after the prefix, and the adapter's ``adjust_block`` extends it over the prompts.
    """

    insert: nn.Module
    insert_on: str
    strip: nn.Module
    strip_on: str
    strip_seq_first: bool
    blocks: Sequence[nn.Module]
    seq_first: bool
    width: int
    offset: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("insert_on", "strip_on"):
            if getattr(self, name) not in ("input", "output"):
                raise InvalidInputError(f"VisionSite.{name} must be 'input' or 'output', got {getattr(self, name)!r}")


class HostAdapter:
    """One host family's answers to what the wrapper asks. Subclass it and :func:`register_host` it.

    Subclasses set ``kind`` and ``family``, implement :meth:`claims` and build ``self.text`` and
    ``self.vision`` in ``__init__``; the default methods below are right for an image CLIP whose
    ``encode_text``/``encode_image`` return features.
    """

    kind: ClassVar[str] = "?"
    family: ClassVar[str] = "?"
    #: Whether per-video class features come from the host (X-CLIP): see :meth:`specialize_text`.
    video_specific: ClassVar[bool] = False

    text: TextSite
    vision: Optional[VisionSite] = None  # None: the host takes text prompts only (e.g. a ResNet image tower)
    #: Why ``vision`` is ``None``, for the error a config with vision prompts gets.
    vision_refusal: Optional[str] = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # ------------------------------------------------------------------------------ discovery

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        """Whether ``model`` belongs to this family. May raise :class:`UnsupportedHostError` when it
        does but cannot be served, naming what is missing."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------- towers

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text features ``(N, D)`` of token ids ``(N, context_length)``, through the host's own path."""
        return first_tensor(self.model.encode_text(ids))

    def encode_text_short(self, ids: torch.Tensor, length: Optional[int] = None) -> Optional[torch.Tensor]:
        """The same features from a shorter run (``ids[:, :length]``), or ``None`` where that is not exact.

        ``length``: the last end-of-text position + 1, known at tokenization time (the wrapper caches
        it with the ids), so that no text pass waits on the device to measure it; ``None``: measure it.
        """
        return None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``(N, D)`` of images ``(N, C, H, W)``."""
        return first_tensor(self.model.encode_image(images))

    def encode_video(self, frames: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Video features ``(B, D)`` and what :meth:`specialize_text` needs of the video (or ``None``).

        Default (ViFi-CLIP): every frame through the image tower, features averaged over time.
        """
        b, t = frames.shape[:2]
        per_frame = self.encode_image(frames.flatten(0, 1))
        return per_frame.reshape(b, t, -1).mean(dim=1), None

    def specialize_text(self, text: torch.Tensor, context: Any) -> torch.Tensor:
        """Class features for each video: ``(K, D)`` -> ``(B, K, D)`` on video-specific hosts."""
        return text

    @property
    def logit_scale(self) -> torch.Tensor:
        """The host's temperature in log space (``logits = exp(scale) * cos``)."""
        return self.model.logit_scale

    @property
    def logit_bias(self) -> Optional[torch.Tensor]:
        """An additive logit bias (SigLIP), or ``None``."""
        bias = getattr(self.model, "logit_bias", None)
        return bias if torch.is_tensor(bias) else None

    def default_tokenizer(self) -> Any:
        """The tokenizer used when the caller gives none: open_clip's CLIP BPE at the host's length."""
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=self.text.context_length)

    # ------------------------------------------------------------------------- optional parts

    def adjust_block(self, args: tuple, kwargs: dict, n_prompts: int) -> tuple[tuple, dict]:
        """Change a vision block's other arguments for ``n_prompts`` extra tokens (rotary hosts)."""
        return args, kwargs

    needs_block_adjustment: ClassVar[bool] = False

    def intermediates_owners(self) -> Sequence[nn.Module]:
        """Modules whose ``forward_intermediates`` runs blocks without the strip site (refused)."""
        return ()

    def on_wrap(self) -> None:
        """Called once after the hooks are in place (e.g. to switch off a host's own text cache)."""

    def on_unwrap(self) -> None:
        """Undo :meth:`on_wrap`."""

    @property
    def parameter(self) -> torch.Tensor:
        """Any parameter of the host: its device and (floating) dtype are the host's."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p
        raise UnsupportedHostError(f"{type(self.model).__name__} has no floating-point parameters")


# ------------------------------------------------------------------------- shared helpers

def activation_of(model: nn.Module) -> Optional[str]:
    """``"quick_gelu"`` or ``"gelu"``: the MLP activation of a host's blocks (``None``: neither found).

    OpenAI's weights, and the ViFi-CLIP, GA2-CLIP and X-CLIP checkpoints trained from them, need
    QuickGELU (``x * sigmoid(1.702 x)``); the same weights in a GELU model give other features.
    Read from the activation modules' classes (open_clip, OpenAI, transformers, timm alike).
    """
    names = {type(m).__name__.lower() for m in model.modules()}
    if any("quickgelu" in n for n in names):
        return "quick_gelu"
    if any(n in ("gelu", "geluactivation", "gelutanh", "pytorchgelutanh") for n in names):
        return "gelu"
    return None


def first_tensor(out: Any) -> torch.Tensor:
    """The features in a host's return value: a tensor, the first item of a tuple
    (GA2-CLIP's ``(features, tokens)``, X-CLIP's ``(cls, tokens)``), or a model output's embeddings."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    for key in ("text_embeds", "image_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if torch.is_tensor(value):
            return value
    raise InvalidTypeError(f"cannot find the features in a {type(out).__name__} returned by the host")


def hidden_states(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Callable[[torch.Tensor], tuple[tuple, dict]]]:
    """The token sequence a block is called with, and a function that rebuilds the call with a new one.

    Blocks take it as their first positional argument (open_clip, OpenAI, timm) or as
    ``hidden_states=`` (Hugging Face).
    """
    if args and torch.is_tensor(args[0]):
        return args[0], lambda x: ((x, *args[1:]), kwargs)
    for key in ("hidden_states", "x", "q_x"):
        if torch.is_tensor(kwargs.get(key)):
            return kwargs[key], lambda x, key=key: (args, {**kwargs, key: x})
    raise InvalidTypeError("cannot find the token sequence among a block's arguments")


def map_sequence(out: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to the token sequence in a module's output: a tensor, a tuple whose first item
    it is, or a model output's ``last_hidden_state`` (with ``hidden_states`` alike)."""
    if torch.is_tensor(out):
        return fn(out)
    if isinstance(out, tuple) and out and torch.is_tensor(out[0]):
        return (fn(out[0]), *out[1:])
    if torch.is_tensor(getattr(out, "last_hidden_state", None)):
        changed = dict(out)
        changed["last_hidden_state"] = fn(out.last_hidden_state)
        if isinstance(out.get("hidden_states"), tuple):
            changed["hidden_states"] = tuple(fn(h) for h in out["hidden_states"])
        return type(out)(**changed)
    raise InvalidTypeError(f"cannot find the token sequence in a {type(out).__name__}")


def project(x: torch.Tensor, proj: Optional[Any]) -> torch.Tensor:
    """``x`` through a projection that is a matrix, a module or absent."""
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Module) else x @ proj


def cosine_logits(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``exp(scale) * cos(video, text) (+ bias)``; ``text`` is ``(K, D)`` or per video ``(B, K, D)``."""
    video, text = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
    sims = video @ text.t() if text.ndim == 2 else torch.einsum("bd,bkd->bk", video, text)
    logits = scale.exp() * sims
    return logits + bias if bias is not None else logits
