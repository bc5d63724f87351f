"""What the wrapper needs to know about a host: where prompts enter, and in which layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn


class UnsupportedHostError(TypeError):
    """The model cannot be patched by hooks (TorchScript, HF/timm towers, non-ViT image towers...)."""


@dataclass
class HostSpec:
    """The hook points of one host model and the callables that run its towers.

    Attributes:
        kind: Short name of the layout, e.g. "open_clip" or "openai".
        core: The CLIP module that owns both towers (the host itself, or ``host.clip``).
        token_embedding: Its output ``(N, L, D)`` gets the layer-0 text context.
        text_blocks: Residual blocks of the text transformer (deep text prompts).
        text_seq_first: Whether the text blocks take ``(L, N, D)``.
        vision_ln_pre: Its input ``(N, L, D)`` gets the appended vision prompts.
        vision_transformer: Its output loses the trailing prompt tokens.
        vision_blocks: Residual blocks of the image transformer (deep vision prompts).
        vision_seq_first: Whether the vision blocks take ``(L, N, D)``.
        vision_io_seq_first: Whether ``vision_transformer`` returns ``(L, N, D)``.
        text_width, vision_width: Token widths of the towers.
        context_length: Text sequence length the host was built for.
        encode_text: The host's own text path (full length).
        encode_image: The host's own image path.
        encode_text_short: An exact text path that runs on ``ids[:, :L]`` (``None``: not possible).
        intermediates_owners: Modules whose ``forward_intermediates`` bypasses the hooks.
    """

    kind: str
    core: nn.Module
    token_embedding: nn.Module
    text_blocks: Sequence[nn.Module]
    text_seq_first: bool
    vision_ln_pre: nn.Module
    vision_transformer: nn.Module
    vision_blocks: Sequence[nn.Module]
    vision_seq_first: bool
    vision_io_seq_first: bool
    text_width: int
    vision_width: int
    context_length: int
    encode_text: Callable[[torch.Tensor], torch.Tensor]
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    encode_text_short: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    intermediates_owners: Sequence[nn.Module] = ()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.core.logit_scale
