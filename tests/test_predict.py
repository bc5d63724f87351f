"""Single-video inference and runs that explain themselves (issue 12).

A few training steps on generated mp4 files, then `promptcouple predict` on one file and on a
folder, checked against `promptcouple eval` on the same clips; prompt-file run information, the
resolved config in the run folder, evaluation reports, zero-shot evaluation, the warm-up check,
file modes and `--version`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

import promptcouple as pc
from promptcouple.cli import main
from promptcouple.data import VideoListDataset, write_label_csv
from promptcouple.data.synthetic import write_sliding_square_videos
from promptcouple.io import run_info_of
from promptcouple.predict import Predictor, resolve_classes
from promptcouple.train import ConfigError, TrainConfig

CLASSES = ["red", "green", "blue", "white"]


def write_videos(folder: Path, n: int = 8) -> None:
    """Small mp4 files (a square of the class colour sliding right), a list file and labels."""
    write_sliding_square_videos(folder, n, classnames=CLASSES)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """`promptcouple train` on a YAML config whose frames and views are overridden with --set."""
    d = tmp_path_factory.mktemp("predict")
    videos = d / "videos"
    write_videos(videos)
    cfg = d / "cfg.yaml"
    cfg.write_text(
        "model: {name: tiny}\n"
        "prompts: {n_ctx: 4, text_depth: 2, vision_depth: 2, n_vision_ctx: 4}\n"
        "data: {train_list: videos/list.txt, labels: videos/labels.csv, val_list: videos/list.txt, root: videos,\n"
        "       image_size: 32, num_frames: 2}\n"
        "optim: {epochs: 3, warmup_epochs: 1, batch_size: 4, lr: 1.0e-2}\n"
        "eval: {batch_size: 3}\n"
        "run: {progress: false, seed: 3}\n")
    out = d / "run"
    # The overrides change what eval and predict must use: 4 frames, 2 temporal views.
    assert main(["train", str(cfg), "--set", f"run.output_dir={out}", "--set", "data.num_frames=4",
                 "--set", "eval.num_clips=2"]) == 0
    return {"dir": d, "videos": videos, "cfg": cfg, "out": out, "prompts": out / "prompts.safetensors"}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_matches_eval_on_one_file_and_a_folder(run, tmp_path, capsys):
    """The done-when of issue 12: predict gives eval's classes and probabilities on the same clips."""
    report = tmp_path / "eval"
    assert main(["eval", str(run["out"]), "--out", str(report)]) == 0  # config and prompts from the run folder
    rows = {Path(r["video"]).name: r for r in read_csv(report / "val_predictions.csv")}
    assert len(rows) == 8

    one, folder = tmp_path / "one.json", tmp_path / "folder.json"
    assert main(["predict", str(run["videos"] / "clip1.mp4"), "--prompts", str(run["prompts"]),
                 "--json", str(one), "--topk", "4"]) == 0
    shown = capsys.readouterr().out
    assert "predict: 1 video(s), 4 classes" in shown and "4 frames of 32px, 2x1 views" in shown
    assert f"saved to {one}" in shown
    assert main(["predict", str(run["videos"]), "--prompts", str(run["prompts"]), "--json", str(folder),
                 "--topk", "4", "--batch-size", "3"]) == 0
    single = json.loads(one.read_text())["predictions"]
    many = json.loads(folder.read_text())
    assert many["classes"] == CLASSES and len(many["predictions"]) == 8  # list.txt and labels.csv are no videos
    assert Path(many["predictions"][1]["video"]).name == "clip1.mp4"
    assert [t["class"] for t in single[0]["top"]] == [t["class"] for t in many["predictions"][1]["top"]]
    for p in single + many["predictions"]:
        row = rows[Path(p["video"]).name]
        assert [t["class"] for t in p["top"]] == [row[f"class_{i}"] for i in range(1, 5)]
        assert [t["probability"] for t in p["top"]] == pytest.approx(
            [float(row[f"probability_{i}"]) for i in range(1, 5)], abs=2e-6)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_from_the_prompt_file_alone(run, tmp_path):
    """Moved out of its run folder, the file still rebuilds its model: same probabilities."""
    alone = tmp_path / "elsewhere.safetensors"
    shutil.copy(run["prompts"], alone)
    video = run["videos"] / "clip2.mp4"
    from_run = Predictor(run["prompts"]).predict([video])[0]
    by_itself = Predictor(alone)
    assert by_itself.config_source == "the prompt file's run information"
    again = by_itself.predict([video])[0]
    assert again.probabilities == pytest.approx(from_run.probabilities, abs=1e-6)
    assert by_itself.cfg.data.num_frames == 4 and by_itself.cfg.eval.num_clips == 2


def test_prompt_file_records_its_run_and_inspect_shows_it(run, capsys):
    info = run_info_of(pc.read_prompt_file(run["prompts"]).metadata)
    assert info["classnames"] == CLASSES and info["eval_classnames"] == {"val": CLASSES}
    assert info["backbone"] == {"name": "tiny", "pretrained": None, "backbone_checkpoint": None, "seed": 3}
    assert (info["num_frames"], info["image_size"]) == (4, 32)
    assert info["eval_views"] == {"num_clips": 2, "num_crops": 1, "reduce": "softmax", "precision": "fp32"}
    assert main(["inspect", str(run["prompts"])]) == 0
    shown = capsys.readouterr().out
    assert "[classnames] 4: red, green, blue, white" in shown and "[backbone] name=tiny, seed=3" in shown
    # written by hand, a file has no run information, and says so
    model = pc.CouplingPromptWrapper(pc.train.tiny_clip(), pc.CouplingConfig(n_ctx=4, text_depth=1, vision_depth=0,
                                                                             n_vision_ctx=0))
    plain = run["dir"] / "plain.safetensors"
    model.save_prompts(plain)
    assert run_info_of(pc.read_prompt_file(plain).metadata) == {}
    assert main(["inspect", str(plain)]) == 0 and "no run information" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="records no backbone"):
        Predictor(plain, classes="a,b")


def test_backbone_checkpoint_hash_is_checked(tmp_path):
    from promptcouple.train.run_info import backbone_info, config_from_run_info

    ckpt = tmp_path / "backbone.pt"
    ckpt.write_bytes(b"weights")
    cfg = TrainConfig.from_dict({"model": {"name": "tiny-quickgelu", "backbone_checkpoint": str(ckpt)},
                                 "data": {"train_list": "x.safetensors"}})
    info = {"backbone": backbone_info(cfg), "num_frames": 8, "image_size": 32}
    assert info["backbone"]["backbone_checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert config_from_run_info(info).model.backbone_checkpoint == str(ckpt)
    ckpt.write_bytes(b"other weights")
    with pytest.raises(ConfigError, match="trained on a file with sha256"):
        config_from_run_info(info)
    ckpt.unlink()
    with pytest.raises(ConfigError, match="does not exist here"):
        config_from_run_info(info)


def test_a_config_naming_another_backbone_is_refused(run, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(run["cfg"].read_text().replace("name: tiny", "name: tiny-quickgelu"))
    with pytest.raises(ConfigError, match="trained on 'tiny'"):
        Predictor(run["prompts"], config=other)
    other.write_text(run["cfg"].read_text().replace("seed: 3", "seed: 4"))
    with pytest.raises(ConfigError, match="model of seed 3"):
        Predictor(run["prompts"], config=other)
    # eval checks the same record: prompts scored on another backbone would be nonsense
    from promptcouple.train import evaluate_config

    from promptcouple.train import load_config

    cfg = load_config(run["cfg"])
    cfg.model.name = "tiny-quickgelu"
    with pytest.raises(ConfigError, match="trained on 'tiny'"):
        evaluate_config(cfg, run["prompts"])


def test_classes_option():
    info = {"classnames": ["a", "b"], "eval_classnames": {"base": ["a", "b"], "novel": ["c", "d"]}}
    assert resolve_classes(None, info)[0] == ["a", "b"]
    assert resolve_classes("novel", info)[0] == ["c", "d"]
    assert resolve_classes("all", info)[0] == ["a", "b", "c", "d"]
    assert resolve_classes(" x, y ,z", info)[0] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="records no 'val' classes"):
        resolve_classes("val", info)
    with pytest.raises(ValueError, match="expected at least two"):
        resolve_classes("archery", info)
    with pytest.raises(ValueError, match="records no class names"):
        resolve_classes(None, {})


def test_predict_with_other_classes_and_bad_inputs(run, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    write_label_csv(labels, ["white", "red"])
    p = Predictor(run["prompts"], classes=str(labels)).predict([run["videos"] / "clip0.mp4"], topk=5)[0]
    assert [c for c, _ in p.top] == sorted(["white", "red"], key=lambda c: -dict(p.top)[c]) and len(p.top) == 2
    assert main(["predict", str(tmp_path / "missing"), "--prompts", str(run["prompts"])]) != 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--prompts", str(run["prompts"])]) != 0
    assert "holds no video files" in capsys.readouterr().err
    broken = tmp_path / "videos"
    broken.mkdir()
    shutil.copy(run["videos"] / "clip3.mp4", broken / "good.mp4")
    (broken / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "p.json"
    assert main(["predict", str(broken), "--prompts", str(run["prompts"]), "--json", str(out)]) == 1
    got = {Path(r["video"]).name: r for r in json.loads(out.read_text())["predictions"]}
    assert "error" in got["broken.mp4"] and got["good.mp4"]["top"][0]["class"] in CLASSES


def test_load_video_is_the_evaluation_item(run):
    ds = VideoListDataset(run["videos"] / "list.txt", run["videos"] / "labels.csv", root=run["videos"], train=False,
                          num_frames=4, size=32, num_clips=2, num_crops=3)
    item, _ = ds[5]
    frames = pc.load_video(run["videos"] / "clip5.mp4", 4, 32, num_clips=2, num_crops=3)
    assert frames.shape == (6, 4, 3, 32, 32) and torch.equal(frames, item)
    one = pc.load_video(run["videos"] / "clip5.mp4", num_frames=4, image_size=32)
    assert one.shape == (4, 3, 32, 32)


def test_run_folder_explains_itself(run):
    out = run["out"]
    assert {"config.yaml", "prompts.safetensors", "results.json", "log.jsonl", "checkpoint.pt", "eval"} <= \
        {p.name for p in out.iterdir()}
    # the resolved config holds the overrides: eval needs none of them again
    cfg = pc.train.load_config(out / "config.yaml")
    assert (cfg.data.num_frames, cfg.eval.num_clips, cfg.run.output_dir) == (4, 2, str(out))
    results = json.loads((out / "results.json").read_text())
    per_class = read_csv(out / "eval" / "val_per_class.csv")
    assert [r["class"] for r in per_class] == CLASSES and all(r["clips"] == "2" for r in per_class)
    correct = sum(int(r["correct"]) for r in read_csv(out / "eval" / "val_predictions.csv"))
    assert 100.0 * correct / 8 == pytest.approx(results["eval"]["val"]["top1"])
    assert sum(float(r["top1"]) * 2 for r in per_class) / 8 == pytest.approx(results["eval"]["val"]["top1"])
    assert (out / "eval" / "val_confusion.png").read_bytes()[:4] == b"\x89PNG"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("prompts.safetensors", "checkpoint.pt", "config.yaml", "results.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # as any program's outputs


def test_cli_summary_and_saved_to(run, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["train", str(run["cfg"]), "--set", f"run.output_dir={out}", "--set", "optim.epochs=1",
                 "--set", "optim.warmup_epochs=0"]) == 0
    shown = capsys.readouterr().out
    assert "train: 8 clips / 4 classes; eval: val 8 clips / 4 classes" in shown
    assert "trainable parameters 512" in shown and f"output: {out}" in shown and "device: cpu" in shown
    assert f"saved to {out}: prompts.safetensors, results.json, config.yaml" in shown
    assert not logging.getLogger("promptcouple").handlers


def test_eval_zero_shot_without_prompts(run, tmp_path, capsys):
    report = tmp_path / "zs"
    metrics = tmp_path / "m.json"
    assert main(["eval", str(run["cfg"]), "--set", f"run.output_dir={tmp_path}", "--out", str(report),
                 "--output", str(metrics)]) == 0
    shown = capsys.readouterr().out
    assert "zero-shot" in shown and f"saved to {metrics}; {report}/" in shown
    record = json.loads(metrics.read_text())
    assert record["prompts"] is None and record["eval"]["val"]["num_clips"] == 8
    assert json.loads((report / "metrics.json").read_text()) == record
    assert len(read_csv(report / "val_predictions.csv")) == 8
    # the same from the run folder, with its prompts switched off
    assert main(["eval", str(run["out"]), "--zero-shot", "--out", str(tmp_path / "zs2")]) == 0
    assert main(["eval", str(run["out"]), "--zero-shot", "--prompts", str(run["prompts"])]) == 2
    assert "either --zero-shot or --prompts" in capsys.readouterr().err


def test_eval_of_a_folder_without_config_says_so(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) != 0
    assert "found no config.yaml there" in capsys.readouterr().err


def test_warmup_as_long_as_the_run_is_scaled_and_longer_refused(caplog):
    base = {"data": {"train_list": "x.safetensors"}}
    with caplog.at_level(logging.WARNING, logger="promptcouple"):
        cfg = TrainConfig.from_dict({**base, "optim": {"epochs": 2}})  # the default warm-up of 2 epochs
    assert cfg.optim.warmup_epochs == pytest.approx(0.2)
    assert "never decay" in caplog.text and "0.2 warm-up epochs" in caplog.text
    assert TrainConfig.from_dict({**base, "optim": {"epochs": 3}}).optim.warmup_epochs == 2
    with pytest.raises(ConfigError, match=r"optim\.warmup_epochs: .*fix: --set optim\.warmup_epochs=0\.2"):
        TrainConfig.from_dict({**base, "optim": {"epochs": 2, "warmup_epochs": 3}})


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_prompt_files_follow_the_umask(tmp_path, umask):
    model = pc.CouplingPromptWrapper(pc.train.tiny_clip(), pc.CouplingConfig(n_ctx=2, text_depth=1, vision_depth=0,
                                                                             n_vision_ctx=0))
    old = os.umask(umask)
    try:
        model.save_prompts(tmp_path / "p.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"promptcouple {pc.__version__}"
    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert "predict" in shown and "beside the code" not in shown


def test_reports_can_be_turned_off(run, tmp_path):
    from promptcouple.train import load_config, train

    out = tmp_path / "quiet"
    cfg = load_config(run["cfg"], [f"run.output_dir={out}", "optim.epochs=1", "optim.warmup_epochs=0"])
    assert train(cfg, reports=False)["status"] == "finished"
    assert not (out / "eval").exists() and (out / "config.yaml").is_file()


def test_resolved_config_holds_absolute_paths(tmp_path, monkeypatch):
    """Relative paths mean the working directory of the run, not the run folder it is read back from."""
    from promptcouple.train.run_info import write_run_config

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig.from_dict({"model": {"name": "ViT-B-16-quickgelu", "pretrained": "openai"},
                                 "data": {"train_list": "lists/train.txt", "labels": "labels.csv"},
                                 "run": {"output_dir": "runs/a"}})
    write_run_config(cfg, tmp_path / "runs" / "a")
    again = pc.train.load_config(tmp_path / "runs" / "a" / "config.yaml")
    assert again.run.output_dir == str(tmp_path / "runs" / "a")
    assert again.data.train_list == str(tmp_path / "lists" / "train.txt") and again.model.pretrained == "openai"
