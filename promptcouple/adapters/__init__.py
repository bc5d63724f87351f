"""Host adapters: recognise a CLIP-style model and describe where the prompt hooks go."""

from __future__ import annotations

import torch
from torch import nn

from promptcouple.adapters.base import HostSpec, UnsupportedHostError
from promptcouple.adapters.open_clip import is_open_clip, open_clip_spec
from promptcouple.adapters.openai import is_openai_layout, openai_spec

__all__ = ["HostSpec", "UnsupportedHostError", "resolve_host", "clip_core"]


def clip_core(model: nn.Module) -> nn.Module:
    """The CLIP inside a video model: the model itself, or its ``.clip`` (X-CLIP style hosts)."""
    inner = getattr(model, "clip", None)
    return inner if isinstance(inner, nn.Module) and not hasattr(model, "token_embedding") else model


def resolve_host(model: nn.Module) -> HostSpec:
    """Describe ``model``'s hook points, or say clearly why it cannot be wrapped."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedHostError("TorchScript models (jit=True) cannot be hooked; load the model with jit=False")
    core = clip_core(model)
    if isinstance(core, torch.jit.ScriptModule):
        raise UnsupportedHostError("TorchScript models (jit=True) cannot be hooked; load the model with jit=False")
    if is_open_clip(core):
        return open_clip_spec(core)
    if is_openai_layout(core):
        return openai_spec(core)
    raise UnsupportedHostError(
        f"{type(model).__name__} is neither an open_clip CLIP nor a model in the OpenAI CLIP layout "
        "(token_embedding, transformer.resblocks as nn.Sequential, visual.ln_pre); nothing to hook")
