"""What wrapping changes on the host besides the hooks, and how ``unwrap()`` gives it back.

Wrapping freezes the host (``requires_grad`` off, but for the ``train_host`` modules) and, unless the
wrapper was built with ``host_train_mode=True``, keeps every frozen module in evaluation mode
whatever mode it is asked for: prompt tuning must not update a BatchNorm's running statistics or
act with the frozen towers' dropout and stochastic depth, or the unwrapped host would no longer
compute what it computed before. The host's own ``train`` is replaced (an instance attribute,
removed by :meth:`HostState.restore`), so that ``wrapper.train()``, ``host.train()`` and a user's
outer model calling ``.train()`` on either every epoch all keep the frozen parts in evaluation mode.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

from torch import nn

from promptcouple.errors import InvalidInputError, InvalidTypeError


def frozen_train(train_host: tuple[str, ...], host: nn.Module, mode: bool = True) -> nn.Module:
    """The wrapped host's ``train(mode)``: frozen modules in evaluation mode, ``train_host`` modules
    following ``mode``."""
    if not isinstance(mode, bool):
        raise InvalidTypeError(f"train(mode): mode must be True or False, got {mode!r}")
    type(host).train(host, False)  # the class's own train: a host that overrides it still gets its logic
    for name in train_host:
        host.get_submodule(name).train(mode)
    for module in host.modules():
        # Hugging Face blocks recompute in backward only when their own flag says training
        # (``if self.gradient_checkpointing and self.training``); that flag gates nothing else in
        # those modules (their dropout lives in submodules), so it follows the mode and the
        # memory saving stays while the dropout inside stays off.
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = mode
    return host


class HostState:
    """The host's ``requires_grad`` flags and per-module training flags as given, restored by unwrap.

    Args:
        host: The model being wrapped.
        train_host: Names of host submodules that train beside the prompts.
        host_train_mode: Keep the old behaviour: the frozen host follows the wrapper's mode.
    """

    def __init__(self, host: nn.Module, train_host: Sequence[str], host_train_mode: bool) -> None:
        self.host = host
        self.train_host = tuple(train_host)
        self.host_train_mode = bool(host_train_mode)
        self.requires_grad = {name: p.requires_grad for name, p in host.named_parameters()}
        self.modes = {name: m.training for name, m in host.named_modules()}
        self.own_train = host.__dict__.get("train")  # a host's own instance-level train, put back by restore

    def freeze(self) -> None:
        """``requires_grad`` off but for the ``train_host`` modules; frozen modules in evaluation mode."""
        for name in self.train_host:  # checked before anything changes: a refused wrap leaves the host alone
            try:
                self.host.get_submodule(name)
            except AttributeError:
                raise InvalidInputError(f"train_host: the host has no submodule {name!r}") from None
        self.host.requires_grad_(False)
        for name in self.train_host:
            self.host.get_submodule(name).requires_grad_(True)
        if self.host_train_mode:
            return
        self.host.train = partial(frozen_train, self.train_host, self.host)
        # The train_host modules keep the mode they were given until the wrapper's mode is set.
        kept = {f"{name}.{sub}".rstrip("."): m.training for name in self.train_host
                for sub, m in self.host.get_submodule(name).named_modules()}
        type(self.host).train(self.host, False)
        for name, module in self.host.named_modules():
            if name in kept:
                module.training = kept[name]

    def restore(self) -> None:
        """Every ``requires_grad`` and training flag as given, and the host's own ``train`` back."""
        self.host.__dict__.pop("train", None)
        if self.own_train is not None:
            self.host.train = self.own_train
        for name, p in self.host.named_parameters():
            p.requires_grad_(self.requires_grad.get(name, p.requires_grad))
        for name, module in self.host.named_modules():
            module.training = self.modes.get(name, module.training)
