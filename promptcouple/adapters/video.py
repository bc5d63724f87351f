"""Video models that hold a CLIP as ``.clip`` and define ``encode_video`` (X-CLIP style, ours included).

The prompt sites are the inner CLIP's; the video path and the per-video class features are the
model's own (``encode_video(frames, return_tokens=True)`` and ``specialize_text(text, tokens)``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from promptcouple.adapters.base import HostAdapter, first_tensor


class ClipVideoModelAdapter(HostAdapter):
    """A video model around a CLIP: ``model.clip`` is served by its own adapter."""

    kind = "clip_video_model"
    family = "video model with a .clip"

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        return (isinstance(getattr(model, "clip", None), nn.Module) and hasattr(model, "encode_video")
                and not hasattr(model, "token_embedding"))

    def __init__(self, model: nn.Module) -> None:
        from promptcouple.adapters import resolve_host

        super().__init__(model)
        self.inner = resolve_host(model.clip)
        self.text, self.vision, self.vision_refusal = self.inner.text, self.inner.vision, self.inner.vision_refusal
        self.needs_block_adjustment = self.inner.needs_block_adjustment  # rotary inner CLIPs (EVA02)
        self.kind = f"{self.inner.kind}+video"

    @property
    def video_specific(self) -> bool:  # type: ignore[override]
        return hasattr(self.model, "specialize_text")

    def adjust_block(self, args: tuple, kwargs: dict, n_prompts: int) -> tuple[tuple, dict]:
        return self.inner.adjust_block(args, kwargs, n_prompts)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.model.encode_text(ids)) if hasattr(self.model, "encode_text") else self.inner.encode_text(ids)

    def encode_text_short(self, ids: torch.Tensor, length: Optional[int] = None) -> Optional[torch.Tensor]:
        return self.inner.encode_text_short(ids, length)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_image(images)

    def encode_video(self, frames: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if self.video_specific:
            return self.model.encode_video(frames, return_tokens=True)
        return first_tensor(self.model.encode_video(frames)), None

    def specialize_text(self, text: torch.Tensor, context: Any) -> torch.Tensor:
        return self.model.specialize_text(text, context) if self.video_specific and context is not None else text

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.inner.logit_scale

    @property
    def logit_bias(self) -> Optional[torch.Tensor]:
        return self.inner.logit_bias

    def default_tokenizer(self) -> Any:
        return self.inner.default_tokenizer()

    def intermediates_owners(self) -> Sequence[nn.Module]:
        return self.inner.intermediates_owners()
