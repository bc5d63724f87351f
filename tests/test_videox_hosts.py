"""X-CLIP as released (microsoft/VideoX) and GA2-CLIP's CLIP under the wrapper, beyond the contract:
X-CLIP's text cache, its own forward, frame count; GA2-CLIP's tuple text and its own prompts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import promptcouple as pc
from promptcouple.adapters import UnsupportedHostError, resolve_host
from promptcouple.adapters.openai import OpenAIAdapter
from promptcouple.adapters.videox import XCLIPAdapter
from zoo.videox import FRAMES, IMAGE, _tokenizer, build_ga2, build_xclip

CLASSES = ["archery", "riding a bike", "playing the violin"]


def frames(t: int = FRAMES, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, t, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def wrap(host, **kwargs) -> pc.CouplingPromptWrapper:
    cfg = pc.CouplingConfig(n_ctx=4, text_depth=3, n_vision_ctx=3, vision_depth=3, dropout=0.0)
    hard = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    return pc.CouplingPromptWrapper(host, cfg, hard_prompts=hard, tokenizer=_tokenizer(), **kwargs)


def test_hosts_resolve_to_their_adapters():
    xclip = resolve_host(build_xclip(0))
    assert type(xclip) is XCLIPAdapter and xclip.video_specific
    assert type(resolve_host(build_ga2(0))) is OpenAIAdapter  # GA2-CLIP's copy: the plain OpenAI layout


# ------------------------------------------------------------------------------------ X-CLIP

def test_xclip_without_prompts_equals_its_own_forward():
    """encode_video + specialize_text compose the host's modules exactly as its forward does."""
    host, reference = build_xclip(0), build_xclip(0).requires_grad_(False)
    for name in ("mit", "prompts_generator"):  # the reference's flags as the wrapper sets the host's
        reference.get_submodule(name).requires_grad_(True)
    wrapper = wrap(host, train_host=("mit", "prompts_generator")).eval()
    x = frames()
    ids = wrapper.tokenize(CLASSES)
    with torch.no_grad(), wrapper.prompts_disabled():
        got = wrapper(x, CLASSES)
    with torch.no_grad():
        expected = reference(x, ids)  # use_cache=True and an empty cache: these ids are encoded
    assert got.shape == (2, len(CLASSES))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_xclip_prompted_text_trains_through_the_cache():
    """With use_cache=True on the host, prompted text still gets gradients on every step, and the
    host's own forward (run through the hooks) follows every prompt update."""
    host = build_xclip(0, use_cache=True)
    x = frames()
    with torch.no_grad():  # fill the host's cache with un-prompted text (bare class names, as X-CLIP's)
        host(x, _tokenizer()(CLASSES))
    assert host.cache_text_features is not None
    host.eval()  # cache_text leaves the released model in training mode

    wrapper = wrap(host, train_host=("mit", "prompts_generator"))
    assert host.use_cache is False and host.cache_text_features is None
    ids = wrapper.tokenize(CLASSES)
    opt = torch.optim.SGD(wrapper.trainable_parameters(), lr=1.0)
    text_prompts = [wrapper.prompts.ctx, wrapper.prompts.coupling.weight, *wrapper.prompts.text_deep]
    before = None
    for step in range(3):
        opt.zero_grad()
        logits = wrapper(x, CLASSES)
        assert logits.shape == (2, len(CLASSES))
        own = host(x, ids)  # the host's own forward, prompted by the hooks: same logits, with gradients
        torch.testing.assert_close(own, logits, atol=1e-5, rtol=0)
        if before is not None:
            assert (logits - before).abs().max() > 1e-4, f"step {step}: the prompt update did not reach the logits"
        own_grads = torch.autograd.grad(own.logsumexp(-1).sum(), text_prompts)
        F.cross_entropy(logits, torch.tensor([0, 2])).backward()
        for i, (p, g) in enumerate(zip(text_prompts, own_grads)):
            assert p.grad is not None and p.grad.abs().sum() > 0, f"step {step}: text prompt {i} got no gradient"
            assert g.abs().sum() > 0, f"step {step}: text prompt {i} got no gradient through the host's forward"
        assert host.cache_text_features is None
        opt.step()
        before = logits.detach()


@pytest.mark.parametrize("use_cache", [True, False])
def test_xclip_unwrap_restores_the_text_cache_flag(use_cache):
    host = build_xclip(0, use_cache=use_cache)
    wrapper = wrap(host)
    assert host.use_cache is False
    wrapper.unwrap()
    assert host.use_cache is use_cache and host.cache_text_features is None


def test_xclip_wrong_frame_count_is_explained():
    wrapper = wrap(build_xclip(0))
    with pytest.raises(ValueError, match=f"built for T={FRAMES} frames per video, got clips of 3 frames"):
        wrapper(frames(t=3), CLASSES)


# ---------------------------------------------------------------------------------- GA2-CLIP

def test_ga2_encode_text_is_a_tensor_and_its_default_checkpointing_trains():
    host = build_ga2(0, checkpointing=True)  # the released default: both towers checkpoint
    features, tokens = host.encode_text(_tokenizer()(["a video of a person archery."]))
    assert tokens is None  # the host's own API returns a tuple...
    wrapper = wrap(host)
    text = wrapper.encode_text(CLASSES)
    assert torch.is_tensor(text) and text.shape == (len(CLASSES), features.shape[-1])  # ...the wrapper a tensor
    logits = wrapper(frames(), CLASSES)
    assert logits.shape == (2, len(CLASSES))
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    for name, p in wrapper.named_trainable_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ga2_built_with_its_own_prompts_is_refused():
    own = {"trainer": "IVLP", "vision_depth": 2, "vision_ctx": 3, "language_depth": 2, "language_ctx": 4}
    host = build_ga2(0, design_details=own)
    with pytest.raises(UnsupportedHostError, match="inserts prompts of its own .*visual.VPT.*vision_depth=0"):
        wrap(host)
