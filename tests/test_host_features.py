"""Host features while wrapped: what a host returns when called directly keeps its own shapes.

* transformers hosts with ``output_hidden_states=True``: vision hidden states without the prompt
  tokens (checked against the host's own and the hand-written prompted encoder), text hidden states
  at the ids' length with the prompt tokens at the placeholder positions;
* ``Siglip2Model`` with a ``pixel_attention_mask`` (its processor's padded NaFlex batches);
* open_clip towers whose text is a transformers model (``HFTextEncoder``): the contract runs on
  them through ``tests/zoo/open_clip_custom.py``; here, what they refuse;
* timm trunks: BEiT's relative position bias with prompt tokens, and Swin's refusal.

Every reference is computed with the host's parameters frozen as the wrapper freezes them, so both
sides of a comparison take the same kernels.
"""

from __future__ import annotations

import pytest
import torch

import promptcouple as pc
from promptcouple.errors import UnsupportedHostError
from zoo import hf as zoo_hf

HF_CASES = {case.name: case for case in zoo_hf.CASES}
N_CTX, N_VISION = 4, 3
CLASSES = ["archery", "riding a bike"]


def _ivlp(vision: bool = True) -> pc.CouplingConfig:
    if not vision:
        return pc.CouplingConfig(n_ctx=N_CTX, text_depth=3, n_vision_ctx=0, vision_depth=0)
    return pc.CouplingConfig(n_ctx=N_CTX, text_depth=3, n_vision_ctx=N_VISION, vision_depth=3)


def _hf_host(name: str):
    if name not in HF_CASES:
        pytest.skip(f"{name} needs a transformers release that has it")
    host = HF_CASES[name].build(0).requires_grad_(False)  # frozen, as the wrapper leaves it
    return HF_CASES[name], host


def _vision_inputs(name: str, images: torch.Tensor) -> dict:
    return zoo_hf._siglip2_inputs(images) if name == "hf-siglip2" else dict(pixel_values=images)


def _images(seed: int = 1) -> torch.Tensor:  # two images: one X-CLIP clip of its two frames
    return torch.randn(2, 3, zoo_hf.IMAGE, zoo_hf.IMAGE, generator=torch.Generator().manual_seed(seed))


def _manual_encoder_output(name: str, host, images, prompts) -> torch.Tensor:
    """The prompted encoder's output (prompts stripped), written out in ``tests/zoo/hf.py``."""
    v = host.vision_model
    if name in ("hf-clip", "hf-xclip"):
        pre = v.pre_layrnorm if name == "hf-clip" else v.pre_layernorm
        return zoo_hf._manual_vision_states(v, zoo_hf._clip_embed(v, images), prompts, pre)
    if name == "hf-siglip2":
        x = v.embeddings.patch_embedding(zoo_hf._siglip2_inputs(images)["pixel_values"])
    else:
        x = v.embeddings.patch_embedding(images).flatten(2).transpose(1, 2)
    return zoo_hf._manual_vision_states(v, x + v.embeddings.position_embedding.weight, prompts)


HF_NAMES = ["hf-clip", "hf-siglip", "hf-siglip2", "hf-xclip"]


def _selects_hidden_states() -> bool:
    """Whether this transformers takes ``output_hidden_states=[indices]`` (a 5.x addition)."""
    import importlib.util

    spec = importlib.util.find_spec("transformers.utils.output_capturing")
    if spec is None:
        return False
    import transformers.utils.output_capturing as capturing

    return hasattr(capturing, "selected_hidden_states")


@pytest.mark.parametrize("name", HF_NAMES)
def test_vision_hidden_states_leave_out_the_prompt_tokens(name):
    case, host = _hf_host(name)
    inputs = _vision_inputs(name, _images())
    with torch.no_grad():
        own = host.vision_model(**inputs, output_hidden_states=True).hidden_states
    wrapper = pc.CouplingPromptWrapper(host, _ivlp(), tokenizer=case.tokenizer()).eval()
    with torch.no_grad():
        out = host.vision_model(**inputs, output_hidden_states=True)
        as_tuple = host.vision_model(**inputs, output_hidden_states=True, return_dict=False)
        with wrapper.prompts_disabled():
            disabled = host.vision_model(**inputs, output_hidden_states=True).hidden_states
            manual = _manual_encoder_output(name, host, _images(), wrapper.prompts)  # the hooks off
    states = out.hidden_states
    assert [h.shape for h in states] == [h.shape for h in own]  # the un-prompted sequence length
    assert [h.shape for h in as_tuple[2]] == [h.shape for h in own]
    # Before any block the patch tokens do not see the prompts; the last layer's are the prompted encoder's.
    torch.testing.assert_close(states[0], own[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(states[-1], manual, atol=1e-5, rtol=0)
    assert (states[-1] - own[-1]).abs().max() > 1e-3  # the prompts did act
    for a, b in zip(disabled, own):  # prompts off: the host's own, same kernels
        assert torch.equal(a, b)
    if _selects_hidden_states():  # a selection leaves None for the layers not asked for
        with torch.no_grad():
            chosen = host.vision_model(**inputs, output_hidden_states=[0, -1]).hidden_states
        assert [h.shape for h in chosen if h is not None] == [own[0].shape, own[-1].shape]
        torch.testing.assert_close(chosen[-1], states[-1], atol=0, rtol=0)
    host = wrapper.unwrap()
    with torch.no_grad():
        again = host.vision_model(**inputs, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(again, own))


def test_attention_maps_keep_the_prompt_tokens_last_as_documented():
    case, host = _hf_host("hf-clip")
    host.set_attn_implementation("eager")  # SDPA returns no attention maps
    pc.CouplingPromptWrapper(host, _ivlp(), tokenizer=case.tokenizer()).eval()
    with torch.no_grad():
        out = host.vision_model(pixel_values=_images(), output_attentions=True, output_hidden_states=True)
    length = out.hidden_states[0].shape[1]
    assert out.attentions and all(a.shape[-2:] == (length + N_VISION, length + N_VISION) for a in out.attentions)
    assert all(a[..., length:].sum() > 0 for a in out.attentions)  # the patches do attend to the prompts


def test_a_copys_unwrap_leaves_the_originals_stripping():
    import copy

    case, host = _hf_host("hf-siglip")
    inputs = _vision_inputs("hf-siglip", _images())
    wrapper = pc.CouplingPromptWrapper(host, _ivlp(), tokenizer=case.tokenizer()).eval()
    twin = copy.deepcopy(wrapper)
    twin_host = twin.unwrap()
    with torch.no_grad():
        states = host.vision_model(**inputs, output_hidden_states=True).hidden_states
        own = twin_host.vision_model(**inputs, output_hidden_states=True).hidden_states
    assert [h.shape for h in states] == [h.shape for h in own]
    assert (states[-1] - own[-1]).abs().max() > 1e-3  # the original is still prompted, the copy is not


@pytest.mark.parametrize("name", ["hf-clip", "hf-siglip"])
def test_hidden_states_with_text_prompts_only_are_the_hosts_own(name):
    case, host = _hf_host(name)
    inputs = _vision_inputs(name, _images())
    with torch.no_grad():
        own = host.vision_model(**inputs, output_hidden_states=True).hidden_states
        pc.CouplingPromptWrapper(host, _ivlp(vision=False), tokenizer=case.tokenizer()).eval()
        wrapped = host.vision_model(**inputs, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(wrapped, own))


@pytest.mark.parametrize("name", HF_NAMES)
def test_text_hidden_states_hold_the_prompts_at_the_placeholders(name):
    case, host = _hf_host(name)
    wrapper = pc.CouplingPromptWrapper(host, _ivlp(), tokenizer=case.tokenizer()).eval()
    ids = wrapper.tokenize(CLASSES)
    start = wrapper._ctx_start
    with torch.no_grad():
        states = host.text_model(input_ids=ids, output_hidden_states=True).hidden_states
        with wrapper.prompts_disabled():
            own = host.text_model(input_ids=ids, output_hidden_states=True).hidden_states
    assert all(h.shape[:2] == ids.shape for h in states)
    first, own_first = states[0], own[0]  # embeddings: only the placeholders change
    assert torch.equal(first[:, :start], own_first[:, :start])
    assert torch.equal(first[:, start + N_CTX:], own_first[:, start + N_CTX:])
    assert (first[:, start:start + N_CTX] - own_first[:, start:start + N_CTX]).abs().amax(-1).min() > 1e-3
    host = wrapper.unwrap()
    with torch.no_grad():
        unwrapped = host.text_model(input_ids=ids, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(unwrapped, own))


# ---------------------------------------------------------------------- Siglip2's padding mask

def _padded(inputs: dict, extra: int, seed: int = 7) -> dict:
    """The batch as Siglip2's processor pads it to more patches: junk patches, masked out."""
    pixels = inputs["pixel_values"]
    junk = torch.randn(pixels.shape[0], extra, pixels.shape[-1], generator=torch.Generator().manual_seed(seed))
    mask = inputs["pixel_attention_mask"]
    return dict(pixel_values=torch.cat([pixels, junk], 1), spatial_shapes=inputs["spatial_shapes"],
                pixel_attention_mask=torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], 1))


def test_siglip2_takes_its_padding_mask_while_wrapped():
    case, host = _hf_host("hf-siglip2")
    images = _images()
    inputs = zoo_hf._siglip2_inputs(images)  # an all-ones mask
    padded = _padded(inputs, extra=5)
    ids = zoo_hf.WordTokenizer()(["a photo", "a video of archery"])
    with torch.no_grad():
        own_logits = host(input_ids=ids, **inputs).logits_per_image
    wrapper = pc.CouplingPromptWrapper(host, _ivlp(), tokenizer=case.tokenizer()).eval()
    with torch.no_grad():
        no_mask = wrapper.host.encode_image(images)  # the wrapper's own path: every patch real, no mask
        with wrapper.prompts_disabled():  # the hand-written path puts the prompts in itself
            manual = zoo_hf._manual_siglip_image(host, images, wrapper.prompts)
        ones = host.get_image_features(**inputs).pooler_output
        out = host.get_image_features(**padded, output_hidden_states=True)
        logits = host(input_ids=ids, **padded).logits_per_image
        with wrapper.prompts_disabled():
            disabled_logits = host(input_ids=ids, **padded).logits_per_image
    torch.testing.assert_close(no_mask, manual, atol=1e-5, rtol=0)
    assert torch.equal(ones, no_mask)  # an all-ones mask is no mask
    # Padded patches are masked keys in every layer and in the pooling head, so the valid ones give the
    # same features; the tolerance covers the longer sequence's other reduction blocking.
    torch.testing.assert_close(out.pooler_output, no_mask, atol=1e-6, rtol=0)
    assert all(h.shape[1] == padded["pixel_values"].shape[1] for h in out.hidden_states)  # no prompt tokens
    assert (logits - own_logits).abs().max() > 1e-4  # the prompts act on the padded batch too
    torch.testing.assert_close(disabled_logits, own_logits, atol=1e-5, rtol=0)


def test_siglip2_mask_widening_keeps_additive_and_4x_layouts():
    """The encoder mask as eager attention (additive) and transformers 4.x (square) give it."""
    from promptcouple.adapters.hf import HFSiglip2Adapter

    x = torch.zeros(2, 7, 4)  # 5 patch tokens, then 2 prompt tokens
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    additive = torch.zeros(2, 1, 5, 5).masked_fill(~valid[:, None, None, :], torch.finfo(torch.float32).min)
    args, kwargs = HFSiglip2Adapter._mask_prompt_tokens(None, (), dict(inputs_embeds=x, attention_mask=additive))
    mask = kwargs["attention_mask"]
    assert mask.shape == (2, 1, 7, 7)
    expected = torch.cat([valid, torch.ones(2, 2, dtype=torch.bool)], 1)
    assert torch.equal(mask == 0, expected[:, None, None, :].expand(-1, 1, 7, -1))
    assert HFSiglip2Adapter._mask_prompt_tokens(None, (x[:, :5],), dict(attention_mask=additive)) is None


# ------------------------------------------------------------- open_clip and timm towers

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
from zoo import open_clip_custom as zoo_oc  # noqa: E402  (needs both)


def test_open_clip_hf_text_tower_of_another_layout_is_refused_with_the_reason():
    """An mt5 text tower (T5's layout: ``shared``, ``encoder.block``) is not BERT's; the contract runs on XLM-R."""
    import transformers
    from functools import partial
    from unittest import mock

    from open_clip.hf_model import HFTextEncoder

    config = transformers.MT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    with mock.patch.object(open_clip.model, "HFTextEncoder", partial(HFTextEncoder, config=config)):
        host = open_clip.CustomTextCLIP(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=16, layers=1,
                                                                      head_width=8),
                                        text_cfg=dict(hf_model_name="google/mt5-small", hf_model_pretrained=False))
    with pytest.raises(UnsupportedHostError) as err:
        pc.CouplingPromptWrapper(host, _ivlp(), tokenizer=zoo_oc.XLMRTokenizer())
    assert "HFTextEncoder over a transformers 'mt5' model" in str(err.value)
    assert "BERT's layout (embeddings.word_embeddings and encoder.layer" in str(err.value)


class _BertTokenizer(zoo_oc.XLMRTokenizer):
    """BERT's layout: [CLS] (1), word pieces, [SEP] (2), then [PAD] (0)."""

    bos_id, pad_id, eos_id = 1, 0, 2


def test_open_clip_hf_text_tower_with_bert_layout_and_cls_pooling():
    """BERT: absolute positions from 0 and its pooler's CLS output. The context initialised from a
    phrase gives the host's own features of the written-out phrase; trained, it changes them."""
    import transformers
    from functools import partial
    from unittest import mock

    from open_clip.hf_model import HFTextEncoder

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=_BertTokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                                     pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with mock.patch.object(open_clip.model, "HFTextEncoder", partial(HFTextEncoder, config=config)):
        host = open_clip.CustomTextCLIP(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=16, layers=1,
                                                                      head_width=8),
                                        text_cfg=dict(hf_model_name="bert-base-uncased", hf_model_pretrained=False,
                                                      hf_pooler_type="cls_pooler", hf_proj_type="linear")).eval()
    host.requires_grad_(False)
    tokenizer = _BertTokenizer()
    with torch.no_grad():
        expected = host.encode_text(tokenizer(["a video of a person archery."]))
    cfg = pc.CouplingConfig(ctx_init="a video of a person", text_depth=1, n_vision_ctx=0, vision_depth=0)
    wrapper = pc.CouplingPromptWrapper(host, cfg, tokenizer=tokenizer).eval()
    assert wrapper.host.text.context_length == 32 and not wrapper.host.text.causal
    with torch.no_grad():
        torch.testing.assert_close(wrapper.encode_text(["archery"]), expected, atol=1e-5, rtol=0)
        wrapper.prompts.ctx.add_(torch.randn_like(wrapper.prompts.ctx))
        assert (wrapper.encode_text(["archery"]) - expected).abs().max() > 1e-3
    with torch.no_grad():
        assert torch.equal(wrapper.unwrap().encode_text(tokenizer(["a video of a person archery."])), expected)


def test_open_clip_hf_text_tower_wants_its_tokenizer():
    host = zoo_oc.build_hf_text(0)
    with pytest.raises(pc.errors.InvalidInputError, match=r"open_clip.get_tokenizer\('<model name>'\)"):
        pc.CouplingPromptWrapper(host, _ivlp())


SWIN_SIZES = dict(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2))


def _swin_host(cls):
    from unittest import mock

    create = timm.create_model
    torch.manual_seed(0)
    with mock.patch.object(timm, "create_model", lambda name, **kw: create(name, **{**kw, **SWIN_SIZES})):
        return cls(embed_dim=32, vision_cfg=dict(image_size=32, timm_model_name="swin_tiny_patch4_window7_224",
                                                 timm_pool="", timm_proj="linear"),
                   text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=3)).eval()


def swin_reason(family: str) -> str:
    return (f"{family}: the image tower is a timm SwinTransformer trunk, whose windowed attention runs over a 2-D "
            "grid of patches in (shifted) local windows, merged stage by stage: there is no global token sequence "
            "for vision prompt tokens to join; this config asks for 3 vision prompt tokens")


@pytest.mark.parametrize("cls", ["CustomTextCLIP", "CLIP"])
def test_swin_trunk_refuses_vision_prompts_with_the_reason_and_takes_text_prompts(cls):
    host = _swin_host(getattr(open_clip, cls)).requires_grad_(False)
    with pytest.raises(UnsupportedHostError) as err:
        pc.CouplingPromptWrapper(host, _ivlp(), tokenizer=zoo_oc._clip_tokenizer())
    assert str(err.value).startswith(swin_reason(f"open_clip {cls}"))
    frames = torch.randn(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        own_video = host.encode_image(frames.flatten(0, 1)).mean(0, keepdim=True)
    wrapper = pc.CouplingPromptWrapper(host, _ivlp(vision=False), tokenizer=zoo_oc._clip_tokenizer()).eval()
    with torch.no_grad():
        assert torch.equal(wrapper.encode_video(frames), own_video)
        text = wrapper.encode_text(CLASSES)
        with wrapper.prompts_disabled():
            text_by_hand = (zoo_oc.manual_text if cls == "CustomTextCLIP" else zoo_oc._clip_text)(
                host, wrapper.tokenize(CLASSES), wrapper.prompts, wrapper._ctx_start)
    torch.testing.assert_close(text, text_by_hand, atol=1e-5, rtol=0)


def test_beit_bias_padding_leaves_with_unwrap():
    """The Beit case of the contract checks the prompted forward; here, that nothing stays behind."""
    host = zoo_oc.build_beit(0)
    attentions = [block.attn for block in host.visual.trunk.blocks]
    wrapper = pc.CouplingPromptWrapper(host, _ivlp(), tokenizer=zoo_oc._clip_tokenizer())
    assert all("_get_rel_pos_bias" in attn.__dict__ for attn in attentions)
    wrapper.unwrap()
    assert not any("_get_rel_pos_bias" in attn.__dict__ or attn._forward_pre_hooks for attn in attentions)
