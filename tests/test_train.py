"""Training loop, resume, checkpoints, config validation, evaluation, CLI and backbone loading.

Everything runs on a tiny random open_clip CLIP and a few synthetic clips stored as clip files.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

import promptcouple as pc
from promptcouple.data import write_label_csv
from promptcouple.data.synthetic import write_sliding_square_videos
from promptcouple.train import (BackboneLoadError, ConfigError, TrainConfig, Trainer, TrainStep, build_host, evaluate,
                                hm, load_backbone, load_config, lr_lambda, tiny_clip, train, write_clip_file)
from promptcouple.train import trainer as trainer_module
from promptcouple.train.checkpoint import load_checkpoint
from promptcouple.train.data import ClipTensorDataset, synthetic_clips

CLASSES = ["red", "green", "blue", "white"]
NOVEL = ["cyan", "purple"]
ANCHORS = ["jumping", "waving"]
SMALL_PROMPTS = dict(n_ctx=4, text_depth=2, vision_depth=2, n_vision_ctx=4)




@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Clip files and label CSVs: 16 training clips, 7 base and 6 novel evaluation clips (2 views), anchors."""
    d = tmp_path_factory.mktemp("data")
    write_clip_file(d / "train.safetensors", *synthetic_clips(16, 4, seed=0), CLASSES)
    write_clip_file(d / "val.safetensors", *synthetic_clips(7, 4, num_views=2, seed=1), CLASSES)
    frames, labels = synthetic_clips(6, 2, num_views=2, seed=2)
    write_clip_file(d / "novel.safetensors", frames, labels, NOVEL)
    write_clip_file(d / "anchors.safetensors", *synthetic_clips(4, 2, seed=3), ANCHORS)
    write_label_csv(d / "classes.csv", CLASSES)
    write_label_csv(d / "novel.csv", NOVEL)
    torch.manual_seed(0)
    hard = pc.CouplingPromptWrapper(tiny_clip(), pc.CouplingConfig(**SMALL_PROMPTS))
    hard.save_prompts(d / "hard.safetensors")
    return d


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config(root: Path, out: Path, **over) -> TrainConfig:
    base = {
        "model": {"name": "tiny"},
        "prompts": dict(SMALL_PROMPTS, dropout=0.0),
        "data": {"train_list": str(root / "train.safetensors"), "labels": str(root / "classes.csv"),
                 "val_list": str(root / "val.safetensors"), "image_size": 32, "num_frames": 2},
        "optim": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "warmup_epochs": 1},
        "eval": {"batch_size": 4},
        "run": {"output_dir": str(out), "progress": False, "seed": 7},
    }
    return TrainConfig.from_dict(merge(base, over))


# Coupled prompts with dropout, anchors, gradient accumulation: every source of randomness and state.
RESUME = {"prompts": {"hard_prompts": None, "dropout": 0.5},
          "anchors": {"list": None, "labels": None, "mode": "consistency", "weight": 0.5},
          "optim": {"epochs": 3, "grad_accum": 2, "batch_size": 2}}


def resume_config(root: Path, out: Path, **over) -> TrainConfig:
    extra = merge(RESUME, {"prompts": {"hard_prompts": str(root / "hard.safetensors")},
                           "anchors": {"list": str(root / "anchors.safetensors")}})
    return config(root, out, **merge(extra, over))


def prompt_state(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.wrapper.prompts.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    t = Trainer(resume_config(data, out))
    results = t.fit()
    return prompt_state(t), t.optimizer.state_dict(), results, out


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs by {(a[k] - b[k]).abs().max().item()}"


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ training

def test_train_writes_outputs_and_makes_progress(data, tmp_path):
    cfg = config(data, tmp_path / "run", optim={"epochs": 4})
    results = train(cfg)
    out = tmp_path / "run"
    assert results["status"] == "finished" and results["global_step"] == 16  # 16 clips / 4 per step x 4 epochs
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "log.jsonl", "results.json", "prompts.safetensors",
                                               "config.yaml", "eval"}
    assert json.loads((out / "results.json").read_text())["eval"] == results["eval"]
    history = [h["loss"] for h in results["history"]]
    assert history[-1] < history[0], history  # colour-coded classes: training must make progress
    log = read_log(out)
    steps = [r for r in log if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert [r["kind"] for r in log].count("epoch") == 4 and log[-1]["kind"] == "eval"
    assert all({"loss", "lr", "step_time", "time"} <= set(r) for r in steps)
    # the prompt file reproduces the reported accuracy (evaluate builds the model from the config)
    ds = ClipTensorDataset(data / "val.safetensors", train=False)
    again = evaluate(cfg, ds, CLASSES, prompts=out / "prompts.safetensors", batch_size=3)
    val = dict(results["eval"]["val"])
    correct = val.pop("correct")  # evaluate_sets, the one scorer, also keeps each clip's top-1 correctness
    assert again == val
    assert len(correct) == val["num_clips"] and set(correct) <= {"0", "1"}
    assert 100.0 * correct.count("1") / len(correct) == pytest.approx(val["top1"])


def test_lr_schedule_warmup_then_cosine(data, tmp_path):
    f = lr_lambda(warmup_steps=4, total_steps=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(8) == pytest.approx(0.5) and f(11) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    train(config(data, tmp_path, optim={"epochs": 3, "warmup_epochs": 1, "lr": 1e-2}))
    lrs = [r["lr"] for r in read_log(tmp_path) if r["kind"] == "step"]
    assert lrs == pytest.approx([1e-2 * f2 for f2 in map(lr_lambda(4, 12), range(12))])


def test_base_to_novel_reports_hm(data, tmp_path):
    cfg = config(data, tmp_path, data={"novel_list": str(data / "novel.safetensors"),
                                       "novel_labels": str(data / "novel.csv")}, optim={"epochs": 1})
    ev = train(cfg)["eval"]
    assert set(ev) == {"base", "novel", "hm"}
    assert ev["base"]["num_classes"] == 4 and ev["novel"]["num_classes"] == 2 and ev["novel"]["num_clips"] == 6
    assert ev["hm"] == pytest.approx(hm(ev["base"]["top1"], ev["novel"]["top1"]))
    assert hm(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120) and hm(0.0, 0.0) == 0.0


@pytest.mark.parametrize("mode", ["negative", "reference"])
def test_anchor_modes_train(data, tmp_path, mode):
    over = {"anchors": {"list": str(data / "anchors.safetensors"), "mode": mode}, "optim": {"epochs": 1}}
    if mode == "reference":  # the released computation: needs 1 anchor label or one per class
        frames, labels = synthetic_clips(2, 1, seed=4)
        write_clip_file(tmp_path / "else.safetensors", frames, labels, ["else"])
        over["anchors"]["list"] = str(tmp_path / "else.safetensors")
    with pytest.warns(UserWarning, match="no effect") if mode == "reference" else contextlib.nullcontext():
        h = train(config(data, tmp_path / "run", **over))["history"][0]
    if mode == "negative":
        assert h["anchor"] > 0 and h["loss"] == pytest.approx(h["ce"] + h["anchor"])
    else:  # one anchor label shifts every logit equally: the same training as without anchors
        plain = train(config(data, tmp_path / "plain", optim={"epochs": 1}))["history"][0]
        assert h["loss"] == pytest.approx(plain["loss"], abs=1e-5)


def test_bf16_and_grad_checkpointing(data, tmp_path):
    ref = train(config(data, tmp_path / "fp32", optim={"epochs": 1}))["history"][0]["loss"]
    ckpt = train(config(data, tmp_path / "gc", optim={"epochs": 1}, model={"grad_checkpointing": True}))
    assert ckpt["history"][0]["loss"] == pytest.approx(ref, abs=1e-5)
    bf16 = train(config(data, tmp_path / "bf16", optim={"epochs": 1}, run={"precision": "bf16"}))
    assert math.isfinite(bf16["history"][0]["loss"]) and bf16["history"][0]["loss"] == pytest.approx(ref, rel=0.05)


# -------------------------------------------------------------------------------------- resume

def test_stop_and_resume_is_bit_identical(data, tmp_path, uninterrupted):
    ref_prompts, ref_optim, ref_results, _ = uninterrupted
    first = Trainer(resume_config(data, tmp_path, run={"stop_after_epochs": 1})).fit()
    assert first["status"] == "stopped" and first["epochs_completed"] == 1
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "prompts.safetensors").exists()
    t = Trainer(resume_config(data, tmp_path), resume=True)
    assert t.start_epoch == 1 and t.global_step == 4  # 8 micro-steps of 2 clips, accumulated in pairs
    results = t.fit()
    assert_identical(prompt_state(t), ref_prompts)
    assert_identical(t.optimizer.state_dict()["state"][0], ref_optim["state"][0])
    assert results["eval"] == ref_results["eval"]


def test_eval_of_a_coupled_prompt_file_matches_training(data, tmp_path, uninterrupted):
    from promptcouple.train import evaluate_config

    _, _, results, out = uninterrupted
    # the file carries its prompt config and hard prompt: the config's prompts section does not matter
    cfg = resume_config(data, tmp_path, prompts={"hard_prompts": None, "n_ctx": 8})
    assert evaluate_config(cfg, out / "prompts.safetensors", output=tmp_path / "m.json") == results["eval"]
    with pytest.raises(ConfigError, match=r"--prompts: '.*nothing\.safetensors' does not exist"):
        evaluate_config(cfg, tmp_path / "nothing.safetensors")


def test_crash_mid_epoch_loses_only_that_epoch(data, tmp_path, uninterrupted, monkeypatch):
    ref_prompts, _, _, ref_out = uninterrupted
    calls = {"n": 0}
    forward = TrainStep.forward

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:  # 8 micro-steps per epoch: the middle of epoch 2
            raise KeyboardInterrupt("simulated kill")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "forward", dying)
    with pytest.raises(KeyboardInterrupt):
        Trainer(resume_config(data, tmp_path)).fit()
    monkeypatch.setattr(TrainStep, "forward", forward)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    t = Trainer(resume_config(data, tmp_path), resume=True)
    t.fit()
    assert_identical(prompt_state(t), ref_prompts)
    # the log holds each step once, exactly like the uninterrupted run's
    steps = [(r["epoch"], r["step"], r["loss"]) for r in read_log(tmp_path) if r["kind"] == "step"]
    ref_steps = [(r["epoch"], r["step"], r["loss"]) for r in read_log(ref_out) if r["kind"] == "step"]
    assert steps == ref_steps


def test_failed_checkpoint_write_keeps_previous(data, tmp_path, monkeypatch):
    Trainer(resume_config(data, tmp_path, run={"stop_after_epochs": 1})).fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # the write gets going, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        Trainer(resume_config(data, tmp_path, run={"stop_after_epochs": 1}), resume=True).fit()
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.yaml", "log.jsonl"]  # no temp file left
    t = Trainer(resume_config(data, tmp_path, run={"stop_after_epochs": 1}), resume=True)
    assert t.start_epoch == 1


def test_resume_refuses_changed_config_and_overwrite(data, tmp_path):
    Trainer(resume_config(data, tmp_path, run={"stop_after_epochs": 1})).fit()
    with pytest.raises(ConfigError, match=r"already holds a checkpoint; pass --resume"):
        Trainer(resume_config(data, tmp_path))
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.01 -> 0\.02"):
        Trainer(resume_config(data, tmp_path, optim={"lr": 2e-2}), resume=True)
    # what does not change the result may change
    t = Trainer(resume_config(data, tmp_path, run={"log_every": 3}, eval={"batch_size": 1}), resume=True)
    assert t.start_epoch == 1


# ---------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("over, match", [
    ({"optim": {"lrr": 1e-3}}, r"unknown key 'optim\.lrr' \(did you mean 'lr'\?\)"),
    ({"optimizer": {}}, r"unknown key 'optimizer' \(did you mean 'optim'\?\)"),
    ({"prompts": {"depth": 3}}, r"unknown key 'prompts\.depth'"),
    ({"optim": {"epochs": "ten"}}, r"optim\.epochs: expected an integer, got str 'ten'"),
    ({"optim": {"lr": "fast"}}, r"optim\.lr: expected a number"),
    ({"run": {"precision": "fp8"}}, r"run\.precision: must be one of \('fp32', 'bf16', 'fp16'\), got 'fp8'"),
    ({"optim": {"warmup_epochs": 5}}, r"optim\.warmup_epochs: must be in \[0, optim\.epochs=2\]"),
    ({"optim": {"batch_size": 0}}, r"optim\.batch_size: must be >= 1"),
    ({"prompts": {"dropout": 1.5}}, r"prompts: CouplingConfig\.dropout=1\.5"),
    ({"anchors": {"list": "a.safetensors", "mode": "reference", "batch_size": 2}}, r"anchors\.batch_size: must be 1"),
    ({"anchors": {"mode": "contrastive"}}, r"anchors\.mode: must be one of"),
    ({"data": {"world": {"dataset": "whmdb"}}}, r"data\.world: give either data\.world or list files"),
    ({"data": {"train_list": None}}, r"data\.train_list: is required"),
    ({"eval": {"num_crops": 2}}, r"eval\.num_crops: must be 1 or 3"),
    ({"run": "fast"}, r"run: expected a mapping"),
])
def test_config_errors(data, tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        config(data, tmp_path, **over)


def test_yaml_overrides_paths_and_numbers(data, tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "c.yaml").write_text(
        "data: {train_list: ../d/train.safetensors, labels: ../d/c.csv}\noptim: {lr: 4e-3}\n")
    monkeypatch.chdir(data)
    cfg = load_config(tmp_path / "cfg" / "c.yaml",
                      ["optim.epochs=3", "prompts.n_ctx=4", "data.val_list=val.safetensors"])
    assert cfg.data.train_list == str(tmp_path / "cfg" / "../d/train.safetensors")  # relative to the file
    assert cfg.data.val_list == str(data / "val.safetensors")  # --set: relative to the working directory
    assert cfg.optim.lr == 4e-3 and cfg.optim.epochs == 3 and cfg.prompts.coupling == {"n_ctx": 4}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(tmp_path / "cfg" / "c.yaml", ["optim.lr"])
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.epoch'"):
        load_config(tmp_path / "cfg" / "c.yaml", ["optim.epoch=3"])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_config_round_trip(data, tmp_path):
    cfg = resume_config(data, tmp_path, data={"world": None}, optim={"betas": [0.8, 0.99]})
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.optim.betas == (0.8, 0.99)
    assert cfg.to_dict()["prompts"]["dropout"] == 0.5  # coupling fields flat again, as in YAML


def _no_model(*args, **kwargs):
    raise AssertionError("the model was built before the data was checked")


@pytest.mark.parametrize("case, match", [
    ("missing_file", r"data\.val_list: '.*nowhere\.safetensors' does not exist"),
    ("label_out_of_range", r"data\.train_list: .*labels span 0\.\.5 but there are 4 classes"),
    ("list_label_out_of_range", r"data\.train_list: .*list\.txt:2: .*7.*out of range"),
    ("empty_list", r"data\.train_list: .*no entries"),
    ("anchor_overlap", r"anchors: 1 anchor class\(es\) are also training classes.*'red'"),
    ("too_few_clips", r"16 training clips make no full batch of optim\.batch_size=32"),
    ("fp16_on_cpu", r"run\.precision: fp16 needs a CUDA device"),
])
def test_data_errors_come_before_the_model(data, tmp_path, monkeypatch, case, match):
    monkeypatch.setattr(trainer_module, "build_wrapper", _no_model)
    over: dict = {}
    if case == "missing_file":
        over = {"data": {"val_list": str(tmp_path / "nowhere.safetensors")}}
    elif case == "label_out_of_range":
        write_clip_file(tmp_path / "bad.safetensors", torch.zeros(6, 2, 3, 32, 32), torch.arange(6), None)
        over = {"data": {"train_list": str(tmp_path / "bad.safetensors")}}
    elif case == "list_label_out_of_range":
        (tmp_path / "list.txt").write_text("a.mp4 0\nb.mp4 7\n")
        over = {"data": {"train_list": str(tmp_path / "list.txt")}}
    elif case == "empty_list":
        (tmp_path / "list.txt").write_text("\n")
        over = {"data": {"train_list": str(tmp_path / "list.txt")}}
    elif case == "anchor_overlap":
        write_clip_file(tmp_path / "a.safetensors", *synthetic_clips(2, 2), ["red", "waving"])
        over = {"anchors": {"list": str(tmp_path / "a.safetensors")}}
    elif case == "too_few_clips":
        over = {"optim": {"batch_size": 32}}
    elif case == "fp16_on_cpu":
        over = {"run": {"precision": "fp16", "device": "cpu"}}
    with pytest.raises(ConfigError, match=match):
        Trainer(config(data, tmp_path / "run", **over))


# ---------------------------------------------------------------------------------- evaluation

class _FixedLogits(nn.Module):
    """Returns the first pixels of each clip's first frame as its logits."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, frames, classnames):
        return frames[:, 0, 0, 0, :len(classnames)]


class _Views(torch.utils.data.Dataset):
    def __init__(self, view_logits, label):
        self.clip = torch.zeros(len(view_logits), 1, 3, 1, 8)
        self.clip[:, 0, 0, 0, :3] = torch.tensor(view_logits)
        self.label = label

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.clip, self.label


def test_evaluate_averages_views_as_asked():
    # one confident view for class 0, two moderately sure views for class 1
    ds = _Views([[20.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0]], label=1)
    model = _FixedLogits()
    by_softmax = evaluate(model, ds, ["a", "b", "c"], reduce="softmax")
    by_logits = evaluate(model, ds, ["a", "b", "c"], reduce="logits")
    assert by_softmax["top1"] == 100.0 and by_logits["top1"] == 0.0
    assert by_logits["top5"] == 100.0 and by_softmax["num_classes"] == 3  # top-5 with 3 classes = top-3
    with pytest.raises(ValueError, match="reduce="):
        evaluate(model, ds, ["a", "b", "c"], reduce="max")


def test_cli_train_and_eval(data, tmp_path, capsys):
    from promptcouple.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: tiny}}\nprompts: {{n_ctx: 4, text_depth: 2, vision_depth: 2, n_vision_ctx: 4}}\n"
                   f"data: {{train_list: {data}/train.safetensors, labels: {data}/classes.csv, "
                   f"val_list: {data}/val.safetensors, image_size: 32, num_frames: 2}}\n"
                   f"optim: {{epochs: 1, warmup_epochs: 0, batch_size: 4}}\nrun: {{progress: false}}\n")
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--set", f"run.output_dir={out}"]) == 0
    shown = capsys.readouterr().out  # the library logs; the command shows its records as plain lines
    assert "epoch 1/1: loss" in shown and "val: top1" in shown
    assert not logging.getLogger("promptcouple").handlers  # and leaves logging as it found it
    results = json.loads((out / "results.json").read_text())
    metrics = tmp_path / "m.json"
    assert main(["eval", str(cfg), "--prompts", str(out / "prompts.safetensors"), "--output", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["eval"] == results["eval"]
    assert main(["train", str(cfg), "--set", "optim.epochs=0"]) == 2
    assert "promptcouple train: error: optim.epochs: must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ backbone

def _vificlip_checkpoint(model: nn.Module) -> dict:
    """A ViFi-CLIP style training checkpoint around ``model``'s weights (DDP names, prompt learner)."""
    sd = {}
    for key, value in model.state_dict().items():
        if key.startswith("visual."):
            sd["module.image_encoder." + key[len("visual."):]] = value.clone()
        elif key == "logit_scale":
            sd["module.logit_scale"] = value.clone()
        elif key != "token_embedding.weight":  # the prompt learner precomputes embeddings instead
            sd["module.text_encoder." + key] = value.clone()
    sd["module.prompt_learner.ctx"] = torch.zeros(4, 32)
    sd["module.prompt_learner.token_prefix"] = torch.zeros(4, 1, 32)
    sd["module.image_encoder.VPT"] = torch.zeros(4, 32)
    sd["module.text_encoder.transformer.resblocks.1.VPT_shallow"] = torch.zeros(4, 32)
    return {"model": sd, "epoch": 11, "max_accuracy": 0.5}


def _tiny(seed: int, image_size: int = 32) -> nn.Module:
    """A tiny model in the layout of the reference checkpoints: OpenAI's, with QuickGELU."""
    torch.manual_seed(seed)
    return tiny_clip(image_size, quick_gelu=True)


def test_backbone_from_vificlip_checkpoint(tmp_path):
    source, target = _tiny(0), _tiny(1)
    token_before = target.token_embedding.weight.detach().clone()
    torch.save(_vificlip_checkpoint(source), tmp_path / "vifi.pth")
    report = load_backbone(target, tmp_path / "vifi.pth")
    assert report.layout == "vificlip" and report.container == "model" and report.ok
    assert report.kept == ["token_embedding.weight"]
    assert len(report.skipped_prompts) == 4 and "prompt_learner.ctx" in report.skipped_prompts
    for key, value in source.state_dict().items():
        if key != "token_embedding.weight":
            assert torch.equal(target.state_dict()[key], value), key
    assert torch.equal(target.token_embedding.weight, token_before)
    assert "kept from the model" in str(report)


def test_backbone_from_openai_layout_fp16(tmp_path):
    source, target = _tiny(0), _tiny(1)
    ckpt = {"model_state_dict": {"module." + k: v.half() for k, v in source.state_dict().items()},
            "fusion_model_state_dict": {}}
    report = load_backbone(target, ckpt)
    assert report.layout == "openai" and report.container == "model_state_dict" and report.ok and not report.kept
    assert len(report.loaded) == len(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value.half().float()), key


def test_backbone_strict_errors_leave_model_untouched(tmp_path):
    source, target = _tiny(0), _tiny(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ckpt = _vificlip_checkpoint(source)
    ckpt["model"]["module.image_encoder.extra_head.weight"] = torch.zeros(3)
    del ckpt["model"]["module.text_encoder.ln_final.bias"]
    with pytest.raises(BackboneLoadError, match=r"(?s)missing from the checkpoint: ln_final\.bias.*"
                                                r"not in the model: visual\.extra_head\.weight"):
        load_backbone(target, ckpt)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    with pytest.raises(BackboneLoadError, match=r"shape of 'visual\.positional_embedding': checkpoint \(17, 32\), "
                                                r"model \(65, 32\)(?s:.*)ViT-B/32 checkpoint into ViT-B/16"):
        load_backbone(_tiny(1, image_size=64), _vificlip_checkpoint(source))
    report = load_backbone(target, ckpt, strict=False)  # loads what fits, says what did not
    assert report.missing == ["ln_final.bias"] and report.unexpected == ["visual.extra_head.weight"]
    assert torch.equal(target.visual.conv1.weight, source.visual.conv1.weight)


def test_backbone_pickled_checkpoint_needs_trust(tmp_path):
    source = _tiny(0)
    ckpt = _vificlip_checkpoint(source)
    ckpt["config"] = argparse.Namespace(arch="ViT-B/16")  # like ViFi-CLIP's yacs config
    torch.save(ckpt, tmp_path / "vifi.pth")
    with pytest.raises(BackboneLoadError, match="trust=True"):
        load_backbone(_tiny(1), tmp_path / "vifi.pth")
    assert load_backbone(_tiny(1), tmp_path / "vifi.pth", trust=True).ok


def test_backbone_checkpoint_from_config(data, tmp_path):
    source = _tiny(0)
    torch.save(_vificlip_checkpoint(source), tmp_path / "vifi.pth")
    from promptcouple.train import build_wrapper

    with pytest.raises(ConfigError, match="trained with quick_gelu but CLIP uses gelu"):
        build_wrapper(config(data, tmp_path / "run", model={"backbone_checkpoint": str(tmp_path / "vifi.pth")}))
    cfg = config(data, tmp_path / "run", model={"name": "tiny-quickgelu", "backbone_checkpoint": str(tmp_path / "vifi.pth")})
    wrapper = build_wrapper(cfg)
    assert torch.equal(wrapper.model.visual.conv1.weight, source.visual.conv1.weight)
    assert not wrapper.model.visual.conv1.weight.requires_grad
    big = _vificlip_checkpoint(_tiny(0, image_size=64))
    torch.save(big, tmp_path / "big.pth")
    with pytest.raises(ConfigError,
                       match=r"(?s)model\.backbone_checkpoint: .*nothing loaded.*visual\.positional_embedding"):
        build_wrapper(config(data, tmp_path / "run", model={"name": "tiny-quickgelu",
                                                            "backbone_checkpoint": str(tmp_path / "big.pth")}))



def test_open_clip_models_by_name(data, tmp_path, monkeypatch):
    from promptcouple.train import build_wrapper

    with pytest.raises(ConfigError, match=r"model\.name: 'ViT-B-61' is not an open_clip model"):
        build_wrapper(config(data, tmp_path, model={"name": "ViT-B-61"}))
    # offline stand-in for open_clip.create_model("ViT-B-32", pretrained=...): a 32-pixel model
    made = {}

    def create_model(name, pretrained=None):
        made.update(name=name, pretrained=pretrained)
        return _tiny(0)

    monkeypatch.setattr(open_clip, "create_model", create_model)
    wrapper = build_wrapper(config(data, tmp_path, model={"name": "ViT-B-32-quickgelu", "pretrained": "openai"}))
    assert made == {"name": "ViT-B-32-quickgelu", "pretrained": "openai"} and wrapper.tokenizer is not None
    with pytest.raises(ConfigError, match=r"data\.image_size: 224, but model 'ViT-B-32' takes 32x32 frames"):
        build_wrapper(config(data, tmp_path, model={"name": "ViT-B-32"}, data={"image_size": 224}))


# --------------------------------------------------------------------------------- real videos

def _write_videos(folder: Path, n: int) -> None:
    """Tiny mp4 files (a square of the class colour sliding right), a list file and labels."""
    write_sliding_square_videos(folder, n, classnames=CLASSES, width=56, frames=10)


def test_video_lists_with_workers_resume_bit_identical(tmp_path):
    """Random crops and grayscale in 2 DataLoader workers, 6-view evaluation: still exact on resume."""
    v = tmp_path / "videos"
    _write_videos(v, 8)

    def cfg(out, **run):
        return TrainConfig.from_dict({
            "model": {"name": "tiny"}, "prompts": dict(SMALL_PROMPTS),
            "data": {"train_list": str(v / "list.txt"), "labels": str(v / "labels.csv"), "root": str(v),
                     "val_list": str(v / "list.txt"), "image_size": 32, "num_frames": 4, "grayscale": 0.5,
                     "num_workers": 2},
            "eval": {"num_clips": 2, "num_crops": 3, "batch_size": 4},
            "optim": {"epochs": 2, "warmup_epochs": 0, "batch_size": 4},
            "run": {"output_dir": str(tmp_path / out), "progress": False, **run}})

    full = Trainer(cfg("full"))
    results = full.fit()
    assert results["eval"]["val"]["num_clips"] == 8
    Trainer(cfg("parts", stop_after_epochs=1)).fit()
    resumed = Trainer(cfg("parts"), resume=True)
    assert resumed.fit()["eval"] == results["eval"]
    assert_identical(prompt_state(resumed), prompt_state(full))


# --------------------------------------------------------------------------------------- world

def test_world_dataset_base_to_novel_with_world_anchors(tmp_path):
    cfg = TrainConfig.from_dict({
        "model": {"name": "tiny"}, "prompts": dict(SMALL_PROMPTS),
        "data": {"world": {"dataset": "whmdb", "shots": 1}, "image_size": 32, "num_frames": 2},
        "anchors": {"world": True, "per_class": 1},
        "optim": {"epochs": 1, "warmup_epochs": 0, "batch_size": 5}, "eval": {"batch_size": 100},
        "run": {"output_dir": str(tmp_path), "progress": False}})
    results = train(cfg)
    from promptcouple.world import dataset_info

    info = dataset_info("whmdb")
    ev = results["eval"]
    assert ev["base"]["num_classes"] == len(info["base"]) and ev["novel"]["num_classes"] == len(info["novel"])
    assert ev["hm"] == pytest.approx(hm(ev["base"]["top1"], ev["novel"]["top1"]))
    assert results["history"][0]["anchor"] > 0
    with pytest.raises(ConfigError, match=r"data\.world: unknown dataset 'wnope'"):
        Trainer(TrainConfig.from_dict({"data": {"world": {"dataset": "wnope"}, "image_size": 32}}))


def test_world_model(tmp_path):
    from promptcouple import world

    if not os.path.exists(world.CHECKPOINT):
        pytest.skip("the world CLIP checkpoint is not shipped yet")
    from promptcouple.train import build_wrapper

    wrapper = build_wrapper(TrainConfig.from_dict({"model": {"name": "world"}, "prompts": dict(SMALL_PROMPTS),
                                                   "data": {"world": {"dataset": "whmdb"}, "image_size": 32}}))
    assert wrapper.model.visual.image_size in (32, (32, 32)) and wrapper.tokenizer is not None


# ------------------------------------------------------------------------------------- example

@pytest.mark.slow
def test_vificlip_example_learns(tmp_path):
    import re
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "vificlip_style.py"
    out = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "p.safetensors")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    before = float(re.search(r"before training: top-1 ([\d.]+)%", out.stdout).group(1))
    after = float(re.search(r"after training .*: top-1 ([\d.]+)%", out.stdout).group(1))
    assert after >= 75.0 and after > before + 25, out.stdout  # 8 colour classes, chance 12.5%
    assert pc.read_prompt_file(tmp_path / "p.safetensors").config.n_ctx == 4


def test_openai_layout_checkpoint_into_the_documented_open_clip_host(tmp_path):
    """An OpenAI-layout ViT-B/16 saved and loaded into open_clip's ViT-B-16-quickgelu gives the same
    features; the GELU build of the same name is refused with the fix."""
    import open_clip

    from promptcouple.models.openai_clip import CLIP as OpenAICLIP

    torch.manual_seed(0)
    source = OpenAICLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                        context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                        transformer_layers=12).eval()
    torch.save(source.state_dict(), tmp_path / "openai.pt")
    host = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    assert load_backbone(host, tmp_path / "openai.pt").ok
    image = torch.randn(2, 3, 224, 224)
    ids = open_clip.get_tokenizer("ViT-B-16-quickgelu")(["a video of archery.", "riding a bike"])
    with torch.no_grad():
        torch.testing.assert_close(host.encode_image(image), source.encode_image(image), atol=1e-5, rtol=0)
        torch.testing.assert_close(host.encode_text(ids), source.encode_text(ids), atol=1e-5, rtol=0)
    gelu = open_clip.create_model("ViT-B-16", pretrained=None)
    with pytest.raises(BackboneLoadError, match=r"trained with quick_gelu but CLIP uses gelu.*ViT-B-16-quickgelu"):
        load_backbone(gelu, tmp_path / "openai.pt")
    assert load_backbone(gelu, tmp_path / "openai.pt", activation="gelu").ok  # the user says it is a GELU model


def test_openai_weights_need_a_quickgelu_model_name():
    cfg = TrainConfig()
    cfg.model.name, cfg.model.pretrained = "ViT-B-16", "openai"
    with pytest.raises(ConfigError, match="QuickGELU.*'ViT-B-16-quickgelu'"):
        build_host(cfg)


@pytest.mark.parametrize("follow", [False, True])
def test_host_train_mode_reaches_the_wrapper(tmp_path, follow):
    """model.host_train_mode: the default keeps the frozen host in eval mode while prompts train."""
    from promptcouple.train.hosts import build_wrapper

    cfg = config(tmp_path, tmp_path / "out", model={"name": "tiny", "host_train_mode": follow})
    wrapper = build_wrapper(cfg).train()
    assert wrapper.host_train_mode is follow
    assert wrapper.model.visual.training is follow
    assert wrapper.prompts.training
