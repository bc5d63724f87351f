"""Named prompt sets on one wrapped host, as peft's named adapters: add, switch, delete.

One backbone stays in memory and hooked once; each set keeps its own tensors (a
:class:`~promptcouple.prompts.PromptLearner` with its config and hard prompt), its class prompts
and token ids, its cached class features and its class descriptions (a file's own, those it was
trained and evaluated with). The active set is the wrapper's registered
``prompts`` module, so ``state_dict()``, ``named_trainable_parameters()`` (``prompts.*``), the
optimizer and prompt files see exactly one set, as with a single set; the others live outside the
module tree and follow ``.to()`` / ``.half()`` through :meth:`PromptSets._apply`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from promptcouple.classnames import ClassPrompts
from promptcouple.config import CouplingConfig
from promptcouple.errors import InvalidInputError, InvalidTypeError, PromptFileError
from promptcouple.prompts import HardPrompts, PromptLearner

DEFAULT_SET = "default"


@dataclass
class PromptSet:
    """One named set: its tensors, its class prompts (token ids cached per class set), its class
    features cached for evaluation and its class descriptions (``wrapper.descriptions`` while active)."""

    prompts: PromptLearner
    class_prompts: ClassPrompts
    features: dict = field(default_factory=dict)
    descriptions: Optional[dict[str, tuple[str, ...]]] = None


class PromptSets:
    """The prompt-set methods of :class:`promptcouple.wrapper.CouplingPromptWrapper` (a mixin: it
    holds ``prompts``, ``_class_prompts``, ``_feature_cache``, ``_sets`` and ``_active_set``)."""

    @property
    def active_prompts(self) -> str:
        """The name of the prompt set the wrapper runs, trains and saves (the first is ``"default"``)."""
        return self._active_set

    @property
    def prompt_sets(self) -> tuple[str, ...]:
        """The names of every prompt set, in the order they were added."""
        return tuple(self._sets)

    def add_prompts(self, name: str, source: Union[str, os.PathLike, CouplingConfig, "PromptFile"], *,  # noqa: F821
                    hard_prompts: HardPrompts = None) -> None:
        """Add a named prompt set; the active set stays active (switch with :meth:`set_prompts`).

        Args:
            name: A new name.
            source: A prompt file (path or loaded ``PromptFile``): its config, hard prompt,
                tensors and the class descriptions it records; or a :class:`CouplingConfig`: a new
                trainable set, initialised as a new wrapper's would be.
            hard_prompts: With a config, the hard prompt the new set is coupled to; with a file
                converted without its hard prompt, that hard prompt.
        """
        from promptcouple.io import PromptFile, load_prompts_into, read_prompt_file, recorded_descriptions

        self._check_wrapped()
        if not (isinstance(name, str) and name.strip()):
            raise InvalidInputError(f"add_prompts: the name must be a non-empty string, got {name!r}")
        if name in self._sets:
            raise InvalidInputError(f"add_prompts: a prompt set named {name!r} exists already; "
                                    f"delete_prompts({name!r}) first, or choose another name")
        if self.train_host:
            raise InvalidInputError(
                f"add_prompts: this wrapper trains host modules {list(self.train_host)} (train_host), which every "
                "prompt set would share; keep one prompt set per wrapper with train_host")
        if isinstance(source, CouplingConfig):
            self._sets[name] = self._prompt_set(source, hard_prompts)
            return
        if isinstance(source, (str, os.PathLike)):
            source = read_prompt_file(source)
        if not isinstance(source, PromptFile):
            raise InvalidTypeError(f"add_prompts: source must be a prompt file path, a PromptFile or a "
                                   f"CouplingConfig, got {type(source).__name__}")
        if source.coupled and hard_prompts is None:
            hard_prompts = source.tensors.get("text.hard")
            if hard_prompts is None:
                raise PromptFileError(f"add_prompts({name!r}): the file was trained with a hard prompt that it does "
                                      "not contain (converted from a GA2-CLIP checkpoint?); pass hard_prompts=")
        new = self._prompt_set(source.config, hard_prompts if source.coupled else None)
        new.descriptions = recorded_descriptions(source)
        self._sets[name] = new
        previous = self._active_set
        try:  # load through the one checked path, with the new set active for a moment
            self._switch(name)
            load_prompts_into(self, source)
        except BaseException:
            self._switch(previous)
            del self._sets[name]
            raise
        self._switch(previous)

    def set_prompts(self, name: str) -> None:
        """Make the named set the one the wrapper runs, trains and saves (the hooks stay as they are)."""
        self._check_wrapped()
        self._require(name, "set_prompts")
        self._switch(name)

    def delete_prompts(self, name: str) -> None:
        """Remove a prompt set that is not the active one."""
        self._require(name, "delete_prompts")
        if name == self._active_set:
            raise InvalidInputError(f"delete_prompts: {name!r} is the active prompt set; switch to another first "
                                    f"(set_prompts(...), one of {[n for n in self._sets if n != name]})")
        del self._sets[name]

    # ----------------------------------------------------------------------------- internals

    def _require(self, name: Any, verb: str) -> None:
        if name not in self._sets:
            raise InvalidInputError(f"{verb}: no prompt set named {name!r}; the sets are {list(self._sets)}")

    def _switch(self, name: str) -> None:
        """Swap the named set in as ``prompts`` (a registered module), its class prompts and cache."""
        chosen = self._sets[name]
        chosen.prompts.train(self.training)
        self.prompts = chosen.prompts
        self._class_prompts = chosen.class_prompts
        self._feature_cache = chosen.features
        self._active_set = name

    def _inactive_prompts(self) -> list[PromptLearner]:
        return [s.prompts for n, s in self._sets.items() if n != self._active_set]

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .half(), ... reach the registered (active) set through the module tree;
        # the others are moved alike, so that a switch never finds a set on another device.
        super()._apply(fn, recurse)
        if recurse and "_sets" in self.__dict__:
            for prompts in self._inactive_prompts():
                prompts._apply(fn)
        return self
