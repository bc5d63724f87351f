"""Generic attribute anchors: the working terms act; the released term is reproduced and inert."""

import copy

import pytest
import torch
import torch.nn.functional as F

import promptcouple as pc
from hosts import make_host
from promptcouple.anchors import AnchorOverlapError

SMALL = dict(n_ctx=4, n_vision_ctx=3, text_depth=3, vision_depth=3)
CLASSES = ["archery", "riding a bike", "playing the violin"]
ANCHORS = ["juggling balls", "folding paper", "washing dishes", "planting trees"]


def clips(b=2, seed=3):
    return torch.randn(b, 3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def setup(tokenizer):
    host = make_host("open_clip")
    frozen = copy.deepcopy(host).requires_grad_(False)
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), hard_prompts=torch.randn(4, 32),
                                       tokenizer=tokenizer).eval()
    with torch.no_grad():  # move the prompts away from their init so that prompted != frozen
        for p in wrapper.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return wrapper, frozen, tokenizer


def grads(wrapper, loss):
    names, params = zip(*wrapper.named_trainable_parameters())
    return dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)))


def test_consistency_is_kl_to_the_frozen_model_and_acts(setup):
    wrapper, frozen, tokenizer = setup
    reg = pc.AnchorRegularizer(wrapper, ANCHORS, weight=2.0)
    x = clips()
    loss = reg(x)
    # the same term computed from an untouched copy of the host
    with torch.no_grad():
        u = frozen.encode_text(tokenizer([f"a video of a person {a}." for a in ANCHORS]))
        v0 = frozen.encode_image(x.flatten(0, 1)).view(2, 3, -1).mean(1)
        target = frozen.logit_scale.exp() * F.normalize(v0, dim=-1) @ F.normalize(u, dim=-1).t()
    prompted = wrapper.logits(wrapper.encode_video(x), wrapper.encode_text(ANCHORS))
    expected = 2.0 * F.kl_div(prompted.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert loss > 0
    g = grads(wrapper, loss)
    for name in ("prompts.ctx", "prompts.vision_ctx", "prompts.coupling.weight", "prompts.text_deep.0"):
        assert g[name] is not None and g[name].abs().sum() > 0, name
    assert reg.frozen_text_features() is reg.frozen_text_features()  # computed once


def test_consistency_with_frozen_anchor_text_and_feature_term(setup):
    wrapper, _, _ = setup
    reg = pc.AnchorRegularizer(wrapper, ANCHORS, anchor_text="frozen", feature_weight=1.0)
    g = grads(wrapper, reg(clips()))
    assert g["prompts.vision_ctx"].abs().sum() > 0
    assert g["prompts.ctx"] is None  # the negative prompts are frozen: only vision prompts feel it


def test_negative_mode_classifies_anchors_among_joint_labels(setup):
    wrapper, _, _ = setup
    reg = pc.AnchorRegularizer(wrapper, ANCHORS, mode="negative", classnames=CLASSES)
    x, labels = clips(), torch.tensor([1, 3])
    loss = reg(x, labels)
    joint = torch.cat([wrapper.encode_text(CLASSES), reg.frozen_text_features()])
    expected = F.cross_entropy(wrapper.logits(wrapper.encode_video(x), joint), labels + 3)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    g = grads(wrapper, loss)
    assert g["prompts.ctx"].abs().sum() > 0 and g["prompts.vision_ctx"].abs().sum() > 0
    with pytest.raises(ValueError, match="needs the anchor clips' labels"):
        reg(x)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        reg(x, torch.tensor([0, 4]))


def test_reference_mode_reproduces_released_formula_and_is_inert(setup):
    wrapper, _, _ = setup
    x, anchor, y = clips(), clips(1, seed=9), torch.tensor([0, 2])
    with pytest.warns(UserWarning, match="gradient is exactly zero"):
        reg = pc.AnchorRegularizer(wrapper, ["else"], mode="reference", alpha=1.0)
    logits = wrapper(x, CLASSES)
    adjusted = reg.adjust_logits(logits, anchor)
    # released: logit_scale * (v @ c.T + alpha * a @ u.T), a the single anchor clip
    a = F.normalize(wrapper.encode_video(anchor), dim=-1)
    u = F.normalize(reg.frozen_text_features(), dim=-1)
    torch.testing.assert_close(adjusted, logits + wrapper.logit_scale_exp * (a @ u.t()), atol=1e-5, rtol=0)
    assert (adjusted - logits).abs().min() > 0  # it did add something...
    plain, released = grads(wrapper, F.cross_entropy(logits, y)), grads(wrapper, F.cross_entropy(adjusted, y))
    for name in plain:  # ...that changes no gradient at all
        torch.testing.assert_close(released[name], plain[name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(F.cross_entropy(adjusted, y), F.cross_entropy(logits, y))
    with pytest.raises(RuntimeError, match="adjust_logits"):
        reg(anchor)


def test_reference_mode_with_as_many_labels_as_classes_is_a_per_class_bias(setup):
    wrapper, _, _ = setup
    reg = pc.AnchorRegularizer(wrapper, ANCHORS[:3], mode="reference", classnames=CLASSES)
    y = torch.tensor([0, 2])
    logits = wrapper(clips(), CLASSES)
    a = grads(wrapper, F.cross_entropy(logits, y))
    b = grads(wrapper, F.cross_entropy(reg.adjust_logits(logits, clips(1)), y))
    assert (a["prompts.vision_ctx"] - b["prompts.vision_ctx"]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="crashes"):
        pc.AnchorRegularizer(wrapper, ANCHORS, mode="reference", classnames=CLASSES)
    with pytest.raises(ValueError, match="exactly one anchor clip"):
        reg.adjust_logits(logits, clips(2))


def test_leakage_and_bad_arguments(setup):
    wrapper, _, _ = setup
    # Overlap leaks classes into the anchors: an error (as in the Trainer), unless allowed explicitly.
    with pytest.raises(AnchorOverlapError, match="leaks"):
        pc.AnchorRegularizer(wrapper, ["Archery", "yoga"], classnames=CLASSES)
    reg = pc.AnchorRegularizer(wrapper, ANCHORS)
    with pytest.raises(AnchorOverlapError, match="evaluation classes.*'washing dishes'"):
        reg.check_leakage(["washing_dishes", "surfing"])
    allowed = pc.AnchorRegularizer(wrapper, ANCHORS, allow_overlap=True)
    assert allowed.check_leakage(["washing_dishes", "surfing"]) == ["washing dishes"]
    with pytest.raises(ValueError, match="mode="):
        pc.AnchorRegularizer(wrapper, ANCHORS, mode="dps")
    with pytest.raises(ValueError, match="non-empty list"):
        pc.AnchorRegularizer(wrapper, [])
    assert "wrapper" not in dict(reg.named_modules())  # it does not own the model


def test_text_consistency_baseline(setup):
    """KgCoOp-style term: zero when prompts reproduce the hand-crafted features, acts otherwise."""
    wrapper, frozen, tokenizer = setup
    reg = pc.TextConsistencyRegularizer(wrapper, CLASSES, weight=8.0)
    with torch.no_grad():
        hand = F.normalize(frozen.encode_text(tokenizer([f"a video of a person {c}." for c in CLASSES])), dim=-1)
    torch.testing.assert_close(reg.frozen_features(), hand, atol=1e-6, rtol=0)
    assert reg(hand).abs() < 1e-5
    loss = reg()
    expected = 8.0 * (1 - (F.normalize(wrapper.encode_text(CLASSES), dim=-1) * hand).sum(-1)).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    g = grads(wrapper, loss)
    assert g["prompts.ctx"].abs().sum() > 0 and g["prompts.vision_ctx"] is None


@pytest.mark.parametrize("mode", ["consistency", "negative"])
def test_training_step_folds_the_anchor_term_into_its_passes_exactly(setup, mode):
    """One text pass (classes + anchor labels) and one vision pass (clips + anchor clips) give the
    loss and prompt gradients of the separate passes."""
    from promptcouple.train.step import TrainStep

    wrapper = setup[0]
    reg = pc.AnchorRegularizer(wrapper, ANCHORS, mode=mode, feature_weight=0.5)
    step = TrainStep(wrapper, reg)
    x, anchor, labels, anchor_labels = clips(), clips(1, seed=7), torch.tensor([0, 2]), torch.tensor([1])
    loss, parts = step(x, labels, CLASSES, anchor, anchor_labels)
    got = grads(wrapper, loss)

    text = wrapper.encode_text(CLASSES)  # the same term, every pass on its own
    separate = F.cross_entropy(wrapper(x, CLASSES), labels) + reg(anchor, labels=anchor_labels, class_features=text)
    expected = grads(wrapper, separate)
    torch.testing.assert_close(loss, separate, atol=1e-6, rtol=0)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


def test_frozen_anchor_view_is_cached_by_clip_id(setup):
    wrapper = setup[0]
    reg = pc.AnchorRegularizer(wrapper, ANCHORS, cache_frozen=True)
    plain = pc.AnchorRegularizer(wrapper, ANCHORS)
    anchor = clips(1, seed=7)
    runs = []
    handle = wrapper.host.vision.insert.register_forward_pre_hook(lambda *a: runs.append(wrapper._active))
    first = reg(anchor, clip_ids=[5])
    assert runs == [True, False]  # the prompted pass and the frozen one
    runs.clear()
    second = reg(anchor, clip_ids=[5])
    assert runs == [True]  # the frozen view came from the cache
    handle.remove()
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(second, plain(anchor), atol=1e-6, rtol=0)
    host = make_host("openai")
    with pytest.raises(ValueError, match="cache_frozen=True with train_host=.*the host trains"):
        pc.AnchorRegularizer(pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), tokenizer=setup[2],
                                                      train_host=["ln_final"]), ANCHORS, cache_frozen=True)
