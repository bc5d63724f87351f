"""The ONNX classifier: onnxruntime's probabilities equal the PyTorch Predictor's on generated clips,
for an open_clip, an OpenAI-layout and a Hugging Face CLIP host; the text tower is not in the graph."""

import json

import pytest
import torch

import promptcouple as pc
from promptcouple.cli import main as cli
from promptcouple.data.synthetic import write_sliding_square_videos
from promptcouple.io import save_prompts
from promptcouple.predict import Predictor
from promptcouple.train import TrainConfig
from promptcouple.train.hosts import build_host
from promptcouple.train.run_info import run_info
from hosts import make_host

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from promptcouple.export import OnnxClassifier, export_onnx  # noqa: E402

CLASSES = ["red", "green", "blue", "white"]
SMALL = dict(n_ctx=4, text_depth=2, n_vision_ctx=3, vision_depth=2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = write_sliding_square_videos(tmp_path_factory.mktemp("clips"), 4, classnames=CLASSES)
    return sorted(folder.glob("*.mp4"))


def perturbed(wrapper):
    with torch.no_grad():
        for p in wrapper.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return wrapper.eval()


def small_config(**eval_kw):
    cfg = TrainConfig()  # only the model, frames, size, views and seed matter here (not a training config)
    cfg.model.name, cfg.data.num_frames, cfg.data.image_size, cfg.run.seed = "tiny", 4, 32, 3
    for key, value in eval_kw.items():
        setattr(cfg.eval, key, value)
    return cfg


def check_agreement(predictor, clips, path):
    frames = torch.stack([predictor.load(c) for c in clips])
    expected = predictor.probabilities(frames).cpu()  # after the export: it must leave the model as it was
    runtime = OnnxClassifier(path, threads=1)
    got = runtime.probabilities(frames)
    assert got.shape == expected.shape == (len(clips), len(predictor.classnames))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # a batch of another size (the batch axis is dynamic) gives the same rows
    torch.testing.assert_close(runtime.probabilities(frames[:1]), expected[:1], atol=1e-4, rtol=0)
    assert runtime.classnames == predictor.classnames and runtime.num_frames == predictor.cfg.data.num_frames
    # The class features are a constant of the graph: no token embedding (49408 x width) inside it.
    shapes = [tuple(t.dims) for t in onnx.load(str(path)).graph.initializer]
    assert not any(49408 in s for s in shapes)
    assert (len(predictor.classnames), 32) in shapes


def test_open_clip_prompt_file_through_the_command(tmp_path, clips, capsys):
    cfg = small_config(num_clips=2)  # two temporal views, averaged as predict averages them
    host, _ = build_host(cfg)
    wrapper = perturbed(pc.CouplingPromptWrapper(host, pc.CouplingConfig(**SMALL), hard_prompts=torch.randn(4, 32)))
    prompts = tmp_path / "prompts.safetensors"
    save_prompts(wrapper, prompts, run_info=run_info(cfg, CLASSES, {}))
    out = tmp_path / "classifier.onnx"
    assert cli(["export", str(prompts), "--classes", "red,green,blue,white", "--onnx", str(out)]) == 0
    assert "frames (B, 2, 4, 3, 32, 32)" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classnames"]) == CLASSES and json.loads(meta["views"])["num_clips"] == 2
    check_agreement(Predictor(prompts, classes="red,green,blue,white", device="cpu"), clips, out)


def test_openai_layout_host(tmp_path, clips, tokenizer):
    wrapper = perturbed(pc.CouplingPromptWrapper(make_host("openai"), pc.CouplingConfig(**SMALL), tokenizer=tokenizer,
                                                 hard_prompts=torch.randn(4, 32)))  # coupled: dropout in training
    predictor = Predictor.from_wrapper(wrapper, CLASSES, config=small_config(reduce="logits"))
    check_agreement(predictor, clips, export_onnx(predictor, tmp_path / "openai.onnx"))


def test_hugging_face_clip_host(tmp_path, clips):
    pytest.importorskip("transformers")
    from zoo.hf import _clip, _clip_tokenizer

    wrapper = perturbed(pc.CouplingPromptWrapper(_clip(0), pc.CouplingConfig(**SMALL), tokenizer=_clip_tokenizer()))
    predictor = Predictor.from_wrapper(wrapper, CLASSES, config=small_config())
    check_agreement(predictor, clips, export_onnx(predictor, tmp_path / "hf.onnx"))


def test_benchmark_smoke(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from bench_export import main

    record = main(["--quick", "--reps", "2", "--frames", "2", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["frames_shape"] == [1, 1, 2, 3, 32, 32]
    assert record["max_probability_difference"] < 1e-4  # both sides score the same frames alike
    assert record["onnxruntime_clips_per_s"] > 0 and record["pytorch_clips_per_s"] > 0
