"""The host contract, over every host of the zoo (``tests/zoo``) x {CoOp, IVLP, coupled} x checkpointing.

For each host: placeholders against the host's own text path on the written-out phrase, the
wrapped forward against a prompted forward written out by hand (outputs and prompt gradients),
unwrap exactness, only prompt tensors train, three training steps from a host given in training mode
leave every buffer, module mode and feature as given (frozen means frozen: BatchNorm, stochastic
depth), short text == full text where the tower is causal,
prompt-file round trip, deepcopy and pickle independence, double-wrap refusal.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import promptcouple as pc
from promptcouple.adapters import resolve_host
from promptcouple.tokenize import PromptTokenizer
from zoo import all_cases

CASES = all_cases()
CLASSES = ["archery", "riding a bike", "playing the violin"]
METHODS = ["coop", "ivlp", "coupled"]
N_CTX = 4


def config_for(case, method: str) -> tuple[pc.CouplingConfig, bool]:
    """(config, coupled) of a method on ``case``; dropout off so that train mode is deterministic."""
    vision = dict(n_vision_ctx=3, vision_depth=min(3, case.vision_layers)) if case.vision else \
        dict(n_vision_ctx=0, vision_depth=0)
    if method == "coop":
        return pc.CouplingConfig(n_ctx=N_CTX, text_depth=1, n_vision_ctx=0, vision_depth=0, dropout=0.0), False
    cfg = pc.CouplingConfig(n_ctx=N_CTX, text_depth=min(3, case.text_layers), dropout=0.0, **vision)
    return cfg, method == "coupled"


def wrap(case, host, method: str, **kwargs) -> pc.CouplingPromptWrapper:
    cfg, coupled = config_for(case, method)
    hard = None
    if coupled:
        width = resolve_host(host).text.width
        hard = torch.randn(N_CTX, width, generator=torch.Generator().manual_seed(3))
    kwargs.setdefault("tokenizer", case.tokenizer())
    return pc.CouplingPromptWrapper(host, cfg, hard_prompts=hard, train_host=case.trainable, **kwargs)


def clips(case, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, *case.frames, generator=torch.Generator().manual_seed(seed))


def perturb(wrapper: pc.CouplingPromptWrapper, seed: int = 5) -> None:
    """Move every prompt tensor away from its initialisation, so that a mix-up would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in wrapper.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def prompt_params(wrapper):
    return wrapper.trainable_parameters()


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_placeholders_equal_the_written_out_phrase(case):
    """Context initialised from a phrase, depth 1: the host's own features of the phrase itself."""
    host = case.build(0)
    tok = PromptTokenizer(case.tokenizer(), resolve_host(host).text.context_length)
    cfg = pc.CouplingConfig(ctx_init="a video of a person", text_depth=1, n_vision_ctx=0, vision_depth=0)
    wrapper = pc.CouplingPromptWrapper(host, cfg, tokenizer=case.tokenizer()).eval()
    with torch.no_grad():
        with wrapper.prompts_disabled():  # the host's own path on the same (frozen) host: like with like
            expected = case.own_text(host, tok(["a video of a person archery."]))
        torch.testing.assert_close(wrapper.encode_text(["archery"]), expected, atol=1e-5, rtol=0)
        wrapper.prompts.ctx.add_(torch.randn_like(wrapper.prompts.ctx))  # the context really sets them
        assert (wrapper.encode_text(["archery"]) - expected).abs().max() > 1e-3


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_wrapped_forward_equals_hand_written(case, method, ckpt):
    """Outputs and prompt gradients of the hooks equal the explicit computation (1e-6)."""
    if ckpt and case.checkpointing is None:
        pytest.skip(f"{case.name} has no gradient checkpointing")
    host = case.build(0)
    if ckpt:
        case.checkpointing(host, True)
    wrapper = wrap(case, host, method, short_text=False)
    perturb(wrapper)
    wrapper.train(ckpt and case.checkpoint_needs_train)
    x = clips(case)
    params = prompt_params(wrapper)
    got = wrapper(x, CLASSES)
    got_grads = torch.autograd.grad(got.logsumexp(-1).sum(), params)
    with wrapper.prompts_disabled():  # the hand-written path must not be prompted twice
        expected = case.manual_logits(host, x, wrapper.tokenize(CLASSES), wrapper.prompts, wrapper._ctx_start)
        expected_grads = torch.autograd.grad(expected.logsumexp(-1).sum(), params, allow_unused=True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    for (name, _), g, e in zip(wrapper.named_trainable_parameters(), got_grads, expected_grads):
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_unwrap_is_exact_and_only_prompts_train(case):
    # The reference is built exactly as the host was (requires_grad flags, mode, dtype): torch may
    # take other kernels when no parameter requires grad (3e-6 apart on some processors).
    host, reference = case.build(0), case.build(0)
    before = {k: v.clone() for k, v in host.state_dict().items()}
    flags = {n: p.requires_grad for n, p in host.named_parameters()}
    wrapper = wrap(case, host, "coupled")
    trainable = {id(p) for p in prompt_params(wrapper)}
    assert not any(p.requires_grad for p in host.parameters() if id(p) not in trainable)
    opt = torch.optim.AdamW(prompt_params(wrapper), lr=1e-2)
    x = clips(case)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(wrapper(x, CLASSES), torch.tensor([0, 2])).backward()
        for name, p in wrapper.named_trainable_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
    trained_host = {n for n, _ in wrapper.host_trainable_parameters()}
    for n, p in host.named_parameters():
        if n not in trained_host:
            assert p.grad is None, n
    for k, v in host.state_dict().items():
        if not any(k.startswith(m + ".") for m in case.trainable):
            assert torch.equal(v, before[k]), k

    assert wrapper.unwrap() is host
    assert {n: p.requires_grad for n, p in host.named_parameters()} == flags
    if case.trainable:  # the trained host modules moved: compare with them copied over
        reference.load_state_dict(host.state_dict())
    ids = wrapper.tokenizer(["a photo of archery.", "a photo of a cat."])
    with torch.no_grad():
        torch.testing.assert_close(case.own_text(host, ids), case.own_text(reference, ids), atol=1e-6, rtol=0)
        torch.testing.assert_close(case.own_logits(host, x, ids), case.own_logits(reference, x, ids),
                                   atol=1e-6, rtol=0)


def modes(model) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_training_leaves_the_host_exactly_as_given(case):
    """Given in training mode (BatchNorm, dropout and stochastic depth would act), wrapped, trained
    three steps with wrapper.train(), unwrapped: every buffer bit-identical, every module's mode as
    given, and the features of the original within 1e-6."""
    host, reference = case.build(0).train(), case.build(0).train()  # built alike: flags, mode, dtype
    given = modes(host)
    wrapper = wrap(case, host, "coupled")
    opt = torch.optim.AdamW(prompt_params(wrapper), lr=1e-2)
    x = clips(case)
    for _ in range(3):
        wrapper.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(wrapper(x, CLASSES), torch.tensor([0, 2])).backward()
        opt.step()
    with torch.no_grad():  # in training mode the frozen towers run without dropout or stochastic depth
        assert torch.equal(wrapper(x, CLASSES), wrapper(x, CLASSES))
    wrapper.unwrap()
    assert modes(host) == given
    for (name, b), (_, r) in zip(host.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(b, r), name
    if case.trainable:  # the trained host modules moved: compare with them copied over
        reference.load_state_dict(host.state_dict())
    host.eval(), reference.eval()
    ids = wrapper.tokenizer(["a photo of archery.", "a photo of a cat."])
    with torch.no_grad():
        torch.testing.assert_close(case.own_text(host, ids), case.own_text(reference, ids), atol=1e-6, rtol=0)
        torch.testing.assert_close(case.own_logits(host, x, ids), case.own_logits(reference, x, ids),
                                   atol=1e-6, rtol=0)


def test_the_zoo_holds_batchnorm_and_stochastic_depth():
    """The check above means something only if some host would change in training mode."""
    from timm.layers import DropPath

    by_name = {c.name: c for c in CASES}
    resnet = by_name["oc-resnet"].build(0)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in resnet.visual.modules())
    stochastic = by_name["oc-clip-timm-drop-path"].build(0).train()
    assert any(isinstance(m, DropPath) and m.drop_prob > 0 for m in stochastic.modules())
    images = torch.randn(8, *by_name["oc-clip-timm-drop-path"].frames[1:])  # 8 rows: some mask differs
    with torch.no_grad():
        assert not torch.equal(stochastic.encode_image(images), stochastic.encode_image(images))


@pytest.mark.parametrize("case", [c for c in CASES if c.causal], ids=repr)
def test_short_text_equals_full_text(case):
    host = case.build(0)
    wrapper = wrap(case, host, "coupled").eval()
    perturb(wrapper)
    names = CLASSES + ["a much longer class name with many words in it"]
    # The cut comes from the tokenizer's count at tokenization time; it must be the host's own
    # end-of-text position + 1 (every causal zoo host pools CLIP's EOT, the largest id, or the
    # first eos of that id), measured here on the ids as the host does.
    tokens = wrapper._tokenized(names)
    for rows, length in tokens.groups:
        assert length == int(tokens.ids[rows].argmax(-1).max()) + 1
    with torch.no_grad():
        short = wrapper.encode_text(names)
        wrapper.short_text = False
        full = wrapper.encode_text(names)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c.causal], ids=repr)
def test_length_grouped_text_equals_full_text(case):
    """Many prompts of varied lengths: the short path runs them in length groups, each cut after
    its own longest prompt; features and prompt gradients equal the full-length pass."""
    host = case.build(0)
    wrapper = wrap(case, host, "coupled").train()
    perturb(wrapper)
    names = [f"class {i}" + " jump" * (i % 8) for i in range(120)]
    tokens = wrapper._tokenized(names)
    rows = [r for r, _ in tokens.groups]
    assert len(rows) > 1 and sorted(torch.cat(rows).tolist()) == list(range(len(names)))
    for r, length in tokens.groups:  # each group's cut: its longest prompt's end-of-text position + 1
        assert length == int(tokens.ids[r].argmax(-1).max()) + 1

    def run(short: bool):
        wrapper.short_text = short
        feats = wrapper.encode_text(names)
        weights = torch.randn(feats.shape, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad((feats * weights).sum(), prompt_params(wrapper), allow_unused=True)
        return feats.detach(), grads  # the vision prompts get None: they are not in the text pass

    (short, short_grads), (full, full_grads) = run(True), run(False)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)
    assert any(g is not None for g in full_grads)
    for a, b in zip(short_grads, full_grads):
        assert (a is None) == (b is None)
        if a is not None:  # sums over 120 rows in another order: within 1e-5 of the gradient's scale
            torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=0)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_prompt_file_round_trip(case, tmp_path):
    wrapper = wrap(case, case.build(0), "coupled").eval()
    perturb(wrapper)
    x = clips(case)
    with torch.no_grad():
        expected = wrapper(x, CLASSES)
    wrapper.save_prompts(tmp_path / "p.safetensors")
    again = pc.CouplingPromptWrapper.from_pretrained(case.build(0), tmp_path / "p.safetensors",
                                                     tokenizer=case.tokenizer(), train_host=case.trainable).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x, CLASSES), expected, atol=0, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_deepcopy_and_pickle_are_independent(case):
    wrapper = wrap(case, case.build(0), "coupled").eval()
    perturb(wrapper)
    x = clips(case)
    with torch.no_grad():
        before = wrapper(x, CLASSES)
    twin = copy.deepcopy(wrapper)
    assert twin.model is not wrapper.model and twin.host.model is twin.model
    with torch.no_grad():
        torch.testing.assert_close(twin(x, CLASSES), before, atol=0, rtol=0)
    twin.train()
    opt = torch.optim.SGD(prompt_params(twin), lr=1.0)
    torch.nn.functional.cross_entropy(twin(x, CLASSES), torch.tensor([0, 1])).backward()
    opt.step()
    for (name, p), (_, q) in zip(wrapper.named_trainable_parameters(), twin.named_trainable_parameters()):
        assert p.grad is None, f"the copy's step reached the original's {name}"
        assert q.grad is not None and q.grad.abs().sum() > 0, name
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x, CLASSES), before, atol=0, rtol=0)
        assert (twin(x, CLASSES) - before).abs().max() > 1e-4
    restored = pickle.loads(pickle.dumps(wrapper))
    with torch.no_grad():
        torch.testing.assert_close(restored(x, CLASSES), before, atol=0, rtol=0)
    twin.unwrap()  # the copy's hooks leave the copy only
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x, CLASSES), before, atol=0, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_double_wrap_is_refused(case):
    host = case.build(0)
    wrapper = wrap(case, host, "ivlp")
    with pytest.raises(ValueError, match="already wrapped by a CouplingPromptWrapper"):
        wrap(case, host, "ivlp")
    with pytest.raises(ValueError, match="already a CouplingPromptWrapper"):
        wrap(case, wrapper, "ivlp")
    wrapper.unwrap()
    wrap(case, host, "ivlp")  # after unwrap() the host is free again
