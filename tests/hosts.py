"""Tiny host models built from plain dicts, and a prompted forward spelled out by hand.

The hand-written forward uses the hosts' modules directly and inserts the prompts explicitly, so
that the hook-based wrapper can be checked against it numerically.
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F

from promptcouple.models.openai_clip import CLIP as OpenAICLIP

WIDTH, IMAGE, CONTEXT = 32, 32, 32
HOSTS = ["open_clip", "open_clip_seq_first", "openai"]


def make_open_clip(seq_first: bool = False, pool: str = "tok", layers: int = 3, seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=WIDTH,
        vision_cfg=dict(image_size=IMAGE, patch_size=8, width=WIDTH, layers=layers, head_width=16, pool_type=pool),
        text_cfg=dict(context_length=CONTEXT, vocab_size=49408, width=WIDTH, heads=2, layers=layers),
    )
    if seq_first:  # what open_clip < 2.26 did: blocks take (L, N, D) and the transformer says so
        for tower in (model.transformer, model.visual.transformer):
            tower.batch_first = False
            for block in tower.resblocks:
                block.attn.batch_first = False
    return model.eval()


def make_openai(layers: int = 3, seed: int = 0) -> OpenAICLIP:
    torch.manual_seed(seed)
    return OpenAICLIP(embed_dim=WIDTH, image_resolution=IMAGE, vision_layers=layers, vision_width=WIDTH,
                      vision_patch_size=8, context_length=CONTEXT, vocab_size=49408, transformer_width=WIDTH,
                      transformer_heads=2, transformer_layers=layers).eval()


def make_host(name: str, pool: str = "tok", **kwargs):
    if name == "openai":
        return make_openai(**kwargs)
    return make_open_clip(seq_first=name == "open_clip_seq_first", pool=pool, **kwargs)


def _run_blocks(blocks, x, seq_first, mask, replace):
    """Run residual blocks on (N, L, D) input, calling ``replace(layer, x_nld)`` before each."""
    for layer, block in enumerate(blocks):
        x = replace(layer, x)
        if seq_first:
            y = x.transpose(0, 1)
            y = block(y, attn_mask=mask) if mask is not None else block(y)
            x = y.transpose(0, 1)
        else:
            x = block(x, attn_mask=mask)
    return x


def manual_text(host, ids, prompts):
    """Prompted text features with the coupling and deep prompts written out."""
    n = prompts.ctx.shape[0]
    soft = prompts.ctx.unsqueeze(0).expand(ids.shape[0], -1, -1)
    if prompts.coupling is not None:
        hard = prompts.hard.unsqueeze(0).expand_as(soft)
        ctx = F.relu(F.linear(torch.cat([hard, soft], -1), prompts.coupling.weight, prompts.coupling.bias))
    else:
        ctx = soft
    x = host.token_embedding(ids)
    x = torch.cat([x[:, :1], ctx, x[:, 1 + n:]], 1) + host.positional_embedding
    deep = list(prompts.text_deep)

    def replace(layer, x):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:, :1], deep[layer - 1].expand(x.shape[0], -1, -1), x[:, 1 + n:]], 1)
        return x

    is_openai = isinstance(host, OpenAICLIP)
    seq_first = is_openai or not host.transformer.batch_first
    x = _run_blocks(host.transformer.resblocks, x, seq_first, None if is_openai else host.attn_mask, replace)
    x = host.ln_final(x)
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ host.text_projection


def manual_image(host, images, prompts):
    """Prompted image features: prompts appended before ln_pre, replaced per layer, stripped."""
    v = host.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    n = 0
    deep = []
    if prompts.vision_ctx is not None:
        n, deep = prompts.vision_ctx.shape[0], list(prompts.vision_deep)
        x = torch.cat([x, prompts.vision_ctx.expand(x.shape[0], -1, -1)], 1)
    x = v.ln_pre(x)

    def replace(layer, x):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:, :-n], deep[layer - 1].expand(x.shape[0], -1, -1)], 1)
        return x

    is_openai = isinstance(host, OpenAICLIP)
    seq_first = is_openai or not v.transformer.batch_first
    x = _run_blocks(v.transformer.resblocks, x, seq_first, None, replace)
    if n:
        x = x[:, :-n]
    if is_openai:
        return v.ln_post(x[:, 0]) @ v.proj
    x = v.ln_post(x)  # tiny hosts keep open_clip's default final_ln_after_pool=False
    pooled = x[:, 1:].mean(1) if v.pool_type == "avg" else x[:, 0]
    return pooled @ v.proj


def manual_logits(host, frames, ids, prompts):
    b, t = frames.shape[:2]
    video = manual_image(host, frames.flatten(0, 1), prompts).view(b, t, -1).mean(1)
    text = manual_text(host, ids, prompts)
    return host.logit_scale.exp() * (F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t())
