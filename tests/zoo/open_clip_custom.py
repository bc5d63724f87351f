"""open_clip ``CustomTextCLIP`` and ``CoCa``: open_clip's ``TextTransformer`` (causal or not, CoCa's
appended CLS) with open_clip ViT, timm ViT (SigLIP's MAP pooling), timm Eva (EVA02's rotary
embeddings) and ResNet image towers, and a ``CLIP`` with a timm ViT trunk (average pooling), built
small; with the prompted forward written out by hand.

The timm trunks are built through open_clip's own ``TimmModel`` path, with ``timm.create_model``
given small sizes while the host is built (nothing is downloaded); the Hugging Face text tower
(``hf_model_name``, open_clip's ``HFTextEncoder``) from a small ``XLMRobertaConfig`` handed to it.
"""

from __future__ import annotations

import re
import zlib
from unittest import mock

import torch
import torch.nn.functional as F

from hosts import manual_text as manual_clip_text
from zoo import HostCase, frame_averaged, scaled_logits, text_context

try:
    import open_clip
    import timm
except ImportError:  # the family needs both
    open_clip = timm = None

WIDTH, IMAGE, CONTEXT, LAYERS = 32, 32, 32, 3
SMALL_TRUNK = dict(img_size=IMAGE, patch_size=8, embed_dim=WIDTH, depth=LAYERS, num_heads=2)


# ------------------------------------------------------------------------------- tokenizers

def _clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT)


class WordTokenizer:
    """SigLIP's layout: word pieces, then EOS, then padding; no start token. Words hash to ids."""

    pad_id, eos_id, vocab_size = 0, 1, 1000

    def encode(self, text: str) -> list[int]:
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        return [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in words]

    def __call__(self, texts) -> torch.Tensor:
        ids = torch.full((len(texts), CONTEXT), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            pieces = self.encode(text)[:CONTEXT - 1] + [self.eos_id]
            ids[row, :len(pieces)] = torch.tensor(pieces)
        return ids


class XLMRTokenizer(WordTokenizer):
    """XLM-RoBERTa's layout: ``<s>`` (0), word pieces, ``</s>`` (2), then ``<pad>`` (1)."""

    bos_id, pad_id, eos_id = 0, 1, 2

    def encode(self, text: str) -> list[int]:
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        return [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in words]

    def __call__(self, texts) -> torch.Tensor:
        ids = torch.full((len(texts), CONTEXT), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            pieces = [self.bos_id] + self.encode(text)[:CONTEXT - 2] + [self.eos_id]
            ids[row, :len(pieces)] = torch.tensor(pieces)
        return ids


# ------------------------------------------------------------------------------------ hosts

def _text_cfg(**kwargs):
    return dict(context_length=CONTEXT, vocab_size=49408, width=WIDTH, heads=2, layers=LAYERS, **kwargs)


def _vit_cfg(**kwargs):
    return dict(image_size=IMAGE, patch_size=8, width=WIDTH, layers=LAYERS, head_width=16, **kwargs)


def _small_timm(**extra):
    """``timm.create_model`` with small sizes: open_clip's TimmModel builds its trunk with them."""
    create = timm.create_model
    sizes = {**SMALL_TRUNK, **extra}
    return mock.patch.object(timm, "create_model", lambda name, **kw: create(name, **{**kw, **sizes}))


def build_custom_text(seed):
    torch.manual_seed(seed)
    return open_clip.CustomTextCLIP(embed_dim=WIDTH, vision_cfg=_vit_cfg(), text_cfg=_text_cfg(proj_bias=True)).eval()


def build_siglip(seed):
    torch.manual_seed(seed)
    with _small_timm():
        return open_clip.CustomTextCLIP(
            embed_dim=WIDTH, init_logit_bias=-10.0,
            vision_cfg=dict(image_size=IMAGE, timm_model_name="vit_base_patch16_siglip_224", timm_pool="map",
                            timm_proj="none"),
            text_cfg=dict(_text_cfg(no_causal_mask=True, proj_bias=True, pool_type="last"),
                          vocab_size=WordTokenizer.vocab_size)).eval()


def build_eva02(seed):
    torch.manual_seed(seed)
    with _small_timm():
        return open_clip.CustomTextCLIP(
            embed_dim=WIDTH,
            vision_cfg=dict(image_size=IMAGE, timm_model_name="eva02_base_patch16_clip_224", timm_pool="token",
                            timm_proj=None),
            text_cfg=_text_cfg(pool_type="eos", eos_id=49407)).eval()  # SimpleTokenizer's end of text


def build_clip_timm(seed):
    torch.manual_seed(seed)
    with _small_timm(init_values=0.5):  # layer scale kept, but large enough for the prompts to matter
        return open_clip.CLIP(
            embed_dim=WIDTH,
            vision_cfg=dict(image_size=IMAGE, timm_model_name="vit_medium_patch16_gap_256", timm_pool="",
                            timm_proj="linear"),
            text_cfg=_text_cfg()).eval()


def build_hf_text(seed):
    """A ``CustomTextCLIP`` whose text tower is open_clip's ``HFTextEncoder`` over a small XLM-R,
    as ``xlm-roberta-base-ViT-B-32`` has (mean pooling, MLP projection), built from a config."""
    from functools import partial

    import transformers
    from open_clip.hf_model import HFTextEncoder

    torch.manual_seed(seed)
    config = transformers.XLMRobertaConfig(
        vocab_size=XLMRTokenizer.vocab_size, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=2 * WIDTH, max_position_embeddings=CONTEXT + 2, pad_token_id=XLMRTokenizer.pad_id,
        bos_token_id=XLMRTokenizer.bos_id, eos_token_id=XLMRTokenizer.eos_id, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    # open_clip reads the config from the hub unless one is given: give ours where it builds the tower.
    with mock.patch.object(open_clip.model, "HFTextEncoder", partial(HFTextEncoder, config=config)):
        return open_clip.CustomTextCLIP(
            embed_dim=WIDTH, vision_cfg=_vit_cfg(),
            text_cfg=dict(hf_model_name="xlm-roberta-base", hf_model_pretrained=False, hf_proj_type="mlp",
                          hf_pooler_type="mean_pooler")).eval()


def hf_text_checkpointing(host, on):
    """open_clip's switch enables the HF tower's checkpointing whatever it is told; set each tower here."""
    host.visual.set_grad_checkpointing(on)
    model = host.text.transformer  # activation_checkpointing_* from transformers 5 on (the older names warn)
    if not on:
        getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
    elif hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_beit(seed):
    """A timm ``Beit`` trunk with absolute positions, a relative position bias in every attention and a
    shared one, mean pooling with ``fc_norm`` (BEiT's default); layer scale large enough to matter."""
    torch.manual_seed(seed)
    with _small_timm(use_abs_pos_emb=True, use_rel_pos_bias=True, use_shared_rel_pos_bias=True, init_values=0.5):
        return open_clip.CustomTextCLIP(
            embed_dim=WIDTH,
            vision_cfg=dict(image_size=IMAGE, timm_model_name="beit_base_patch16_224", timm_pool="",
                            timm_proj="linear"),
            text_cfg=_text_cfg()).eval()


def build_coca(seed):
    torch.manual_seed(seed)
    return open_clip.CoCa(
        embed_dim=WIDTH, multimodal_cfg=dict(context_length=CONTEXT, width=WIDTH, heads=2, layers=1),
        text_cfg=_text_cfg(embed_cls=True, output_tokens=True),
        vision_cfg=_vit_cfg(attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=8,
                            output_tokens=True)).eval()


def build_resnet(seed):
    torch.manual_seed(seed)
    return open_clip.CustomTextCLIP(embed_dim=WIDTH, vision_cfg=dict(image_size=IMAGE, layers=(1, 1, 1, 1), width=8),
                                    text_cfg=_text_cfg()).eval()


# ---------------------------------------------------------------------------- own paths

def _own_text(host, ids):
    return host.encode_text(ids, normalize=False)  # CoCa normalizes by default




def _own_logits(host, frames, ids):
    b, t = frames.shape[:2]
    video = host.encode_image(frames.flatten(0, 1), normalize=False).view(b, t, -1).mean(1)
    return scaled_logits(host, video, _own_text(host, ids))


# ------------------------------------------------------------------ prompted, by hand



def _put(x, at, tokens):
    """``x`` (N, L, D) with ``tokens`` (n, D) at positions ``at..at+n``."""
    return torch.cat([x[:, :at], tokens.expand(x.shape[0], -1, -1), x[:, at + tokens.shape[-2]:]], 1)


def manual_text(host, ids, prompts, start):
    """open_clip's TextTransformer with the context and deep text prompts at ``start..start+n``."""
    text = host.text
    n = prompts.ctx.shape[0]
    x = text.token_embedding(ids)
    x = torch.cat([x[:, :start], text_context(prompts, ids.shape[0]), x[:, start + n:]], 1)
    mask = text.attn_mask
    if text.cls_emb is not None:  # CoCa: a CLS appended, padding keys masked out (the CLS counts as valid)
        x = torch.cat([x, text.cls_emb.expand(x.shape[0], 1, -1)], 1)
        valid, cls = ids != text.pad_id, torch.ones_like(ids[:, :1], dtype=torch.bool)
        valid = torch.cat([valid, cls] if text.correct_cls_mask else [cls, valid], 1)
        pad = torch.zeros(valid.shape, dtype=x.dtype).masked_fill(~valid, float("-inf"))
        length = x.shape[1]
        mask = (mask[:length, :length] + pad[:, None, :]).repeat_interleave(text.heads, 0)
    x = x + text.positional_embedding[:x.shape[1]]
    for layer, block in enumerate(text.transformer.resblocks):
        if 1 <= layer <= len(prompts.text_deep):
            x = _put(x, start, prompts.text_deep[layer - 1])
        x = block(x, attn_mask=mask)
    rows = torch.arange(x.shape[0])
    if text.cls_emb is not None:
        pooled = text.ln_final(x[:, -1])
    else:
        x = text.ln_final(x)
        pooled = {"first": lambda: x[:, 0], "last": lambda: x[:, -1], "argmax": lambda: x[rows, ids.argmax(-1)],
                  "eos": lambda: x[rows, (ids == text.eos_id).int().argmax(-1)]}[text.pool_type]()
    proj = text.text_projection
    return proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj


def _vision_prompts(prompts):
    return (prompts.vision_ctx, list(prompts.vision_deep)) if prompts.vision_ctx is not None else (None, [])


def manual_open_clip_image(host, images, prompts):
    """open_clip's ViT: prompts appended before ln_pre, replaced per layer, stripped before pooling."""
    v = host.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    ctx, deep = _vision_prompts(prompts)
    length = x.shape[1]
    if ctx is not None:
        x = _put(x, length, ctx)
    x = v.ln_pre(x)
    for layer, block in enumerate(v.transformer.resblocks):
        if 1 <= layer <= len(deep):
            x = _put(x, length, deep[layer - 1])
        x = block(x)
    x = x[:, :length]
    if v.attn_pool is not None:  # CoCa: attentional pooler, then CLS-style pooling of its queries
        x = v.ln_post(v.attn_pool(x))
    else:
        x = v.ln_post(x)
    return x[:, 0] @ v.proj


def manual_timm_image(host, images, prompts):
    """A timm ViT / Eva trunk: prompts join after the position embeddings (last, or right after the
    prefix tokens with identity rotations where the trunk is rotary) and leave before the final norm."""
    trunk = host.visual.trunk
    x = trunk.patch_embed(images)
    if trunk.cls_token is not None:
        x = torch.cat([trunk.cls_token.expand(x.shape[0], -1, -1), x], 1)
    x = trunk.norm_pre(x + trunk.pos_embed)
    rope = trunk.rope.get_embed() if getattr(trunk, "rope", None) is not None else None
    ctx, deep = _vision_prompts(prompts)
    at = trunk.num_prefix_tokens if rope is not None else x.shape[1]
    n = 0
    if ctx is not None:
        n = ctx.shape[0]
        x = torch.cat([x[:, :at], ctx.expand(x.shape[0], -1, -1), x[:, at:]], 1)
        if rope is not None:  # the prompts are not rotated: sine 0, cosine 1
            half = rope.shape[-1] // 2
            rope = torch.cat([torch.cat([torch.zeros(n, half), torch.ones(n, half)], -1), rope], 0)
    for layer, block in enumerate(trunk.blocks):
        if 1 <= layer <= len(deep):
            x = _put(x, at, deep[layer - 1])
        x = block(x, rope=rope) if rope is not None else block(x)
    x = trunk.norm(torch.cat([x[:, :at], x[:, at + n:]], 1))
    if trunk.attn_pool is not None:  # SigLIP: MAP
        pooled = trunk.attn_pool(x)
    elif trunk.global_pool == "avg":
        pooled = x[:, trunk.num_prefix_tokens:].mean(1)
    else:  # EVA02: CLS
        pooled = x[:, 0]
    return host.visual.head(trunk.head(trunk.fc_norm(pooled)))


def manual_hf_text(host, ids, prompts, start):
    """open_clip's HFTextEncoder over XLM-R: context at the word embeddings, position ids from the
    ids (RoBERTa's: after the padding index, padding kept at it), padding masked, mean pooled."""
    assert start == 1  # after <s>
    text = host.text
    model, n = text.transformer, prompts.ctx.shape[0]
    emb = model.embeddings
    x = emb.word_embeddings(ids)
    x = torch.cat([x[:, :start], text_context(prompts, ids.shape[0]), x[:, start + n:]], 1)
    valid = ids != text.config.pad_token_id
    positions = valid.long().cumsum(1) * valid + emb.padding_idx
    x = emb.LayerNorm(x + emb.token_type_embeddings(torch.zeros_like(ids)) + emb.position_embeddings(positions))
    mask = torch.zeros(valid.shape, dtype=x.dtype).masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
    for layer, block in enumerate(model.encoder.layer):
        if 1 <= layer <= len(prompts.text_deep):
            x = _put(x, start, prompts.text_deep[layer - 1])
        out = block(x, attention_mask=mask)
        x = out if torch.is_tensor(out) else out[0]
    pooled = (x * valid[..., None]).sum(1) / valid.sum(-1, keepdim=True)
    return text.proj(pooled)


def _beit_attention(attn, x, shared, n):
    """A Beit attention written out, its relative position biases padded with zeros for the ``n``
    prompt tokens at the end."""
    b, length, width = x.shape
    bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)) if attn.q_bias is not None else None
    q, k, v = F.linear(x, attn.qkv.weight, bias).reshape(b, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    biases = [F.pad(shared, (0, n, 0, n))] if shared is not None else []
    if attn.relative_position_bias_table is not None:
        side = attn.window_size[0] * attn.window_size[1] + 1
        table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(side, side, -1)
        biases.insert(0, F.pad(table.permute(2, 0, 1), (0, n, 0, n)).unsqueeze(0))
    if attn.fused_attn:  # the kernel the trunk takes, given the summed bias as its additive mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=sum(biases[1:], biases[0]) if biases else None)
    else:
        out = (sum(biases, (q * attn.scale) @ k.transpose(-2, -1))).softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, length, width))


def manual_beit_image(host, images, prompts):
    """A timm Beit trunk: prompts appended after the position embedding, with zero relative position
    bias, replaced per layer, stripped before the final norm and the mean pooling."""
    trunk = host.visual.trunk
    x = trunk.patch_embed(images)
    x = torch.cat([trunk.cls_token.expand(x.shape[0], -1, -1), x], 1)
    x = x + trunk.pos_embed if trunk.pos_embed is not None else x
    shared = trunk.rel_pos_bias() if trunk.rel_pos_bias is not None else None
    ctx, deep = _vision_prompts(prompts)
    length, n = x.shape[1], 0 if ctx is None else ctx.shape[0]
    if ctx is not None:
        x = _put(x, length, ctx)
    for layer, block in enumerate(trunk.blocks):
        if 1 <= layer <= len(deep):
            x = _put(x, length, deep[layer - 1])
        x = x + block.gamma_1 * _beit_attention(block.attn, block.norm1(x), shared, n)
        x = x + block.gamma_2 * block.mlp(block.norm2(x))
    x = trunk.norm(x[:, :length])
    pooled = x[:, trunk.num_prefix_tokens:].mean(1) if trunk.global_pool == "avg" else x[:, 0]
    return host.visual.head(trunk.head(trunk.fc_norm(pooled)))


def _clip_text(host, ids, prompts, start):
    assert start == 1  # CLIP's start token
    return manual_clip_text(host, ids, prompts)




def _unprompted_image(host, images, prompts):
    assert prompts.vision_ctx is None  # text prompts only
    return host.visual(images)


def _case(name, build, image, text=manual_text, tokenizer=_clip_tokenizer, **kwargs):
    kwargs.setdefault("checkpointing", lambda host, on: host.set_grad_checkpointing(on))
    return HostCase(name=name, build=build, tokenizer=tokenizer, own_text=_own_text, own_logits=_own_logits,
                    manual_text=text, manual_logits=frame_averaged(image, text), text_layers=LAYERS,
                    vision_layers=LAYERS, **kwargs)


def _has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


CASES = [] if open_clip is None else [
    _case("oc-custom-text", build_custom_text, manual_open_clip_image),
    _case("oc-siglip", build_siglip, manual_timm_image, tokenizer=WordTokenizer, causal=False),
    _case("oc-eva02", build_eva02, manual_timm_image),
    _case("oc-coca", build_coca, manual_open_clip_image),
    _case("oc-beit", build_beit, manual_beit_image),
    *([_case("oc-hf-text", build_hf_text, manual_open_clip_image, text=manual_hf_text, tokenizer=XLMRTokenizer,
             causal=False, checkpointing=hf_text_checkpointing, checkpoint_needs_train=True)]
      if _has_transformers() else []),
    _case("oc-resnet", build_resnet, _unprompted_image, vision=False),
    _case("oc-clip-timm", build_clip_timm, manual_timm_image, text=_clip_text),
]
