"""The prompt tensors: soft text context, its coupling with a frozen hard prompt, and deep prompts.

Everything trainable lives in one module, apart from the host, so the host's state dict keys,
``isinstance`` checks and dtype helpers are untouched.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from promptcouple.config import CouplingConfig
from promptcouple.errors import InvalidTypeError, PromptFileError
from promptcouple.fileio import PathLike

HardPrompts = Union[None, PathLike, torch.Tensor, "PromptFile"]  # noqa: F821 (io.PromptFile)


def coupled_context(hard: torch.Tensor, soft: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The coupled text context ``ReLU(Linear([hard; soft]))`` (before dropout), row by row.

    The one definition of the coupling: the training forward, the context evaluation sees and a
    prompt file's context all compute it here.
    """
    pair = torch.cat([hard.expand_as(soft), soft], dim=-1)
    return F.relu(F.linear(pair, weight, bias))


class PromptLearner(nn.Module):
    """All prompt tensors of one wrapped model.

    Attributes:
        ctx: Soft text context ``(n_ctx, d_text)``, layer 0.
        text_deep: ``text_depth - 1`` tensors ``(n_ctx, d_text)`` for text layers ``1..text_depth-1``.
        vision_ctx: ``(n_vision_ctx, d_vision)`` tokens appended before ``ln_pre`` (or ``None``).
        vision_deep: tensors for vision layers ``1..vision_depth-1``.
        hard: The frozen hard prompt ``(n_ctx, d_text)``, a persistent buffer (or ``None``).
        coupling: ``Linear(2 d_text -> d_text)`` mapping ``[hard; soft]`` (only with a hard prompt).
    """

    def __init__(self, config: CouplingConfig, text_width: int, vision_width: int,
                 ctx_init: Optional[torch.Tensor] = None, hard: Optional[torch.Tensor] = None):
        super().__init__()
        self.config = config
        n, std = config.n_ctx, config.init_std

        def param(rows: int, width: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(rows, width) * std)

        self.ctx = nn.Parameter(ctx_init.detach().clone().float()) if ctx_init is not None else param(n, text_width)
        self.text_deep = nn.ParameterList([param(n, text_width) for _ in range(config.text_depth - 1)])
        if config.has_vision_prompts:
            self.vision_ctx = param(config.n_vision_ctx, vision_width)
            self.vision_deep = nn.ParameterList([param(config.n_vision_ctx, vision_width)
                                                 for _ in range(config.vision_depth - 1)])
        else:
            self.vision_ctx = None
            self.vision_deep = nn.ParameterList()
        if hard is not None:
            self.register_buffer("hard", hard.detach().clone().float())
            self.coupling = nn.Linear(2 * text_width, text_width)
            self.coupling_dropout = nn.Dropout(config.dropout)
        else:
            self.hard = None
            self.coupling = None

    @property
    def coupled(self) -> bool:
        return self.coupling is not None

    def text_context(self, rows: int) -> torch.Tensor:
        """The layer-0 text context for ``rows`` prompts: ``(rows, n_ctx, d_text)``.

        With a hard prompt each row is coupled separately, so in training every class gets its own
        dropout mask, as in the reference code.
        """
        soft = self.ctx.unsqueeze(0).expand(rows, -1, -1)
        if not self.coupled:
            return soft
        return self.coupling_dropout(coupled_context(self.hard, soft, self.coupling.weight, self.coupling.bias))

    @torch.no_grad()
    def effective_context(self) -> torch.Tensor:
        """The layer-0 context as evaluation sees it (no dropout): ``(n_ctx, d_text)``.

        This is what another model takes as its hard prompt.
        """
        if not self.coupled:
            return self.ctx.detach().clone()
        return coupled_context(self.hard, self.ctx, self.coupling.weight, self.coupling.bias).detach().clone()


def resolve_hard_prompts(hard: HardPrompts, shape: tuple[int, int]) -> Optional[torch.Tensor]:
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
