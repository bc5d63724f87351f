"""The wrapper against the host itself and against a prompted forward written out by hand."""

import copy
import warnings

import pytest
import torch

import promptcouple as pc
from promptcouple.errors import InvalidTypeError
from hosts import HOSTS, make_host, manual_logits, manual_text

CLASSES = ["archery", "riding a bike", "playing the violin"]
SMALL = dict(n_ctx=4, n_vision_ctx=3, text_depth=3, vision_depth=3)


def frames(b=2, t=3, seed=1):
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("host_name", HOSTS)
def test_text_placeholders_are_exact(host_name, tokenizer):
    """Context initialised from a phrase, depth 1: the same features as the phrase written out."""
    host = make_host(host_name)
    cfg = pc.CouplingConfig(ctx_init="a video of a person", text_depth=1, n_vision_ctx=0, vision_depth=0)
    wrapper = pc.CouplingPromptWrapper(host, cfg, tokenizer=tokenizer).eval()
    assert wrapper.config.n_ctx == 5
    with torch.no_grad():
        with wrapper.prompts_disabled():  # the same frozen host: like with like
            expected = host.encode_text(tokenizer(["a video of a person archery."]))
        got = wrapper.encode_text(["archery"])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        wrapper.prompts.ctx.add_(torch.randn_like(wrapper.prompts.ctx))  # the context really sets them
        assert (wrapper.encode_text(["archery"]) - expected).abs().max() > 1e-3


CASES = [(h, pool, ckpt) for h in HOSTS for pool in (["tok"] if h == "openai" else ["tok", "avg"])
         for ckpt in (False, True)]


@pytest.mark.parametrize("host_name,pool,ckpt", CASES)
def test_wrapped_equals_hand_written_forward(host_name, pool, ckpt, tokenizer):
    """Outputs and prompt gradients of the hooks equal the explicit computation (dropout off)."""
    host = make_host(host_name, pool=pool)
    host.set_grad_checkpointing(ckpt)
    # Full-length text, as written by hand; the exact short path has its own test.
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), hard_prompts=torch.randn(4, 32),
                                       tokenizer=tokenizer, short_text=False).eval()
    x = frames()
    params = wrapper.trainable_parameters()
    assert len(params) == 1 + 2 + 1 + 2 + 2  # ctx, text deep, vision ctx, vision deep, coupling
    got = wrapper(x, CLASSES)
    got_grads = torch.autograd.grad(got.logsumexp(-1).sum(), params)

    with wrapper.prompts_disabled():  # the hand-written path must not be prompted twice
        expected = manual_logits(host, x, wrapper.tokenize(CLASSES), wrapper.prompts)
        expected_grads = torch.autograd.grad(expected.logsumexp(-1).sum(), params)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    for g, e in zip(got_grads, expected_grads):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


@pytest.mark.parametrize("host_name", HOSTS)
def test_short_text_path_is_exact(host_name, tokenizer):
    """The text tower cut after the last EOT gives the 77-token (here 32) features."""
    host = make_host(host_name)
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    ids = wrapper.tokenize(CLASSES)
    if host_name == "openai":  # the mask lives inside its blocks: it must fall back, not guess
        assert wrapper.host.encode_text_short(ids) is None
    else:
        assert wrapper.host.encode_text_short(ids) is not None
    names = CLASSES + ["a much longer class name with many words in it"]
    short = wrapper.encode_text(names)
    wrapper.short_text = False
    full = wrapper.encode_text(names)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=0)
    with wrapper.prompts_disabled():
        expected = manual_text(host, wrapper.tokenize(names), wrapper.prompts)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("host_name", HOSTS)
def test_unwrap_restores_host_and_training_touches_only_prompts(host_name, tokenizer):
    host = make_host(host_name)
    original = copy.deepcopy(host)  # as the host is given (flags, mode): other flags may take other kernels
    before = {k: v.clone() for k, v in host.state_dict().items()}
    ids, x = tokenizer(["a photo of archery."]), frames()

    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), hard_prompts=torch.randn(4, 32),
                                       tokenizer=tokenizer)
    assert list(host.state_dict()) == list(before)  # prompts live outside the host
    assert not any(p.requires_grad for p in host.parameters())
    opt = torch.optim.AdamW(wrapper.trainable_parameters(), lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(wrapper(x, CLASSES), torch.tensor([0, 2]))
        loss.backward()
        for name, p in wrapper.named_trainable_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
    for k, v in host.state_dict().items():
        assert torch.equal(v, before[k]), k

    assert wrapper.unwrap() is host
    assert all(p.requires_grad for p in host.parameters())
    with torch.no_grad():
        torch.testing.assert_close(host.encode_text(ids), original.encode_text(ids), atol=1e-6, rtol=0)
        torch.testing.assert_close(host.encode_image(x[0]), original.encode_image(x[0]), atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="unwrapped"):
        wrapper.encode_text(CLASSES)


def test_prompts_disabled_is_the_frozen_host(tokenizer):
    host = make_host("open_clip")
    reference = make_host("open_clip").requires_grad_(False).eval()  # as the wrapper leaves the host
    with torch.no_grad():
        expected = reference.encode_image(frames()[0])
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    with torch.no_grad():
        assert (host.encode_image(frames()[0]) - expected).abs().max() > 1e-4  # the hooks act...
        with wrapper.prompts_disabled():
            torch.testing.assert_close(host.encode_image(frames()[0]), expected, atol=1e-6, rtol=0)  # ...or not


def test_paper_configuration_parameter_count():
    """709,120 trainable parameters at ViT-B/16 (METHOD.md section 1); mapping layer 524,800."""
    import open_clip

    host = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(), hard_prompts=torch.randn(16, 512))
    assert wrapper.num_trainable_parameters() == 709_120
    assert sum(p.numel() for p in wrapper.prompts.coupling.parameters()) == 524_800
    assert sum(p.numel() for p in host.parameters() if p.requires_grad) == 0
    # IVLP (no hard prompt) and CoOp are configurations of the same wrapper
    wrapper.unwrap()
    ivlp = pc.CouplingPromptWrapper(host)
    assert ivlp.num_trainable_parameters() == 709_120 - 524_800
    ivlp.unwrap()
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(text_depth=1, n_vision_ctx=0, vision_depth=0))
    assert wrapper.num_trainable_parameters() == 16 * 512


def test_coupling_dropout_is_per_class_in_training(tokenizer):
    host = make_host("open_clip")
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), hard_prompts=torch.randn(4, 32),
                                       tokenizer=tokenizer)
    ctx = wrapper.prompts.text_context(3)
    assert not torch.equal(ctx[0], ctx[1])  # each class row has its own mask
    wrapper.eval()
    ctx = wrapper.prompts.text_context(3)
    assert torch.equal(ctx[0], ctx[1]) and torch.equal(ctx[0], wrapper.prompts.effective_context())


def test_eval_cache_follows_prompt_updates(tokenizer):
    wrapper = pc.CouplingPromptWrapper(make_host("open_clip"), pc.CouplingConfig(**SMALL), tokenizer=tokenizer).eval()
    with torch.no_grad():
        a = wrapper.encode_text(CLASSES)
        assert wrapper.encode_text(CLASSES) is a  # cached
        wrapper.prompts.ctx.add_(torch.randn_like(wrapper.prompts.ctx))  # an optimizer step is in place too
        b = wrapper.encode_text(CLASSES)
        assert not torch.equal(a, b)
        assert wrapper.encode_text(CLASSES[:2]).shape == (2, 32)  # another class set: recomputed
    assert wrapper.encode_text(CLASSES).requires_grad  # never cached while gradients are needed


def test_bf16_autocast_keeps_prompts_fp32(tokenizer):
    host = make_host("open_clip")
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = wrapper(frames(), CLASSES)
    logits.float().sum().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in wrapper.trainable_parameters())
    with torch.no_grad():
        full = wrapper(frames(), CLASSES)
    assert (logits.float() - full).abs().max() < 0.5  # bf16 rounding only


def test_attribute_passthrough_and_repr(tokenizer):
    host = make_host("open_clip")
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    assert wrapper.visual is host.visual and wrapper.context_length == 32
    assert "trainable=" in repr(wrapper) and "coupled=False" in repr(wrapper)
    with pytest.raises(AttributeError):
        wrapper.no_such_attribute


# ------------------------------------------------------------------------------- bad input


def test_bad_config_values():
    with pytest.raises(ValueError, match="text_depth"):
        pc.CouplingConfig(text_depth=0)
    with pytest.raises(ValueError, match="disagree"):
        pc.CouplingConfig(n_vision_ctx=0)
    with pytest.raises(ValueError, match="dropout"):
        pc.CouplingConfig(dropout=1.5)
    with pytest.warns(UserWarning, match="unknown keys"):
        assert pc.CouplingConfig.from_dict({"n_ctx": 4, "future_field": 1}).n_ctx == 4


def test_bad_wrapping_input(tokenizer):
    host = make_host("open_clip")
    with pytest.raises(ValueError, match="text_depth=9 but the text tower has 3 layers"):
        pc.CouplingPromptWrapper(host, pc.CouplingConfig(), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"shape \(3, 32\), expected \(4, 32\)"):
        pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), hard_prompts=torch.randn(3, 32), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="has 5 tokens but n_ctx=4"):
        pc.CouplingPromptWrapper(host, pc.CouplingConfig(**{**SMALL, "ctx_init": "a video of a person"}),
                                 tokenizer=tokenizer)
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"frames must be a tensor \(B, T, C, H, W\), got \(2, 3, 32, 32\)"):
        wrapper.encode_video(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="needs .* tokens .* more than the context length 32"):
        wrapper.encode_text(["word " * 40])
    with pytest.raises(ValueError, match="non-empty list"):
        wrapper.encode_text([])
    with pytest.raises(RuntimeError, match="forward_intermediates calls the blocks directly"):
        host.visual.forward_intermediates(torch.randn(1, 3, 32, 32))
    wrapper.unwrap()
    host.visual.forward_intermediates(torch.randn(1, 3, 32, 32))  # the host's own method is back


def test_unsupported_hosts():
    host = make_host("open_clip")
    with pytest.raises(pc.UnsupportedHostError, match="torch.nn.modules.linear.Linear is not a host family"):
        pc.CouplingPromptWrapper(torch.nn.Linear(2, 2))
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    with pytest.raises(pc.UnsupportedHostError, match="TorchScript"):
        pc.CouplingPromptWrapper(scripted)
    host.visual = torch.nn.Identity()  # stands for a tower with no token sequence (a ResNet)
    with pytest.raises(pc.UnsupportedHostError, match="Identity, which has no token sequence.*n_vision_ctx=0"):
        pc.CouplingPromptWrapper(host)


# ------------------------------------------------------------------------------ names and aliases


def test_new_names_and_their_deprecated_aliases(tmp_path, tokenizer, capsys):
    """Each renamed API works under its new name; the old one still works for a release and says where to go."""
    wrapper = pc.CouplingPromptWrapper(make_host("open_clip"), pc.CouplingConfig(**SMALL),
                                       hard_prompts=torch.randn(4, 32), tokenizer=tokenizer)
    named = wrapper.named_trainable_parameters()
    params = wrapper.trainable_parameters()
    assert len(params) == len(named) and all(p is q for p, (_, q) in zip(params, named))
    assert named[0][0] == "prompts.ctx"
    wrapper.print_trainable_parameters()
    assert f"trainable params: {wrapper.num_trainable_parameters():,} || all params:" in capsys.readouterr().out

    wrapper.save_pretrained(tmp_path / "p.safetensors")
    again = pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), tmp_path / "p.safetensors",
                                                     tokenizer=tokenizer)
    assert torch.equal(again.prompts.ctx, wrapper.prompts.ctx)
    with pytest.warns(DeprecationWarning, match="pc.read_prompt_file"):
        old = pc.load_prompts(tmp_path / "p.safetensors")
    assert old.config == pc.read_prompt_file(tmp_path / "p.safetensors").config

    assert torch.equal(wrapper.logit_scale_exp, wrapper.model.logit_scale.exp())  # the host's is log space
    with pytest.warns(DeprecationWarning, match="logit_scale_exp"):
        assert torch.equal(wrapper.logit_scale, wrapper.logit_scale_exp)

    from promptcouple.train import Trainer, loop

    with pytest.warns(DeprecationWarning, match=r"promptcouple\.train\.trainer\.Trainer"):
        assert loop.Trainer is Trainer

    # prompt files of 0.1 carry an unused "version" field: read without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pc.CouplingConfig.from_dict({"n_ctx": 4, "version": 1}).n_ctx == 4


def test_length_groups_known_answers():
    from promptcouple.wrapper import length_groups

    # Two clusters of 50: one pass costs 100 * 30 + 96, two cost 50 * 10 + 50 * 30 + 2 * 96.
    lengths = [10, 30] * 50
    short, long = length_groups(lengths, pass_cost=96)
    assert sorted(short.tolist()) == list(range(0, 100, 2)) and sorted(long.tolist()) == list(range(1, 100, 2))
    # Splitting does not pay when the saving is below the cost of a pass; equal lengths never split.
    assert [g.tolist() for g in length_groups([10, 11, 12], pass_cost=96)] == [[0, 1, 2]]
    assert len(length_groups([7] * 500, pass_cost=0)) == 1
    assert length_groups([]) == []
    # With a free pass every distinct length gets its own group, up to max_groups.
    groups = length_groups([3, 1, 2, 1, 3], pass_cost=0, max_groups=4)
    assert [sorted(g.tolist()) for g in groups] == [[1, 3], [2], [0, 4]]
    assert len(length_groups(list(range(20)), pass_cost=0, max_groups=4)) == 4


# ------------------------------------------------------------------------------ frozen means frozen


def _resnet_clip():
    """An open_clip CLIP with a ResNet image tower (BatchNorm) and dropout in the text tower."""
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, layers=(1, 1, 1, 1), width=8),
                          text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=2))


TEXT_ONLY = dict(n_ctx=4, text_depth=2, n_vision_ctx=0, vision_depth=0)


def _train_steps(wrapper, outer, steps=3):
    opt = torch.optim.AdamW(wrapper.trainable_parameters(), lr=1e-2)
    for _ in range(steps):
        outer.train()  # a user's loop calling .train() every epoch on a model holding the wrapper
        opt.zero_grad()
        torch.nn.functional.cross_entropy(wrapper(frames(), CLASSES), torch.tensor([0, 2])).backward()
        opt.step()


def test_frozen_host_stays_in_eval_mode_while_prompts_train(tokenizer):
    host = _resnet_clip().train()
    host.transformer.resblocks[0].eval()  # the host comes with a mix of modes
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in host.visual.modules())
    given = {n: m.training for n, m in host.named_modules()}
    before = {k: v.clone() for k, v in host.state_dict().items()}
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**TEXT_ONLY), tokenizer=tokenizer,
                                       train_host=["ln_final"])
    outer = torch.nn.ModuleDict({"video_model": wrapper})

    def frozen_in_eval():
        return not any(m.training for n, m in host.named_modules() if not n.startswith("ln_final"))

    assert frozen_in_eval()  # from the moment it is wrapped
    _train_steps(wrapper, outer)
    assert wrapper.training and wrapper.prompts.training and host.ln_final.training and frozen_in_eval()
    host.train()  # the host's own train() keeps the frozen parts in eval mode too
    assert host.ln_final.training and frozen_in_eval()
    for k, v in host.state_dict().items():  # BatchNorm statistics (and num_batches_tracked) unchanged
        if not k.startswith("ln_final."):
            assert torch.equal(v, before[k]), k
    outer.eval()
    assert not any(m.training for m in wrapper.modules())
    wrapper.unwrap()
    assert {n: m.training for n, m in host.named_modules()} == given  # the host comes back as given
    assert "train" not in host.__dict__  # its own train() again
    host.train()
    assert host.visual.bn1.training


def test_a_refused_train_host_leaves_the_host_alone(tokenizer):
    host = _resnet_clip().train()
    with pytest.raises(ValueError, match="train_host: the host has no submodule 'nope'"):
        pc.CouplingPromptWrapper(host, pc.CouplingConfig(**TEXT_ONLY), tokenizer=tokenizer, train_host=["nope"])
    assert all(p.requires_grad for p in host.parameters()) and all(m.training for m in host.modules())
    assert "train" not in host.__dict__


def test_host_train_mode_keeps_the_old_behaviour(tokenizer):
    host = _resnet_clip().eval()
    before = host.visual.bn1.running_mean.clone()
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**TEXT_ONLY), tokenizer=tokenizer, host_train_mode=True)
    _train_steps(wrapper, wrapper, steps=1)
    assert host.visual.bn1.training and host.transformer.resblocks[0].training
    assert not torch.equal(host.visual.bn1.running_mean, before)  # train-mode BatchNorm, as asked
    wrapper.unwrap()
    assert not any(m.training for m in host.modules())


def test_hugging_face_checkpointing_still_recomputes_in_a_frozen_host():
    """HF blocks checkpoint only when their own flag says training: it follows the wrapper's mode
    (their dropout, in submodules, stays off)."""
    from zoo.hf import CASES as HF

    case = next(c for c in HF if c.name == "hf-clip")
    host = case.build(0)
    case.checkpointing(host, True)
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), tokenizer=case.tokenizer()).train()
    block = host.text_model.encoder.layers[0]
    assert block.training and not block.self_attn.training and not host.text_model.training
    calls = []
    block.layer_norm1.register_forward_hook(lambda *a: calls.append(1))  # inside the checkpointed forward
    wrapper.encode_text(CLASSES).sum().backward()
    assert len(calls) == 2  # once forward, once recomputed in backward
    calls.clear()
    case.checkpointing(host, False)
    wrapper.encode_text(CLASSES).sum().backward()
    assert len(calls) == 1


@pytest.mark.parametrize("bad", [None, 3, {"archery": 0}, torch.tensor([1, 2]), iter(["archery"])],
                         ids=["None", "int", "dict", "tensor", "iterator"])
def test_classnames_that_are_not_a_list_get_a_typed_error(bad, tokenizer):
    wrapper = pc.CouplingPromptWrapper(make_host("open_clip"), pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    with pytest.raises(InvalidTypeError, match="classnames must be a list or tuple of class names"):
        wrapper(frames(), bad)
    with pytest.raises(InvalidTypeError, match="classnames"):
        wrapper.encode_text(bad)
    assert wrapper.encode_text(("archery",)).shape == (1, 32)  # a tuple is a list of names too
