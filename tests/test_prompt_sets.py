"""Named prompt sets on one wrapped host: each set computes what a wrapper built with it alone
computes, switching never touches the host's hooks, training one set leaves the others alone, and
unwrap is still exact."""

from __future__ import annotations

import copy

import pytest
import torch

import promptcouple as pc
from promptcouple.adapters import resolve_host
from promptcouple.errors import InvalidInputError, InvalidTypeError
from zoo import all_cases

CASES = {c.name: c for c in all_cases()}
HOSTS = ["open_clip-tok", "hf-clip"]  # one open_clip, one Hugging Face CLIP
CLASSES = ["archery", "riding a bike", "playing the violin"]


def configs(case=None):
    """Three sets of different kinds and depths: coupled deep VL, IVLP shallower, CoOp text only."""
    return {
        "default": (pc.CouplingConfig(n_ctx=4, text_depth=3, n_vision_ctx=3, vision_depth=3, dropout=0.0), True),
        "ivlp": (pc.CouplingConfig(n_ctx=2, text_depth=2, n_vision_ctx=2, vision_depth=2), False),
        "coop": (pc.CouplingConfig(n_ctx=3, text_depth=1, n_vision_ctx=0, vision_depth=0), False),
    }


def hard_for(host, cfg, coupled, seed):
    if not coupled:
        return None
    width = resolve_host(host).text.width
    return torch.randn(cfg.n_ctx, width, generator=torch.Generator().manual_seed(seed))


def perturb(wrapper, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in wrapper.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def hook_count(host) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in host.modules())


def snapshot(wrapper) -> dict:
    return {k: v.detach().clone() for k, v in wrapper.state_dict().items() if k.startswith("prompts.")}


def three_sets(case, tmp_path):
    """A wrapper holding three sets (the third added from a prompt file), each moved off its init."""
    host = case.build(0)
    sets = configs(case)
    cfg, coupled = sets["default"]
    wrapper = pc.CouplingPromptWrapper(host, cfg, hard_prompts=hard_for(host, cfg, coupled, 1),
                                       tokenizer=case.tokenizer())
    perturb(wrapper, 10)
    cfg, coupled = sets["ivlp"]
    wrapper.add_prompts("ivlp", cfg, hard_prompts=hard_for(host, cfg, coupled, 2))
    # the third comes from a prompt file written by a wrapper of its own
    cfg, _ = sets["coop"]
    alone = pc.CouplingPromptWrapper(case.build(0), cfg, tokenizer=case.tokenizer())
    perturb(alone, 30)
    alone.save_prompts(tmp_path / "coop.safetensors")
    wrapper.add_prompts("coop", tmp_path / "coop.safetensors")
    wrapper.set_prompts("ivlp")
    perturb(wrapper, 20)
    wrapper.set_prompts("default")
    return host, wrapper


@pytest.mark.parametrize("name", HOSTS)
def test_each_set_equals_a_wrapper_built_with_it_alone(name, tmp_path):
    case = CASES[name]
    host, wrapper = three_sets(case, tmp_path)
    assert wrapper.prompt_sets == ("default", "ivlp", "coop") and wrapper.active_prompts == "default"
    x = torch.randn(2, *case.frames, generator=torch.Generator().manual_seed(4))
    hooks, handles = hook_count(host), len(wrapper._handles)
    wrapper.eval()
    for set_name, (cfg, coupled) in configs(case).items():
        wrapper.set_prompts(set_name)
        assert wrapper.active_prompts == set_name and wrapper.config.text_depth == cfg.text_depth
        assert hook_count(host) == hooks and len(wrapper._handles) == handles  # the host is hooked once
        alone = pc.CouplingPromptWrapper(case.build(0), wrapper.config, tokenizer=case.tokenizer(),
                                         hard_prompts=wrapper.prompts.hard).eval()
        alone.prompts.load_state_dict(wrapper.prompts.state_dict())
        with torch.no_grad():
            got, expected = wrapper(x, CLASSES), alone(x, CLASSES)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0, msg=lambda m: f"{set_name}: {m}")
    with torch.no_grad():  # and the sets really differ
        wrapper.set_prompts("coop")
        coop = wrapper(x, CLASSES)
        wrapper.set_prompts("default")
        assert (wrapper(x, CLASSES) - coop).abs().max() > 1e-3


@pytest.mark.parametrize("name", HOSTS)
def test_training_one_set_leaves_the_others_and_the_host_exact(name, tmp_path):
    case = CASES[name]
    reference = case.build(0)  # built as the host is
    host, wrapper = three_sets(case, tmp_path)
    before = {}
    for set_name in wrapper.prompt_sets:
        wrapper.set_prompts(set_name)
        before[set_name] = snapshot(wrapper)
    wrapper.set_prompts("ivlp")
    wrapper.train()
    assert wrapper.prompts.training
    opt = torch.optim.AdamW(wrapper.trainable_parameters(), lr=1e-2)
    x = torch.randn(2, *case.frames, generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(wrapper(x, CLASSES), torch.tensor([0, 2])).backward()
        opt.step()
    assert all(name.startswith("prompts.") for name, _ in wrapper.named_trainable_parameters())
    for set_name in wrapper.prompt_sets:
        wrapper.set_prompts(set_name)
        after = snapshot(wrapper)
        assert after.keys() == before[set_name].keys()
        changed = [k for k in after if not torch.equal(after[k], before[set_name][k])]
        assert bool(changed) == (set_name == "ivlp"), (set_name, changed)

    wrapper.unwrap()
    for (key, b), (_, r) in zip(host.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(b, r), key
    ids = wrapper.tokenizer(["a photo of archery.", "a photo of a cat."])
    with torch.no_grad():
        torch.testing.assert_close(case.own_logits(host, x, ids), case.own_logits(reference, x, ids),
                                   atol=1e-6, rtol=0)


def test_one_set_keeps_todays_names_and_the_active_set_alone_is_saved(tmp_path):
    case = CASES["open_clip-tok"]
    cfg, _ = configs(case)["ivlp"]
    wrapper = pc.CouplingPromptWrapper(case.build(0), cfg, tokenizer=case.tokenizer())
    keys = list(wrapper.state_dict())
    names = [n for n, _ in wrapper.named_trainable_parameters()]
    assert names == ["prompts.ctx", "prompts.vision_ctx", "prompts.text_deep.0", "prompts.vision_deep.0"]
    wrapper.add_prompts("other", configs(case)["default"][0])
    assert list(wrapper.state_dict()) == keys  # inactive sets are outside the module tree
    wrapper.save_prompts(tmp_path / "default.safetensors")
    wrapper.set_prompts("other")
    assert [n for n, _ in wrapper.named_trainable_parameters()][0] == "prompts.ctx"
    wrapper.save_prompts(tmp_path / "other.safetensors")
    assert pc.read_prompt_file(tmp_path / "default.safetensors").config == wrapper._sets["default"].prompts.config
    assert pc.read_prompt_file(tmp_path / "other.safetensors").config.text_depth == 3
    wrapper.set_prompts("default")
    wrapper.delete_prompts("other")
    assert wrapper.prompt_sets == ("default",) and list(wrapper.state_dict()) == keys
    assert "prompts=" not in repr(wrapper)


def test_inactive_sets_follow_dtype_and_device_moves():
    case = CASES["open_clip-tok"]
    wrapper = pc.CouplingPromptWrapper(case.build(0), configs(case)["ivlp"][0], tokenizer=case.tokenizer())
    wrapper.add_prompts("coop", configs(case)["coop"][0])
    wrapper.double()
    assert wrapper._sets["coop"].prompts.ctx.dtype == torch.float64
    wrapper.set_prompts("coop")
    with torch.no_grad():
        assert wrapper.encode_text(CLASSES).dtype == torch.float64
    twin = copy.deepcopy(wrapper)  # a copy's sets are its own, the active one registered in it
    assert twin._sets["coop"].prompts is twin.prompts and twin.prompts is not wrapper.prompts
    assert twin._sets["default"].prompts is not wrapper._sets["default"].prompts


def test_prompt_set_errors(tmp_path):
    case = CASES["open_clip-tok"]
    cfg = configs(case)["coop"][0]
    wrapper = pc.CouplingPromptWrapper(case.build(0), cfg, tokenizer=case.tokenizer())
    with pytest.raises(InvalidInputError, match="'default' exists already"):
        wrapper.add_prompts("default", cfg)
    with pytest.raises(InvalidInputError, match="'default' is the active prompt set; switch to another first"):
        wrapper.delete_prompts("default")
    with pytest.raises(InvalidInputError, match=r"no prompt set named 'nope'; the sets are \['default'\]"):
        wrapper.set_prompts("nope")
    with pytest.raises(InvalidTypeError, match="source must be"):
        wrapper.add_prompts("x", 3)
    with pytest.raises(InvalidInputError, match="text_depth=9 but the text tower has 3 layers"):
        wrapper.add_prompts("too-deep", pc.CouplingConfig())
    assert wrapper.prompt_sets == ("default",)  # nothing half-added
    wrapper.save_prompts(tmp_path / "p.safetensors")
    wrapper.add_prompts("again", tmp_path / "p.safetensors")
    assert torch.equal(wrapper._sets["again"].prompts.ctx, wrapper.prompts.ctx)
    trains_host = pc.CouplingPromptWrapper(case.build(0), cfg, tokenizer=case.tokenizer(), train_host=["ln_final"])
    with pytest.raises(InvalidInputError, match="train_host"):
        trains_host.add_prompts("other", cfg)


@pytest.mark.parametrize("name", ["open_clip-tok", "hf-clip"])
def test_a_set_added_with_ctx_init_starts_from_the_phrase(name):
    """The phrase is embedded with the hooks already in place: they must not put the active set's
    context into it (the added set would start from the default set's prompts)."""
    case = CASES[name]
    cfg = pc.CouplingConfig(ctx_init="a photo of", text_depth=1, n_vision_ctx=0, vision_depth=0)
    alone = pc.CouplingPromptWrapper(case.build(0), cfg, tokenizer=case.tokenizer())
    wrapper = pc.CouplingPromptWrapper(case.build(0), pc.CouplingConfig(n_ctx=4, text_depth=1, n_vision_ctx=0,
                                                                       vision_depth=0), tokenizer=case.tokenizer())
    perturb(wrapper, 1)
    wrapper.add_prompts("phrase", cfg)
    wrapper.set_prompts("phrase")
    torch.testing.assert_close(wrapper.prompts.ctx, alone.prompts.ctx, atol=0, rtol=0)


def test_prompts_replaced_by_assignment_are_not_served_from_the_cache():
    """load_state_dict(assign=True) gives new tensors at version 0: the cache must not mistake them."""
    case = CASES["open_clip-tok"]
    wrapper = pc.CouplingPromptWrapper(case.build(0), pc.CouplingConfig(n_ctx=4, text_depth=2, n_vision_ctx=0,
                                                                        vision_depth=0), tokenizer=case.tokenizer())
    wrapper.eval()
    with torch.no_grad():
        before = wrapper.encode_text(["archery", "bowling"])
        g = torch.Generator().manual_seed(0)  # random, not a constant shift (LayerNorm would remove that)
        state = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in wrapper.prompts.state_dict().items()}
        wrapper.prompts.load_state_dict(state, assign=True)
        after = wrapper.encode_text(["archery", "bowling"])
    assert (after - before).abs().max() > 1e-4
