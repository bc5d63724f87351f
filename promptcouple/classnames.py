"""Class names in, token ids out: the checks on a class list, the prompt texts under one prompt
configuration, their token ids cached per class set, and the length groups of the short text path."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import torch

from promptcouple.config import CouplingConfig
from promptcouple.constants import class_text
from promptcouple.errors import InvalidInputError, InvalidTypeError
from promptcouple.tokenize import PromptTokenizer


def prompt_prefix(config: CouplingConfig) -> str:
    """What stands before each class name: the ``ctx_init`` phrase, or one placeholder per context token."""
    return config.ctx_init.replace("_", " ") if config.ctx_init else " ".join(["X"] * config.n_ctx)


class ClassPrompts:
    """The prompt text and token ids of class names under one prompt configuration.

    Args:
        tokenizer: The wrapper's tokenizer.
        config: The prompt set's configuration (its ``n_ctx`` / ``ctx_init`` make the prefix).
        context_length: The text tower's length.
    """

    def __init__(self, tokenizer: PromptTokenizer, config: CouplingConfig, context_length: int) -> None:
        self.tokenizer, self.config, self.context_length = tokenizer, config, context_length
        self.prefix = prompt_prefix(config)
        self.ctx_start = tokenizer.prefix_start(self.prefix)  # where the first context token lands
        self._cache: dict[tuple[str, ...], ClassTokens] = {}

    def texts(self, classnames: Sequence[str]) -> list[str]:
        """The text each class is tokenized from: placeholders (or ``ctx_init``) then the name."""
        return [f"{self.prefix} {class_text(name)}." for name in classnames]

    def description_text(self, description: str) -> str:
        """The text a class description is tokenized from: the prefix, the description, one period."""
        return f"{self.prefix} {description.strip().rstrip('.').rstrip()}."

    def tokens(self, classnames: Sequence[str], rows: Optional[Sequence[tuple]] = None) -> "ClassTokens":
        """The class prompts' token ids and, for the short text path, their rows grouped by length
        (:func:`length_groups`) with each group's cut length, cached per class set. With ``rows``
        (:func:`promptcouple.descriptions.description_rows`): one prompt per description of a
        described class and one per name of the others, all in the same groups."""
        key = check_classnames(classnames)
        hit = self._cache.get((key, *rows) if rows else key)
        if hit is None:
            limit = self.context_length
            specials = self.ctx_start + 1  # start token(s) before the prompt, end token after it
            texts, what = self.texts(key), [f"class name {name!r}" for name in key]
            if rows:
                texts = [texts[i] if t is None else self.description_text(t) for i, t in rows]
                what = [what[i] if t is None else f"description {t!r} of class {key[i]!r}" for i, t in rows]
            lengths = []
            for name, text in zip(what, texts):
                length = specials + self.tokenizer.count(text)
                if length > limit:
                    raise InvalidInputError(
                        f"{name} needs {length} tokens with {self.config.n_ctx} context tokens, "
                        f"more than the context length {limit}; shorten it or use a smaller n_ctx")
                lengths.append(length)
            hit = self._cache[(key, *rows) if rows else key] = ClassTokens.build(self.tokenizer(texts), lengths)
        return hit


class ClassTokens(NamedTuple):
    """A class set's token ids ``(K, context_length)``, its length groups as ``(rows, length)``
    (``length``: the group's cut, known here so that no text pass measures it on the device;
    ``None`` where the tokenizer's count cannot be trusted, and the adapter measures) and the
    order that puts the groups' rows back."""

    ids: torch.Tensor
    groups: tuple[tuple[torch.Tensor, Optional[int]], ...]
    order: torch.Tensor
    copies: dict  # device -> (ids, each group's rows, order) there

    def on(self, device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """The ids, each group's rows and the order on ``device``, copied there once: a copy from
        host memory waits for the device's queue, so a text pass must not make one every time."""
        hit = self.copies.get(device)
        if hit is None:
            hit = self.copies[device] = (self.ids.to(device), tuple(rows.to(device) for rows, _ in self.groups),
                                         self.order.to(device))
        return hit

    @classmethod
    def build(cls, ids: torch.Tensor, lengths: list[int]) -> "ClassTokens":
        # The count is trusted only where every position after it is padding (the value the row
        # ends with): then the end-of-text token, which causal hosts pool at, lies inside the cut.
        cut = torch.as_tensor(lengths).unsqueeze(1)
        after = torch.arange(ids.shape[1]).unsqueeze(0) >= cut
        trusted = bool(((ids == ids[:, -1:]) | ~after).all())
        groups = length_groups(lengths)
        order = torch.cat(groups).argsort()
        return cls(ids, tuple((rows, max(lengths[i] for i in rows.tolist()) if trusted else None)
                              for rows in groups), order, {})


# A text pass has a fixed cost besides its tokens (the kernels of every block, run once more),
# counted here as this many token positions; it decides when a length group is worth a pass.
_PASS_COST = 96
_MAX_GROUPS = 4


def length_groups(lengths: Sequence[int], pass_cost: int = _PASS_COST,
                  max_groups: int = _MAX_GROUPS) -> list[torch.Tensor]:
    """Row indices of prompts grouped by token length, for the short text path.

    One pass runs every prompt as far as the longest one; grouping the prompts by length and
    running each group only as far as its own longest cuts the positions computed. The groups
    minimise ``sum(rows * longest + pass_cost)`` over contiguous ranges of the sorted lengths
    (at most ``max_groups``). A single group (all rows) is returned when splitting does not pay.
    """
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    # Cuts between equal lengths never pay, so only the ends of the runs of equal lengths are
    # candidate cuts (at most the context length of them, however many prompts there are).
    ends = [j for j in range(1, len(ls) + 1) if j == len(ls) or ls[j] != ls[j - 1]]
    points = [0] + ends
    inf = float("inf")
    # best[g][b]: cost of the rows before points[b] in g groups; cut[g][b]: where the last group starts
    best = [[inf] * len(points) for _ in range(max_groups + 1)]
    cut = [[0] * len(points) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for b in range(1, len(points)):
            for a in range(b):
                cost = best[g - 1][a] + (points[b] - points[a]) * ls[points[b] - 1] + pass_cost
                if cost < best[g][b]:
                    best[g][b], cut[g][b] = cost, a
    last = len(points) - 1
    g = min(range(1, max_groups + 1), key=lambda k: (best[k][last], k))
    bounds, b = [], last
    while g > 0:
        a = cut[g][b]
        bounds.append((points[a], points[b]))
        b, g = a, g - 1
    return [torch.as_tensor(order[i:j]) for i, j in reversed(bounds)]


def check_classnames(classnames: Any, *, distinct: bool = False) -> tuple[str, ...]:
    """Class names as a tuple, refusing what would silently train or evaluate the wrong classes.

    ``distinct``: also refuse a name given twice, where the names are classes to tell apart
    (``forward``); text features of a list with repeats (class names and anchor labels in one
    pass) are well defined.

    Raises:
        InvalidInputError: A plain string (it would become one class per letter), an empty list,
            a name that is not a non-empty string, or (``distinct``) a name given twice.
        InvalidTypeError: Anything but a list or tuple (``None``, a number, a dict, a tensor, ...).
    """
    if isinstance(classnames, str):
        raise InvalidInputError(f"classnames must be a list of class names, got the string {classnames!r}; "
                                f"write [{classnames!r}] for one class")
    if not isinstance(classnames, (list, tuple)):
        # A dict would give its keys, a tensor its rows, None or a number a bare TypeError: say so instead.
        shown = "None" if classnames is None else f"a {type(classnames).__name__}"
        raise InvalidTypeError(f"classnames must be a list or tuple of class names, got {shown}; "
                               "pass them as a list, e.g. model(frames, ['archery', 'bowling'])")
    names = tuple(classnames)
    if not names:
        raise InvalidInputError("classnames is empty; expected a non-empty list of class names")
    for i, name in enumerate(names):
        if not (isinstance(name, str) and name.strip()):
            raise InvalidInputError(f"classnames[{i}] is {name!r}, expected a non-empty string")
    first: dict[str, int] = {}
    for i, name in enumerate(names if distinct else ()):
        if name in first:
            raise InvalidInputError(f"classnames[{first[name]}] and classnames[{i}] are both {name!r}: two classes "
                                    "with one name cannot be told apart; give each class a distinct name")
        first[name] = i
    return names
