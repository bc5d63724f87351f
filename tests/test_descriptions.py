"""Class descriptions: the description file reader and its errors, the world's description sets,
class features averaged over descriptions (against the computation written out by hand on a causal
and a bidirectional host), their cache and short text path, prompt files, eval and predict."""

from __future__ import annotations

import json

import pytest
import torch

from promptcouple.descriptions import check_descriptions, read_descriptions
from promptcouple.errors import InvalidInputError, InvalidTypeError, MissingFileError

CLASSES = ["archery", "riding_a_bike", "playing the violin"]


# ------------------------------------------------------------------------------ the file reader

def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_and_json_read_alike(tmp_path):
    csv_file = write(tmp_path, "d.csv", "class,description\n"
                     "archery,a person shooting arrows at a target\n"
                     "Riding a bike,\"someone pedalling a bicycle, outdoors\"\n"
                     "archery,a bow drawn and released\n"
                     "playing the violin,a bow moving over strings, held under the chin\n")
    expected = {"archery": ("a person shooting arrows at a target", "a bow drawn and released"),
                "riding_a_bike": ("someone pedalling a bicycle, outdoors",),
                "playing the violin": ("a bow moving over strings, held under the chin",)}
    got = read_descriptions(csv_file, CLASSES)
    assert got == expected and list(got) == CLASSES  # keyed by the dataset's spelling, in its order
    json_file = write(tmp_path, "d.json", json.dumps({
        "archery": ["a person shooting arrows at a target", "a bow drawn and released"],
        "riding a bike": "someone pedalling a bicycle, outdoors",
        "playing the violin": ["a bow moving over strings, held under the chin"]}, indent=1))
    assert read_descriptions(json_file, CLASSES) == expected
    assert set(read_descriptions(csv_file)) == {"archery", "Riding a bike", "playing the violin"}


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("fault", ["unknown", "empty", "missing"])
def test_errors_name_the_file_and_line(tmp_path, fmt, fault):
    rows = [("archery", "shooting arrows"), ("riding a bike", "pedalling"), ("playing the violin", "bowing")]
    if fault == "unknown":
        rows[1] = ("riding a horse", "galloping")
    elif fault == "empty":
        rows[2] = ("playing the violin", "  ")
    else:
        rows = rows[:2]
    if fmt == "csv":
        path = write(tmp_path, "d.csv", "".join(f"{c},{d}\n" for c, d in rows))
    else:
        path = write(tmp_path, "d.json", "{\n" + ",\n".join(f'  "{c}": ["{d}"]' for c, d in rows) + "\n}\n")
    with pytest.raises(InvalidInputError) as err:
        read_descriptions(path, CLASSES)
    message = str(err.value)
    if fault == "unknown":
        assert f"{path}:{2 if fmt == 'csv' else 3}:" in message and "'riding a horse'" in message
        assert "not a class of this dataset" in message
    elif fault == "empty":
        assert f"{path}:{3 if fmt == 'csv' else 4}:" in message and "empty description" in message
    else:
        assert str(path) in message and "'playing the violin'" in message and "no description" in message


def test_malformed_files(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        read_descriptions(tmp_path / "none.csv")
    with pytest.raises(InvalidInputError, match=r"d\.csv:2: 'riding a bike' has no description"):
        read_descriptions(write(tmp_path, "d.csv", "archery,arrows\nriding a bike\n"))
    with pytest.raises(InvalidInputError, match=r"d\.json:3: not valid JSON"):
        read_descriptions(write(tmp_path, "d.json", '{\n "archery": ["arrows"],\n}\n'))
    with pytest.raises(InvalidInputError, match=r"d\.json:2: class 'archery' has no description"):
        read_descriptions(write(tmp_path, "d.json", '{\n "archery": []\n}\n'))
    with pytest.raises(InvalidInputError, match="no descriptions"):
        read_descriptions(write(tmp_path, "e.csv", "class,description\n"))


def test_check_descriptions_refuses_silent_mistakes():
    assert check_descriptions({"a": ["x", "y"]}) == {"a": ("x", "y")}
    with pytest.raises(InvalidInputError, match="is the string"):
        check_descriptions({"a": "one description"})
    with pytest.raises(InvalidInputError, match="is empty"):
        check_descriptions({"a": []})
    with pytest.raises(InvalidInputError, match=r"\['a'\]\[1\]"):
        check_descriptions({"a": ["x", ""]})
    with pytest.raises(InvalidTypeError, match="mapping"):
        check_descriptions(["a", "b"])


# ----------------------------------------------------------------------------------- the world

def test_world_descriptions_are_the_names_paraphrases():
    from promptcouple.world import class_descriptions, dataset_info, dataset_names
    from promptcouple.world.vocab import MOTIONS

    for name in dataset_names():
        sets = class_descriptions(name)
        assert list(sets) == dataset_info(name)["classnames"]
        for cls, texts in sets.items():
            assert texts[0] == cls and len(set(texts)) == len(texts)
    whmdb = class_descriptions("whmdb")
    assert whmdb["red thing orbiting"] == ["red thing orbiting"] + [f"red thing {p}" for p in MOTIONS["orbit"][1]]
    assert class_descriptions("wk400")["square moving left"][1:] == [
        "square moving to the left", "square going left", "square sliding left"]
    assert all(len(t) == 1 for t in class_descriptions("wucf").values())  # no motion in the name


# ------------------------------------------------------------------------- features and the cache

DESCRIBED = {"archery": ["a person shooting arrows at a target", "a bow drawn and released."],
             "riding_a_bike": ["someone pedalling a bicycle along a long and winding country road"]}


def zoo_case(name: str):
    from zoo import all_cases

    found = [c for c in all_cases() if c.name == name]
    if not found:
        pytest.skip(f"host {name} not available")
    return found[0]


def wrapped(case, **kwargs):
    import promptcouple as pc

    host = case.build(0)
    vision = dict(n_vision_ctx=2, vision_depth=2) if case.vision else dict(n_vision_ctx=0, vision_depth=0)
    cfg = pc.CouplingConfig(n_ctx=4, text_depth=2, dropout=0.0, **vision)
    wrapper = pc.CouplingPromptWrapper(host, cfg, tokenizer=case.tokenizer(), **kwargs)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # away from the initialisation, so that a mix-up would show
        for p in wrapper.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return host, wrapper


@pytest.mark.parametrize("name", ["open_clip-tok", "oc-siglip"])  # a causal and a bidirectional text tower
def test_class_feature_is_the_mean_of_its_descriptions_written_out(name):
    import torch.nn.functional as F

    from promptcouple.tokenize import PromptTokenizer

    case = zoo_case(name)
    host, wrapper = wrapped(case)
    tok = PromptTokenizer(case.tokenizer(), wrapper.host.text.context_length)
    params = [p for n, p in wrapper.named_trainable_parameters() if "vision" not in n]  # what text depends on
    got = wrapper.encode_text(CLASSES, descriptions=DESCRIBED)
    got_grads = torch.autograd.grad(got.square().sum(), params)

    def by_hand(text: str) -> torch.Tensor:
        return case.manual_text(host, tok([text]), wrapper.prompts, wrapper._ctx_start)[0]

    with wrapper.prompts_disabled():  # the hand-written path must not be prompted twice
        rows = []
        for name in CLASSES:
            if name in DESCRIBED:  # "X X X X <description>." (one final period), normalised, averaged
                feats = [F.normalize(by_hand(f"X X X X {d.rstrip('.')}."), dim=-1) for d in DESCRIBED[name]]
                rows.append(torch.stack(feats).mean(0))
            else:  # a class without descriptions keeps its name's feature
                rows.append(by_hand(f"X X X X {name.replace('_', ' ')}."))
        expected = torch.stack(rows)
        expected_grads = torch.autograd.grad(expected.square().sum(), params)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    for g, e in zip(got_grads, expected_grads):
        assert g.abs().sum() > 0  # gradients up to ~3, summed over rows in another order: float32 noise ~1e-5
        torch.testing.assert_close(g, e, atol=1e-5 * e.abs().max().item(), rtol=0)
    assert (got[0] - wrapper.encode_text(CLASSES)[0]).abs().max() > 1e-3  # the descriptions really count
    torch.testing.assert_close(got[2], wrapper.encode_text(CLASSES)[2], atol=1e-5, rtol=0)  # another batch


def test_cache_short_path_defaults_and_logits():
    case = zoo_case("open_clip-tok")
    host, wrapper = wrapped(case)
    _, full = wrapped(case, short_text=False)
    wrapper.eval(), full.eval()
    calls = []
    short = wrapper.host.encode_text_short
    wrapper.host.encode_text_short = lambda ids, *args: calls.append(ids.shape) or short(ids, *args)
    with torch.no_grad():
        a = wrapper.encode_text(CLASSES, descriptions=DESCRIBED)
        assert calls and sum(s[0] for s in calls) == 4  # short passes over 2 + 1 descriptions and 1 name
        torch.testing.assert_close(a, full.encode_text(CLASSES, descriptions=DESCRIBED), atol=1e-6, rtol=0)
        n = len(calls)
        assert wrapper.encode_text(CLASSES, descriptions=DESCRIBED) is a and len(calls) == n  # cached
        other = {**DESCRIBED, "archery": ["an archer"]}
        b = wrapper.encode_text(CLASSES, descriptions=other)  # the descriptions are part of the cache key
        assert len(calls) > n and (a[0] - b[0]).abs().max() > 1e-3
        torch.testing.assert_close(a[1:], b[1:], atol=1e-5, rtol=0)  # the same rows in another batch
        wrapper.descriptions = DESCRIBED  # the wrapper's own descriptions are the default
        torch.testing.assert_close(wrapper.encode_text(CLASSES), a, atol=0, rtol=0)
        x = torch.randn(2, *case.frames, generator=torch.Generator().manual_seed(1))
        video, context = wrapper.encode_video(x, return_tokens=True)
        torch.testing.assert_close(wrapper(x, CLASSES), wrapper.logits(video, a, context), atol=1e-6, rtol=0)
        plain = wrapper(x, CLASSES, descriptions={})  # an empty mapping: the class names alone
        torch.testing.assert_close(plain, wrapper.logits(video, full.encode_text(CLASSES), context),
                                   atol=1e-5, rtol=0)
    with pytest.raises(InvalidInputError, match="is the string"):
        wrapper.encode_text(CLASSES, descriptions={"archery": "arrows"})
    with pytest.raises(InvalidInputError, match="needs .* tokens"):
        wrapper.encode_text(CLASSES, descriptions={"archery": ["word " * 200]})


def test_prompt_files_round_trip_the_descriptions(tmp_path):
    import promptcouple as pc
    from promptcouple.io import read_prompt_file, run_info_of

    case = zoo_case("open_clip-tok")
    host, wrapper = wrapped(case)
    wrapper.descriptions = DESCRIBED
    path = tmp_path / "p.safetensors"
    wrapper.save_prompts(path)
    recorded = run_info_of(read_prompt_file(path).metadata)["descriptions"]
    assert recorded == DESCRIBED
    loaded = pc.CouplingPromptWrapper.from_pretrained(case.build(0), path, tokenizer=case.tokenizer()).eval()
    assert {k: list(v) for k, v in loaded.descriptions.items()} == DESCRIBED
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(CLASSES), wrapper.eval().encode_text(CLASSES),
                                   atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- training, eval and predict

@pytest.fixture(scope="module")
def described_run(tmp_path_factory):
    """A few training steps of a tiny model on clip files, with a description file in the config."""
    from promptcouple.cli import main
    from promptcouple.train.data import synthetic_clips, write_clip_file

    d = tmp_path_factory.mktemp("described")
    names = ["red", "green", "blue"]
    frames, labels = synthetic_clips(6, 3, num_views=1, seed=1)
    write_clip_file(d / "clips.safetensors", frames, labels.tolist(), names)
    (d / "desc.csv").write_text("class,description\nred,a red square\nred,something crimson\n"
                                "green,a green square\nblue,a blue square, sliding\nblue,blue\n")
    (d / "cfg.yaml").write_text(
        "model: {name: tiny}\n"
        "prompts: {n_ctx: 4, text_depth: 2, vision_depth: 2, n_vision_ctx: 2}\n"
        "data: {train_list: clips.safetensors, val_list: clips.safetensors, image_size: 32, num_frames: 2,\n"
        "       descriptions: desc.csv}\n"
        "optim: {epochs: 1, warmup_epochs: 0, batch_size: 3, lr: 1.0e-2}\n"
        "eval: {batch_size: 3}\n"
        f"run: {{progress: false, seed: 3, output_dir: {d / 'run'}}}\n")
    assert main(["train", str(d / "cfg.yaml")]) == 0
    return {"dir": d, "names": names, "frames": frames, "prompts": d / "run" / "prompts.safetensors"}


def test_training_records_and_eval_and_predict_use_the_descriptions(described_run, tmp_path, capsys):
    import csv

    from promptcouple.cli import main
    from promptcouple.io import read_prompt_file, run_info_of
    from promptcouple.predict import Predictor
    from promptcouple.train.evaluation import score_views

    r = described_run
    described = {"red": ["a red square", "something crimson"], "green": ["a green square"],
                 "blue": ["a blue square, sliding", "blue"]}
    assert run_info_of(read_prompt_file(r["prompts"]).metadata)["descriptions"] == described
    capsys.readouterr()
    assert main(["inspect", str(r["prompts"])]) == 0
    assert "[descriptions] 3 classes, 5 descriptions: red: a red square | something crimson; green" in \
        capsys.readouterr().out
    predictor = Predictor(r["prompts"], device="cpu")
    assert "3 of 3 classes by their descriptions (5 in all, recorded in the prompt file)" in predictor.summary()
    frames = r["frames"][:, :1]  # (N, V=1, T, 3, S, S)
    probs = predictor.probabilities(frames)
    with torch.no_grad():
        predictor.wrapper.descriptions = None
        plain = score_views(predictor.wrapper, frames, r["names"])
        predictor.wrapper.descriptions = described
        torch.testing.assert_close(score_views(predictor.wrapper, frames, r["names"]), probs, atol=1e-6, rtol=0)
    assert (probs - plain).abs().max() > 1e-4  # the descriptions change the scores

    report = tmp_path / "eval"  # eval of the run folder: config and prompts from it
    assert main(["eval", str(r["dir"] / "run"), "--out", str(report)]) == 0
    with open(report / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        top = probs[int(row["video"])].max().item()
        assert abs(float(row["probability_1"]) - top) < 1e-4, (i, row)

    other = tmp_path / "other.json"  # predict --descriptions: another description set wins
    other.write_text(json.dumps({"red": ["crimson"], "green": ["grass"], "blue": ["sky"]}))
    swapped = Predictor(r["prompts"], device="cpu", descriptions=other)
    assert swapped.wrapper.descriptions == {"red": ("crimson",), "green": ("grass",), "blue": ("sky",)}
    assert (swapped.probabilities(frames) - probs).abs().max() > 1e-4
    bad = tmp_path / "bad.csv"
    bad.write_text("red,crimson\ngreen,grass\n")
    with pytest.raises(InvalidInputError, match=r"bad\.csv: class\(es\) 'blue' have no description"):
        Predictor(r["prompts"], device="cpu", descriptions=bad)


def test_each_prompt_set_keeps_the_descriptions_its_file_records(described_run, tmp_path):
    """Several prompt files on one backbone: each set scores with its own file's descriptions (none
    for a file trained on names), equal to a predictor of that file alone; given descriptions win
    for every set."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from promptcouple.predict import Predictor

    r = described_run
    with safe_open(str(r["prompts"]), "pt") as f:
        metadata = dict(f.metadata())
    metadata.pop("descriptions")
    (tmp_path / "plain").mkdir()
    plain_file = tmp_path / "plain" / "prompts.safetensors"  # the same tensors, recorded without descriptions
    save_file(load_file(str(r["prompts"])), str(plain_file), metadata=metadata)
    frames = r["frames"][:, :1]

    both = Predictor([r["prompts"], plain_file], device="cpu")
    described_name, plain_name = list(both.prompt_sets)
    alone = {described_name: Predictor(r["prompts"], device="cpu"),
             plain_name: Predictor(plain_file, device="cpu", config=both.cfg)}
    assert alone[plain_name].wrapper.descriptions is None and alone[described_name].wrapper.descriptions
    for name in (plain_name, described_name, plain_name):  # switching back and forth
        torch.testing.assert_close(both.probabilities(frames, prompt_set=name),
                                   alone[name].probabilities(frames), atol=1e-6, rtol=0)
        assert (both.wrapper.descriptions is None) == (name == plain_name)
    assert (both.probabilities(frames, prompt_set=plain_name)
            - both.probabilities(frames, prompt_set=described_name)).abs().max() > 1e-4

    given = {"red": ["crimson"], "green": ["grass"], "blue": ["sky"]}
    over = Predictor([r["prompts"], plain_file], device="cpu", descriptions=given)
    for name in over.prompt_sets:
        over.probabilities(frames[:1], prompt_set=name)
        assert over.wrapper.descriptions == {k: tuple(v) for k, v in given.items()}, name


# ------------------------------------------------------------------------------- the benchmarks

def test_base2novel_description_rows_and_forest_plot(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import base2novel
    from protocol.methods import METHODS, resolve_methods, run_config
    from protocol.setting import Setting

    from promptcouple.train import TrainConfig

    assert [m.name for m in resolve_methods(["coop", "ivlp+desc"], [], descriptions=False)] == ["coop", "ivlp+desc"]
    assert [m.name for m in resolve_methods(["coop"], [], descriptions=True)] == ["coop", "coop+desc"]
    world = {"world": {"dataset": "whmdb"}, "image_size": 32}
    on = TrainConfig.from_dict(run_config(METHODS["ivlp+desc"], Setting(), {"name": "tiny"}, world, Path("x"),
                                          seed=0)["config"])
    off = run_config(METHODS["ivlp"], Setting(), {"name": "tiny"}, world, Path("x"), seed=0)["config"]
    assert on.data.world.descriptions and "descriptions" not in off["data"]["world"]
    with pytest.raises(SystemExit, match="needs class descriptions"):
        run_config(METHODS["ivlp+desc"], Setting(), {"name": "tiny"}, {"train_list": "t.txt"}, Path("x"), seed=0)

    doc = base2novel.main(["--model", "tiny", "--splits", "2", "--epochs", "1", "--shots", "2", "--batch-size", "4",
                           "--test-per-class", "2", "--workers", "1", "--datasets", "whmdb",
                           "--methods", "zero-shot", "ivlp", "--descriptions", "--out", str(tmp_path)])
    assert {r["method"] for r in doc["runs"]} == {"zero-shot", "zero-shot+desc", "ivlp", "ivlp+desc"}
    recorded = [r for r in doc["runs"] if r["method"] == "ivlp+desc"]
    from promptcouple.io import read_prompt_file, run_info_of

    described = run_info_of(read_prompt_file(recorded[0]["prompts"]).metadata)["descriptions"]
    assert described["red thing orbiting"][1:] == ["red thing circling around", "red thing moving in a circle"]
    pairs = doc["paired_descriptions_vs_plain"]
    assert set(pairs) == {"zero-shot+desc", "ivlp+desc"} and pairs["ivlp+desc"]["plain"] == "ivlp"
    assert pairs["ivlp+desc"]["cells"]["n"] == 2
    mine = {r["split"]: r["hm"] for r in doc["runs"] if r["method"] == "ivlp+desc"}
    plain = {r["split"]: r["hm"] for r in doc["runs"] if r["method"] == "ivlp"}
    assert pairs["ivlp+desc"]["cells"]["mean"] == pytest.approx(sum(mine[s] - plain[s] for s in plain) / 2)
    md = doc["markdown"]
    assert "| IVLP (ViFi-CLIP VL prompting) + descriptions |" in md and "ivlp+desc vs ivlp: " in md
    assert set(doc["paired_vs_ivlp"]) == {"zero-shot", "zero-shot+desc", "ivlp+desc"}
    assert Path(doc["plot_forest"]).stat().st_size > 0
