"""timm image trunks (inside open_clip's ``TimmModel``): ``VisionTransformer`` (SigLIP's MAP pooling
included) and ``Eva`` (EVA02, rotary position embeddings).

The prompt tokens join the sequence where the blocks begin (the input of ``norm_pre``: after patch
embedding, position embedding, prefix tokens and patch dropout) and leave it at the input of the
final ``norm``, so the trunk's own pooling (token, average, MAP) and head see only its own tokens.

A rotary ``Eva`` rotates every token after the prefix (CLS/register) tokens by the angle of its
patch, from a ``rope`` tensor the trunk hands to each block. There the prompts go right after the
prefix tokens (``VisionSite.offset``) and :func:`with_prompt_rotations` puts identity rotations in
front of ``rope`` for them, so each patch keeps its own rotation and the prompts get none.

Imports without timm; timm is imported when a trunk is examined.
"""

from __future__ import annotations

import torch
from torch import nn

from promptcouple.adapters.base import VisionSite


def _vit_and_eva() -> tuple[type, ...]:
    try:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return ()
    return VisionTransformer, Eva


def has_token_sequence(trunk: nn.Module) -> bool:
    """Whether ``trunk`` is a timm trunk whose token sequence the sites below know."""
    classes = _vit_and_eva()
    return bool(classes) and isinstance(trunk, classes)


def is_rotary(trunk: nn.Module) -> bool:
    """Whether ``trunk`` hands rotary position embeddings (``rope=``) to its blocks."""
    classes = _vit_and_eva()
    return bool(classes) and isinstance(trunk, classes[1]) and getattr(trunk, "rope", None) is not None


def timm_vision_site(trunk: nn.Module) -> VisionSite:
    """Prompt sites of a timm ``VisionTransformer`` or ``Eva`` trunk (see the module docstring).

    The blocks are pre-hooked one by one, which also covers ``checkpoint_seq`` (it calls them in turn).
    """
    return VisionSite(insert=trunk.norm_pre, insert_on="input", strip=trunk.norm, strip_on="input",
                      strip_seq_first=False, blocks=list(trunk.blocks), seq_first=False, width=trunk.embed_dim,
                      offset=trunk.num_prefix_tokens if is_rotary(trunk) else None)


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

