"""``torchrun --nproc_per_node=2`` on the CPU (gloo): DDP keeps both ranks' prompts identical and equal
to one process with the same global batch; a distributed run stops and resumes bit-identically.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

import promptcouple as pc
from promptcouple.data import write_label_csv
from promptcouple.train import Trainer, build_wrapper, load_config, tiny_clip, write_clip_file
from promptcouple.train.data import synthetic_clips

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red", "green", "blue", "white"]
SMALL_PROMPTS = dict(n_ctx=4, text_depth=2, vision_depth=2, n_vision_ctx=4)

# Runs under torchrun: trains, then every rank saves the prompts it holds.
SCRIPT = textwrap.dedent("""
    import sys, torch
    from promptcouple.train import Trainer, load_config
    trainer = Trainer(load_config(sys.argv[1]))
    rank = trainer.ctx.rank
    results = trainer.fit()
    state = {k: v.detach().clone() for k, v in trainer.wrapper.prompts.state_dict().items()}
    out = {"prompts": state, "eval": results["eval"], "history": results["history"]}
    torch.save(out, f"{sys.argv[2]}/rank{rank}.pt")
""")




def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data (16 training clips, 7 evaluation clips, 4 anchors), a hard prompt and a 2-process config."""
    d = tmp_path_factory.mktemp("ddp")
    write_clip_file(d / "train.safetensors", *synthetic_clips(16, 4, seed=0), CLASSES)
    write_clip_file(d / "val.safetensors", *synthetic_clips(7, 4, num_views=2, seed=1), CLASSES)
    write_clip_file(d / "anchors.safetensors", *synthetic_clips(4, 2, seed=3), ["jumping", "waving"])
    write_label_csv(d / "classes.csv", CLASSES)
    torch.manual_seed(0)
    pc.CouplingPromptWrapper(tiny_clip(), pc.CouplingConfig(**SMALL_PROMPTS)).save_prompts(d / "hard.safetensors")
    # Dropout 0: each rank draws its own dropout masks, so only without dropout can two processes
    # equal one. Anchors: 1 clip per rank, 2 in one process, the same two clips.
    cfg = {
        "model": {"name": "tiny"},
        "prompts": dict(SMALL_PROMPTS, dropout=0.0, hard_prompts="hard.safetensors"),
        "data": {"train_list": "train.safetensors", "labels": "classes.csv", "val_list": "val.safetensors",
                 "image_size": 32, "num_frames": 2},
        "anchors": {"list": "anchors.safetensors", "mode": "consistency", "batch_size": 1},
        "optim": {"epochs": 2, "batch_size": 2, "lr": 1e-2, "warmup_epochs": 1},
        "eval": {"batch_size": 2},
        "run": {"output_dir": "runs/ddp", "progress": False, "seed": 3},
    }
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (d / "script.py").write_text(SCRIPT)
    (d / "out").mkdir()
    torchrun("script.py", "cfg.yaml", "out", cwd=d)
    return d


def test_ddp_ranks_agree_and_match_one_process(setup, tmp_path):
    d = setup
    r0, r1 = torch.load(d / "out" / "rank0.pt"), torch.load(d / "out" / "rank1.pt")
    for key in r0["prompts"]:
        assert torch.equal(r0["prompts"][key], r1["prompts"][key]), key
    assert r0["eval"] == r1["eval"]
    assert r0["eval"]["val"]["num_clips"] == 7  # 7 clips over 2 ranks: the sampler's padding is not counted

    # One process, the same global batch (2 ranks x 2 clips, 2 x 1 anchor clips).
    single = Trainer(load_config(d / "cfg.yaml", ["optim.batch_size=4", "anchors.batch_size=2",
                                                  f"run.output_dir={tmp_path / 'single'}"]))
    results = single.fit()
    state = single.wrapper.prompts.state_dict()
    for key in state:
        torch.testing.assert_close(r0["prompts"][key], state[key], rtol=1e-5, atol=1e-6)
    initial = build_wrapper(single.cfg).prompts.state_dict()  # same seed: the initial prompts
    assert (state["ctx"] - initial["ctx"]).abs().max() > 1e-3  # they did train
    for a, b in zip(r0["history"], results["history"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["anchor"] == pytest.approx(b["anchor"], abs=1e-6)
    assert results["eval"]["val"]["top1"] == r0["eval"]["val"]["top1"]


@pytest.mark.slow
def test_ddp_cli_stop_and_resume_is_bit_identical(setup):
    d = setup
    over = ["--set", "run.output_dir=runs/cli"]
    first = torchrun("-m", "promptcouple", "train", "cfg.yaml", *over, "--set", "run.stop_after_epochs=1", cwd=d)
    assert "stopped after epoch 1" in first.stdout
    assert not (d / "runs/cli/prompts.safetensors").exists()
    second = torchrun("-m", "promptcouple", "train", "cfg.yaml", *over, "--resume", cwd=d)
    assert "resumed from" in second.stdout and "1 epoch(s)" in second.stdout
    resumed = pc.read_prompt_file(d / "runs/cli/prompts.safetensors").tensors
    reference = torch.load(d / "out" / "rank0.pt")["prompts"]
    assert torch.equal(resumed["text.ctx"], reference["ctx"])
    assert torch.equal(resumed["coupling.weight"], reference["coupling.weight"])
    assert torch.equal(resumed["vision.deep.1"], reference["vision_deep.0"])
