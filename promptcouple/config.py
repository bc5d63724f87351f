"""The prompt configuration: one dataclass whose defaults are the paper's setting."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from promptcouple.errors import InvalidInputError

DEFAULT_N_CTX = 16


@dataclass
class CouplingConfig:
    """How many prompt tokens go where, and how the soft text context is coupled to the hard one.

    The defaults reproduce GA2-CLIP at ViT-B/16 (docs/METHOD.md section 1). Baselines are configurations
    of the same wrapper: IVLP (ViFi-CLIP's VL prompting) is the default without a hard prompt;
    CoOp is ``text_depth=1, n_vision_ctx=0`` without a hard prompt.

    Attributes:
        n_ctx: Text context tokens at positions ``1..n_ctx``. ``None`` means 16, or the token count
            of ``ctx_init`` when that is given.
        n_vision_ctx: Vision prompt tokens appended after the patch tokens; 0 disables vision prompts.
        text_depth: Text layers that receive prompts: layer 0 (the coupled context) plus
            ``text_depth - 1`` deep layers with their own tokens. At least 1.
        vision_depth: Vision layers that receive prompts (layer 0 = appended tokens, then deep
            replacements). 0 disables vision prompts.
        ctx_init: A phrase (e.g. "a video of a person") whose token embeddings initialise the soft
            context; its token count sets ``n_ctx``. ``None``: N(0, init_std) initialisation.
        dropout: Dropout on the coupled context (per class row), as in the reference code.
        init_std: Standard deviation of the random prompt initialisation.
    """

    n_ctx: Optional[int] = None
    n_vision_ctx: int = 16
    text_depth: int = 9
    vision_depth: int = 9
    ctx_init: Optional[str] = None
    dropout: float = 0.5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> InvalidInputError:
            return InvalidInputError(f"CouplingConfig.{name}={getattr(self, name)!r}: expected {expected}")

        if self.n_ctx is not None and (not isinstance(self.n_ctx, int) or self.n_ctx < 1):
            raise bad("n_ctx", "a positive int or None")
        if not isinstance(self.n_vision_ctx, int) or self.n_vision_ctx < 0:
            raise bad("n_vision_ctx", "an int >= 0")
        if not isinstance(self.text_depth, int) or self.text_depth < 1:
            raise bad("text_depth", "an int >= 1 (layer 0 always holds the text context)")
        if not isinstance(self.vision_depth, int) or self.vision_depth < 0:
            raise bad("vision_depth", "an int >= 0")
        if (self.n_vision_ctx == 0) != (self.vision_depth == 0):
            raise InvalidInputError(
                f"CouplingConfig: n_vision_ctx={self.n_vision_ctx} and vision_depth={self.vision_depth} "
                "disagree; set both to 0 to disable vision prompts, or both positive")
        if self.ctx_init is not None and (not isinstance(self.ctx_init, str) or not self.ctx_init.strip()):
            raise bad("ctx_init", "a non-empty phrase or None")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise bad("dropout", "a probability in [0, 1)")
        if not float(self.init_std) > 0:
            raise bad("init_std", "a positive float")

    @property
    def has_vision_prompts(self) -> bool:
        return self.n_vision_ctx > 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CouplingConfig":
        """Build from a dict, warning about (and ignoring) keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        # Files of promptcouple 0.1 carry a "version" field that nothing read; the file format's
        # version is the metadata key format_version.
        unknown = sorted(set(data) - known - {"version"})
        if unknown:
            warnings.warn(f"CouplingConfig: ignoring unknown keys {unknown} (written by a newer promptcouple?)")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "CouplingConfig":
        return cls.from_dict(json.loads(text))
