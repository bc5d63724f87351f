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


# ----------------------------------------------------------------- the guards as Trainer options

def _guarded_config(root, out, **run):
    from promptcouple.train import TrainConfig

    return TrainConfig.from_dict({
        "model": {"name": "tiny"},
        "prompts": {"n_ctx": 4, "text_depth": 2, "vision_depth": 2, "n_vision_ctx": 4, "dropout": 0.5,
                    "hard_prompts": str(root / "hard.safetensors")},
        "data": {"train_list": str(root / "train.safetensors"), "labels": str(root / "classes.csv"),
                 "val_list": str(root / "val.safetensors"), "image_size": 32, "num_frames": 2},
        "anchors": {"list": str(root / "anchors.safetensors"), "mode": "consistency", "weight": 0.5},
        "loss": {"self_reg_text": 25.0, "self_reg_vision": 10.0, "self_reg_kl": 1.0},
        "optim": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "warmup_epochs": 1, "prompt_average": True,
                  "prompt_average_mean": 2.0, "prompt_average_std": 1.0},
        "eval": {"batch_size": 4},
        "run": {"output_dir": str(out), "progress": False, "seed": 7, **run},
    })


def test_trainer_with_self_regularisation_and_prompt_average(tmp_path):
    """A run with both guards (beside coupling and anchors) trains, resumes bit-identically, and
    evaluates and saves the Gaussian average of its epochs' prompts."""
    from promptcouple.data import write_label_csv
    from promptcouple.train import ConfigError, Trainer, tiny_clip, write_clip_file
    from promptcouple.train.checkpoint import load_checkpoint
    from promptcouple.train.data import synthetic_clips

    root = tmp_path / "data"
    root.mkdir()
    write_clip_file(root / "train.safetensors", *synthetic_clips(8, 4, seed=0), ["red", "green", "blue", "white"])
    write_clip_file(root / "val.safetensors", *synthetic_clips(4, 4, seed=1), ["red", "green", "blue", "white"])
    write_clip_file(root / "anchors.safetensors", *synthetic_clips(4, 2, seed=3), ["jumping", "waving"])
    write_label_csv(root / "classes.csv", ["red", "green", "blue", "white"])
    torch.manual_seed(0)
    pc.CouplingPromptWrapper(tiny_clip(), pc.CouplingConfig(n_ctx=4, text_depth=2, vision_depth=2,
                                                            n_vision_ctx=4)).save_prompts(root / "hard.safetensors")

    full = Trainer(_guarded_config(root, tmp_path / "full"))
    assert full.step_module.self_regularizer is not None
    results = full.fit()
    assert results["status"] == "finished" and all(math.isfinite(h["loss"]) for h in results["history"])

    # The same run in three invocations; the per-epoch prompts are read from the checkpoints.
    out = tmp_path / "resumed"
    epochs = []
    for i in range(3):
        t = Trainer(_guarded_config(root, out, stop_after_epochs=1), resume=i > 0)
        t.fit()
        epochs.append({k: v for k, v in load_checkpoint(out / "checkpoint.pt")["prompts"].items()})
    final = {k: v.detach().clone() for k, v in t.wrapper.prompts.state_dict().items()}
    reference = {k: v.detach().clone() for k, v in full.wrapper.prompts.state_dict().items()}
    for k in reference:
        assert torch.equal(final[k], reference[k]), k

    # The evaluated and saved prompts are the Gaussian average of the epochs' trained prompts.
    w = [math.exp(-0.5 * ((e - 2.0) / 1.0) ** 2) for e in (1, 2, 3)]
    trained = {n for n, p in full.wrapper.prompts.named_parameters() if p.requires_grad}
    assert trained
    for name in trained:
        expected = sum(wi * e[name].double() for wi, e in zip(w, epochs)) / sum(w)
        torch.testing.assert_close(reference[name], expected.float(), atol=1e-6, rtol=0)
        assert not torch.equal(reference[name], epochs[-1][name])  # not simply the last epoch
    full.wrapper.load_prompts(tmp_path / "full" / "prompts.safetensors")
    for k, v in full.wrapper.prompts.state_dict().items():
        assert torch.equal(v, reference[k]), k

    with pytest.raises(ConfigError, match="loss.self_reg_kl"):
        _guarded_config(root, tmp_path / "x").__class__.from_dict({"loss": {"self_reg_kl": -1},
                                                                   "data": {"world": {"dataset": "wk400"}}})
