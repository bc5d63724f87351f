"""The benchmark scripts (tiny smoke runs on a random tiny CLIP) and their helpers.

Also the Trainer options the benchmarks rely on: ``loss.text_consistency`` (the KgCoOp-style
baseline) and the world's ``test_per_class``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import base2novel  # noqa: E402
import few_shot  # noqa: E402
import zero_shot  # noqa: E402
from protocol.methods import METHODS, prompt_section, resolve_methods, run_config  # noqa: E402
from protocol.reports import base_novel_table, format_base_novel, format_grid  # noqa: E402
from protocol.setting import REAL_PRESET, Setting, make_parser, make_setting  # noqa: E402
from protocol.sources import ListSource, make_source  # noqa: E402

import promptcouple as pc  # noqa: E402
from promptcouple.data import write_label_csv  # noqa: E402
from promptcouple.train import TrainConfig, Trainer, build_wrapper, hm, write_clip_file  # noqa: E402
from promptcouple.train.config import ConfigError  # noqa: E402
from promptcouple.train.data import build_datasets, synthetic_clips  # noqa: E402
from promptcouple.world.model import ZeroShotClassifier  # noqa: E402

TINY = ["--model", "tiny", "--splits", "1", "--epochs", "1", "--shots", "2", "--batch-size", "4",
        "--test-per-class", "2", "--workers", "1"]




def assert_hm(rec: dict) -> None:
    assert rec["hm"] == pytest.approx(2 * rec["base"] * rec["novel"] / (rec["base"] + rec["novel"])
                                      if rec["base"] + rec["novel"] else 0.0)


# ----------------------------------------------------------------------------------- smoke runs

def test_base2novel_smoke(tmp_path):
    out = tmp_path / "b2n.json"
    doc = base2novel.main(TINY + ["--datasets", "whmdb", "--methods", "zero-shot", "ga2",
                                  "--out", str(tmp_path), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["runs"] == json.loads(json.dumps(doc["runs"]))
    runs = {r["method"]: r for r in saved["runs"]}
    assert set(runs) == {"zero-shot", "ga2"}
    for r in saved["runs"]:
        assert r["dataset"] == "whmdb" and r["seconds"] > 0
        assert 0 <= r["base"] <= 100 and 0 <= r["novel"] <= 100
        assert_hm(r)
    assert runs["ga2"]["split"] == 1 and runs["zero-shot"]["split"] is None  # frozen: no training split
    assert [p["epoch"] for p in runs["ga2"]["curve"]] == [1]
    assert runs["ga2"]["curve"][-1]["base"] == runs["ga2"]["base"]
    # the coupled method used the hard prompt trained (and cached) on the hard-prompt source
    hard = Path(saved["hard_prompts"])
    assert hard.is_file() and hard.parent.parent == tmp_path / "cache"
    assert torch.equal(pc.read_prompt_file(hard).tensors["text.ctx"],
                       pc.read_prompt_file(runs["ga2"]["prompts"]).tensors["text.hard"])
    first = saved["machine"]["hard_prompt"]  # learned on wk400's 32 base classes, its own accuracy recorded
    assert first["seconds"] > 0 and first["source"] == "wk400" and first["source_classes"] == 32
    assert 0 <= first["source_top1"] <= 100
    for method, row in saved["table"].items():
        assert set(row) == {"whmdb", "average"}
        for cell in row.values():
            assert_hm(cell)
        assert row["average"]["base"] == pytest.approx(runs[method]["base"])
    assert "| GA2, ours (coupling + anchor consistency) |" in saved["markdown"]
    assert Path(saved["plot"]).stat().st_size > 0
    assert saved["timing"]["total_s"] >= saved["timing"]["runs_s"] > 0 and saved["timing"]["cpu_s"] > 0
    assert {"cpus", "loadavg", "loadavg_end", "workers"} <= set(saved["machine"])
    again = base2novel.main(TINY + ["--datasets", "whmdb", "--methods", "ga2", "--out", str(tmp_path)])
    # trained once per world and layout; the cached prompt's accuracy is read back from its run
    assert again["machine"]["hard_prompt"] == {**{k: v for k, v in first.items() if k != "seconds"},
                                               "cached": str(hard)}


def test_hard_prompt_source_per_protocol():
    """Base-to-novel learns the hard prompt on wk400's base classes (no novel class seen); few-shot
    and zero-shot, which evaluate wk400's classes, keep the disjoint source set."""
    from protocol.sources import K400FirstSource, WorldSource

    for source in (WorldSource(0), K400FirstSource(0)):
        b2n = source.hard_prompt_data("base_to_novel")["world"]
        assert (b2n["dataset"], b2n["protocol"]) == ("wk400", "base_to_novel")
    for protocol in ("few_shot", "zero_shot"):
        assert WorldSource(0).hard_prompt_data(protocol)["world"]["dataset"] == "hardsrc"


def test_few_shot_and_zero_shot_smoke(tmp_path):
    doc = few_shot.main(TINY + ["--datasets", "whmdb", "--methods", "zero-shot", "coop", "--shot-list", "1", "2",
                                "--out", str(tmp_path)])
    keys = sorted((r["method"], r["shots"]) for r in doc["runs"])
    assert keys == [("coop", 1), ("coop", 2), ("zero-shot", None)]
    assert set(doc["table"]["coop"]["whmdb"]) == {1, 2}
    assert doc["table"]["zero-shot"]["whmdb"][1] == doc["table"]["zero-shot"]["whmdb"][2]
    assert (tmp_path / "few_shot.json").is_file()

    doc = zero_shot.main(TINY + ["--datasets", "whmdb", "wucf", "--source", "whmdb", "--methods", "ivlp",
                                 "--out", str(tmp_path)])
    (rec,) = doc["runs"]
    assert doc["targets"] == ["wucf"] and set(rec["transfer"]) == {"wucf"}
    assert doc["table"]["ivlp"]["average"] == rec["transfer"]["wucf"]["top1"]


def test_real_data_path_with_list_files(tmp_path):
    """The --data-config path, end to end, with clip files standing in for video lists."""
    d = tmp_path / "data"
    d.mkdir()
    base, novel, anchors = ["red", "green"], ["blue", "white"], ["jumping", "waving"]
    for split in (1, 2):
        write_clip_file(d / f"train_s{split}.safetensors", *synthetic_clips(8, 2, seed=split), base)
    write_clip_file(d / "base.safetensors", *synthetic_clips(4, 2, seed=5), base)
    write_clip_file(d / "novel.safetensors", *synthetic_clips(4, 2, seed=6), novel)
    write_clip_file(d / "anchors.safetensors", *synthetic_clips(2, 2, seed=7), anchors)
    write_clip_file(d / "hardsrc.safetensors", *synthetic_clips(8, 2, seed=8), ["pink", "grey"])
    write_label_csv(d / "novel.csv", novel)
    spec = {"datasets": {"toy": {"base_to_novel": {"train_list": "train_s{split}.safetensors",
                                                   "val_list": "base.safetensors", "novel_list": "novel.safetensors",
                                                   "novel_labels": "novel.csv"}}},
            "anchors": {"list": "anchors.safetensors"},
            "hard_prompt_source": {"train_list": "hardsrc.safetensors"}}
    (d / "data.yaml").write_text(yaml.safe_dump(spec))
    doc = base2novel.main(["--model", "tiny", "--data-config", str(d / "data.yaml"), "--frames", "2", "--epochs", "2",
                           "--batch-size", "4", "--splits", "2", "--workers", "1", "--methods", "ivlp", "ga2",
                           "--out", str(tmp_path / "out")])
    assert sorted((r["method"], r["split"]) for r in doc["runs"]) == [("ga2", 1), ("ga2", 2), ("ivlp", 1), ("ivlp", 2)]
    for r in doc["runs"]:
        assert_hm(r)
        assert [p["epoch"] for p in r["curve"]] == [1, 2]  # evaluated after every epoch
        assert {k: r["curve"][-1][k] for k in ("base", "novel", "hm")} == {k: r[k] for k in ("base", "novel", "hm")}
    assert doc["data"] == str(d / "data.yaml") and doc["hyperparameters"]["num_frames"] == 2


def test_released_anchor_computation_is_inert(tmp_path):
    """GA2's released anchor term (one label, added to every logit) trains the same prompts as
    coupling alone: the row that measures it must show exactly that."""
    doc = base2novel.main(TINY + ["--datasets", "whmdb", "--methods", "coupling", "ga2-reference", "ga2",
                                  "--epochs", "2", "--out", str(tmp_path)])
    runs = {r["method"]: r for r in doc["runs"]}
    ref, coupled, ours = (pc.read_prompt_file(runs[m]["prompts"]).tensors for m in ("ga2-reference", "coupling", "ga2"))
    for key in coupled:  # float round-off of a constant's softmax gradient only
        torch.testing.assert_close(ref[key], coupled[key], rtol=0, atol=1e-4)
    assert any(not torch.allclose(ours[k], coupled[k], atol=1e-3) for k in coupled)  # our anchors do act


# -------------------------------------------------------------------------------------- helpers

def rec(method, dataset, split, base, novel, seconds=1.0):
    return {"method": method, "dataset": dataset, "split": split, "shots": 16, "base": base, "novel": novel,
            "hm": hm(base, novel), "seconds": seconds}


def test_table_means_splits_then_takes_hm():
    records = [rec("ivlp", "a", 1, 80, 20), rec("ivlp", "a", 2, 60, 40), rec("ivlp", "b", 1, 50, 50),
               rec("zero-shot", "a", None, 40, 40), rec("zero-shot", "b", None, 30, 50)]
    methods = resolve_methods(["zero-shot", "ivlp"], [])
    table = base_novel_table(records, methods, ["a", "b"])
    a = table["ivlp"]["a"]
    assert (a["base"], a["novel"], a["n"]) == (70, 30, 2)
    assert a["hm"] == pytest.approx(42.0)  # HM of the means, not the mean of HMs (33.2)
    assert a["base_sd"] == pytest.approx(math.sqrt(200))
    avg = table["ivlp"]["average"]
    assert (avg["base"], avg["novel"]) == (60, 40) and avg["hm"] == pytest.approx(48.0)
    acc = base2novel.ivlp_vs_zero_shot(table)
    assert acc["ivlp_base_gain"] == pytest.approx(60 - 35)
    assert acc["gap_widening"] == pytest.approx((60 - 40) - (35 - 45))


def test_format_base_novel_layout():
    methods = resolve_methods(["zero-shot", "ivlp"], [])
    table = {"ivlp": {"a": {"base": 70.04, "novel": 30.0, "hm": 42.0}, "average": {"base": 1, "novel": 2, "hm": 3}},
             "zero-shot": {"average": {"base": 4, "novel": 5, "hm": 6}}}
    lines = format_base_novel(table, methods, ["a"]).splitlines()
    assert lines[0] == "| method | a B / N / HM | average B / N / HM |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| zero-shot (frozen, template) | - | 4.0 / 5.0 / 6.0 |"  # registry order, gaps as -
    assert lines[3] == "| IVLP (ViFi-CLIP VL prompting) | 70.0 / 30.0 / 42.0 | 1.0 / 2.0 / 3.0 |"


def test_format_grid_and_few_shot_table():
    grid = format_grid({("m", "x"): 1.25}, [("m", "M")], [("x", "X"), ("y", "Y")], digits=2)
    assert grid.splitlines()[-1] == "| M | 1.25 | - |"
    runs = [{"method": "coop", "dataset": "d", "split": s, "shots": k, "top1": 10.0 * k + s, "seconds": 1}
            for k in (2, 4) for s in (1, 2)] + [{"method": "zero-shot", "dataset": "d", "split": None, "shots": None,
                                                 "top1": 5.0, "seconds": 1}]
    methods = resolve_methods(["zero-shot", "coop"], [])
    table = few_shot.few_shot_table(runs, methods, ["d"], [2, 4])
    assert table["coop"]["d"] == {2: 21.5, 4: 41.5} and table["zero-shot"]["d"] == {2: 5.0, 4: 5.0}
    text = few_shot.format_few_shot(table, methods, ["d"], [2, 4])
    assert "| CoOp | 21.5 / 41.5 | 21.5 / 41.5 |" in text


def test_transfer_values():
    runs = [{"method": "ivlp", "top1": 50.0 + s, "transfer": {"t": {"top1": 10.0 * s}}} for s in (1, 2)]
    assert zero_shot.transfer_values(runs, "src") == {("ivlp", "src"): 51.5, ("ivlp", "t"): 15.0}


def test_methods_are_the_documented_configs():
    s = Setting(n_ctx=8, n_vision_ctx=4, depth=4)
    coop = prompt_section(METHODS["coop"], s, None)
    assert coop == {"n_ctx": 8, "text_depth": 1, "vision_depth": 0, "n_vision_ctx": 0}
    ivlp = prompt_section(METHODS["ivlp"], s, None)
    assert ivlp == {"n_ctx": 8, "text_depth": 4, "vision_depth": 4, "n_vision_ctx": 4}
    assert prompt_section(METHODS["ga2"], s, "h.safetensors")["hard_prompts"] == "h.safetensors"
    with pytest.raises(SystemExit, match="needs a hard prompt"):
        prompt_section(METHODS["coupling"], s, None)
    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['nope'\]"):
        resolve_methods(["ivlp", "nope"], [])
    spec = run_config(METHODS["kgcoop"], s, {"name": "tiny"}, {"world": {"dataset": "whmdb"}, "image_size": 32},
                      Path("x"), seed=3)
    cfg = TrainConfig.from_dict(spec["config"])
    assert cfg.loss.text_consistency == 8.0 and cfg.run.seed == 3 and cfg.eval.every_epochs == 1
    assert not cfg.anchors.enabled


def test_world_knobs_come_from_the_preset_and_the_options():
    parser = make_parser("knobs")
    for argv, context, shift in (([], 1.0, None), (["--quick"], 1.0, None),
                                 (["--context", "0.25", "--shift", "0.5"], 0.25, 0.5)):
        args = parser.parse_args(argv)
        setting = make_setting(args)
        assert (setting.world_context, setting.world_shift) == (context, shift)
        world = make_source(args, setting).data("whmdb", "base_to_novel", 2, 16)["world"]
        assert world.get("context") == context and world.get("shift") == shift and world["split_seed"] == 2
    # real data ignores the world's knobs: the preset has none
    assert Setting(**REAL_PRESET).world_context is None


def test_list_source_fills_placeholders_and_resolves_paths(tmp_path):
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"datasets": {
        "h": {"few_shot": {"train_list": "fs_{shots}_s{split}.txt", "labels": "l.csv"},
              "zero_shot": {"val_list": "v.txt", "labels": "l.csv"}}}}))
    src = ListSource(str(tmp_path / "d.yaml"), Setting(num_frames=3, image_size=32))
    assert src.datasets("few_shot") == ["h"] and src.datasets("base_to_novel") == []
    data = src.data("h", "few_shot", 2, 8)
    assert data == {"train_list": "fs_8_s2.txt", "labels": "l.csv", "num_frames": 3, "image_size": 32}
    spec = run_config(METHODS["ivlp"], Setting(), {"name": "tiny"}, data, tmp_path / "r", seed=0,
                      base_dir=tmp_path)
    cfg = TrainConfig.from_dict(spec["config"], base_dir=spec["base_dir"])
    assert cfg.data.train_list == str(tmp_path / "fs_8_s2.txt")
    assert src.data("h", "zero_shot", 1, 16)["train_list"] == "v.txt"  # evaluation-only section
    with pytest.raises(SystemExit, match="has no 'base_to_novel' section"):
        src.data("h", "base_to_novel", 1, 16)


def test_zero_shot_classifier_is_the_frozen_model_with_the_template():
    cfg = TrainConfig.from_dict({"model": {"name": "tiny"}, "prompts": {"n_ctx": 4, "text_depth": 2, "vision_depth": 2,
                                                                        "n_vision_ctx": 4},
                                 "data": {"world": {"dataset": "whmdb"}, "image_size": 32}})
    wrapper = build_wrapper(cfg)
    frames = torch.randn(3, 2, 3, 32, 32)
    names = ["red thing", "blue thing"]
    got = ZeroShotClassifier.from_wrapper(wrapper, "a video of a {}.")(frames, names)
    with torch.no_grad():
        prompted = wrapper(frames, names)
    host = wrapper.unwrap()  # the plain host: what zero-shot CLIP computes
    with torch.no_grad():
        ids = wrapper.tokenizer([f"a video of a {n}." for n in names])
        text = torch.nn.functional.normalize(host.encode_text(ids), dim=-1)
        video = torch.nn.functional.normalize(host.encode_image(frames.flatten(0, 1)).view(3, 2, -1).mean(1), dim=-1)
        want = host.logit_scale.exp() * video @ text.t()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(prompted, got)  # the prompted model differs: the test can fail


# ------------------------------------------------------------------- Trainer options used above

def world_cfg(tmp_path, **over):
    base = {"model": {"name": "tiny"}, "prompts": {"n_ctx": 4, "text_depth": 2, "vision_depth": 2, "n_vision_ctx": 4},
            "data": {"world": {"dataset": "whmdb", "shots": 1, "test_per_class": 3}, "image_size": 32, "num_frames": 2},
            "optim": {"epochs": 1, "batch_size": 5, "warmup_epochs": 0},
            "run": {"output_dir": str(tmp_path / "run"), "progress": False}}
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainConfig.from_dict(base)


def test_world_test_per_class(tmp_path):
    ds = build_datasets(world_cfg(tmp_path), train=False)
    assert len(ds.evals["base"].dataset) == 3 * 10 and len(ds.evals["novel"].dataset) == 3 * 10
    with pytest.raises(ConfigError, match=r"data\.world\.test_per_class: must be >= 1"):
        world_cfg(tmp_path, data={"world": {"dataset": "whmdb", "test_per_class": 0}})


def test_text_consistency_term_is_added_to_the_loss(tmp_path):
    t = Trainer(world_cfg(tmp_path, loss={"text_consistency": 8.0, "text_consistency_template": "a video of a {}."}))
    frames, labels = next(iter(t.loader))
    loss, parts = t.step_module(frames, labels, t.datasets.classnames)
    reg = pc.TextConsistencyRegularizer(t.wrapper, t.datasets.classnames, weight=8.0, template="a video of a {}.")
    with torch.no_grad():
        assert parts["text"] > 0
        torch.testing.assert_close(parts["text"], reg(t.wrapper.encode_text(t.datasets.classnames)).detach())
    torch.testing.assert_close(loss.detach(), parts["ce"] + parts["text"])
    off = Trainer(world_cfg(tmp_path / "off"))
    assert "text" not in off.step_module(frames, labels, off.datasets.classnames)[1]
    with pytest.raises(ConfigError, match=r"loss\.text_consistency: must be >= 0"):
        world_cfg(tmp_path, loss={"text_consistency": -1.0})


# ------------------------------------------------------- intervals, world seeds, PromptSRC-style rows

def test_base2novel_world_seeds_src_rows_and_paired_intervals(tmp_path):
    doc = base2novel.main(TINY + ["--splits", "2", "--datasets", "whmdb", "--methods", "zero-shot", "ivlp",
                                  "ivlp+src", "ga2+src", "--world-seeds", "0", "1", "--out", str(tmp_path)])
    runs = doc["runs"]
    assert sorted({(r["method"], r["world_seed"]) for r in runs}) == sorted(
        (m, w) for m in ("zero-shot", "ivlp", "ivlp+src", "ga2+src") for w in (0, 1))
    assert doc["world_seeds"] == [0, 1] and set(doc["hard_prompts_by_world_seed"]) == {"0", "1"}
    for r in runs:  # every clip's correctness is kept, and it gives the reported accuracy
        for part in ("base", "novel"):
            bits = r["correct"][part]
            assert len(bits) == 2 * 10 and set(bits) <= {"0", "1"}  # 2 test clips x 10 classes
            assert 100 * bits.count("1") / len(bits) == pytest.approx(r[part])
    # the +src rows train with both guards on
    spec = run_config(METHODS["ga2+src"], Setting(), {"name": "tiny"}, {"world": {"dataset": "whmdb"}}, Path("x"),
                      seed=0, hard_prompts="h.safetensors")["config"]
    assert spec["optim"]["prompt_average"] is True and spec["loss"]["self_reg_text"] == 25.0
    # 2 splits x 2 worlds = 4 cells per method, paired against IVLP; zero-shot stands in every split's cell
    paired = doc["paired_vs_ivlp"]
    assert set(paired) == {"zero-shot", "ivlp+src", "ga2+src"}
    for entry in paired.values():
        assert entry["cells"]["n"] == 4 and entry["clips"]["n"] == 4
        assert entry["cells"]["low"] <= entry["cells"]["mean"] <= entry["cells"]["high"]
    ivlp = {(r["world_seed"], r["split"]): r["hm"] for r in runs if r["method"] == "ivlp"}
    mine = {(r["world_seed"], r["split"]): r["hm"] for r in runs if r["method"] == "ivlp+src"}
    assert paired["ivlp+src"]["cells"]["mean"] == pytest.approx(sum(mine[k] - ivlp[k] for k in ivlp) / 4)
    md = doc["markdown"]
    assert "HM against IVLP, paired by cell" in md and "| IVLP + PromptSRC-style" in md
    assert "ga2+src vs IVLP: " in md and "95% interval [" in md and "over test clips" in md
    assert "x world seeds [0, 1]" in md
    assert Path(doc["plot_datasets"]).stat().st_size > 0 and Path(doc["plot"]).stat().st_size > 0


def test_paired_comparison_of_records_by_hand():
    from protocol.reports import cells, paired_comparison, readings

    def r(method, split, base, novel, world=0):
        return {"method": method, "dataset": "d", "split": split, "world_seed": world, "shots": 16,
                "base": 100 * base.count("1") / len(base), "novel": 100 * novel.count("1") / len(novel),
                "hm": hm(100 * base.count("1") / len(base), 100 * novel.count("1") / len(novel)),
                "correct": {"base": base, "novel": novel}, "seconds": 1}

    records = [r("zero-shot", None, "1100", "1100"), r("ivlp", 1, "1110", "1000"), r("ivlp", 2, "1111", "1000"),
               r("ga2", 1, "1110", "1100"), r("ga2", 2, "1111", "1100")]
    hms, clips = cells(records)
    assert set(hms["zero-shot"]) == {"d/s1/w0", "d/s2/w0"}  # the frozen row in each split's cell
    assert clips["ga2"]["d/s1/w0"] == {"base": [1, 1, 1, 0], "novel": [1, 1, 0, 0]}
    paired = paired_comparison(records, resamples=200)
    d1, d2 = hm(75, 50) - hm(75, 25), hm(100, 50) - hm(100, 25)
    assert paired["ga2"]["cells"]["mean"] == pytest.approx((d1 + d2) / 2)
    assert paired["ga2"]["clips"]["mean"] == pytest.approx((d1 + d2) / 2)
    (line,) = [x for x in readings(paired, resolve_methods(["ga2"], [])) if x.startswith("ga2")]
    assert line.startswith(f"ga2 vs IVLP: {(d1 + d2) / 2:+.1f} HM, 95% interval [")


def test_base2novel_k400_first_protocol(tmp_path):
    """--protocol k400-first: the world CLIP fine-tuned on all of wk400 (cached by hash) is every
    run's backbone, the runs are on whmdb/wucf/wssv2, and the hard prompt is learned on wk400 base."""
    argv = ["--protocol", "k400-first", "--splits", "1", "--epochs", "1", "--shots", "1", "--batch-size", "4",
            "--test-per-class", "1", "--k400-epochs", "1", "--k400-shots", "1", "--workers", "1",
            "--methods", "zero-shot", "ivlp", "coupling", "--out", str(tmp_path)]
    doc = base2novel.main(argv)
    backbone = doc["k400_backbone"]["0"]
    path = Path(backbone["path"])
    assert path.is_file() and path.parent == tmp_path / "cache" and backbone["seconds"] > 0
    assert set(backbone["zero_shot_top1_after"]) == {"wk400", "whmdb", "wucf", "wssv2"}
    assert doc["datasets"] == ["whmdb", "wucf", "wssv2"] and doc["protocol"] == "k400-first"
    assert doc["model"]["backbone_checkpoint"] == str(path)
    assert "protocol k400-first" in doc["markdown"]
    # the backbone differs from the shipped world CLIP, and the runs were built on it
    from safetensors.torch import load_file

    from promptcouple.world import load_world_clip
    tuned, shipped = load_file(str(path)), load_world_clip()[0].state_dict()
    assert any(not torch.equal(tuned[k], shipped[k].float()) for k in tuned)
    # the hard prompt came from wk400's base classes (the cache name says which source)
    assert "k400first" in Path(doc["hard_prompts"]).parent.name
    again = base2novel.main(argv)
    assert again["k400_backbone"]["0"]["cached"] == str(path)  # fine-tuned once per world and recipe
    with pytest.raises(SystemExit, match="k400-first"):
        base2novel.main(["--protocol", "k400-first", "--model", "tiny"])


def _fake_result(path, world, *, protocol="from-clip", epochs=8, seed=0):
    """A base2novel result file in the shape the real ones have: per method, dataset, split and
    world seed the base/novel/HM and every test clip's correctness."""
    import random

    rng = random.Random(seed + 10 * world)

    def record(method, dataset, split):
        base = "".join(rng.choice("01") for _ in range(12))
        novel = "".join(rng.choice("011") for _ in range(10))
        b, n = 100 * base.count("1") / len(base), 100 * novel.count("1") / len(novel)
        return {"method": method, "dataset": dataset, "split": split, "world_seed": world, "shots": 16,
                "base": b, "novel": n, "hm": hm(b, n), "correct": {"base": base, "novel": novel}, "seconds": 1.0}

    runs = [record("zero-shot", d, None) for d in ("da", "db")]
    runs += [record(m, d, s) for m in ("ivlp", "ga2", "anchors") for d in ("da", "db") for s in (1, 2)]
    doc = {"benchmark": "base2novel", "setting": "full", "protocol": protocol, "model": {"name": "world"},
           "data": "world", "world_knobs": {"shift": None}, "inputs": {"world_code": "abc"},
           "hyperparameters": {"epochs": epochs, "shots": 16, "test_per_class": 50}, "datasets": ["da", "db"],
           "splits": [1, 2], "methods": ["zero-shot", "ivlp", "ga2", "anchors"], "world_seed": world,
           "world_seeds": [world], "runs": runs}
    path.write_text(json.dumps(doc))
    return path


def test_pool_equals_the_interval_over_concatenated_cells_and_refuses_unlike_files(tmp_path):
    import numpy as np

    import pool
    import stats
    from promptcouple.errors import InvalidInputError
    from protocol import pooling

    a, b = _fake_result(tmp_path / "w0.json", 0), _fake_result(tmp_path / "w1.json", 1)
    doc = pool.main([str(a), str(b), "--out", str(tmp_path / "pooled"), "--resamples", "300"])
    runs = json.loads(a.read_text())["runs"] + json.loads(b.read_text())["runs"]

    def by_cell(method):
        return {f"{r['dataset']}/s{r['split']}/w{r['world_seed']}": r for r in runs if r["method"] == method}

    ivlp = by_cell("ivlp")
    for method in ("ga2", "anchors"):
        mine = by_cell(method)
        order = sorted(mine)
        assert len(order) == 8 and doc["paired_vs_ivlp"][method]["cells"]["n"] == 8  # 2 datasets x 2 splits x 2 worlds
        by_hand = stats.paired_interval([mine[c]["hm"] for c in order], [ivlp[c]["hm"] for c in order])
        got = doc["paired_vs_ivlp"][method]
        assert (got["cells"]["mean"], got["cells"]["low"], got["cells"]["high"]) == pytest.approx(
            (by_hand.mean, by_hand.low, by_hand.high), abs=1e-9)
        bits = lambda r, k: np.array([int(c) for c in r["correct"][k]])  # noqa: E731
        clips = stats.bootstrap_hm_difference(
            [stats.CellClips(bits(mine[c], "base"), bits(mine[c], "novel"), bits(ivlp[c], "base"),
                             bits(ivlp[c], "novel")) for c in order], resamples=300)
        assert (got["clips"]["mean"], got["clips"]["low"], got["clips"]["high"]) == pytest.approx(
            (clips.mean, clips.low, clips.high), abs=1e-9)
    assert doc["world_seeds"] == [0, 1] and doc["n_cells"] == 8
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"pooled.{ext}").stat().st_size > 0
    assert json.loads((tmp_path / "pooled.json").read_text())["paired_vs_ivlp"] == doc["paired_vs_ivlp"]
    assert "(8 cells;" in (tmp_path / "pooled.md").read_text()

    other = _fake_result(tmp_path / "k.json", 1, protocol="k400-first")
    with pytest.raises(InvalidInputError, match=r"cannot be pooled: protocol: 'from-clip' vs 'k400-first'"):
        pooling.pool(pooling.load([a, other]))
    longer = _fake_result(tmp_path / "e.json", 1, epochs=5)
    with pytest.raises(InvalidInputError, match=r"hyperparameters\.epochs: 8 vs 5"):
        pooling.pool(pooling.load([a, longer]))
    again = _fake_result(tmp_path / "w0b.json", 0, seed=3)
    with pytest.raises(InvalidInputError, match=r"in cell da/(s1/)?w0 is in both .* with different results"):
        pooling.pool(pooling.load([a, again]))
    with pytest.raises(SystemExit, match="cannot be pooled"):
        pool.main([str(a), str(other), "--out", str(tmp_path / "no")])


def test_pool_takes_rows_added_to_a_world_by_a_later_run_and_checks_they_pair(tmp_path):
    """A world's description rows run after its full run: pooled beside the old rows when they trained
    from the same hard prompt and a row in both files reproduces to the last clip; else refused."""
    import pool
    from promptcouple.errors import InvalidInputError
    from protocol import pooling

    a, b = _fake_result(tmp_path / "w0.json", 0), _fake_result(tmp_path / "w1.json", 1)
    for path, w in ((a, 0), (b, 1)):
        doc = json.loads(path.read_text())
        doc["hard_prompts_by_world_seed"] = {str(w): f"/runs/cache/hard_prompts_world{w}_abc/prompts.safetensors"}
        path.write_text(json.dumps(doc))

    def added(path, world, *, hard="abc", rerun=True, tamper=False):
        base = json.loads((a if world == 0 else b).read_text())
        desc = [{**r, "method": r["method"] + "+desc", "hm": r["hm"] + 1.0 + (r["split"] or 0)}
                for r in base["runs"] if r["method"] in ("ivlp", "ga2")]
        again = [dict(r) for r in base["runs"] if r["method"] == "ga2"] if rerun else []
        if tamper:
            again[0]["correct"] = {**again[0]["correct"], "base": "1" * len(again[0]["correct"]["base"])}
        doc = {**base, "methods": ["ga2", "ivlp+desc", "ga2+desc"], "runs": again + desc,
               "hard_prompts_by_world_seed": {str(world): f"/other/cache/hard_prompts_world{world}_{hard}/p.st"}}
        path.write_text(json.dumps(doc))
        return path

    a_desc, b_desc = added(tmp_path / "w0d.json", 0), added(tmp_path / "w1d.json", 1, rerun=False)
    doc = pool.main([str(a), str(b), str(a_desc), str(b_desc), "--out", str(tmp_path / "p"), "--resamples", "200"])
    assert doc["methods"] == ["zero-shot", "ivlp", "ga2", "anchors", "ivlp+desc", "ga2+desc"]
    assert doc["methods_left_out"] == [] and doc["n_cells"] == 8 and doc["reproduced"] == {"ga2": 4}
    # ivlp+desc was written as ivlp + 1 + split: the pooled difference over cells is exactly that
    assert doc["paired_descriptions_vs_plain"]["ivlp+desc"]["cells"]["mean"] == pytest.approx(2.5)
    assert doc["paired_descriptions_vs_plain"]["ivlp+desc"]["plain"] == "ivlp"
    assert doc["paired_vs_ivlp"]["ivlp+desc"]["cells"]["mean"] == pytest.approx(2.5)
    assert "With descriptions against the same method" in (tmp_path / "p.md").read_text()
    assert "ga2 (4)" in (tmp_path / "p.md").read_text()
    # rows added to one world only are left out, not pooled over fewer cells
    partial = pooling.pool(pooling.load([a, b, a_desc]), resamples=100)
    assert partial["methods_left_out"] == ["ivlp+desc", "ga2+desc"]
    with pytest.raises(InvalidInputError, match=r"world seed 0 in .* trained from different inputs .*hard_prompt"):
        pooling.pool(pooling.load([a, b, added(tmp_path / "x.json", 0, hard="xyz")]))
    with pytest.raises(InvalidInputError, match=r"ga2 in cell da/s1/w0 is in both .* with different results"):
        pooling.pool(pooling.load([a, b, added(tmp_path / "t.json", 0, tamper=True)]))


def test_pool_joins_world_code_versions_only_through_reproduced_rows(tmp_path):
    """Results made after a change in promptcouple/world carry another code hash: pooled with the older
    ones only when a rerun of older rows with the new code reproduces them to the last clip."""
    from promptcouple.errors import InvalidInputError
    from protocol import pooling

    a, b = _fake_result(tmp_path / "w0.json", 0), _fake_result(tmp_path / "w1.json", 1)

    def recode(path, code, *, methods=None, top1=None, tamper=False):
        doc = json.loads(path.read_text())
        doc["inputs"] = {"world_code": code}
        if methods:
            doc["methods"], doc["runs"] = methods, [r for r in doc["runs"] if r["method"] in methods]
        if tamper:
            doc["runs"][0]["hm"] += 0.5
        if top1 is not None:
            doc["machine"] = {"hard_prompt": {"source_top1": top1}}
        out = tmp_path / f"{path.stem}_{code}{'_t' if tamper else ''}{top1 or ''}.json"
        out.write_text(json.dumps(doc))
        return out

    newer = recode(b, "def")
    with pytest.raises(InvalidInputError, match=r"made with the world's code 'def'.*no row in common"):
        pooling.pool(pooling.load([a, newer]))
    bridge = recode(a, "def", methods=["zero-shot", "ivlp"])  # world 0's rows rerun with the new code
    pooled = pooling.pool(pooling.load([a, newer, bridge]), resamples=100)
    assert pooled["n_cells"] == 8 and pooled["reproduced"] == {"zero-shot": 2, "ivlp": 4}
    versions = pooled["world_code_versions"]
    assert versions["abc"]["files"] == [str(a)] and versions["def"]["rows_shared_with_other_versions"] == 6
    assert "World code versions" in pooling.markdown(pooled)
    with pytest.raises(InvalidInputError, match="with different results"):
        pooling.pool(pooling.load([a, newer, recode(a, "def", methods=["zero-shot", "ivlp"], tamper=True)]))
    with pytest.raises(InvalidInputError, match=r"world seed 0 .*hard_prompt_top1: 20\.5 vs 21\.0"):
        pooling.pool(pooling.load([recode(a, "abc", top1=20.5), newer,
                                   recode(a, "def", methods=["zero-shot", "ivlp"], top1=21.0)]))
