"""CouplingPromptWrapper: coupled text context and deep prompts on a CLIP-style host, by hooks alone.

The host is never forked or edited. Its adapter (``promptcouple.adapters``) names the sites; hooks
registered once (and removed by ``unwrap``) replace a slice of the activations there:

* text embedding output: the placeholder positions become the coupled text context;
* text block ``i`` (pre-hook), ``1 <= i < text_depth``: the same positions become layer ``i``'s tokens;
* vision insert site: ``n_vision_ctx`` tokens join the sequence (last, or after the prefix tokens);
* vision block ``i`` (pre-hook), ``1 <= i < vision_depth``: those tokens are replaced;
* vision strip site: the prompt tokens leave again, so any pooling works.

Replacing a slice is idempotent, so gradient checkpointing may recompute a block in backward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from functools import partial
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from promptcouple.adapters import HostAdapter, UnsupportedHostError, resolve_host
from promptcouple.adapters.base import cosine_logits, hidden_states, map_sequence
from promptcouple.adapters.capabilities import frame_format
from promptcouple.config import DEFAULT_N_CTX, CouplingConfig
from promptcouple.constants import class_text
from promptcouple.errors import InvalidInputError, InvalidTypeError, PromptFileError, RunError
from promptcouple.fileio import PathLike
from promptcouple.host_state import HostState
from promptcouple.prompts import PromptLearner
from promptcouple.tokenize import PromptTokenizer

HardPrompts = Union[None, PathLike, torch.Tensor, "PromptFile"]  # noqa: F821 (io.PromptFile)


class CouplingPromptWrapper(nn.Module):
    """Prompt-tune a frozen CLIP-style model: ``CouplingPromptWrapper(model, config, hard_prompts=...)``.

    Args:
        model: Any host a registered adapter serves (open_clip ``CLIP``/``CustomTextCLIP``, the
            OpenAI layout, Hugging Face ``CLIPModel``/``SiglipModel``/``XCLIPModel``, X-CLIP, a video
            model holding a CLIP as ``.clip``; see the README's host table).
        config: Prompt sizes and depths; ``None`` for the paper's configuration.
        hard_prompts: A frozen context ``(n_ctx, d_text)`` learned on another dataset: a tensor, a
            prompt file (its effective layer-0 context is used) or a loaded ``PromptFile``. With it
            the soft context is coupled to it through a learnable mapping layer.
        tokenizer: Tokenizer for class prompts (default: the adapter's; open_clip's CLIP BPE).
        short_text: Run the text tower only up to the longest prompt where that is exact.
        train_host: Names of host submodules that train beside the prompts (X-CLIP trains its
            ``mit`` and ``prompts_generator``); they are saved in prompt files too, and follow
            ``train()`` / ``eval()``.
        host_train_mode: ``False`` (the default): every frozen host module stays in evaluation mode
            while the prompts train (BatchNorm statistics unchanged, dropout and stochastic depth
            off), whoever calls ``train()``. ``True``: the frozen host follows the wrapper's mode,
            for its train-mode regularisation (BatchNorm statistics then move, and ``unwrap()``
            gives back a host whose running statistics differ).
    """

    def __init__(self, model: nn.Module, config: Optional[CouplingConfig] = None, *,
                 hard_prompts: HardPrompts = None, tokenizer: Any = None, short_text: bool = True,
                 train_host: Sequence[str] = (), host_train_mode: bool = False):
        super().__init__()
        _refuse_double_wrap(model)
        host = resolve_host(model)
        config = config if config is not None else CouplingConfig()
        if config.has_vision_prompts and host.vision is None:
            raise UnsupportedHostError(
                f"{host.vision_refusal or host.family + ' has no vision prompt site'}; this config asks for "
                f"{config.n_vision_ctx} vision prompt tokens: set n_vision_ctx=0, vision_depth=0 (text prompts only)")
        self.model = model
        self.host: HostAdapter = host
        self.tokenizer = PromptTokenizer(tokenizer if tokenizer is not None else host.default_tokenizer(),
                                         host.text.context_length)
        self.short_text = short_text
        self._active = True
        self._wrapped = True
        self._ids_cache: dict[tuple, torch.Tensor] = {}
        self._feature_cache: dict[tuple, torch.Tensor] = {}

        config, ctx_init = self._resolve_context(config)
        self._check_depths(config)
        self._ctx_start = self.tokenizer.prefix_start(self._prefix(config))
        hard = _resolve_hard_prompts(hard_prompts, (config.n_ctx, host.text.width))
        device = host.parameter.device
        vision_width = host.vision.width if host.vision is not None else 0
        self.prompts = PromptLearner(config, host.text.width, vision_width, ctx_init, hard).to(device)

        # Freeze the host, remembering its flags and modes so that unwrap() restores them exactly.
        self.train_host = tuple(train_host)
        self.host_train_mode = bool(host_train_mode)
        self._host_state = HostState(model, self.train_host, self.host_train_mode)
        self._host_state.freeze()
        self._frame_format = frame_format(model)  # (channels, (H, W)) the image tower takes, None where unknown
        self._handles = self._register_hooks()
        for owner in host.intermediates_owners():  # they call blocks directly: the strip hook never fires
            owner.forward_intermediates = partial(_refuse_intermediates, type(owner).__name__)
        host.on_wrap()

    # ----------------------------------------------------------------------------------- set-up

    def train(self, mode: bool = True) -> "CouplingPromptWrapper":
        """Prompts and ``train_host`` modules follow ``mode``; the frozen host stays in evaluation
        mode (unless ``host_train_mode=True``). ``nn.Module.train`` of an outer model calls this too."""
        return super().train(mode)  # the host's own train was replaced at wrap time (host_state.py)

    @property
    def config(self) -> CouplingConfig:
        return self.prompts.config

    @property
    def spec(self) -> HostAdapter:
        """The host adapter (older name)."""
        return self.host

    @property
    def device(self) -> torch.device:
        return self.host.parameter.device

    @staticmethod
    def _prefix(config: CouplingConfig) -> str:
        return config.ctx_init.replace("_", " ") if config.ctx_init else " ".join(["X"] * config.n_ctx)

    def _resolve_context(self, config: CouplingConfig) -> tuple[CouplingConfig, Optional[torch.Tensor]]:
        if config.ctx_init is None:
            return dataclasses.replace(config, n_ctx=config.n_ctx or DEFAULT_N_CTX), None
        phrase = config.ctx_init.replace("_", " ")
        n = self.tokenizer.count(phrase)
        if config.n_ctx not in (None, n):
            raise InvalidInputError(f"ctx_init {phrase!r} has {n} tokens but n_ctx={config.n_ctx}; "
                             "leave n_ctx=None to take the phrase's length")
        start = self.tokenizer.prefix_start(phrase)
        embedding = self.host.text.embedding
        ids = self.tokenizer([phrase])[0, start:start + n].to(self.host.parameter.device)
        with torch.no_grad():
            init = embedding(ids.unsqueeze(0))[0].float()
        return dataclasses.replace(config, n_ctx=n), init

    def _check_depths(self, config: CouplingConfig) -> None:
        text, vision = self.host.text, self.host.vision
        if config.text_depth > len(text.blocks):
            raise InvalidInputError(f"text_depth={config.text_depth} but the text tower has {len(text.blocks)} layers")
        if vision is not None and config.vision_depth > len(vision.blocks):
            raise InvalidInputError(
                f"vision_depth={config.vision_depth} but the image tower has {len(vision.blocks)} layers")
        if 2 + config.n_ctx > text.context_length:
            raise InvalidInputError(f"n_ctx={config.n_ctx} leaves no room for a class name "
                             f"in a context of {text.context_length} tokens")

    def _register_hooks(self) -> list:
        text, vision, cfg = self.host.text, self.host.vision, self.config
        handles = [text.embedding.register_forward_hook(self._text_context_hook)]
        for layer in range(1, cfg.text_depth):
            hook = partial(self._text_deep_hook, layer)
            handles.append(text.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
        if cfg.has_vision_prompts:
            if vision.insert_on == "input":
                handles.append(vision.insert.register_forward_pre_hook(self._vision_insert_pre_hook, with_kwargs=True))
            else:
                handles.append(vision.insert.register_forward_hook(self._vision_insert_post_hook))
            adjust = self.host.needs_block_adjustment
            for layer in range(0 if adjust else 1, len(vision.blocks) if adjust else cfg.vision_depth):
                hook = partial(self._vision_deep_hook, layer)
                handles.append(vision.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
            if vision.strip_on == "input":
                handles.append(vision.strip.register_forward_pre_hook(self._vision_strip_pre_hook, with_kwargs=True))
            else:
                handles.append(vision.strip.register_forward_hook(self._vision_strip_post_hook))
        return handles

    # ------------------------------------------------------------------------------------ hooks
    # Each hook replaces a slice and returns a new tensor (never in place), so that a block that
    # gradient checkpointing recomputes sees exactly the same input again.

    def _text_context_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> Optional[torch.Tensor]:
        if not self._active:
            return None
        s, n = self._ctx_start, self.config.n_ctx
        ctx = self.prompts.text_context(out.shape[0]).to(out.dtype)
        return torch.cat([out[:, :s], ctx, out[:, s + n:]], dim=1)

    def _text_deep_hook(self, layer: int, module: nn.Module, args: tuple, kwargs: dict):
        if not self._active:
            return None
        x, rebuild = hidden_states(args, kwargs)
        s, n = self._ctx_start, self.config.n_ctx
        p = self.prompts.text_deep[layer - 1].to(x.dtype)
        return rebuild(_replace_positions(x, s, s + n, p, self.host.text.seq_first))

    def _vision_slice(self, length: int) -> tuple[int, int]:
        """Where the vision prompt tokens sit in a sequence of ``length`` tokens (prompts included)."""
        n, offset = self.config.n_vision_ctx, self.host.vision.offset
        return (length - n, length) if offset is None else (offset, offset + n)

    def _insert(self, x: torch.Tensor) -> torch.Tensor:
        p = self.prompts.vision_ctx.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        offset = self.host.vision.offset
        if offset is None:
            return torch.cat([x, p], dim=1)
        return torch.cat([x[:, :offset], p, x[:, offset:]], dim=1)

    def _vision_insert_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if not self._active:
            return None
        x, rebuild = hidden_states(args, kwargs)
        return rebuild(self._insert(x))

    def _vision_insert_post_hook(self, module: nn.Module, args: tuple, out: Any):
        if not self._active:
            return None
        return map_sequence(out, self._insert)

    def _vision_deep_hook(self, layer: int, module: nn.Module, args: tuple, kwargs: dict):
        if not self._active:
            return None
        n = self.config.n_vision_ctx
        if self.host.needs_block_adjustment:
            args, kwargs = self.host.adjust_block(args, kwargs, n)
        if not 1 <= layer < self.config.vision_depth:
            return args, kwargs
        x, rebuild = hidden_states(args, kwargs)
        seq_first = self.host.vision.seq_first
        a, b = self._vision_slice(x.shape[0 if seq_first else 1])
        p = self.prompts.vision_deep[layer - 1].to(x.dtype)
        return rebuild(_replace_positions(x, a, b, p, seq_first))

    def _strip(self, x: torch.Tensor) -> torch.Tensor:
        seq_first = self.host.vision.strip_seq_first
        length = x.shape[0 if seq_first else 1]
        a, b = self._vision_slice(length)
        if b == length:  # prompts last: a view, no copy
            return x[:a] if seq_first else x[:, :a]
        return torch.cat([x[:a], x[b:]], dim=0) if seq_first else torch.cat([x[:, :a], x[:, b:]], dim=1)

    def _vision_strip_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if not self._active:
            return None
        x, rebuild = hidden_states(args, kwargs)
        return rebuild(self._strip(x))

    def _vision_strip_post_hook(self, module: nn.Module, args: tuple, out: Any):
        if not self._active:
            return None
        return map_sequence(out, self._strip)

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
        prefix = self._prefix(self.config)
        return [f"{prefix} {class_text(name)}." for name in classnames]

    def tokenize(self, classnames: Sequence[str]) -> torch.Tensor:
        """Token ids ``(K, context_length)`` of the class prompts, cached per class set."""
        return self._tokenized(classnames).ids

    def _tokenized(self, classnames: Sequence[str]) -> "ClassTokens":
        """The class prompts' token ids and, for the short text path, their rows grouped by length
        (:func:`length_groups`) with each group's cut length, all cached per class set."""
        key = check_classnames(classnames)
        hit = self._ids_cache.get(key)
        if hit is None:
            texts = self.prompt_texts(key)
            limit = self.host.text.context_length
            specials = self._ctx_start + 1  # start token(s) before the prompt, end token after it
            lengths = []
            for name, text in zip(key, texts):
                length = specials + self.tokenizer.count(text)
                if length > limit:
                    raise InvalidInputError(
                        f"class name {name!r} needs {length} tokens with {self.config.n_ctx} context tokens, "
                        f"more than the context length {limit}; shorten the name or use a smaller n_ctx")
                lengths.append(length)
            hit = self._ids_cache[key] = ClassTokens.build(self.tokenizer(texts), lengths)
        return hit

    def _prompt_version(self) -> tuple:
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter.
        return tuple(t._version for t in self.prompts.state_dict(keep_vars=True).values())

    def _host_version(self) -> int:
        # In-place edits of the host's weights (load_state_dict, an optimizer on train_host) bump
        # the version counters, so cached class features cannot outlive the weights they came from.
        # Assigning ``p.data = ...`` bypasses the counters: call clear_cache() after doing that.
        return sum(p._version for p in self.model.parameters())

    def _host_text(self, tokens: "ClassTokens") -> torch.Tensor:
        ids = tokens.ids.to(self.host.parameter.device)
        if not (self.short_text and self.host.text.causal):
            return self.host.encode_text(ids)
        if len(tokens.groups) <= 1:
            short = self.host.encode_text_short(ids, tokens.groups[0][1])
            return short if short is not None else self.host.encode_text(ids)
        # Rows are independent, so each length group runs only as far as its own longest prompt
        # (the adapter cuts each group exactly); the rows are put back in order afterwards.
        parts = []
        for rows, length in tokens.groups:
            part = self.host.encode_text_short(ids[rows.to(ids.device)], length)
            if part is None:  # this host has no exact short path
                return self.host.encode_text(ids)
            parts.append(part)
        return torch.cat(parts)[tokens.order.to(ids.device)]

    def encode_text(self, classnames: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Prompted class features ``(K, D)``.

        Where the text tower is causal and the adapter allows it, only the first ``L`` positions
        run (``L`` = last end-of-text position + 1): the same features as the full length, at a
        fraction of the cost. In evaluation under ``no_grad`` features are cached per class set,
        prompt state, host weights (their in-place version counters), autocast, dtype and device, so
        repeated evaluation batches do not re-encode the classes; after replacing host weights
        through ``.data``, call :meth:`clear_cache`.
        """
        self._check_wrapped()
        cacheable = not (self.training or torch.is_grad_enabled())
        key = None
        if cacheable:
            param = self.host.parameter
            key = (check_classnames(classnames), self._prompt_version(), self._host_version(), self._active,
                   torch.is_autocast_enabled(), param.dtype, param.device)
            hit = self._feature_cache.get(key)
            if hit is not None:
                return F.normalize(hit, dim=-1) if normalize else hit
        features = self._host_text(self._tokenized(classnames))
        if cacheable:
            self._feature_cache.clear()  # one class set at a time: bounded memory
            self._feature_cache[key] = features
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def encode_frozen_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Features ``(N, D)`` of plain texts by the frozen, un-prompted text tower (fp32).

        For hand-crafted prompts such as the anchors' negative prompts; callers cache the result.
        """
        ids = self.tokenizer(list(texts)).to(self.host.parameter.device)
        with self.prompts_disabled():
            return self.host.encode_text(ids).float()

    @property
    def video_specific(self) -> bool:
        """Whether the host conditions text features on each video (X-CLIP style)."""
        return self.host.video_specific

    def encode_video(self, frames: torch.Tensor, normalize: bool = False, *, return_tokens: bool = False):
        """Video features ``(B, D)`` from frames ``(B, T, C, H, W)``.

        A video host (X-CLIP style) runs its own video path; an image CLIP encodes every frame and
        averages over time (ViFi-CLIP). ``return_tokens=True`` also returns what the host needs to
        make class features video-specific (``None`` for image CLIPs); pass it to :meth:`logits`.
        """
        self._check_wrapped()
        self._check_frames(frames)
        video, context = self.host.encode_video(frames)
        video = F.normalize(video, dim=-1) if normalize else video
        return (video, context) if return_tokens else video

    def _check_frames(self, frames: Any) -> None:
        """Refuse frames the host would misread, or fail on deep inside with a shape error."""
        if not torch.is_tensor(frames) or frames.ndim != 5:
            shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
            raise InvalidInputError(f"frames must be a tensor (B, T, C, H, W), got {shape}; "
                                    "add a time axis with frames.unsqueeze(1) for single images")
        if frames.dtype == torch.uint8:
            raise InvalidTypeError(
                "frames have dtype torch.uint8 (raw pixels), expected float frames normalised as CLIP's: "
                "frames.float().div(255) then (x - CLIP_MEAN) / CLIP_STD per channel (promptcouple.constants), "
                "as promptcouple.data's transforms do")
        if not frames.is_floating_point():
            raise InvalidTypeError(f"frames have dtype {frames.dtype}, expected a floating-point tensor "
                                   "normalised as CLIP's")
        b, t, c, h, w = frames.shape
        if b == 0 or t == 0:
            raise InvalidInputError(f"frames of shape {tuple(frames.shape)} hold no video (B={b}, T={t}); "
                                    "expected at least one video of at least one frame")
        channels, size = self._frame_format
        if channels is not None and c != channels:
            fix = "repeat grey frames to RGB: frames.expand(-1, -1, 3, -1, -1)" if c == 1 else "check the axis order"
            raise InvalidInputError(f"frames have {c} channel(s) (shape {tuple(frames.shape)}), the image tower "
                                    f"takes {channels}; frames are (B, T, C, H, W): {fix}")
        if size is not None and (h, w) != tuple(size):
            raise InvalidInputError(f"frames are {h}x{w} pixels, the image tower takes {size[0]}x{size[1]}; "
                                    f"resize or crop them to {size[0]}x{size[1]} (data.image_size in a config)")

    @property
    def logit_scale_exp(self) -> torch.Tensor:
        """The factor cosine similarities are multiplied by: the host's (frozen, log-space)
        ``logit_scale``, exponentiated; 100 for OpenAI's CLIP."""
        return self.host.logit_scale.exp()

    @property
    def logit_scale(self) -> torch.Tensor:
        """Deprecated: exponentiated, unlike every host's log-space ``logit_scale``; use :attr:`logit_scale_exp`."""
        warnings.warn("wrapper.logit_scale is deprecated and goes away in the next release: it is exponentiated, "
                      "unlike the host's log-space logit_scale; use wrapper.logit_scale_exp (the same value)",
                      DeprecationWarning, stacklevel=2)
        return self.logit_scale_exp

    def logits(self, video: torch.Tensor, text: torch.Tensor, context: Any = None) -> torch.Tensor:
        """Scaled cosine similarities ``(B, K)`` (plus the host's logit bias, if any).

        ``text`` is ``(K, D)`` or video-specific ``(B, K, D)``; with the ``context`` of
        ``encode_video(..., return_tokens=True)`` a video host makes ``(K, D)`` text video-specific.
        """
        if context is not None and text.ndim == 2:
            text = self.host.specialize_text(text, context)
        return cosine_logits(video, text.to(video.dtype), self.host.logit_scale, self.host.logit_bias)

    def forward(self, frames: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """Logits ``(B, K)`` of videos ``(B, T, C, H, W)`` against prompted class names (distinct)."""
        check_classnames(classnames, distinct=True)  # two classes of one name: two identical logits
        text = self.encode_text(classnames)
        video, context = self.encode_video(frames, return_tokens=True)
        return self.logits(video, text, context)

    # ------------------------------------------------------------------------------ parameters

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs of what trains: the prompts, and the ``train_host`` modules."""
        named = [(f"prompts.{n}", p) for n, p in self.prompts.named_parameters() if p.requires_grad]
        return named + [(f"model.{n}", p) for n, p in self.host_trainable_parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train, for the optimizer: ``AdamW(wrapper.trainable_parameters())``.

        (promptcouple 0.1 returned ``(name, parameter)`` pairs here; those are
        :meth:`named_trainable_parameters` now, as ``parameters`` / ``named_parameters`` in torch.)
        """
        return [p for _, p in self.named_trainable_parameters()]

    def host_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The ``train_host`` modules' parameters, named relative to the host."""
        return [(f"{m}.{n}", p) for m in self.train_host for n, p in self.model.get_submodule(m).named_parameters()]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def print_trainable_parameters(self) -> None:
        """Print how many parameters train, of how many in all (as peft's method of this name)."""
        trainable = self.num_trainable_parameters()
        total = sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def clear_cache(self) -> None:
        """Forget cached class features: needed only after replacing host weights through ``p.data = ...``
        (in-place edits, ``load_state_dict``, dtype and device changes are part of the cache key)."""
        self._feature_cache.clear()

    # ------------------------------------------------------------------------------------- I/O

    def save_prompts(self, path: PathLike) -> None:
        """Write every prompt tensor, the hard prompt and the config to one ``.safetensors`` file."""
        from promptcouple.io import save_prompts

        save_prompts(self, path)

    def save_pretrained(self, path: PathLike) -> None:
        """:meth:`save_prompts` under the name that pairs with :meth:`from_pretrained` (as in peft)."""
        self.save_prompts(path)

    def load_prompts(self, source: Union[PathLike, "PromptFile"]) -> None:  # noqa: F821
        """Load prompt tensors from a prompt file, checking every key and shape first."""
        from promptcouple.io import load_prompts_into

        load_prompts_into(self, source)
        self.clear_cache()

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: PathLike, *, hard_prompts: HardPrompts = None,
                        **kwargs: Any) -> "CouplingPromptWrapper":
        """Wrap ``model`` with the config, hard prompt and tensors of a prompt file."""
        from promptcouple.io import read_prompt_file

        pf = read_prompt_file(path)
        if pf.coupled and hard_prompts is None:
            hard_prompts = pf.tensors.get("text.hard")
            if hard_prompts is None:
                raise InvalidInputError(f"{path} was trained with a hard prompt that it does not contain "
                                 "(converted from a GA2-CLIP checkpoint?); pass hard_prompts=")
        kwargs.setdefault("train_host", tuple(json.loads(pf.metadata.get("train_host", "[]"))))
        wrapper = cls(model, pf.config, hard_prompts=hard_prompts if pf.coupled else None, **kwargs)
        wrapper.load_prompts(pf)
        return wrapper

    # ---------------------------------------------------------------------------------- unwrap

    def unwrap(self) -> nn.Module:
        """Remove every hook, restore the host's ``requires_grad`` flags and the training flag of
        every host module as they were when it was wrapped, and return the host.

        The host then computes exactly what it computed before it was wrapped.
        """
        self._check_wrapped()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for owner in self.host.intermediates_owners():
            owner.__dict__.pop("forward_intermediates", None)
        self.host.on_unwrap()
        self._host_state.restore()
        self._wrapped = False
        self._feature_cache.clear()
        return self.model

    def _check_wrapped(self) -> None:
        if not self._wrapped:
            raise RunError("this wrapper was unwrapped; wrap the model again to use prompts")

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
        return (f"host={self.host.kind}, n_ctx={cfg.n_ctx}, text_depth={cfg.text_depth}, "
                f"n_vision_ctx={cfg.n_vision_ctx}, vision_depth={cfg.vision_depth}, "
                f"coupled={self.prompts.coupled}, trainable={self.num_trainable_parameters():,}")


class ClassTokens(NamedTuple):
    """A class set's token ids ``(K, context_length)``, its length groups as ``(rows, length)``
    (``length``: the group's cut, known here so that no text pass measures it on the device;
    ``None`` where the tokenizer's count cannot be trusted, and the adapter measures) and the
    order that puts the groups' rows back."""

    ids: torch.Tensor
    groups: tuple[tuple[torch.Tensor, Optional[int]], ...]
    order: torch.Tensor

    @classmethod
    def build(cls, ids: torch.Tensor, lengths: list[int]) -> "ClassTokens":
        # The count is trusted only where every position after it is padding (the value the row
        # ends with): then the end-of-text token, which causal hosts pool at, lies inside the cut.
        cut = torch.as_tensor(lengths).unsqueeze(1)
        after = torch.arange(ids.shape[1]).unsqueeze(0) >= cut
        trusted = bool(((ids == ids[:, -1:]) | ~after).all())
        groups = length_groups(lengths)
        order = torch.cat(groups).argsort()
        return cls(ids, tuple((rows, max(lengths[i] for i in rows.tolist()) if trusted else None)
                              for rows in groups), order)


# A text pass has a fixed cost besides its tokens (the kernels of every block, run once more),
# counted here as this many token positions; it decides when a length group is worth a pass.
_PASS_COST = 96
_MAX_GROUPS = 4


def length_groups(lengths: Sequence[int], pass_cost: int = _PASS_COST,
                  max_groups: int = _MAX_GROUPS) -> list[torch.Tensor]:
    """Row indices of prompts grouped by token length, for the short text path.

    One pass runs every prompt as far as the longest one; grouping the prompts by length and
    running each group only as far as its own longest cuts the positions computed. The groups
    minimise ``sum(rows * longest + pass_cost)`` over contiguous ranges of the sorted lengths
    (at most ``max_groups``). A single group (all rows) is returned when splitting does not pay.
    """
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    # Cuts between equal lengths never pay, so only the ends of the runs of equal lengths are
    # candidate cuts (at most the context length of them, however many prompts there are).
    ends = [j for j in range(1, len(ls) + 1) if j == len(ls) or ls[j] != ls[j - 1]]
    points = [0] + ends
    inf = float("inf")
    # best[g][b]: cost of the rows before points[b] in g groups; cut[g][b]: where the last group starts
    best = [[inf] * len(points) for _ in range(max_groups + 1)]
    cut = [[0] * len(points) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for b in range(1, len(points)):
            for a in range(b):
                cost = best[g - 1][a] + (points[b] - points[a]) * ls[points[b] - 1] + pass_cost
                if cost < best[g][b]:
                    best[g][b], cut[g][b] = cost, a
    last = len(points) - 1
    g = min(range(1, max_groups + 1), key=lambda k: (best[k][last], k))
    bounds, b = [], last
    while g > 0:
        a = cut[g][b]
        bounds.append((points[a], points[b]))
        b, g = a, g - 1
    return [torch.as_tensor(order[i:j]) for i, j in reversed(bounds)]


def _replace_positions(x: torch.Tensor, a: int, b: int, tokens: torch.Tensor, seq_first: bool) -> torch.Tensor:
    """``x`` with sequence positions ``a:b`` replaced by ``tokens`` ``(b - a, D)``, the same for every row.

    A new tensor, never an in-place write: a block that gradient checkpointing recomputes must see
    the same input again.
    """
    if seq_first:
        return torch.cat([x[:a], tokens.unsqueeze(1).expand(-1, x.shape[1], -1), x[b:]], dim=0)
    return torch.cat([x[:, :a], tokens.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, b:]], dim=1)


def _refuse_double_wrap(model: nn.Module) -> None:
    """A host already carrying a wrapper's hooks (a re-run notebook cell) would get both sets."""
    if isinstance(model, CouplingPromptWrapper):
        raise InvalidInputError("this model is already a CouplingPromptWrapper; wrap the host itself, or reuse the wrapper")
    for module in model.modules():
        hooks = (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
        for hook in hooks:
            owner = getattr(getattr(hook, "func", hook), "__self__", None)
            if isinstance(owner, CouplingPromptWrapper):
                raise InvalidInputError(
                    f"this {type(model).__name__} is already wrapped by a CouplingPromptWrapper (its hooks are on "
                    f"{type(module).__name__}); call .unwrap() on that wrapper first, or keep using it")


def _refuse_intermediates(owner: str, *args: Any, **kwargs: Any):
    raise RunError(
        f"{owner}.forward_intermediates calls the blocks directly, so the prompt hooks cannot strip "
        "their tokens and the output would silently hold extra tokens; use the wrapper's "
        "encode_video/encode_text, or unwrap() first")


def _resolve_hard_prompts(hard: HardPrompts, shape: tuple[int, int]) -> Optional[torch.Tensor]:
    """The hard prompt as a tensor of ``shape``, from a tensor, a prompt file or a PromptFile."""
    if hard is None:
        return None
    from promptcouple.io import PromptFile, read_prompt_file

    source = "hard_prompts"
    if isinstance(hard, (str, os.PathLike)):
        source, hard = str(hard), read_prompt_file(hard)
    if isinstance(hard, PromptFile):
        hard = hard.effective_context()
    if not torch.is_tensor(hard):
        raise InvalidTypeError(f"hard_prompts must be a tensor, a prompt file path or a PromptFile, "
                               f"got {type(hard).__name__}")
    from promptcouple.io import check_tensor_values

    check_tensor_values("the hard prompt", hard, source)
    if tuple(hard.shape) != tuple(shape):
        raise PromptFileError(
            f"{source}: hard prompt of shape {tuple(hard.shape)}, expected {tuple(shape)} (n_ctx, text width); "
            "was it learned with another n_ctx or for another backbone?")
    return hard.float()


def check_classnames(classnames: Any, *, distinct: bool = False) -> tuple[str, ...]:
    """Class names as a tuple, refusing what would silently train or evaluate the wrong classes.

    ``distinct``: also refuse a name given twice, where the names are classes to tell apart
    (``forward``); text features of a list with repeats (class names and anchor labels in one
    pass) are well defined.

    Raises:
        InvalidInputError: A plain string (it would become one class per letter), an empty list,
            a name that is not a non-empty string, or (``distinct``) a name given twice.
        InvalidTypeError: Anything but a list or tuple (``None``, a number, a dict, a tensor, ...).
    """
    if isinstance(classnames, str):
        raise InvalidInputError(f"classnames must be a list of class names, got the string {classnames!r}; "
                                f"write [{classnames!r}] for one class")
    if not isinstance(classnames, (list, tuple)):
        # A dict would give its keys, a tensor its rows, None or a number a bare TypeError: say so instead.
        shown = "None" if classnames is None else f"a {type(classnames).__name__}"
        raise InvalidTypeError(f"classnames must be a list or tuple of class names, got {shown}; "
                               "pass them as a list, e.g. model(frames, ['archery', 'bowling'])")
    names = tuple(classnames)
    if not names:
        raise InvalidInputError("classnames is empty; expected a non-empty list of class names")
    for i, name in enumerate(names):
        if not (isinstance(name, str) and name.strip()):
            raise InvalidInputError(f"classnames[{i}] is {name!r}, expected a non-empty string")
    first: dict[str, int] = {}
    for i, name in enumerate(names if distinct else ()):
        if name in first:
            raise InvalidInputError(f"classnames[{first[name]}] and classnames[{i}] are both {name!r}: two classes "
                                    "with one name cannot be told apart; give each class a distinct name")
        first[name] = i
    return names
