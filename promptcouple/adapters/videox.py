"""Video CLIPs released as copies of the OpenAI layout: X-CLIP (microsoft/VideoX) and the copies
inside ViFi-CLIP and GA2-CLIP.

X-CLIP as released subclasses OpenAI's ``CLIP`` (no ``.clip``). Its prompt sites are the OpenAI
ones: its cross-frame blocks add their message token after every token they are given, the
prompts included, and drop it again inside the block. What differs is the video path, which the
adapter composes from the host's own modules exactly as the host's ``forward(image, text)`` does:
``encode_video`` gives the MIT video feature and the per-frame patch tokens, and the class
features are shifted per video by ``prompts_generator`` over the patch tokens averaged over time.
Its text cache (``use_cache=True``, X-CLIP's ``FIX_TEXT``) encodes the text once under
``no_grad``: prompted text would get no gradient and keep its first value, so it is switched off
and emptied while wrapped.

ViFi-CLIP's and GA2-CLIP's copies are served by the OpenAI adapter (GA2-CLIP's ``encode_text``
returns ``(features, tokens)``; the base adapter takes the features), unless they were built with
prompts of their own (``design_details`` depths > 0): those are refused here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from promptcouple.adapters.base import UnsupportedHostError
from promptcouple.adapters.openai import OpenAIAdapter, has_openai_layout
from promptcouple.errors import InvalidInputError


def _is_xclip(model: nn.Module) -> bool:
    return (has_openai_layout(model) and not hasattr(model, "clip")
            and all(hasattr(model, name) for name in ("mit", "prompts_generator", "encode_video")))


class XCLIPAdapter(OpenAIAdapter):
    """X-CLIP as released: OpenAI layout plus ``mit``, ``prompts_generator`` and ``encode_video``."""

    kind = "xclip"
    family = "X-CLIP (microsoft/VideoX)"
    video_specific = True

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        return _is_xclip(model)

    def encode_video(self, frames: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``(video (B, D), patch tokens averaged over time (B, P, D))``, as the host's forward has them."""
        frames_per_video = getattr(self.model.mit, "T", None)
        if frames_per_video is not None and frames.shape[1] != frames_per_video:
            raise InvalidInputError(f"this X-CLIP was built for T={frames_per_video} frames per video, got clips of "
                             f"{frames.shape[1]} frames; sample {frames_per_video} frames per video")
        video, patches = self.model.encode_video(frames)
        return video, patches.mean(dim=1)

    def specialize_text(self, text: torch.Tensor, context: Any) -> torch.Tensor:
        """``(K, D)`` or ``(B, K, D)`` class features plus the prompt generator's per-video shift."""
        if text.ndim == 2:
            text = text.unsqueeze(0).expand(context.shape[0], -1, -1)
        return text + self.model.prompts_generator(text, context)

    def on_wrap(self) -> None:
        # Cached text was encoded without prompts, and with the cache on prompted text would be
        # encoded once under no_grad: no gradient, and stale after every update.
        self._use_cache = getattr(self.model, "use_cache", False)
        self.model.use_cache = False
        self.model.cache_text_features = None

    def on_unwrap(self) -> None:
        self.model.use_cache = self._use_cache
        self.model.cache_text_features = None  # anything cached while wrapped was prompted


def own_prompt_parameters(model: nn.Module) -> list[str]:
    """Names of IVLP prompt tensors a host's own blocks insert (ViFi-CLIP, GA2-CLIP ``design_details``)."""
    return [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] in ("VPT", "VPT_shallow")]


class PromptedCopyRefusal(OpenAIAdapter):
    """Refuses OpenAI-layout copies (ViFi-CLIP, GA2-CLIP) built with prompts of their own.

    Their blocks write those prompts into the same positions as the wrapper's (text tokens after
    the start token, the last vision tokens), so the two sets would overwrite each other. Copies
    without such prompts are left to :class:`OpenAIAdapter`; this class serves no host.
    """

    kind = "openai"
    family = "OpenAI CLIP layout copies with their own IVLP prompts (refused)"

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        if not has_openai_layout(model):
            return False
        own = own_prompt_parameters(model)
        if own:
            shown = ", ".join(own[:3]) + (", ..." if len(own) > 3 else "")
            raise UnsupportedHostError(
                f"{type(model).__name__} inserts prompts of its own ({shown}) at the positions the wrapper's "
                "prompts take, so the two would overwrite each other; build it without them (design_details "
                "with vision_depth=0 and language_depth=0, like GA2-CLIP's frozen model) and bring trained "
                "prompts over with `promptcouple convert`")
        return False


ADAPTERS = [PromptedCopyRefusal, XCLIPAdapter]
