"""ViFi-CLIP's own loop (a small model of its main.py, tests/loops/) with ``returnCLIP`` from
promptcouple.integrations.vificlip: build, optimizer, one epoch, multi-view validation, checkpoint
save / auto-resume / base-to-novel load, ``promptcouple convert``, mixed precision, for IVLP, GA2
and GA2 with anchors. DDP with two processes: tests/test_integrations_ddp.py."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import promptcouple as pc
from loops import fixtures as fx
from loops.common import CosineScheduler, auto_resume_helper, epoch_saving, train_one_epoch, validate
from loops.vificlip_loop import VIFI_DROPPED, build_optimizer, call, load_checkpoint, resume, vifi_config
from promptcouple.errors import CheckpointError, ConfigError, InvalidInputError
from promptcouple.integrations import ENV_VAR, vificlip
from promptcouple.wrapper import CouplingPromptWrapper


class DDPKeys(nn.Module):
    """DistributedDataParallel's key naming (``module.``) without a process group."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("vifi")
    found = fx.write_assets(d)
    fx.their_clip_package(found["weights"])
    yield found
    sys.path.remove(str(fx.PKG))
    for name in [m for m in sys.modules if m == "clip" or m.startswith("clip.")]:
        del sys.modules[name]


def build(assets, method, names=fx.BASE, **cfg):
    config = vifi_config(fx.ARCH, fx.FRAMES, len(names), **cfg)
    return config, vificlip.returnCLIP(config, None, names, settings=fx.settings(method, assets))


def own_logits(model, images, names):
    """The wrapper's own forward on the same prompts and inputs."""
    return CouplingPromptWrapper.forward(model, images, names)


@pytest.mark.parametrize("method", fx.METHODS)
def test_their_loop(assets, method, tmp_path):
    config, model = build(assets, method, output=str(tmp_path))
    # Built by their clip package from the same file: fp16 weights (their build_model), made fp32.
    weights = torch.load(assets["weights"])
    assert model.model.visual.conv1.weight.dtype == torch.float32
    assert torch.equal(model.model.visual.conv1.weight, weights["visual.conv1.weight"].half().float())
    assert model.prompts.coupled == (method != "ivlp")
    if model.prompts.coupled:
        model.prompts.coupling_dropout.p = 0.0  # so the probe below can replay the step exactly
    ddp = DDPKeys(model)
    optimizer = build_optimizer(config, ddp)
    scheduler = CosineScheduler(optimizer, 4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_trainable_parameters()}
    assert all(n.startswith("prompts.") for n in trainable)
    before = fx.snapshot(model)

    gaps = []

    def probe(seed, images, output):  # in the loop, the logits are the wrapper's own (anchors folded in)
        torch.manual_seed(seed)
        with torch.no_grad():
            gaps.append((output - own_logits(model, images, fx.BASE)).abs().max().item())
        assert not model.model.visual.training and model.prompts.training  # frozen host stays in eval

    losses = train_one_epoch(0, ddp, nn.CrossEntropyLoss(), optimizer, scheduler, fx.batches(2, 2, 6), config,
                             call, probe=probe)
    assert all(torch.isfinite(torch.tensor(losses))) and max(gaps) < fx.step_atol(method)
    after = fx.snapshot(model)
    assert fx.changed(before, after) == trainable  # only prompt tensors moved; prompts.hard did not
    if method == "ivlp":
        assert not model.prompts.coupled

    val = fx.batches(2, 3, 6, views=2, seed=5)
    acc, sims = validate(val, ddp, config, call)
    with torch.no_grad():  # their multi-view averaging on the wrapper's own logits
        ref = torch.cat([sum(own_logits(model, b["imgs"].view(3, 2, fx.FRAMES, 3, 32, 32)[:, i], fx.BASE)
                             .softmax(-1) for i in range(2)) for b in val])
    assert torch.allclose(sims, ref, atol=1e-6)

    # Their checkpoint, auto-resume into a freshly built model, and a base-to-novel load.
    path = epoch_saving(config, 0, ddp, acc, optimizer, scheduler, str(tmp_path), True)
    latest = auto_resume_helper(str(tmp_path))
    assert latest in (path, str(tmp_path / "best.pth"))
    config2, fresh = build(assets, method, output=str(tmp_path), resume=latest)
    ddp2 = DDPKeys(fresh)
    opt2 = build_optimizer(config2, ddp2)
    start, best, msg = resume(config2, ddp2, opt2, CosineScheduler(opt2, 4))
    assert (start, best) == (1, acc) and not msg.missing_keys and not msg.unexpected_keys
    assert fx.changed(after, fx.snapshot(fresh)) == set()
    assert len(opt2.state) == len(trainable)
    _, novel = build(assets, method, names=fx.NOVEL, resume=path)
    novel_ddp = DDPKeys(novel)
    load_checkpoint(vifi_config(fx.ARCH, fx.FRAMES, 5, resume=path), novel_ddp, opt2, CosineScheduler(opt2, 4),
                    dropped=VIFI_DROPPED)
    assert fx.changed(after, fx.snapshot(novel)) == set()
    acc_novel, sims_novel = validate(fx.batches(1, 2, 5, views=2), novel_ddp, vifi_config(fx.ARCH, fx.FRAMES, 5), call)
    assert sims_novel.shape == (2, 5)

    # promptcouple convert: the checkpoint of their loop becomes a prompt file giving the same logits.
    from promptcouple.convert import convert_checkpoint

    convert_checkpoint(path, tmp_path / "p.safetensors", trust=True)
    host = fx.tiny_clip(7)
    host.load_state_dict(model.model.state_dict())
    loaded = pc.CouplingPromptWrapper.from_pretrained(host, tmp_path / "p.safetensors").eval()
    model.eval()
    images = val[0]["imgs"][:, :fx.FRAMES]
    with torch.no_grad():
        assert torch.allclose(loaded(images, fx.BASE), model(images), atol=1e-6)


def test_coop_config_and_ctx_init(assets):
    config, model = build(assets, "ivlp", text_depth=1, n_vision=0, vision_depth=0)
    assert model.config.text_depth == 1 and not model.config.has_vision_prompts
    assert {n for n, _ in model.named_trainable_parameters()} == {"prompts.ctx"}
    # CTX_INIT with N_CTX_TEXT <= 4 initialises the context from the phrase, as ViFi-CLIP does.
    ids = model.tokenizer(["a photo of a"])[0, 1:5]
    with model.prompts_disabled():
        assert torch.allclose(model.prompts.ctx, model.model.token_embedding(ids[None])[0].float())
    _, random_init = build(assets, "ivlp", n_ctx=6)
    assert random_init.config.ctx_init is None and random_init.config.n_ctx == 6


def test_their_layout_checkpoint_loads(assets):
    """A checkpoint of ViFi-CLIP's own model (image_encoder.*, text_encoder.*, prompt_learner.ctx, VPT)
    loads through their strict=False load, instead of being silently skipped."""
    config, model = build(assets, "ivlp")
    donor = fx.tiny_clip(9)
    g = torch.Generator().manual_seed(1)
    theirs = {"module.logit_scale": donor.logit_scale.detach()}
    for k, v in donor.state_dict().items():
        if k.startswith("visual."):
            theirs["module.image_encoder." + k[len("visual."):]] = v
        elif k != "token_embedding.weight" and k != "logit_scale":
            theirs["module.text_encoder." + k] = v
    prompts = {"module.prompt_learner.ctx": torch.randn(4, 32, generator=g),
               "module.prompt_learner.token_prefix": torch.randn(6, 1, 32),
               "module.text_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, 32, generator=g),
               "module.image_encoder.VPT": torch.randn(4, 32, generator=g),
               "module.image_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, 32, generator=g)}
    state = {**theirs, **prompts}
    state.pop("module.prompt_learner.token_prefix")  # their load_checkpoint deletes it
    msg = DDPKeys(model).load_state_dict(state, strict=False)
    assert msg.unexpected_keys == [] and msg.missing_keys == ["module.model.token_embedding.weight"]
    assert torch.equal(model.model.visual.conv1.weight, donor.visual.conv1.weight)
    assert torch.equal(model.model.ln_final.weight, donor.ln_final.weight)
    assert torch.equal(model.prompts.ctx, prompts["module.prompt_learner.ctx"])
    assert torch.equal(model.prompts.text_deep[0], prompts["module.text_encoder.transformer.resblocks.1.VPT_shallow"])
    assert torch.equal(model.prompts.vision_ctx, prompts["module.image_encoder.VPT"])


def test_zero_shot_eval_is_the_frozen_clip(assets):
    config, model = build(assets, "ivlp", zs_eval=True)
    model.eval()
    images = fx.batches(1, 2, 6)[0]["imgs"]
    host = model.model
    with torch.no_grad(), model.prompts_disabled():  # the host's own computation, hooks idle
        video = host.encode_image(images.flatten(0, 1)).view(2, fx.FRAMES, -1).mean(1)
        text = host.encode_text(fx.tokenizer()(fx.BASE))
        ref = host.logit_scale.exp() * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()
    with torch.no_grad():
        assert torch.allclose(model(images), ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision(assets, dtype):
    """What apex O1 amounts to: autocast and a dynamic loss scale, on the CPU."""
    config, model = build(assets, "ga2_anchors")
    optimizer = build_optimizer(config, model)
    before = fx.snapshot(model)
    # A small initial scale: from 2**16 the first fp16 steps overflow and are skipped (as apex's would be).
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    losses = train_one_epoch(0, model, nn.CrossEntropyLoss(), optimizer, CosineScheduler(optimizer, 4),
                             fx.batches(2, 2, 6), config, call, amp_dtype=dtype, scaler=scaler)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert {k for k in fx.changed(before, fx.snapshot(model))} == {n for n, _ in model.named_trainable_parameters()}
    acc, sims = validate(fx.batches(1, 2, 6, views=2), model, config, call, amp_dtype=dtype)
    assert torch.isfinite(sims).all()


def test_refusals_and_settings(assets, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="PROMPT_MODEL"):
        build(assets, "ivlp", prompt_model=False)
    with pytest.raises(InvalidInputError, match="at least 5"):
        build(assets, "ivlp", names=fx.BASE[:4])
    with pytest.raises(ConfigError, match="X-CLIP"):
        vificlip.returnCLIP(vifi_config(fx.ARCH, fx.FRAMES, 6), None, fx.BASE, settings={"prompts": {"n_ctx": 4}})
    # The settings file named by the environment variable makes the same call train GA2.
    (tmp_path / "ga2.yaml").write_text(f"hard_prompt: {assets['hard'].name}\n")
    (tmp_path / assets["hard"].name).write_bytes(assets["hard"].read_bytes())
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "ga2.yaml"))
    model = vificlip.returnCLIP(vifi_config(fx.ARCH, fx.FRAMES, 6), None, fx.BASE)
    assert model.prompts.coupled and model.settings.source == str(tmp_path / "ga2.yaml")
    (tmp_path / "bad.yaml").write_text("hard_prompts: x\n")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="unknown keys"):
        vificlip.returnCLIP(vifi_config(fx.ARCH, fx.FRAMES, 6), None, fx.BASE)
    monkeypatch.delenv(ENV_VAR)
    # Anchor labels that are also bound class names leak those classes into the anchors.
    from promptcouple.data import write_label_csv
    from promptcouple.errors import AnchorOverlapError

    write_label_csv(tmp_path / "leaky.csv", ["archery", "waving"])
    leaky = {"anchors": {"clips": str(assets["anchors"]), "labels": str(tmp_path / "leaky.csv")}}
    with pytest.raises(AnchorOverlapError, match="archery"):
        vificlip.returnCLIP(vifi_config(fx.ARCH, fx.FRAMES, 6), None, fx.BASE, settings=leaky)
    # Anchors configured but the loss line missing: said once, not silently ignored.
    _, model = build(assets, "ga2_anchors")
    model.train()
    images = fx.batches(1, 2, 6)[0]["imgs"]
    model(images)
    with pytest.warns(UserWarning, match="anchor_loss"):
        model(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(images)  # once only
    assert vificlip.anchor_loss(DDPKeys(model)).requires_grad
    assert float(vificlip.anchor_loss(model)) == 0.0  # taken: nothing pending


def test_a_ga2_checkpoint_into_a_model_built_without_its_hard_prompt_is_refused(assets):
    """strict=False would skip prompts.hard and the mapping layer and evaluate uncoupled, silently."""
    _, ga2 = build(assets, "ga2")
    _, ivlp = build(assets, "ivlp")
    state = ga2.state_dict()
    with pytest.raises(CheckpointError, match="prompt tensors do not fit"):
        ivlp.load_state_dict(state, strict=False)
    with pytest.raises(CheckpointError, match="prompt tensors do not fit"):
        ga2.load_state_dict(ivlp.state_dict(), strict=False)
    host_only = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    ivlp.load_state_dict(host_only, strict=False)  # the host's own weights, no prompt tensor: loads
