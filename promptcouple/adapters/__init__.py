"""Host adapters: recognise a CLIP-style model and describe where its prompts go.

One file per host family; :func:`register_host` adds a family (first match wins, newest first),
:func:`resolve_host` finds the adapter for a model or says what is missing.
"""

from __future__ import annotations

from typing import Type

import torch
from torch import nn

from promptcouple.adapters.base import HostAdapter, TextSite, UnsupportedHostError, VisionSite
from promptcouple.adapters.open_clip import OpenClipAdapter
from promptcouple.adapters.openai import OpenAIAdapter
from promptcouple.adapters.video import ClipVideoModelAdapter
from promptcouple.errors import InvalidTypeError

__all__ = ["HostAdapter", "TextSite", "VisionSite", "UnsupportedHostError", "register_host", "resolve_host",
           "registered_hosts"]

_REGISTRY: list[Type[HostAdapter]] = []


def register_host(adapter: Type[HostAdapter]) -> Type[HostAdapter]:
    """Add a host family; usable as a class decorator. Later registrations are tried first, so a
    user's adapter can take over a family the package also serves."""
    if not (isinstance(adapter, type) and issubclass(adapter, HostAdapter)):
        raise InvalidTypeError(f"register_host takes a HostAdapter subclass, got {adapter!r}")
    if adapter in _REGISTRY:
        _REGISTRY.remove(adapter)
    _REGISTRY.insert(0, adapter)
    return adapter


def registered_hosts() -> list[Type[HostAdapter]]:
    """The registered adapters, in the order they are tried."""
    return list(_REGISTRY)


def resolve_host(model: nn.Module) -> HostAdapter:
    """The adapter for ``model``, or an :class:`UnsupportedHostError` naming the family and what is missing."""
    if isinstance(model, torch.jit.ScriptModule) or isinstance(getattr(model, "clip", None), torch.jit.ScriptModule):
        raise UnsupportedHostError("TorchScript models (jit=True) cannot be hooked; load the model with jit=False")
    if not isinstance(model, nn.Module):
        raise UnsupportedHostError(f"expected a torch nn.Module, got {type(model).__name__}")
    for adapter in _REGISTRY:
        if adapter.claims(model):
            return adapter(model)
    families = ", ".join(a.family for a in reversed(_REGISTRY))
    raise UnsupportedHostError(
        f"{type(model).__module__}.{type(model).__name__} is not a host family promptcouple knows "
        f"(served: {families}); it needs a token embedding and transformer blocks in both towers. "
        "Describe it with a HostAdapter subclass and pc.register_host(...)")


def _register_builtin() -> None:
    # Tried last to first: specific families before the generic layouts they resemble.
    for adapter in (OpenAIAdapter, OpenClipAdapter, ClipVideoModelAdapter):
        register_host(adapter)
    from promptcouple.adapters import optional  # families whose libraries may be absent

    optional.register_all(register_host)


_register_builtin()
