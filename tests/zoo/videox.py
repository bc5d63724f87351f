"""X-CLIP as released (microsoft/VideoX) and GA2-CLIP's own CLIP class, as small models
(``videox_models``), with their own API and a prompted forward written out by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo import HostCase, text_context
from zoo.videox_models import GA2CLIP, NO_PROMPTS, XCLIP

WIDTH, IMAGE, PATCH, CONTEXT, VOCAB, LAYERS, FRAMES = 32, 32, 8, 32, 49408, 3, 2
# One image block more than the contract's vision depth (3): the last layer's prompt tokens then pass
# through a block that does not replace them, where a message token dropped from the wrong place shows.
XCLIP_VISION_LAYERS = LAYERS + 1


def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT)


def build_xclip(seed: int, **kwargs) -> XCLIP:
    torch.manual_seed(seed)
    kwargs.setdefault("use_cache", True)  # the released default (FIX_TEXT): the adapter must undo it
    return XCLIP(WIDTH, IMAGE, XCLIP_VISION_LAYERS, WIDTH, PATCH, CONTEXT, VOCAB, WIDTH, 2, LAYERS,
                 T=FRAMES, **kwargs).eval()


def build_ga2(seed: int, design_details: dict = NO_PROMPTS, checkpointing: bool = False) -> GA2CLIP:
    """GA2-CLIP's CLIP; ``checkpointing=True`` is its own default (the cases switch it off so that
    the contract's "plain" runs are plain and its "checkpointing" runs are the released setting)."""
    torch.manual_seed(seed)
    model = GA2CLIP(WIDTH, design_details, IMAGE, LAYERS, WIDTH, PATCH, CONTEXT, VOCAB, WIDTH, 2, LAYERS)
    _ga2_checkpointing(model, checkpointing)
    return model.eval()


def _ga2_checkpointing(host, on: bool) -> None:
    host.transformer.grad_checkpointing = on
    host.visual.transformer.grad_checkpointing = on


def _xclip_checkpointing(host, on: bool) -> None:
    host.transformer.grad_checkpointing = on
    host.visual.transformer.use_checkpoint = on


# --------------------------------------------------------------------------- the hosts' own API

def _own_text_xclip(host, ids):
    return host.encode_text(ids)


def _own_logits_xclip(host, frames, ids):
    # The host's own forward. With use_cache=True it would answer with the text of whatever ids it
    # saw first (the comparison would then be trivially equal, or wrong): empty the cache so these
    # ids are encoded.
    host.cache_text_features = None
    return host(frames, ids)


def _own_text_ga2(host, ids):
    features, tokens = host.encode_text(ids)  # GA2-CLIP's tuple
    return features


def _own_logits_ga2(host, frames, ids):
    # GA2-CLIP's evaluation: forward gives features and the scale; frames are averaged, then cosine.
    b, t = frames.shape[:2]
    image, text, _, scale = host(frames.flatten(0, 1), ids)
    video = image.view(b, t, -1).mean(dim=1)
    return scale * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()


# ------------------------------------------------------------------------ prompted, by hand



def manual_text(host, ids, prompts, start):
    """Both hosts' text towers (OpenAI layout, sequence-first blocks that hold the causal mask)."""
    n, rows = prompts.ctx.shape[0], ids.shape[0]
    x = host.token_embedding(ids)
    x = torch.cat([x[:, :start], text_context(prompts, rows), x[:, start + n:]], 1) + host.positional_embedding
    x = x.transpose(0, 1)
    deep = list(prompts.text_deep)
    for layer, block in enumerate(host.transformer.resblocks):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:start], deep[layer - 1].unsqueeze(1).expand(-1, rows, -1), x[start + n:]])
        x = block(x)
    x = host.ln_final(x.transpose(0, 1))
    return x[torch.arange(rows), ids.argmax(-1)] @ host.text_projection


def _cross_frame_block(block, x, frames):
    """An X-CLIP block on ``[CLS, patches, prompts]``: the message token joins after the prompts."""
    length, bt, d = x.shape
    message = block.message_fc(x[0]).view(bt // frames, frames, d).transpose(0, 1)
    h = block.message_ln(message)
    message = message + block.message_attn(h, h, h, need_weights=False)[0]
    x = torch.cat([x, message.transpose(0, 1).reshape(1, bt, d)])  # [CLS, patches, prompts, message]
    y = block.ln_1(x)
    x = (x + block.attn(y, y, y, need_weights=False)[0])[:length]  # message out, prompts stay
    return x + block.mlp(block.ln_2(x))


def _vision_tokens(host, images, prompts, run_block):
    """Image tower tokens ``(N, L, D)`` with the vision prompts appended, replaced and stripped."""
    v = host.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    n, deep = 0, []
    if prompts.vision_ctx is not None:
        n, deep = prompts.vision_ctx.shape[0], list(prompts.vision_deep)
        x = torch.cat([x, prompts.vision_ctx.expand(x.shape[0], -1, -1)], 1)
    x = v.ln_pre(x).transpose(0, 1)
    for layer, block in enumerate(v.transformer.resblocks):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:-n], deep[layer - 1].unsqueeze(1).expand(-1, x.shape[1], -1)])
        x = run_block(block, x)
    x = x.transpose(0, 1)
    return x[:, :-n] if n else x


def _cosine(video, text, host):
    sims = torch.einsum("bd,bkd->bk", F.normalize(video, dim=-1), F.normalize(text, dim=-1)) if text.ndim == 3 \
        else F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()
    return host.logit_scale.exp() * sims


def manual_logits_xclip(host, frames, ids, prompts, start):
    b, t = frames.shape[:2]
    x = _vision_tokens(host, frames.flatten(0, 1), prompts, lambda block, x: _cross_frame_block(block, x, t))
    cls = host.visual.ln_post(x[:, 0]) @ host.visual.proj
    patches = host.prompts_visual_ln(x[:, 1:]) @ host.prompts_visual_proj  # prompt tokens already gone
    video = host.mit(cls.view(b, t, -1))
    patches = patches.view(b, t, -1, patches.shape[-1]).mean(dim=1)
    text = manual_text(host, ids, prompts, start).unsqueeze(0).expand(b, -1, -1)
    text = text + host.prompts_generator(text, patches)
    return _cosine(video, text, host)


def manual_logits_ga2(host, frames, ids, prompts, start):
    b, t = frames.shape[:2]
    x = _vision_tokens(host, frames.flatten(0, 1), prompts, lambda block, x: block(x))
    video = (host.visual.ln_post(x[:, 0]) @ host.visual.proj).view(b, t, -1).mean(dim=1)
    return _cosine(video, manual_text(host, ids, prompts, start), host)


CASES = [
    HostCase(name="videox-xclip", build=build_xclip, tokenizer=_tokenizer, own_text=_own_text_xclip,
             own_logits=_own_logits_xclip, manual_text=manual_text, manual_logits=manual_logits_xclip,
             frames=(FRAMES, 3, IMAGE, IMAGE), text_layers=LAYERS, vision_layers=XCLIP_VISION_LAYERS,
             checkpointing=_xclip_checkpointing, trainable=("mit", "prompts_generator")),
    HostCase(name="videox-ga2", build=build_ga2, tokenizer=_tokenizer, own_text=_own_text_ga2,
             own_logits=_own_logits_ga2, manual_text=manual_text, manual_logits=manual_logits_ga2,
             frames=(FRAMES, 3, IMAGE, IMAGE), text_layers=LAYERS, vision_layers=LAYERS,
             checkpointing=_ga2_checkpointing),
]
