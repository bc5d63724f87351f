"""The frozen backbone a config names, and the prompt wrapper around it."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

import torch
from torch import nn

from promptcouple.adapters.capabilities import enable_grad_checkpointing, image_size_of
from promptcouple.fileio import PathLike
from promptcouple.train.config import ConfigError, TrainConfig
from promptcouple.train.distributed import is_main_process
from promptcouple.wrapper import CouplingPromptWrapper

logger = logging.getLogger(__name__)


def tiny_clip(image_size: int = 32, quick_gelu: bool = False):
    """A random tiny open_clip CLIP (embed 32, two layers per tower) for tests and smoke runs."""
    import open_clip

    if image_size % 8:
        raise ConfigError(f"data.image_size: the tiny model uses 8-pixel patches, got {image_size}")
    return open_clip.CLIP(
        embed_dim=32, quick_gelu=quick_gelu,
        vision_cfg=dict(image_size=image_size, patch_size=8, width=32, layers=2, head_width=16),
        text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=2),
    )


def build_host(cfg: TrainConfig) -> tuple[nn.Module, Any]:
    """The frozen backbone and its tokenizer (``None``: the wrapper's CLIP BPE default).

    Seeded with ``run.seed`` so random models (``tiny``) are identical on every rank and run.
    """
    m = cfg.model
    torch.manual_seed(cfg.run.seed)
    tokenizer = None
    if m.name in ("tiny", "tiny-quickgelu"):
        host = tiny_clip(cfg.data.image_size, quick_gelu=m.name == "tiny-quickgelu")
    elif m.name == "world":
        from promptcouple.world import load_world_clip

        loaded = load_world_clip()
        host, tokenizer = loaded if isinstance(loaded, tuple) else (loaded, None)
    else:
        host, tokenizer = _open_clip_host(m.name, m.pretrained)
    size = image_size_of(host)
    if size is not None and size != cfg.data.image_size:
        raise ConfigError(f"data.image_size: {cfg.data.image_size}, but model {m.name!r} takes {size}x{size} frames")
    if m.backbone_checkpoint is not None:
        from promptcouple.train.backbone import BackboneLoadError, load_backbone

        try:
            # A world backbone is the world CLIP fine-tuned (GELU, as its config says); every
            # other checkpoint read here descends from OpenAI's CLIP (QuickGELU).
            activation = "gelu" if m.name == "world" else "quick_gelu"
            report = load_backbone(host, m.backbone_checkpoint, trust=m.trust_checkpoint, activation=activation)
        except BackboneLoadError as err:
            raise ConfigError(f"model.backbone_checkpoint: {err}") from None
        if is_main_process():
            logger.info("%s", report)
    if m.grad_checkpointing and not enable_grad_checkpointing(host):
        raise ConfigError(f"model.grad_checkpointing: {type(host).__name__} has no gradient checkpointing switch "
                          "(set_grad_checkpointing); set model.grad_checkpointing: false")
    return host, tokenizer


def _open_clip_host(name: str, pretrained: Optional[str]) -> tuple[nn.Module, Any]:
    import open_clip

    if name not in open_clip.list_models():
        raise ConfigError(f"model.name: {name!r} is not an open_clip model, 'world' or 'tiny' "
                          f"(open_clip has e.g. ViT-B-16-quickgelu, ViT-B-32, ViT-L-14)")
    if pretrained == "openai" and "quickgelu" not in name.lower():
        raise ConfigError(f"model.name: {name!r} with pretrained: openai builds GELU blocks, but OpenAI's "
                          f"weights need QuickGELU (features off by ~1e-2 otherwise); use {name + '-quickgelu'!r}")
    try:
        host = open_clip.create_model(name, pretrained=pretrained)
    except Exception as err:  # download and checkpoint errors come in many types
        raise ConfigError(f"model: cannot create {name!r} with pretrained={pretrained!r}: {err}") from err
    return host, open_clip.get_tokenizer(name)


def build_wrapper(cfg: TrainConfig, device: Union[str, torch.device] = "cpu", *,
                  prompts: Optional[PathLike] = None):
    """The host, on ``device``, wrapped with prompts.

    Args:
        cfg: The run's config.
        device: Where the model goes.
        prompts: A prompt file to evaluate: its own config and hard prompt are used and its tensors
            loaded (the config's ``prompts`` section is then ignored). ``None``: fresh prompts as
            configured, initialised from ``run.seed``.

    Raises:
        ConfigError: Bad prompt settings, or a prompt file that is missing or does not fit the model.
    """
    if prompts is not None and not os.path.isfile(prompts):
        raise ConfigError(f"--prompts: {str(prompts)!r} does not exist")
    host, tokenizer = build_host(cfg)
    host = host.to(device)
    torch.manual_seed(cfg.run.seed)  # same prompt initialisation on every rank
    try:
        if prompts is not None:
            return CouplingPromptWrapper.from_pretrained(host, prompts, tokenizer=tokenizer,
                                                         host_train_mode=cfg.model.host_train_mode)
        return CouplingPromptWrapper(host, cfg.coupling_config(), hard_prompts=cfg.prompts.hard_prompts,
                                     tokenizer=tokenizer, host_train_mode=cfg.model.host_train_mode)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(f"{'--prompts' if prompts is not None else 'prompts'}: {err}") from err
