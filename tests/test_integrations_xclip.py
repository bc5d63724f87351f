"""X-CLIP's own loop (a small model of its main.py, tests/loops/) around ``xclip.wrap``: FIX_TEXT and
the name-keyword optimizer groups, one epoch, multi-view validation with their text labels,
checkpoints through ``model.module``, ``promptcouple convert``, for IVLP, GA2 and GA2 with anchors.
DDP with two processes: tests/test_integrations_ddp.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import promptcouple as pc
from loops import fixtures as fx
from loops.common import CosineScheduler, auto_resume_helper, epoch_saving, train_one_epoch, validate
from loops.xclip_loop import build_optimizer, generate_text, make_call, resume, xclip_config
from promptcouple.errors import InvalidInputError
from promptcouple.integrations import xclip
from promptcouple.wrapper import CouplingPromptWrapper

HOST_TRAINS = ("model.mit.", "model.prompts_generator.")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return fx.write_assets(tmp_path_factory.mktemp("xclip"))


def build(assets, method, names=fx.BASE, seed=0):
    return xclip.wrap(fx.tiny_xclip(seed), names, pc.CouplingConfig(**fx.PROMPTS), settings=fx.settings(method, assets))


@pytest.mark.parametrize("method", fx.METHODS)
def test_their_loop(assets, method, tmp_path):
    model = build(assets, method)
    if model.prompts.coupled:
        model.prompts.coupling_dropout.p = 0.0  # so the probe below can replay the step exactly
    config = xclip_config(fx.FRAMES, 6, output=str(tmp_path))
    optimizer = build_optimizer(config, model)  # FIX_TEXT, then the keyword groups (AdamW refuses overlaps)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g: set() for g in ("clip", "mit", "prompts", "message_")}
    for key, group in zip(["clip", "clip", "mit", "mit", "prompts", "prompts", "message_", "message_"],
                          optimizer.param_groups):  # (decay, no decay) per keyword, in their order
        by_group[key] |= {names[id(p)] for p in group["params"]}
    trainable = {n for n, _ in model.named_trainable_parameters()}
    assert by_group["clip"] == set() and by_group["message_"] == set()
    assert by_group["mit"] == {n for n in trainable if n.startswith("model.mit.")}
    assert by_group["prompts"] == {n for n in trainable if n.startswith(("prompts.", "model.prompts_generator."))}
    prompt_names = {"prompts." + n for n, _ in model.prompts.named_parameters()}
    assert {n for n in trainable if n.startswith("prompts.")} == prompt_names
    assert all(g["lr"] == pytest.approx(10 * config.TRAIN.LR) for g in optimizer.param_groups[2:6])
    assert trainable == fx.trainable_names(model)  # FIX_TEXT froze none of them

    texts = generate_text(fx.BASE, fx.tokenizer())
    call = make_call(texts)
    before = fx.snapshot(model)
    gaps = []

    def probe(seed, images, output):
        torch.manual_seed(seed)
        with torch.no_grad():
            gaps.append((output - CouplingPromptWrapper.forward(model, images, fx.BASE)).abs().max().item())
        assert not model.model.visual.training and model.model.mit.training  # frozen in eval, MIT trains

    losses = train_one_epoch(0, model, nn.CrossEntropyLoss(), optimizer, CosineScheduler(optimizer, 4),
                             fx.batches(2, 2, 6), config, call, probe=probe)
    assert all(torch.isfinite(torch.tensor(losses))) and max(gaps) < fx.step_atol(method)
    after = fx.snapshot(model)
    moved = fx.changed(before, after)
    assert moved == trainable  # prompts, MIT and prompt generator; nothing else (not prompts.hard)
    assert all(n.startswith(("prompts.",) + HOST_TRAINS) for n in moved)

    val = fx.batches(2, 3, 6, views=2, seed=5)
    acc, sims = validate(val, model, config, call)
    with torch.no_grad():
        ref = torch.cat([sum(CouplingPromptWrapper.forward(model, b["imgs"].view(3, 2, fx.FRAMES, 3, 32, 32)[:, i],
                                                           fx.BASE).softmax(-1) for i in range(2)) for b in val])
    assert torch.allclose(sims, ref, atol=1e-6)

    # epoch_saving(model.module) / load_checkpoint(model.module) with strict=False, auto-resume.
    path = epoch_saving(config, 0, model, acc, optimizer, CosineScheduler(optimizer, 4), str(tmp_path), False)
    assert auto_resume_helper(str(tmp_path)) == path
    fresh = build(assets, method, seed=1)
    config2 = xclip_config(fx.FRAMES, 6, resume=path)
    opt2 = build_optimizer(config2, fresh)
    start, best, msg = resume(config2, fresh, opt2, CosineScheduler(opt2, 4))
    assert (start, best) == (1, acc) and not msg.missing_keys and not msg.unexpected_keys
    assert fx.changed(after, fx.snapshot(fresh)) == set()

    # promptcouple convert: prompts, MIT and prompt generator in one file; the same logits.
    from promptcouple.convert import convert_checkpoint

    pf = convert_checkpoint(path, tmp_path / "p.safetensors", trust=True)
    assert any(k.startswith("host.mit.") for k in pf.tensors)
    loaded = pc.CouplingPromptWrapper.from_pretrained(fx.tiny_xclip(0), tmp_path / "p.safetensors").eval()
    assert loaded.train_host == ("mit", "prompts_generator")
    model.eval()
    images = val[0]["imgs"][:, :fx.FRAMES]
    with torch.no_grad():
        assert torch.allclose(loaded(images, fx.BASE), model(images, texts), atol=1e-6)


def test_texts_must_be_the_bound_names(assets):
    model = build(assets, "ivlp").eval()
    images = fx.batches(1, 2, 6)[0]["imgs"]
    tok = fx.tokenizer()
    with torch.no_grad():
        model(images, generate_text(fx.BASE, tok))
        with pytest.raises(InvalidInputError, match="row 0 is not the tokenized class name 'archery'"):
            model(images, generate_text(fx.BASE[::-1], tok))
        with pytest.raises(InvalidInputError, match="bound to 6 class names"):
            model(images, generate_text(fx.BASE[:5], tok))


def test_their_host_checkpoint_loads(assets):
    """A state dict of X-CLIP itself (no ``model.`` prefix) loads through their strict=False load."""
    model = build(assets, "ga2")
    donor = fx.tiny_xclip(5).state_dict()
    msg = model.load_state_dict(donor, strict=False)
    assert msg.unexpected_keys == [] and all(k.startswith("prompts.") for k in msg.missing_keys)
    assert torch.equal(model.model.mit.positional_embedding, donor["mit.positional_embedding"])


def test_train_host_names_keep_one_keyword(assets):
    frozen_host = xclip.wrap(fx.tiny_xclip(0), fx.BASE, pc.CouplingConfig(**fx.PROMPTS), settings={}, train_host=())
    assert all(n.startswith("prompts.") for n, _ in frozen_host.named_trainable_parameters())
    with pytest.raises(InvalidInputError, match="exactly one of X-CLIP's optimizer keywords"):
        xclip.wrap(fx.tiny_xclip(0), fx.BASE, pc.CouplingConfig(**fx.PROMPTS), settings={},
                   train_host=("mit", "visual.ln_post"))  # no keyword: the base LR group
