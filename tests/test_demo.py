"""The demo page: served on 127.0.0.1, loaded by a headless Chromium, and called through Gradio's
client, which must give a generated clip the same top-5 as `predict` for a prompt set and zero-shot."""

import os
import shutil
import socket
import subprocess

import pytest
import torch

import promptcouple as pc
from promptcouple.cli import main as cli
from promptcouple.io import save_prompts
from promptcouple.predict import ZERO_SHOT, Predictor
from promptcouple.train import TrainConfig
from promptcouple.train.hosts import build_host
from promptcouple.train.run_info import run_info

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from promptcouple.demo import build_demo, example_videos  # noqa: E402

CLASSES = ["red", "green", "blue", "white"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    d = tmp_path_factory.mktemp("demo")
    cfg = TrainConfig()  # the backbone a prompt file records: tiny, 4 frames of 32 px, seed 3
    cfg.model.name, cfg.data.num_frames, cfg.data.image_size, cfg.run.seed = "tiny", 4, 32, 3
    host, _ = build_host(cfg)
    torch.manual_seed(1)
    wrapper = pc.CouplingPromptWrapper(host, pc.CouplingConfig(n_ctx=4, text_depth=2, n_vision_ctx=3, vision_depth=2),
                                       hard_prompts=torch.randn(4, 32))
    with torch.no_grad():
        for p in wrapper.trainable_parameters():
            p.add_(torch.randn_like(p))
    save_prompts(wrapper, d / "s1.safetensors", run_info=run_info(cfg, CLASSES, {}))
    with torch.no_grad():  # a second prompt set on the same backbone, shown beside the first
        for p in wrapper.trainable_parameters():
            p.add_(torch.randn_like(p))
    save_prompts(wrapper, d / "s2.safetensors", run_info=run_info(cfg, CLASSES, {}))
    predictor = Predictor([d / "s1.safetensors", d / "s2.safetensors"], device="cpu")
    clips = example_videos(str(d / "clips"), 2)
    page = build_demo(predictor, clips)
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield {"url": f"http://127.0.0.1:{port}/", "prompts": [d / "s1.safetensors", d / "s2.safetensors"], "clips": clips,
           "dir": d}
    page.close()


def test_the_client_gets_the_top5_predict_prints(served, capsys):
    client = gradio_client.Client(served["url"], verbose=False)
    clip = served["clips"][1]
    frames, *columns = client.predict(gradio_client.handle_file(clip), ", ".join(CLASSES), ["s1", "s2", ZERO_SHOT],
                                      api_name="/classify")
    assert len(frames) == 4  # the frames the model sampled
    with pytest.raises(Exception, match="at least two"):  # the typed error's message reaches the page
        client.predict(gradio_client.handle_file(clip), "red", ["s1"], api_name="/classify")
    for prompts, column in zip(served["prompts"], columns):  # each set as `predict` prints it for its file alone
        assert cli(["predict", clip, "--prompts", str(prompts), "--device", "cpu"]) == 0
        printed = capsys.readouterr().out.strip().splitlines()[-1]  # "clip1.mp4: green 0.358, red 0.288, ..."
        shown = ", ".join(f"{c['label']} {c['confidence']:.3f}" for c in column["value"]["confidences"])
        assert printed == f"{clip}: {shown}"
    assert columns[0] != columns[1]
    # zero-shot: the frozen backbone with the template, as Predictor scores it
    expected = Predictor(served["prompts"][0], device="cpu").predict([clip], prompt_set=ZERO_SHOT)[0].top
    got = [(c["label"], c["confidence"]) for c in columns[2]["value"]["confidences"]]
    assert [c for c, _ in got] == [c for c, _ in expected]
    assert max(abs(a - b) for (_, a), (_, b) in zip(got, expected)) < 1e-6


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it: .ci/run)")
def test_a_headless_browser_loads_the_page(served):
    shot = served["dir"] / "page.png"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,900", "--virtual-time-budget=10000"]
    dom = subprocess.run(base + ["--dump-dom", served["url"]], capture_output=True, text=True, timeout=120).stdout
    # Gradio renders in the browser: these come from the page's script, not the HTML it was sent.
    for text in ("promptcouple: classify a video with prompts", "Classify", ZERO_SHOT, "generated examples"):
        assert text in dom, text
    subprocess.run(base + [f"--screenshot={shot}", served["url"]], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
