"""CouplingPromptWrapper: coupled text context and deep prompts on a CLIP-style host, by hooks alone.

The host is never forked or edited. Its adapter (``promptcouple.adapters``) names the sites; the
hooks of :mod:`promptcouple.hooks`, registered once (and removed by ``unwrap``), replace a slice of
the activations there. Class names become token ids in :mod:`promptcouple.classnames`; what wrapping
changes on the host (``requires_grad``, training modes) is kept and given back by
:mod:`promptcouple.host_state`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from functools import partial
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from promptcouple.adapters import HostAdapter, UnsupportedHostError, resolve_host
from promptcouple.adapters.base import cosine_logits
from promptcouple.adapters.capabilities import frame_format
from promptcouple.classnames import ClassPrompts, ClassTokens, check_classnames, length_groups
from promptcouple.config import DEFAULT_N_CTX, CouplingConfig
from promptcouple.descriptions import average_rows, check_descriptions, description_rows
from promptcouple.errors import InvalidInputError, InvalidTypeError, RunError
from promptcouple.fileio import PathLike
from promptcouple.hooks import PromptHooks, refuse_intermediates
from promptcouple.host_state import HostState
from promptcouple.prompt_sets import DEFAULT_SET, PromptSet, PromptSets
from promptcouple.prompts import HardPrompts, PromptLearner, resolve_hard_prompts
from promptcouple.tokenize import PromptTokenizer

__all__ = ["CouplingPromptWrapper", "check_classnames", "length_groups"]


class CouplingPromptWrapper(PromptHooks, PromptSets, nn.Module):
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
        self.model = model
        self.host: HostAdapter = host
        self.tokenizer = PromptTokenizer(tokenizer if tokenizer is not None else host.default_tokenizer(),
                                         host.text.context_length)
        self.short_text = short_text
        self._active = True
        self._wrapped = True
        # Named prompt sets (prompt_sets.py); the active one is ``prompts`` (registered), with its
        # class prompts and token ids (``_class_prompts``) and cached class features.
        self._sets: dict[str, PromptSet] = {DEFAULT_SET: self._prompt_set(config, hard_prompts)}
        self._switch(DEFAULT_SET)

        # Freeze the host, remembering its flags and modes so that unwrap() restores them exactly.
        self.train_host = tuple(train_host)
        self.host_train_mode = bool(host_train_mode)
        self._host_state = HostState(model, self.train_host, self.host_train_mode)
        self._host_state.freeze()
        self._frame_format = frame_format(model)  # (channels, (H, W)) the image tower takes, None where unknown
        self._handles = self._register_hooks()
        for owner in host.intermediates_owners():  # they call blocks directly: the strip hook never fires
            owner.forward_intermediates = partial(refuse_intermediates, type(owner).__name__)
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

    @property
    def _ctx_start(self) -> int:
        """Index of the first context token in the active set's token ids."""
        return self._class_prompts.ctx_start

    def _prompt_set(self, config: Optional[CouplingConfig], hard_prompts: HardPrompts) -> PromptSet:
        """A prompt set's tensors and class prompts for ``config``, checked against the host."""
        host = self.host
        config = config if config is not None else CouplingConfig()
        if config.has_vision_prompts and host.vision is None:
            raise UnsupportedHostError(
                f"{host.vision_refusal or host.family + ' has no vision prompt site'}; this config asks for "
                f"{config.n_vision_ctx} vision prompt tokens: set n_vision_ctx=0, vision_depth=0 (text prompts only)")
        config, ctx_init = self._resolve_context(config)
        self._check_depths(config)
        hard = resolve_hard_prompts(hard_prompts, (config.n_ctx, host.text.width))
        vision_width = host.vision.width if host.vision is not None else 0
        learner = PromptLearner(config, host.text.width, vision_width, ctx_init, hard).to(host.parameter.device)
        return PromptSet(learner, ClassPrompts(self.tokenizer, learner.config, host.text.context_length))

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
        with torch.no_grad(), self.prompts_disabled():  # a set added later: the hooks are already in place
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
        return self._class_prompts.texts(classnames)

    @property
    def descriptions(self) -> Optional[dict[str, tuple[str, ...]]]:
        """Class descriptions that :meth:`encode_text` and :meth:`forward` use when given none,
        ``{class: (description, ...)}``; a class not in it is encoded by its name (``None``: every
        class). The Trainer sets them from ``data.descriptions``; prompt files record and restore them.
        They belong to the active prompt set: each set keeps those its file was trained with."""
        return self._sets[self._active_set].descriptions

    @descriptions.setter
    def descriptions(self, value: Optional[Mapping[str, Sequence[str]]]) -> None:
        self._sets[self._active_set].descriptions = check_descriptions(value) if value else None

    def tokenize(self, classnames: Sequence[str]) -> torch.Tensor:
        """Token ids ``(K, context_length)`` of the class prompts, cached per class set."""
        return self._tokenized(classnames).ids

    def _tokenized(self, classnames: Sequence[str], rows: Optional[Sequence[tuple]] = None) -> ClassTokens:
        """The class prompts' token ids and length groups under the active set (cached); ``rows``:
        a prompt per class description instead (``descriptions.description_rows``)."""
        return self._class_prompts.tokens(classnames, rows)

    def _prompt_version(self) -> tuple:
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter; a
        # tensor replaced outright (load_state_dict(assign=True)) is a new object at version 0.
        return tuple((id(t), t._version) for t in self.prompts.state_dict(keep_vars=True).values())

    def _host_version(self) -> int:
        # In-place edits of the host's weights (load_state_dict, an optimizer on train_host) bump
        # the version counters, so cached class features cannot outlive the weights they came from.
        # Assigning ``p.data = ...`` bypasses the counters: call clear_cache() after doing that.
        return sum(p._version for p in self.model.parameters())

    def _host_text(self, tokens: ClassTokens) -> torch.Tensor:
        ids, rows, order = tokens.on(self.host.parameter.device)
        if not (self.short_text and self.host.text.causal):
            return self.host.encode_text(ids)
        if len(tokens.groups) <= 1:
            short = self.host.encode_text_short(ids, tokens.groups[0][1])
            return short if short is not None else self.host.encode_text(ids)
        # Rows are independent, so each length group runs only as far as its own longest prompt
        # (the adapter cuts each group exactly); the rows are put back in order afterwards.
        parts = []
        for group_rows, (_, length) in zip(rows, tokens.groups):
            part = self.host.encode_text_short(ids[group_rows], length)
            if part is None:  # this host has no exact short path
                return self.host.encode_text(ids)
            parts.append(part)
        return torch.cat(parts)[order]

    def encode_text(self, classnames: Sequence[str], normalize: bool = False, *,
                    descriptions: Optional[Mapping[str, Sequence[str]]] = None) -> torch.Tensor:
        """Prompted class features ``(K, D)``.

        ``descriptions`` (default: :attr:`descriptions`), ``{class: [description, ...]}``: such a
        class is the mean of the L2-normalised prompted features of its descriptions, each prompted
        as a name is (``X X ... X <description>.``), in the same text pass as the other classes'
        names. The mean is not renormalised: the logits (``cosine_logits``) normalise it, as
        ``normalize=True`` does here.

        Where the text tower is causal and the adapter allows it, only the first ``L`` positions
        run (``L`` = last end-of-text position + 1): the same features as the full length, at a
        fraction of the cost. In evaluation under ``no_grad`` features are cached per class set,
        prompt state, host weights (their in-place version counters), autocast, dtype and device, so
        repeated evaluation batches do not re-encode the classes; after replacing host weights
        through ``.data``, call :meth:`clear_cache`.
        """
        self._check_wrapped()
        names = check_classnames(classnames)
        rows = description_rows(names, self.descriptions if descriptions is None else check_descriptions(descriptions))
        cacheable = not (self.training or torch.is_grad_enabled())
        key = None
        if cacheable:
            param = self.host.parameter
            key = (names, tuple(rows or ()), self._prompt_version(), self._host_version(), self._active,
                   torch.is_autocast_enabled(), param.dtype, param.device)
            hit = self._feature_cache.get(key)
            if hit is not None:
                return F.normalize(hit, dim=-1) if normalize else hit
        features = self._host_text(self._tokenized(names, rows))
        if rows is not None:
            features = average_rows(features, rows, len(names))
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

    def forward(self, frames: torch.Tensor, classnames: Sequence[str], *,
                descriptions: Optional[Mapping[str, Sequence[str]]] = None) -> torch.Tensor:
        """Logits ``(B, K)`` of videos ``(B, T, C, H, W)`` against prompted class names (distinct),
        or their descriptions (see :meth:`encode_text`)."""
        check_classnames(classnames, distinct=True)  # two classes of one name: two identical logits
        text = self.encode_text(classnames, descriptions=descriptions)
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
        for prompt_set in self._sets.values():  # every set's features came from the host's weights
            prompt_set.features.clear()

    # ------------------------------------------------------------------------------------- I/O

    def save_prompts(self, path: PathLike) -> None:
        """Write every prompt tensor, the hard prompt and the config to one ``.safetensors`` file."""
        from promptcouple.io import save_prompts

        save_prompts(self, path)

    def save_pretrained(self, directory: PathLike, **kwargs: Any) -> None:
        """Write ``directory/prompts.safetensors`` and its model card ``README.md``, the layout
        :meth:`from_pretrained` and the Hub read (as peft; :func:`promptcouple.hub.save_pretrained`)."""
        from promptcouple.hub import save_pretrained

        save_pretrained(self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the prompts with a model card to the Hugging Face Hub (:func:`promptcouple.hub.push_to_hub`)."""
        from promptcouple.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def merged(self) -> "PromptFile":  # noqa: F821
        """The prompts with the coupled context computed once: a plain prompt file (:mod:`promptcouple.merge`)."""
        from promptcouple.merge import merged

        return merged(self)

    def load_prompts(self, source: Union[PathLike, "PromptFile"]) -> None:  # noqa: F821
        """Load prompt tensors from a prompt file, checking every key and shape first."""
        from promptcouple.io import load_prompts_into

        load_prompts_into(self, source)
        self.clear_cache()

    @classmethod
    def from_pretrained(cls, model: nn.Module, source: Union[PathLike, str], *, hard_prompts: HardPrompts = None,
                        **kwargs: Any) -> "CouplingPromptWrapper":
        """Wrap ``model`` with the config, hard prompt and tensors of the prompt file ``source`` names:
        a file, a folder holding ``prompts.safetensors``, ``org/repo`` or ``hf-hub:org/repo[/file]``
        (:func:`promptcouple.hub.from_pretrained`)."""
        from promptcouple.hub import from_pretrained

        return from_pretrained(cls, model, source, hard_prompts=hard_prompts, **kwargs)

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
        self.clear_cache()
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
                f"coupled={self.prompts.coupled}, trainable={self.num_trainable_parameters():,}"
                + (f", prompts={self.active_prompts!r} of {list(self.prompt_sets)}" if len(self._sets) > 1 else ""))








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
