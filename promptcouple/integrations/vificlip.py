"""ViFi-CLIP's ``trainers/vificlip.py`` replaced by one import line in its ``main.py``.

``returnCLIP(config, logger, class_names)`` takes ViFi-CLIP's yacs config and returns a model its
loop drives unchanged: ``model(images)`` -> logits over the class names bound here, prompts only
trainable, a state dict its ``epoch_saving`` / ``load_checkpoint`` / auto-resume handle, usable
under DDP with ``find_unused_parameters=False`` and under mixed precision. What it reads:

* ``MODEL.ARCH``: the CLIP, built as ViFi-CLIP builds it (its ``clip`` package's ``_download`` and
  ``build_model``, so the same cache and file), with no prompts of its own, in fp32 (QuickGELU).
* ``TRAINER.ViFi_CLIP``: ``N_CTX_TEXT``, ``PROMPT_DEPTH_TEXT``, ``N_CTX_VISION``,
  ``PROMPT_DEPTH_VISION`` set the prompt sizes and depths; ``CTX_INIT`` initialises the text
  context where ViFi-CLIP uses it (``N_CTX_TEXT <= 4``); ``ZS_EVAL`` evaluates the frozen CLIP on
  the bare class names; ``PROMPT_MODEL: False`` (fine-tuning the whole CLIP) is refused.
* ``DATA.NUM_FRAMES``: frames per clip (the anchor clips are sampled with it).

GA2's own settings (hard prompt, anchors) come from ``$PROMPTCOUPLE_CONFIG``
(:mod:`promptcouple.integrations.settings`). So IVLP is ViFi-CLIP's prompting config as it is,
CoOp the same with ``PROMPT_DEPTH_TEXT: 1, N_CTX_VISION: 0, PROMPT_DEPTH_VISION: 0``, and GA2 either
of them with a hard prompt in the settings file.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from typing import Any, Optional, Sequence

import torch
from torch import nn

from promptcouple.config import CouplingConfig
from promptcouple.errors import ConfigError, InvalidInputError
from promptcouple.integrations.common import BoundPromptWrapper, anchor_loss
from promptcouple.integrations.settings import IntegrationSettings, load_settings

__all__ = ["returnCLIP", "anchor_loss", "prompt_config", "load_clip", "ViFiCLIPPrompted"]

# ViFi-CLIP's build_model makes its blocks insert prompts of their own when these are positive;
# the wrapper puts its prompts at the same positions, so the CLIP is built without them.
NO_OWN_PROMPTS = {"trainer": "ViFi_CLIP", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0, "language_ctx": 0}


def prompt_config(config: Any) -> CouplingConfig:
    """The prompt sizes ViFi-CLIP's ``TRAINER.ViFi_CLIP`` keys describe, as a :class:`CouplingConfig`."""
    t = config.TRAINER.ViFi_CLIP
    n_ctx, text_depth = int(t.N_CTX_TEXT), int(t.PROMPT_DEPTH_TEXT)
    if text_depth < 1:
        raise ConfigError(f"TRAINER.ViFi_CLIP.PROMPT_DEPTH_TEXT={text_depth}: the text context sits in layer 0, "
                          "so the depth is at least 1 (as ViFi-CLIP asserts)")
    if n_ctx < 1:
        raise ConfigError(f"TRAINER.ViFi_CLIP.N_CTX_TEXT={n_ctx}: prompts need at least one text context token "
                          "(ViFi-CLIP's prompting configs use 16)")
    n_vision, vision_depth = int(t.N_CTX_VISION), int(t.PROMPT_DEPTH_VISION)
    if n_vision == 0 or vision_depth == 0:  # ViFi-CLIP then inserts no vision prompts at all
        n_vision = vision_depth = 0
    # ViFi-CLIP initialises the context from CTX_INIT only when N_CTX_TEXT <= 4, else randomly.
    ctx_init = t.CTX_INIT if t.CTX_INIT and n_ctx <= 4 else None
    return CouplingConfig(n_ctx=n_ctx, text_depth=text_depth, n_vision_ctx=n_vision, vision_depth=vision_depth,
                          ctx_init=ctx_init)


class ViFiCLIPPrompted(BoundPromptWrapper):
    """ViFi-CLIP's model contract on a wrapped CLIP: ``model(images (B, T, 3, H, W))`` -> ``(B, K)``."""

    def __init__(self, *args: Any, zero_shot: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.zero_shot = zero_shot
        self._zero_shot_text: dict = {}  # the frozen tower's class features, by device: computed once

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.zero_shot:
            return self.bound_logits(images)
        # ZS_EVAL: the frozen CLIP on the bare class names, as ViFi-CLIP's zero-shot evaluation.
        text = self._zero_shot_text.get(self.device)
        if text is None:
            text = self._zero_shot_text[self.device] = self.encode_frozen_text(self.class_names)
        with self.prompts_disabled():
            video, context = self.encode_video(images, return_tokens=True)
        return self.logits(video, text, context)


def returnCLIP(config: Any, logger: Optional[logging.Logger] = None, class_names: Optional[Sequence[str]] = None,
               *, settings: Any = None, clip_model: Optional[nn.Module] = None) -> ViFiCLIPPrompted:  # noqa: N802
    """ViFi-CLIP's ``returnCLIP``: the prompt-tuned model for ``class_names``, from its yacs ``config``.

    Args:
        config: ViFi-CLIP's config (``MODEL``, ``DATA``, ``TRAINER.ViFi_CLIP``).
        logger: Its logger (``None``: this module's).
        class_names: The class names, in label order (their ``main.py`` passes ``train_data.classes``').
        settings: GA2 settings (a YAML path, a dict or :class:`IntegrationSettings`); default
            ``$PROMPTCOUPLE_CONFIG``, or none.
        clip_model: An OpenAI-layout CLIP to use instead of building one from ``MODEL.ARCH``.

    Raises:
        ConfigError: A config that is not a prompting config, or settings that do not fit.
        InvalidInputError: No class names, or fewer than 5 (their validation takes the top 5).
    """
    log = logger if logger is not None else logging.getLogger(__name__)
    if class_names is None:
        raise InvalidInputError("returnCLIP needs class_names (ViFi-CLIP's main.py passes the training set's "
                                "class names: [name for _, name in train_data.classes])")
    class_names = list(class_names)
    if len(class_names) < 5:
        raise InvalidInputError(f"{len(class_names)} class names: ViFi-CLIP's validate takes the top 5 classes, "
                                "so it needs at least 5")
    t = config.TRAINER.ViFi_CLIP
    zero_shot = bool(getattr(t, "ZS_EVAL", False))
    if not zero_shot and not t.PROMPT_MODEL:
        raise ConfigError(f"TRAINER.ViFi_CLIP.PROMPT_MODEL is False: ViFi-CLIP would fine-tune the CLIP "
                          f"({t.USE!r}), which promptcouple does not do; use a prompting config "
                          "(PROMPT_MODEL: True) or ViFi-CLIP's own trainers.vificlip for fine-tuning")
    settings = load_settings(settings)
    if settings.prompts:
        raise ConfigError(f"{settings.source}: 'prompts:' is for X-CLIP; in ViFi-CLIP the prompt sizes are "
                          "TRAINER.ViFi_CLIP's N_CTX_TEXT / PROMPT_DEPTH_TEXT / N_CTX_VISION / PROMPT_DEPTH_VISION")
    coupling = settings.coupling_config(prompt_config(config))
    if clip_model is None:
        log.info(f"Loading CLIP (backbone: {config.MODEL.ARCH})")
        clip_model = load_clip(config.MODEL.ARCH)
    hard = hard_prompt(settings)
    model = ViFiCLIPPrompted(clip_model.float(), class_names, coupling, settings=settings, hard_prompts=hard,
                             num_frames=int(config.DATA.NUM_FRAMES), zero_shot=zero_shot)
    log.info(f"promptcouple: {coupling} coupled={model.prompts.coupled} anchors="
             f"{settings.anchors is not None} (settings: {settings.source})")
    names = [n for n, _ in model.named_trainable_parameters()]
    log.info(f"Parameters to be updated: {names}")
    log.info(f"Total learnable items: {len(names)} ({model.num_trainable_parameters():,} parameters)")
    return model


def hard_prompt(settings: IntegrationSettings) -> Any:
    """The settings' hard prompt: a prompt file path as is, a GA2-CLIP ``.pth`` converted to its context."""
    if settings.hard_prompt is None or settings.hard_prompt.endswith(".safetensors"):
        return settings.hard_prompt
    from promptcouple.convert import convert_checkpoint

    return convert_checkpoint(settings.hard_prompt, trust=settings.trust).effective_context()


def _their_clip() -> Any:
    """ViFi-CLIP's (or GA2-CLIP's) ``clip.clip`` module when importable: ``build_model`` takes ``design_details``."""
    try:
        module = importlib.import_module("clip.clip")
    except ImportError:
        return None
    build = getattr(module, "build_model", None)
    if build is None or not hasattr(module, "_MODELS") or not hasattr(module, "_download"):
        return None
    return module if "design_details" in inspect.signature(build).parameters else None


def load_clip(arch: str) -> nn.Module:
    """The CLIP of ``MODEL.ARCH`` (``"ViT-B/16"``) in fp32, built as ViFi-CLIP builds it where its ``clip``
    package is importable (same cache, same file); else OpenAI's ``clip`` package; else open_clip's
    QuickGELU model with OpenAI's weights."""
    theirs = _their_clip()
    if theirs is not None:
        if arch not in theirs._MODELS:
            raise ConfigError(f"MODEL.ARCH={arch!r}: ViFi-CLIP's clip package knows {sorted(theirs._MODELS)}")
        path = theirs._download(theirs._MODELS[arch])
        try:  # OpenAI's files are TorchScript archives; a plain state dict is read as one
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                state = torch.jit.load(path, map_location="cpu").eval().state_dict()
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, whatever the torch version
        return theirs.build_model(dict(state), dict(NO_OWN_PROMPTS)).float()
    try:
        import clip as openai_clip  # OpenAI's package

        if hasattr(openai_clip, "load") and hasattr(openai_clip, "available_models"):
            return openai_clip.load(arch, device="cpu", jit=False)[0].float()
    except ImportError:
        pass
    import open_clip

    name = arch.replace("/", "-").replace("@", "-") + "-quickgelu"  # OpenAI's weights need QuickGELU
    return open_clip.create_model(name, pretrained="openai").float()
