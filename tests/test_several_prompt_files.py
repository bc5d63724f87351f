"""Several prompt files on one backbone from the command line: `eval` and `predict` build the
backbone once and give each file the results it gets alone (one table row, or one block, per file)."""

import json

import pytest
import torch

import promptcouple as pc
import promptcouple.train.hosts as hosts
from promptcouple.cli import main as cli
from promptcouple.data.synthetic import write_sliding_square_videos
from promptcouple.io import save_prompts
from promptcouple.train import TrainConfig
from promptcouple.train.run_info import run_info

CLASSES = ["red", "green", "blue", "white"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("several")
    write_sliding_square_videos(d / "videos", 4, classnames=CLASSES)
    cfg = TrainConfig()  # the backbone the files record: tiny, seed 3, 4 frames of 32 px
    cfg.model.name, cfg.data.num_frames, cfg.data.image_size, cfg.run.seed = "tiny", 4, 32, 3
    for i, name in enumerate(("s1", "s2")):
        host, _ = hosts.build_host(cfg)
        torch.manual_seed(10 + i)
        config = pc.CouplingConfig(n_ctx=4, text_depth=2, n_vision_ctx=3, vision_depth=2)
        wrapper = pc.CouplingPromptWrapper(host, config, hard_prompts=torch.randn(4, 32) if i == 0 else None)
        with torch.no_grad():
            for p in wrapper.trainable_parameters():
                p.add_(torch.randn_like(p))
        save_prompts(wrapper, d / f"{name}.safetensors", run_info=run_info(cfg, CLASSES, {}))
    (d / "cfg.yaml").write_text(
        "model: {name: tiny}\n"
        "data: {train_list: videos/list.txt, labels: videos/labels.csv, val_list: videos/list.txt, root: videos,\n"
        "       image_size: 32, num_frames: 4}\n"
        "eval: {batch_size: 4}\n"
        f"run: {{progress: false, seed: 3, output_dir: {d / 'run'}}}\n")
    return d


def count_builds(monkeypatch):
    built = []
    original = hosts.build_host
    monkeypatch.setattr(hosts, "build_host", lambda cfg: built.append(1) or original(cfg))
    return built


def test_eval_builds_once_and_scores_each_file_as_alone(files, monkeypatch, capsys):
    built = count_builds(monkeypatch)
    out = files / "both.json"
    assert cli(["eval", str(files / "cfg.yaml"), "--prompts", str(files / "s1.safetensors"),
                str(files / "s2.safetensors"), "--output", str(out), "--out", str(files / "reports")]) == 0
    assert len(built) == 1
    table = capsys.readouterr().out
    assert "prompts  val top1  val top5" in table and "\ns1  " in table and "\ns2  " in table
    both = json.loads(out.read_text())
    assert sorted(both["eval"]) == ["s1", "s2"]
    assert (files / "reports" / "s1" / "metrics.json").is_file() and (files / "reports" / "s2" / "metrics.json").is_file()
    for name in ("s1", "s2"):
        alone = files / f"{name}.json"
        assert cli(["eval", str(files / "cfg.yaml"), "--prompts", str(files / f"{name}.safetensors"),
                    "--output", str(alone), "--out", str(files / f"reports_{name}")]) == 0
        assert json.loads(alone.read_text())["eval"] == both["eval"][name]


def test_predict_builds_once_and_shows_each_file_as_alone(files, monkeypatch, capsys):
    clip = str(files / "videos" / "clip2.mp4")
    alone = {}
    for name in ("s1", "s2"):
        assert cli(["predict", clip, "--prompts", str(files / f"{name}.safetensors"), "--device", "cpu"]) == 0
        alone[name] = capsys.readouterr().out.strip().splitlines()[-1]
    built = count_builds(monkeypatch)
    assert cli(["predict", clip, "--prompts", str(files / "s1.safetensors"), str(files / "s2.safetensors"),
                "--device", "cpu", "--json", str(files / "p.json")]) == 0
    assert len(built) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"[s1] {alone['s1']}" in lines and f"[s2] {alone['s2']}" in lines
    assert alone["s1"] != alone["s2"]  # two different prompt sets: the check above can tell them apart
    record = json.loads((files / "p.json").read_text())
    assert sorted(record["predictions"]) == ["s1", "s2"]
