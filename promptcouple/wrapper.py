"""CouplingPromptWrapper: coupled text context and deep prompts on a CLIP-style host, by hooks alone.

The host is never forked or edited. Hooks registered once (and removed by ``unwrap``) replace a
slice of the activations at the points INTEGRATION.md lists:

* ``token_embedding`` (forward hook): positions ``1..n_ctx`` become the coupled text context;
* text block ``i`` (pre-hook), ``1 <= i < text_depth``: positions ``1..n_ctx`` become layer ``i``'s tokens;
* ``visual.ln_pre`` (pre-hook): ``n_vision_ctx`` tokens are appended;
* vision block ``i`` (pre-hook), ``1 <= i < vision_depth``: the last ``n_vision_ctx`` tokens are replaced;
* ``visual.transformer`` (forward hook): the prompt tokens are stripped again, so any pooling works.

Replacing a slice is idempotent, so gradient checkpointing may recompute a block in backward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from functools import partial
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from promptcouple.adapters import HostSpec, resolve_host
from promptcouple.config import DEFAULT_N_CTX, CouplingConfig
from promptcouple.prompts import PromptLearner

PathLike = Union[str, "os.PathLike[str]"]
HardPrompts = Union[None, PathLike, torch.Tensor, "PromptFile"]  # noqa: F821 (io.PromptFile)


def default_tokenizer(context_length: int):
    """open_clip's CLIP BPE tokenizer at the host's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def _count_tokens(tokenizer, text: str) -> int:
    """Word-piece count of ``text`` without start/end tokens."""
    if hasattr(tokenizer, "encode"):
        return len(tokenizer.encode(text))
    ids = tokenizer([text])[0]
    return int(ids.argmax()) - 1  # CLIP convention: EOT has the largest id


class CouplingPromptWrapper(nn.Module):
    """Prompt-tune a frozen CLIP-style model: ``CouplingPromptWrapper(model, config, hard_prompts=...)``.

    Args:
        model: An open_clip ``CLIP``, a model in the OpenAI CLIP layout, or a video model that holds
            one of those as ``.clip`` and defines ``encode_video`` (X-CLIP style).
        config: Prompt sizes and depths; ``None`` for the paper's configuration.
        hard_prompts: A frozen context ``(n_ctx, d_text)`` learned on another dataset: a tensor, a
            prompt file (its effective layer-0 context is used) or a loaded ``PromptFile``. With it
            the soft context is coupled to it through a learnable mapping layer.
        tokenizer: Tokenizer for class prompts (default: open_clip's CLIP BPE tokenizer).
        short_text: Run the text tower only up to the longest prompt (exact; see ``encode_text``).
    """

    def __init__(self, model: nn.Module, config: Optional[CouplingConfig] = None, *,
                 hard_prompts: HardPrompts = None, tokenizer: Any = None, short_text: bool = True):
        super().__init__()
        spec = resolve_host(model)
        config = config if config is not None else CouplingConfig()
        self.model = model
        self.spec: HostSpec = spec
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer(spec.context_length)
        self.short_text = short_text
        self._active = True
        self._wrapped = True
        self._ids_cache: dict[tuple, torch.Tensor] = {}
        self._feature_cache: dict[tuple, torch.Tensor] = {}

        config, ctx_init = self._resolve_context(config)
        self._check_depths(config)
        hard = _resolve_hard_prompts(hard_prompts, (config.n_ctx, spec.text_width))
        device = next(model.parameters()).device
        self.prompts = PromptLearner(config, spec.text_width, spec.vision_width, ctx_init, hard).to(device)

        # Freeze the host, remembering what was trainable so unwrap() restores it exactly.
        self._host_requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        model.requires_grad_(False)
        self._handles = self._register_hooks()
        for owner in spec.intermediates_owners:  # they call blocks directly: the strip hook never fires
            owner.forward_intermediates = partial(_refuse_intermediates, type(owner).__name__)

    # ----------------------------------------------------------------------------------- set-up

    @property
    def config(self) -> CouplingConfig:
        return self.prompts.config

    def _resolve_context(self, config: CouplingConfig) -> tuple[CouplingConfig, Optional[torch.Tensor]]:
        if config.ctx_init is None:
            return dataclasses.replace(config, n_ctx=config.n_ctx or DEFAULT_N_CTX), None
        phrase = config.ctx_init.replace("_", " ")
        n = _count_tokens(self.tokenizer, phrase)
        if config.n_ctx not in (None, n):
            raise ValueError(f"ctx_init {phrase!r} has {n} tokens but n_ctx={config.n_ctx}; "
                             "leave n_ctx=None to take the phrase's length")
        ids = self.tokenizer([phrase])[0, 1:1 + n].to(self.spec.token_embedding.weight.device)
        with torch.no_grad():
            init = self.spec.token_embedding(ids).float()
        return dataclasses.replace(config, n_ctx=n), init

    def _check_depths(self, config: CouplingConfig) -> None:
        spec = self.spec
        if config.text_depth > len(spec.text_blocks):
            raise ValueError(f"text_depth={config.text_depth} but the text tower has {len(spec.text_blocks)} layers")
        if config.vision_depth > len(spec.vision_blocks):
            raise ValueError(
                f"vision_depth={config.vision_depth} but the image tower has {len(spec.vision_blocks)} layers")
        if 2 + config.n_ctx > spec.context_length:
            raise ValueError(f"n_ctx={config.n_ctx} leaves no room for a class name "
                             f"in a context of {spec.context_length} tokens")

    def _register_hooks(self) -> list:
        spec, cfg = self.spec, self.config
        handles = [spec.token_embedding.register_forward_hook(self._text_context_hook)]
        for layer in range(1, cfg.text_depth):
            hook = partial(self._text_deep_hook, layer)
            handles.append(spec.text_blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
        if cfg.has_vision_prompts:
            handles.append(spec.vision_ln_pre.register_forward_pre_hook(self._vision_append_hook))
            for layer in range(1, cfg.vision_depth):
                hook = partial(self._vision_deep_hook, layer)
                handles.append(spec.vision_blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
            handles.append(spec.vision_transformer.register_forward_hook(self._vision_strip_hook))
        return handles

    # ------------------------------------------------------------------------------------ hooks
    # Each hook replaces a slice and returns a new tensor (never in place), so that a block that
    # gradient checkpointing recomputes sees exactly the same input again.

    def _text_context_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> Optional[torch.Tensor]:
        if not self._active:
            return None
        n = self.config.n_ctx
        ctx = self.prompts.text_context(out.shape[0]).to(out.dtype)
        return torch.cat([out[:, :1], ctx, out[:, 1 + n:]], dim=1)

    def _text_deep_hook(self, layer: int, module: nn.Module, args: tuple, kwargs: dict):
        if not self._active:
            return None
        x, n = args[0], self.config.n_ctx
        p = self.prompts.text_deep[layer - 1].to(x.dtype)
        if self.spec.text_seq_first:
            x = torch.cat([x[:1], p.unsqueeze(1).expand(-1, x.shape[1], -1), x[1 + n:]], dim=0)
        else:
            x = torch.cat([x[:, :1], p.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1 + n:]], dim=1)
        return (x, *args[1:]), kwargs

    def _vision_append_hook(self, module: nn.Module, args: tuple):
        if not self._active:
            return None
        x = args[0]  # (N, L, D) in every layout: ln_pre runs before any permute
        p = self.prompts.vision_ctx.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return (torch.cat([x, p], dim=1), *args[1:])

    def _vision_deep_hook(self, layer: int, module: nn.Module, args: tuple, kwargs: dict):
        if not self._active:
            return None
        x, n = args[0], self.config.n_vision_ctx
        p = self.prompts.vision_deep[layer - 1].to(x.dtype)
        if self.spec.vision_seq_first:
            x = torch.cat([x[:-n], p.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=0)
        else:
            x = torch.cat([x[:, :-n], p.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        return (x, *args[1:]), kwargs

    def _vision_strip_hook(self, module: nn.Module, args: tuple, out: torch.Tensor):
        if not self._active:
            return None
        n = self.config.n_vision_ctx
        return out[:-n] if self.spec.vision_io_seq_first else out[:, :-n]

    # ---------------------------------------------------------------------------------- towers

    @contextlib.contextmanager
    def prompts_disabled(self) -> Iterator[None]:
        """Run the frozen, un-prompted host inside this block (use it under ``torch.no_grad()``:
        a checkpointed block recomputed in backward after the block would see prompts again)."""
        previous, self._active = self._active, False
        try:
            yield
        finally:
            self._active = previous

    def prompt_texts(self, classnames: Sequence[str]) -> list[str]:
        """The text each class is tokenized from: placeholders (or ``ctx_init``) then the name."""
        cfg = self.config
        prefix = cfg.ctx_init.replace("_", " ") if cfg.ctx_init else " ".join(["X"] * cfg.n_ctx)
        return [f"{prefix} {name.replace('_', ' ')}." for name in classnames]

    def tokenize(self, classnames: Sequence[str]) -> torch.Tensor:
        """Token ids ``(K, context_length)`` of the class prompts, cached per class set."""
        key = tuple(classnames)
        ids = self._ids_cache.get(key)
        if ids is None:
            if not key or not all(isinstance(c, str) and c.strip() for c in key):
                raise ValueError(f"classnames must be a non-empty list of non-empty strings, got {list(key)[:5]!r}")
            texts = self.prompt_texts(key)
            limit = self.spec.context_length
            for name, text in zip(key, texts):
                length = 2 + _count_tokens(self.tokenizer, text)
                if length > limit:
                    raise ValueError(
                        f"class name {name!r} needs {length} tokens with {self.config.n_ctx} context tokens, "
                        f"more than the context length {limit}; shorten the name or use a smaller n_ctx")
            ids = self.tokenizer(texts)
            self._ids_cache[key] = ids
        return ids

    def _prompt_version(self) -> tuple:
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter.
        return tuple(t._version for t in self.prompts.state_dict(keep_vars=True).values())

    def encode_text(self, classnames: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Prompted class features ``(K, D)``.

        The text tower is causal, so where the host allows it only the first ``L`` positions run
        (``L`` = last end-of-text position + 1): the same features as 77 tokens, at a fraction of
        the cost. In evaluation under ``no_grad`` features are cached per class set and prompt
        state, so repeated evaluation batches do not re-encode the classes.
        """
        self._check_wrapped()
        cacheable = not (self.training or torch.is_grad_enabled())
        key = None
        if cacheable:
            key = (tuple(classnames), self._prompt_version(), self._active, torch.is_autocast_enabled())
            hit = self._feature_cache.get(key)
            if hit is not None:
                return F.normalize(hit, dim=-1) if normalize else hit
        ids = self.tokenize(classnames).to(self.spec.token_embedding.weight.device)
        short = self.spec.encode_text_short if self.short_text else None
        features = (short or self.spec.encode_text)(ids)
        if cacheable:
            self._feature_cache.clear()  # one class set at a time: bounded memory
            self._feature_cache[key] = features
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def encode_frozen_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Features ``(N, D)`` of plain texts by the frozen, un-prompted text tower (fp32).

        For hand-crafted prompts such as the anchors' negative prompts; callers cache the result.
        """
        ids = self.tokenizer(list(texts)).to(self.spec.token_embedding.weight.device)
        with self.prompts_disabled():
            return self.spec.encode_text(ids).float()

    @property
    def video_specific(self) -> bool:
        """Whether the host conditions text features on each video (X-CLIP style)."""
        return hasattr(self.model, "specialize_text") and hasattr(self.model, "encode_video")

    def encode_video(self, frames: torch.Tensor, normalize: bool = False, return_tokens: bool = False):
        """Video features ``(B, D)`` from frames ``(B, T, C, H, W)``.

        A host with its own ``encode_video`` (X-CLIP style) runs it; otherwise every frame goes
        through the image tower and the features are averaged over time (ViFi-CLIP).
        """
        self._check_wrapped()
        if not torch.is_tensor(frames) or frames.ndim != 5:
            shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
            raise ValueError(f"frames must be a tensor (B, T, C, H, W), got {shape}; "
                             "add a time axis with frames.unsqueeze(1) for single images")
        tokens = None
        if hasattr(self.model, "encode_video"):
            out = self.model.encode_video(frames, return_tokens=return_tokens)
            video, tokens = out if return_tokens else (out, None)
        else:
            if return_tokens:
                raise ValueError("this host has no video tokens; return_tokens needs an X-CLIP style host")
            b = frames.shape[0]
            per_frame = self.spec.encode_image(rearrange(frames, "b t c h w -> (b t) c h w"))
            video = reduce(per_frame, "(b t) d -> b d", "mean", b=b)
        video = F.normalize(video, dim=-1) if normalize else video
        return (video, tokens) if return_tokens else video

    @property
    def logit_scale(self) -> torch.Tensor:
        """The host's (frozen) temperature, exponentiated: 100 for OpenAI's CLIP."""
        return self.spec.logit_scale.exp()

    def logits(self, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities ``(B, K)``; ``text`` is ``(K, D)`` or video-specific ``(B, K, D)``."""
        video, text = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
        sims = video @ text.t() if text.ndim == 2 else torch.einsum("bd,bkd->bk", video, text)
        return self.logit_scale * sims

    def forward(self, frames: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """Logits ``(B, K)`` of videos ``(B, T, C, H, W)`` against prompted class names."""
        text = self.encode_text(classnames)
        if self.video_specific:
            video, tokens = self.encode_video(frames, return_tokens=True)
            text = self.model.specialize_text(text, tokens)
        else:
            video = self.encode_video(frames)
        return self.logits(video, text)

    # ------------------------------------------------------------------------------ parameters

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named prompt parameters that train (the host is frozen)."""
        return [(f"prompts.{n}", p) for n, p in self.prompts.named_parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for _, p in self.trainable_parameters())

    def clear_cache(self) -> None:
        """Forget cached class features (needed only after editing the host's weights by hand)."""
        self._feature_cache.clear()

    # ------------------------------------------------------------------------------------- I/O

    def save_prompts(self, path: PathLike) -> None:
        """Write every prompt tensor, the hard prompt and the config to one ``.safetensors`` file."""
        from promptcouple.io import save_prompts

        save_prompts(self, path)

    def load_prompts(self, source: Union[PathLike, "PromptFile"]) -> None:  # noqa: F821
        """Load prompt tensors from a prompt file, checking every key and shape first."""
        from promptcouple.io import load_prompts_into

        load_prompts_into(self, source)
        self.clear_cache()

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: PathLike, *, hard_prompts: HardPrompts = None,
                        **kwargs: Any) -> "CouplingPromptWrapper":
        """Wrap ``model`` with the config, hard prompt and tensors of a prompt file."""
        from promptcouple.io import load_prompts

        pf = load_prompts(path)
        if pf.coupled and hard_prompts is None:
            hard_prompts = pf.tensors.get("text.hard")
            if hard_prompts is None:
                raise ValueError(f"{path} was trained with a hard prompt that it does not contain "
                                 "(converted from a GA2-CLIP checkpoint?); pass hard_prompts=")
        wrapper = cls(model, pf.config, hard_prompts=hard_prompts if pf.coupled else None, **kwargs)
        wrapper.load_prompts(pf)
        return wrapper

    # ---------------------------------------------------------------------------------- unwrap

    def unwrap(self) -> nn.Module:
        """Remove every hook, restore the host's ``requires_grad`` flags and return the host.

        The host then computes exactly what it computed before it was wrapped.
        """
        self._check_wrapped()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for owner in self.spec.intermediates_owners:
            owner.__dict__.pop("forward_intermediates", None)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._host_requires_grad.get(name, p.requires_grad))
        self._wrapped = False
        self._feature_cache.clear()
        return self.model

    def _check_wrapped(self) -> None:
        if not self._wrapped:
            raise RuntimeError("this wrapper was unwrapped; wrap the model again to use prompts")

    def __getattr__(self, name: str) -> Any:
        # nn.Module keeps parameters and submodules out of __dict__; after those, fall back to the
        # host so that code written for the host (e.g. wrapper.visual) keeps working.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":  # not yet set: avoid recursing forever
                raise
            return getattr(self.model, name)

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"host={self.spec.kind}, n_ctx={cfg.n_ctx}, text_depth={cfg.text_depth}, "
                f"n_vision_ctx={cfg.n_vision_ctx}, vision_depth={cfg.vision_depth}, "
                f"coupled={self.prompts.coupled}, trainable={self.num_trainable_parameters():,}")


def _refuse_intermediates(owner: str, *args: Any, **kwargs: Any):
    raise RuntimeError(
        f"{owner}.forward_intermediates calls the blocks directly, so the prompt hooks cannot strip "
        "their tokens and the output would silently hold extra tokens; use the wrapper's "
        "encode_video/encode_text, or unwrap() first")


def _resolve_hard_prompts(hard: HardPrompts, shape: tuple[int, int]) -> Optional[torch.Tensor]:
    """The hard prompt as a tensor of ``shape``, from a tensor, a prompt file or a PromptFile."""
    if hard is None:
        return None
    from promptcouple.io import PromptFile, load_prompts

    source = "hard_prompts"
    if isinstance(hard, (str, os.PathLike)):
        source, hard = str(hard), load_prompts(hard)
    if isinstance(hard, PromptFile):
        hard = hard.effective_context()
    if not torch.is_tensor(hard):
        raise TypeError(f"hard_prompts must be a tensor, a prompt file path or a PromptFile, got {type(hard).__name__}")
    if tuple(hard.shape) != tuple(shape):
        raise ValueError(
            f"{source}: hard prompt of shape {tuple(hard.shape)}, expected {tuple(shape)} (n_ctx, text width); "
            "was it learned with another n_ctx or for another backbone?")
    return hard.float()
