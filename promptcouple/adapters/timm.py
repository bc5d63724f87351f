"""timm image trunks (inside open_clip's ``TimmModel``): ``VisionTransformer`` (SigLIP's MAP pooling
included) and ``Eva`` (EVA02, rotary position embeddings).

The prompt tokens join the sequence where the blocks begin (the input of ``norm_pre``: after patch
embedding, position embedding, prefix tokens and patch dropout) and leave it at the input of the
final ``norm``, so the trunk's own pooling (token, average, MAP) and head see only its own tokens.

A rotary ``Eva`` rotates every token after the prefix (CLS/register) tokens by the angle of its
patch, from a ``rope`` tensor the trunk hands to each block. There the prompts go right after the
prefix tokens (``VisionSite.offset``) and :func:`with_prompt_rotations` puts identity rotations in
front of ``rope`` for them, so each patch keeps its own rotation and the prompts get none.

A ``Beit`` trunk adds a relative position bias, sized to its patch grid (plus the CLS token), to
every attention: per layer (``relative_position_bias_table``) and/or shared (``rel_pos_bias``).
There the prompt tokens go last and take zero bias rows and columns (:class:`BeitBiasPadding`,
:func:`with_prompt_bias`): the bias between the trunk's own tokens is unchanged, and prompts
attend and are attended without a position term, as in a ViT without one.

Swin trunks (and other windowed or convolutional ones) have no token sequence for vision prompts:
:func:`vision_refusal` says why, for the error a config with vision prompts gets.

Imports without timm; timm is imported when a trunk is examined.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from promptcouple.adapters.base import VisionSite


def _vit_and_eva() -> tuple[type, ...]:
    try:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return ()
    return VisionTransformer, Eva


def is_beit(trunk: nn.Module) -> bool:
    try:
        from timm.models.beit import Beit
    except ImportError:
        return False
    return isinstance(trunk, Beit)


def has_token_sequence(trunk: nn.Module) -> bool:
    """Whether ``trunk`` is a timm trunk whose token sequence the sites below know."""
    classes = _vit_and_eva()
    return (bool(classes) and isinstance(trunk, classes)) or is_beit(trunk)


def vision_refusal(trunk: nn.Module, family: str) -> str:
    """Why a timm trunk without a token sequence takes no vision prompts."""
    name = type(trunk).__name__
    if "swin" in name.lower():
        return (f"{family}: the image tower is a timm {name} trunk, whose windowed attention runs over a 2-D grid "
                "of patches in (shifted) local windows, merged stage by stage: there is no global token sequence "
                "for vision prompt tokens to join")
    return (f"{family}: the image tower is a timm {name} trunk, which has no token sequence for vision prompts "
            "(those need a timm VisionTransformer, Eva or Beit trunk, or open_clip's VisionTransformer)")


def is_rotary(trunk: nn.Module) -> bool:
    """Whether ``trunk`` hands rotary position embeddings (``rope=``) to its blocks."""
    classes = _vit_and_eva()
    return bool(classes) and isinstance(trunk, classes[1]) and getattr(trunk, "rope", None) is not None


def timm_vision_site(trunk: nn.Module) -> VisionSite:
    """Prompt sites of a timm ``VisionTransformer``, ``Eva`` or ``Beit`` trunk (see the module docstring).

    The blocks are pre-hooked one by one, which also covers ``checkpoint_seq`` (it calls them in turn).
    """
    if is_beit(trunk):  # no norm_pre: the prompts join where the position embedding has been added
        return VisionSite(insert=trunk.pos_drop, insert_on="output", strip=trunk.norm, strip_on="input",
                          strip_seq_first=False, blocks=list(trunk.blocks), seq_first=False, width=trunk.embed_dim)
    return VisionSite(insert=trunk.norm_pre, insert_on="input", strip=trunk.norm, strip_on="input",
                      strip_seq_first=False, blocks=list(trunk.blocks), seq_first=False, width=trunk.embed_dim,
                      offset=trunk.num_prefix_tokens if is_rotary(trunk) else None)


def needs_block_adjustment(trunk: nn.Module) -> bool:
    """Whether the trunk's blocks take a per-token tensor besides the sequence (rotations, a shared bias)."""
    return is_rotary(trunk) or (is_beit(trunk) and getattr(trunk, "rel_pos_bias", None) is not None)


def adjust_trunk_block(trunk: nn.Module, args: tuple, kwargs: dict, n_prompts: int) -> tuple[tuple, dict]:
    """A block's call widened for ``n_prompts`` prompt tokens: rotations for Eva, the bias for Beit."""
    if is_beit(trunk):
        return with_prompt_bias(args, kwargs, n_prompts)
    return with_prompt_rotations(args, kwargs, n_prompts)


def with_prompt_bias(args: tuple, kwargs: dict, n_prompts: int) -> tuple[tuple, dict]:
    """A Beit block's call with its shared relative position bias ``(heads, L, L)`` given zero rows and
    columns for the ``n_prompts`` prompt tokens, which come last."""
    bias = kwargs.get("shared_rel_pos_bias")
    if torch.is_tensor(bias):
        return args, {**kwargs, "shared_rel_pos_bias": F.pad(bias, (0, n_prompts, 0, n_prompts))}
    if len(args) > 1 and torch.is_tensor(args[1]):  # blk(x, shared_rel_pos_bias)
        return (args[0], F.pad(args[1], (0, n_prompts, 0, n_prompts)), *args[2:]), kwargs
    return args, kwargs


class BeitBiasPadding:
    """Zero relative position bias for the prompt tokens in each attention of a Beit trunk.

    Each attention computes its own bias from its table inside its forward (``_get_rel_pos_bias``),
    sized to the patch grid; there is no argument to widen. While wrapped, that method is shadowed
    on each attention instance by one that pads the table's bias with zeros to the length of the
    sequence the attention was just called with (recorded by a pre-hook; nothing is padded when the
    prompts are off). :meth:`remove` restores the class's method. Only modules, plain data and
    methods are held, so a deepcopy or pickle of the wrapper carries its own copy.
    """

    def __init__(self, trunk: nn.Module) -> None:
        self.attentions = [block.attn for block in trunk.blocks
                           if getattr(block.attn, "relative_position_bias_table", None) is not None]
        self.tokens: Optional[int] = None
        self.handles: list = []

    def install(self) -> None:
        for attn in self.attentions:
            self.handles.append(attn.register_forward_pre_hook(self._record, with_kwargs=True))
            attn._get_rel_pos_bias = partial(self._padded, attn)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for attn in self.attentions:
            attn.__dict__.pop("_get_rel_pos_bias", None)

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("x")
        self.tokens = x.shape[1] if torch.is_tensor(x) else None

    def _padded(self, attn: nn.Module) -> torch.Tensor:
        bias = type(attn)._get_rel_pos_bias(attn)  # (1, heads, L, L)
        n = (self.tokens or bias.shape[-1]) - bias.shape[-1]
        return F.pad(bias, (0, n, 0, n)) if n > 0 else bias


def with_prompt_rotations(args: tuple, kwargs: dict, n_prompts: int) -> tuple[tuple, dict]:
    """A rotary block's call with ``rope`` extended by ``n_prompts`` identity rotations in front.

    ``rope`` is ``(..., tokens, 2 * half)``: sines then cosines (what timm's ``apply_rot_embed_cat``
    takes, for every rope type Eva builds). Sine 0 and cosine 1 leave a token as it is.
    """
    if torch.is_tensor(kwargs.get("rope")):
        return args, {**kwargs, "rope": _extend(kwargs["rope"], n_prompts)}
    if len(args) > 1 and torch.is_tensor(args[1]):  # blk(x, rope, ...)
        return (args[0], _extend(args[1], n_prompts), *args[2:]), kwargs
    return args, kwargs  # no rope in this call: nothing is rotated


def _extend(rope: torch.Tensor, n: int) -> torch.Tensor:
    shape = (*rope.shape[:-2], n, rope.shape[-1] // 2)
    identity = torch.cat([rope.new_zeros(shape), rope.new_ones(shape)], dim=-1)
    return torch.cat([identity, rope], dim=-2)

