"""GA2 prompts in X-CLIP's ``main.py`` (microsoft/VideoX), added by two lines.

``wrap(model, class_names)`` takes the model ``models.xclip.load`` returns and gives one that
X-CLIP's loop drives unchanged: ``model(images, texts)`` with ``texts`` its ``generate_text`` of the
bare class names, logits ``(B, K)``; the prompts, the MIT (``mit``) and the video-specific prompt
generator (``prompts_generator``) train, the rest of X-CLIP stays frozen.

Parameter names, which X-CLIP's ``build_optimizer`` groups by keyword: the prompt tensors are
``prompts.*`` (``prompts.ctx``, ``prompts.text_deep.{i}``, ``prompts.vision_ctx``,
``prompts.vision_deep.{i}``, ``prompts.coupling.*``), the host's ``model.*``. Every trainable name
therefore contains exactly one of its keywords: ``prompts`` (the prompt tensors and
``model.prompts_generator.*``, at 10x ``TRAIN.LR``) or ``mit`` (``model.mit.*``, 10x), so AdamW
never sees a parameter in two groups, and ``FIX_TEXT`` (which freezes names with none of
``visual.``, ``mit``, ``prompts``) leaves them trainable. X-CLIP itself trains its prompt
generator in that same 10x group.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from promptcouple.config import CouplingConfig
from promptcouple.errors import InvalidInputError
from promptcouple.integrations.common import BoundPromptWrapper, anchor_loss
from promptcouple.integrations.settings import load_settings
from promptcouple.integrations.vificlip import hard_prompt

__all__ = ["wrap", "anchor_loss", "XCLIPPrompted"]

TRAIN_HOST = ("mit", "prompts_generator")
# X-CLIP's build_optimizer keywords: a trainable name must hold exactly one of them.
OPTIMIZER_KEYWORDS = ("prompts", "mit", "message_")


class XCLIPPrompted(BoundPromptWrapper):
    """X-CLIP's model contract on the wrapped model: ``model(images, texts)`` -> ``(B, K)``."""

    def __init__(self, *args: Any, check_texts: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.check_texts = check_texts
        self._bare_ids: Optional[torch.Tensor] = None
        bad = [n for n, _ in self.named_trainable_parameters() if sum(k in n for k in OPTIMIZER_KEYWORDS) != 1]
        if bad:  # a name in no group trains at the base LR, one in two makes AdamW raise
            raise InvalidInputError(f"trainable parameters {bad[:5]} do not hold exactly one of X-CLIP's optimizer "
                                    f"keywords {OPTIMIZER_KEYWORDS}; train_host may name only modules whose "
                                    "names hold one (mit, prompts_generator)")

    def _check_texts(self, texts: torch.Tensor) -> None:
        if not self.check_texts:
            return
        if self._bare_ids is None:  # their generate_text: clip.tokenize of each bare class name
            self._bare_ids = self.tokenizer(list(self.class_names))
        if torch.is_tensor(texts) and self._bare_ids.device != texts.device:
            self._bare_ids = self._bare_ids.to(texts.device)
        expected = self._bare_ids
        if not torch.is_tensor(texts) or texts.ndim != 2 or texts.shape[0] != expected.shape[0]:
            shape = tuple(texts.shape) if torch.is_tensor(texts) else type(texts).__name__
            raise InvalidInputError(
                f"texts of shape {shape}: this model is bound to {len(self.class_names)} class names and takes "
                f"X-CLIP's generate_text of exactly those, ({expected.shape[0]}, {expected.shape[1]}); for other "
                "classes wrap again with their names (xclip.wrap(model, class_names))")
        width = min(texts.shape[1], expected.shape[1])
        same = (texts[:, :width] == expected[:, :width]).all(dim=1)
        if not bool(same.all()):
            row = int((~same).nonzero()[0])
            raise InvalidInputError(
                f"texts row {row} is not the tokenized class name {self.class_names[row]!r} bound by wrap() "
                f"({int((~same).sum())} of {len(same)} rows differ): the prompts are built from the bound names, "
                "so texts must be generate_text of the same names in the same order; wrap with the names of "
                "this dataset, or pass check_texts=False if your tokenizer differs from CLIP's")

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        self._check_texts(texts)
        return self.bound_logits(images)


def wrap(model: nn.Module, class_names: Sequence[str], config: Optional[CouplingConfig] = None, *,
         settings: Any = None, train_host: Sequence[str] = TRAIN_HOST, check_texts: bool = True,
         logger: Any = None) -> XCLIPPrompted:
    """Prompt-tune the X-CLIP ``model`` (from ``models.xclip.load``) for ``class_names``.

    Args:
        model: X-CLIP as ``load`` returns it (before ``.cuda()``, ``amp.initialize`` and DDP).
        class_names: The class names in label order: ``[c for _, c in train_data.classes]``.
        config: Prompt sizes (default: the paper's); the settings' ``prompts:`` entries override them.
        settings: GA2 settings (a YAML path, a dict); default ``$PROMPTCOUPLE_CONFIG``, or none.
        train_host: X-CLIP modules that train beside the prompts.
        check_texts: Refuse ``texts`` that are not the tokenized bound class names.
        logger: X-CLIP's logger, told what was built.
    """
    class_names = list(class_names)
    if len(class_names) < 5:
        raise InvalidInputError(f"{len(class_names)} class names: X-CLIP's validate takes the top 5 classes, "
                                "so it needs at least 5")
    settings = load_settings(settings)
    coupling = settings.coupling_config(config if config is not None else CouplingConfig())
    frames = getattr(getattr(model, "mit", None), "T", None)
    wrapped = XCLIPPrompted(model, class_names, coupling, settings=settings, hard_prompts=hard_prompt(settings),
                            train_host=train_host, num_frames=int(frames or 8), check_texts=check_texts)
    if logger is not None:
        logger.info(f"promptcouple: {wrapped.config} coupled={wrapped.prompts.coupled} anchors="
                    f"{settings.anchors is not None} (settings: {settings.source}); "
                    f"{wrapped.num_trainable_parameters():,} trainable parameters")
    return wrapped
