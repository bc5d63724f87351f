"""PromptSRC-style guards: the self-regularisation term against its formula, Gaussian prompt aggregation
against a hand computation, and both on a video-specific host."""

import math

import pytest
import torch
import torch.nn.functional as F

import promptcouple as pc
from hosts import make_host
from promptcouple.guards import GaussianPromptAverage, SelfRegularizer

CLASSES = ["archery", "riding a bike", "playing the violin"]
SMALL = dict(n_ctx=4, n_vision_ctx=3, text_depth=3, vision_depth=3, dropout=0.0)


def test_self_regularizer_is_its_formula_and_trains_only_prompts(tokenizer):
    host = make_host("open_clip")
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    templates = ["a video of a person {}.", "a clip of {}."]
    reg = SelfRegularizer(wrapper, CLASSES, text_weight=2.0, vision_weight=3.0, kl_weight=0.5, templates=templates)
    x = torch.randn(2, 3, 3, 32, 32)
    text = wrapper.encode_text(CLASSES)
    video, context = wrapper.encode_video(x, return_tokens=True)
    logits = wrapper.logits(video, text, context)
    loss = reg(x, video, text, logits, context)

    with torch.no_grad(), wrapper.prompts_disabled():  # the frozen model's view, written out
        frozen = [F.normalize(host.encode_text(tokenizer([t.format(c) for c in CLASSES])), dim=-1) for t in templates]
        target_text = F.normalize(torch.stack(frozen).mean(0), dim=-1)
        frozen_video = host.encode_image(x.flatten(0, 1)).view(2, 3, -1).mean(1)
        target_logits = host.logit_scale.exp() * F.normalize(frozen_video, dim=-1) @ target_text.t()
    expected = (2.0 * (F.normalize(text, dim=-1) - target_text).abs().mean()
                + 3.0 * (F.normalize(video, dim=-1) - F.normalize(frozen_video, dim=-1)).abs().mean()
                + 0.5 * F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target_logits, -1), log_target=True,
                                 reduction="batchmean"))
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    loss.backward()
    for name, p in wrapper.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == name.startswith("prompts."), name
    with pytest.raises(ValueError, match="text_weight=-1"):
        SelfRegularizer(wrapper, CLASSES, text_weight=-1)


def test_self_regularizer_on_a_video_specific_host(tokenizer):
    from promptcouple.models.xclip import XCLIPStyle

    model = XCLIPStyle(make_host("open_clip"), num_frames=3, init="xclip")
    wrapper = pc.CouplingPromptWrapper(model, pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    reg = SelfRegularizer(wrapper, CLASSES)
    x = torch.randn(2, 3, 3, 32, 32)
    text = wrapper.encode_text(CLASSES)
    video, context = wrapper.encode_video(x, return_tokens=True)
    loss = reg(x, video, text, wrapper.logits(video, text, context), context)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0


def test_gaussian_prompt_average_by_hand():
    gpa = GaussianPromptAverage(mean=3, std=0.5)
    for epoch in (1, 2, 3):
        gpa.update({"ctx": torch.full((2,), float(epoch))}, epoch)
    w = [math.exp(-0.5 * ((e - 3) / 0.5) ** 2) for e in (1, 2, 3)]
    expected = sum(e * wi for e, wi in zip((1, 2, 3), w)) / sum(w)
    torch.testing.assert_close(gpa.average()["ctx"], torch.full((2,), expected))
    twin = GaussianPromptAverage(1, 1)
    twin.load_state_dict(gpa.state_dict())  # resumable
    torch.testing.assert_close(twin.average()["ctx"], gpa.average()["ctx"])
    assert GaussianPromptAverage.for_epochs(20).mean == 15  # PromptSRC's 15 of 20
    with pytest.raises(RuntimeError, match="no epoch was added"):
        GaussianPromptAverage(1, 1).average()
    with pytest.raises(ValueError, match="std > 0"):
        GaussianPromptAverage(1, 0)
