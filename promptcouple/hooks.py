"""The forward hooks that put the prompts into the host, registered once at the adapter's sites.

* text embedding output: the placeholder positions become the coupled text context;
* text block ``i`` (pre-hook), ``1 <= i < text_depth``: the same positions become layer ``i``'s tokens;
* vision insert site: ``n_vision_ctx`` tokens join the sequence (last, or after the prefix tokens);
* vision block ``i`` (pre-hook), ``1 <= i < vision_depth``: those tokens are replaced;
* vision strip site: the prompt tokens leave again, so any pooling works.

Each hook reads the wrapper's active prompt set (``prompts``, ``config``, ``_ctx_start``) when it
runs, and does nothing while prompts are disabled. Replacing a slice is idempotent and never in
place, so gradient checkpointing may recompute a block in backward and see the same input again.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from promptcouple.adapters.base import hidden_states, map_sequence
from promptcouple.errors import RunError


class PromptHooks:
    """The hooks of :class:`promptcouple.wrapper.CouplingPromptWrapper` (a mixin: it holds ``host``,
    ``prompts``, ``config``, ``_ctx_start`` and ``_active``)."""

    def _register_hooks(self) -> list:
        """Hooks at every site any prompt set could need (every text block, and the whole vision
        path where the host has one): a set of another depth is then switched in without touching
        the host, and a hook past the active set's depth returns at once."""
        text, vision = self.host.text, self.host.vision
        handles = [text.embedding.register_forward_hook(self._text_context_hook)]
        for layer in range(1, len(text.blocks)):
            hook = partial(self._text_deep_hook, layer)
            handles.append(text.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
        if vision is not None:
            if vision.insert_on == "input":
                handles.append(vision.insert.register_forward_pre_hook(self._vision_insert_pre_hook, with_kwargs=True))
            else:
                handles.append(vision.insert.register_forward_hook(self._vision_insert_post_hook))
            for layer in range(0 if self.host.needs_block_adjustment else 1, len(vision.blocks)):
                hook = partial(self._vision_deep_hook, layer)
                handles.append(vision.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
            if vision.strip_on == "input":
                handles.append(vision.strip.register_forward_pre_hook(self._vision_strip_pre_hook, with_kwargs=True))
            else:
                handles.append(vision.strip.register_forward_hook(self._vision_strip_post_hook))
        return handles

    # Each hook replaces a slice and returns a new tensor (never in place), so that a block that
    # gradient checkpointing recomputes sees exactly the same input again.

    def _text_context_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> Optional[torch.Tensor]:
        if not self._active:
            return None
        s, n = self._ctx_start, self.config.n_ctx
        ctx = self.prompts.text_context(out.shape[0]).to(out.dtype)
        return torch.cat([out[:, :s], ctx, out[:, s + n:]], dim=1)

    def _text_deep_hook(self, layer: int, module: nn.Module, args: tuple, kwargs: dict):
        if not self._active or layer >= self.config.text_depth:
            return None
        x, rebuild = hidden_states(args, kwargs)
        s, n = self._ctx_start, self.config.n_ctx
        p = self.prompts.text_deep[layer - 1].to(x.dtype)
        return rebuild(replace_positions(x, s, s + n, p, self.host.text.seq_first))

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

    def _vision_prompted(self) -> bool:
        return self._active and self.config.has_vision_prompts

    def _vision_insert_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if not self._vision_prompted():
            return None
        x, rebuild = hidden_states(args, kwargs)
        return rebuild(self._insert(x))

    def _vision_insert_post_hook(self, module: nn.Module, args: tuple, out: Any):
        if not self._vision_prompted():
            return None
        return map_sequence(out, self._insert)

    def _vision_deep_hook(self, layer: int, module: nn.Module, args: tuple, kwargs: dict):
        if not self._vision_prompted():
            return None
        adjust = self.host.needs_block_adjustment
        if adjust:
            args, kwargs = self.host.adjust_block(args, kwargs, self.config.n_vision_ctx)
        if not 1 <= layer < self.config.vision_depth:
            return (args, kwargs) if adjust else None
        x, rebuild = hidden_states(args, kwargs)
        seq_first = self.host.vision.seq_first
        a, b = self._vision_slice(x.shape[0 if seq_first else 1])
        p = self.prompts.vision_deep[layer - 1].to(x.dtype)
        return rebuild(replace_positions(x, a, b, p, seq_first))

    def _strip(self, x: torch.Tensor) -> torch.Tensor:
        seq_first = self.host.vision.strip_seq_first
        length = x.shape[0 if seq_first else 1]
        a, b = self._vision_slice(length)
        if b == length:  # prompts last: a view, no copy
            return x[:a] if seq_first else x[:, :a]
        return torch.cat([x[:a], x[b:]], dim=0) if seq_first else torch.cat([x[:, :a], x[:, b:]], dim=1)

    def _vision_strip_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if not self._vision_prompted():
            return None
        x, rebuild = hidden_states(args, kwargs)
        return rebuild(self._strip(x))

    def _vision_strip_post_hook(self, module: nn.Module, args: tuple, out: Any):
        if not self._vision_prompted():
            return None
        return map_sequence(out, self._strip)


def replace_positions(x: torch.Tensor, a: int, b: int, tokens: torch.Tensor, seq_first: bool) -> torch.Tensor:
    """``x`` with sequence positions ``a:b`` replaced by ``tokens`` ``(b - a, D)``, the same for every row.

    A new tensor, never an in-place write: a block that gradient checkpointing recomputes must see
    the same input again.
    """
    if seq_first:
        return torch.cat([x[:a], tokens.unsqueeze(1).expand(-1, x.shape[1], -1), x[b:]], dim=0)
    return torch.cat([x[:, :a], tokens.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, b:]], dim=1)


def refuse_intermediates(owner: str, *args: Any, **kwargs: Any):
    raise RunError(
        f"{owner}.forward_intermediates calls the blocks directly, so the prompt hooks cannot strip "
        "their tokens and the output would silently hold extra tokens; use the wrapper's "
        "encode_video/encode_text, or unwrap() first")
