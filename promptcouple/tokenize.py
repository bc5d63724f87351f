"""One interface over the tokenizers hosts come with: open_clip's, Hugging Face's, or a plain callable.

The wrapper needs three things of a tokenizer: ids ``(N, context_length)`` for a list of texts, the
word-piece count of a phrase (without special tokens), and where the first word-piece of a prompt
lands in the ids (1 after CLIP's start token, 0 for SigLIP's tokenizer, which has none). The last is
measured on a tokenized prompt, never assumed.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from promptcouple.errors import InvalidInputError


class PromptTokenizer:
    """Adapts ``tokenizer`` (open_clip ``SimpleTokenizer``/``HFTokenizer``, a ``transformers``
    tokenizer, or any callable ``texts -> LongTensor``) to the wrapper's needs."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        if isinstance(tokenizer, PromptTokenizer):
            tokenizer = tokenizer.tokenizer
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._hf = _is_transformers_tokenizer(tokenizer)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if self._hf:
            return self.tokenizer(texts, padding="max_length", max_length=self.context_length, truncation=True,
                                  return_tensors="pt")["input_ids"]
        ids = self.tokenizer(texts)
        return ids if torch.is_tensor(ids) else torch.as_tensor(ids)

    def encode(self, text: str) -> Optional[list[int]]:
        """Word-piece ids of ``text`` without special tokens, or ``None`` if the tokenizer cannot say."""
        if self._hf:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer keeps one
        if _is_transformers_tokenizer(inner):
            return list(inner.encode(text, add_special_tokens=False))
        encode = getattr(self.tokenizer, "encode", None)
        return list(encode(text)) if callable(encode) else None

    def count(self, text: str) -> int:
        """Word-piece count of ``text`` without special tokens."""
        pieces = self.encode(text)
        if pieces is not None:
            return len(pieces)
        ids = self([text])[0]
        return int(ids.argmax()) - 1  # CLIP convention: start token, then pieces, then EOT (the largest id)

    def prefix_start(self, prefix: str, probe_suffix: str = " a.") -> int:
        """Index of the first word-piece of ``prefix`` when a prompt starts with it."""
        pieces = self.encode(prefix)
        if pieces is None:
            return 1  # no way to look: CLIP's layout, start token first
        ids = self([prefix + probe_suffix])[0].tolist()
        n = len(pieces)
        for i in range(len(ids) - n + 1):
            if ids[i:i + n] == pieces:
                return i
        raise InvalidInputError(f"the tokenizer writes {prefix!r} differently inside a prompt than alone "
                         f"(pieces {pieces} not found in {ids[:n + 4]}...); use placeholder context (ctx_init=None)")


def _is_transformers_tokenizer(obj: Any) -> bool:
    # Look at the class first: importing transformers costs seconds, and most tokenizers are not its.
    if obj is None or not any(c.__module__.startswith("transformers") for c in type(obj).__mro__):
        return False
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:
        return False
    return isinstance(obj, PreTrainedTokenizerBase)
