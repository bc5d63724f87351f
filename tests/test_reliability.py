"""Bad inputs and faults, as a new user meets them: a typed error that says what was found, what was
expected and what to do; one line and exit status 2 (usage) or 1 (runtime) at the command line;
nothing lost or overwritten.

The table cases build their inputs from one small set of files (a tiny random CLIP's prompt file,
GA2-CLIP style checkpoints, clip files and a training config) and damage one thing each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import promptcouple as pc
from promptcouple.adapters.checkpoints import read_checkpoint
from promptcouple.data import read_label_csv, write_label_csv
from promptcouple.errors import (CheckpointError, ConfigError, InvalidInputError, InvalidTypeError, ListFormatError,
                                 MissingFileError, OutputConflictError, PromptcoupleError, PromptFileError,
                                 RunLockedError)
from promptcouple.train import TrainConfig, Trainer, load_config, tiny_clip, train, write_clip_file
from promptcouple.train.evaluation import evaluate_config
from promptcouple.train.checkpoint import load_checkpoint
from promptcouple.train.data import synthetic_clips
from promptcouple.train.lock import LOCK_NAME, RunLock

SMALL = dict(n_ctx=4, text_depth=2, vision_depth=2, n_vision_ctx=4)
CLASSES = ["red", "green", "blue", "white"]
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ inputs

def _wrapper(hard=None) -> pc.CouplingPromptWrapper:
    torch.manual_seed(0)
    return pc.CouplingPromptWrapper(tiny_clip(), pc.CouplingConfig(**SMALL), hard_prompts=hard)


def _tensors_and_metadata(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _variant(src: Path, dst: Path, tensors=None, metadata=None, drop=()) -> Path:
    """A copy of prompt file ``src`` with tensors / metadata entries replaced or dropped."""
    t, m = _tensors_and_metadata(src)
    t.update(tensors or {})
    m.update(metadata or {})
    for key in drop:
        t.pop(key, None)
        m.pop(key, None)
    save_file(t, str(dst), metadata=m)
    return dst


def _ga2_state(wrapper) -> dict:
    """A GA2-CLIP style state dict (DDP names) holding ``wrapper``'s prompts."""
    p = wrapper.prompts
    state = {"prompt_learner.ctx_VPT": p.ctx, "visual.VPT": p.vision_ctx,
             "prompt_learner.proj_b2n_VPT.0.weight": p.coupling.weight,
             "prompt_learner.proj_b2n_VPT.0.bias": p.coupling.bias}
    state.update({f"transformer.resblocks.{i}.VPT_shallow": t for i, t in enumerate(p.text_deep, start=1)})
    state.update({f"visual.transformer.resblocks.{i}.VPT_shallow": t for i, t in enumerate(p.vision_deep, start=1)})
    return {f"module.{k}": v.detach().clone() for k, v in state.items()}


def _config_yaml(path: Path, data: Path, out: Path, epochs: int = 1) -> Path:
    path.write_text(
        "model: {name: tiny}\n"
        "prompts: {n_ctx: 4, text_depth: 2, vision_depth: 2, n_vision_ctx: 4, dropout: 0.0}\n"
        f"data: {{train_list: {data}/train.safetensors, labels: {data}/classes.csv, "
        f"val_list: {data}/val.safetensors, image_size: 32, num_frames: 2}}\n"
        f"optim: {{epochs: {epochs}, warmup_epochs: 0, batch_size: 4}}\n"
        f"run: {{progress: false, output_dir: {out}}}\n")
    return path


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("inputs")
    n = SimpleNamespace(dir=d)
    hard = torch.randn(4, 32)
    n.wrapper = _wrapper(hard)
    n.good = d / "good.safetensors"
    n.wrapper.save_prompts(n.good)
    ctx = _tensors_and_metadata(n.good)[0]["text.ctx"]
    n.nan = _variant(n.good, d / "nan.safetensors", {"text.ctx": torch.full_like(ctx, float("nan"))})
    n.int64 = _variant(n.good, d / "int64.safetensors", {"text.ctx": torch.zeros(ctx.shape, dtype=torch.int64)})
    n.bool = _variant(n.good, d / "bool.safetensors", {"text.ctx": torch.zeros(ctx.shape, dtype=torch.bool)})
    n.newer = _variant(n.good, d / "newer.safetensors", metadata={"format_version": "7"})
    n.bad_version = _variant(n.good, d / "badversion.safetensors", metadata={"format_version": "one"})
    n.no_config = _variant(n.good, d / "noconfig.safetensors", drop=["config"])
    n.bad_config = _variant(n.good, d / "badconfig.safetensors", metadata={"config": "{n_ctx: 4"})
    n.config_values = _variant(n.good, d / "configvalues.safetensors", metadata={"config": '{"text_depth": 0}'})
    n.no_ctx = _variant(n.good, d / "noctx.safetensors", drop=["text.ctx"])
    n.no_deep = _variant(n.good, d / "nodeep.safetensors", drop=["text.deep.1"])
    n.extra = _variant(n.good, d / "extra.safetensors", {"text.deep.5": torch.zeros(4, 32)})
    n.misshaped = _variant(n.good, d / "misshaped.safetensors", {"text.deep.1": torch.zeros(4, 16)})
    n.width = _variant(n.good, d / "width.safetensors", metadata={"text_width": "64"})
    n.not_prompts = _variant(n.good, d / "notprompts.safetensors", drop=["format"])
    n.coupled_flag = _variant(n.good, d / "coupledflag.safetensors", metadata={"coupled": "false"})
    n.train_host = _variant(n.good, d / "trainhost.safetensors", metadata={"train_host": '"mit"'})
    n.run_info = _variant(n.good, d / "runinfo.safetensors", metadata={"num_frames": "eight"})
    n.garbage = d / "garbage.safetensors"
    n.garbage.write_bytes(b"\x00" * 5 + b"not a safetensors file")
    n.truncated_prompts = d / "truncated.safetensors"
    n.truncated_prompts.write_bytes(n.good.read_bytes()[:200])
    n.folder = d / "folder.safetensors"
    n.folder.mkdir()

    state = _ga2_state(n.wrapper)
    n.ga2 = d / "ga2.pth"
    torch.save({"model_state_dict": state, "epoch": 3}, n.ga2)
    n.ga2_misshaped = d / "ga2_misshaped.pth"
    torch.save({"model_state_dict": {**state, "module.transformer.resblocks.1.VPT_shallow": torch.zeros(4, 16)}},
               n.ga2_misshaped)
    n.ga2_no_bias = d / "ga2_nobias.pth"
    torch.save({"model_state_dict": {k: v for k, v in state.items() if not k.endswith("proj_b2n_VPT.0.bias")}},
               n.ga2_no_bias)
    n.ga2_nan = d / "ga2_nan.pth"
    torch.save({"model_state_dict": {**state, "module.prompt_learner.ctx_VPT": torch.full((4, 32), float("nan"))}},
               n.ga2_nan)
    n.not_a_checkpoint = d / "notckpt.pth"
    n.not_a_checkpoint.write_bytes(b"hello, not a checkpoint")

    data = d / "data"
    data.mkdir()
    write_clip_file(data / "train.safetensors", *synthetic_clips(16, 4, seed=0), CLASSES)
    write_clip_file(data / "val.safetensors", *synthetic_clips(4, 4, num_views=1, seed=1), CLASSES)
    write_label_csv(data / "classes.csv", CLASSES)
    n.data = data
    n.dup_labels = d / "dup.csv"
    n.dup_labels.write_text("id,name\n0,run\n1,jump\n2,run\n")
    n.a_file = d / "a_file"
    n.a_file.write_text("not a folder\n")
    n.truncated_run = d / "truncated_run"
    n.truncated_run.mkdir()
    (n.truncated_run / "checkpoint.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    n.cfg = _config_yaml(d / "cfg.yaml", data, d / "run_unused")
    n.frames = torch.randn(2, 2, 3, 32, 32)
    return n


def _cfg(f, out: Path, **optim) -> TrainConfig:
    cfg = load_config(f.cfg, [f"run.output_dir={out}"] + [f"optim.{k}={v}" for k, v in optim.items()])
    return cfg


def _held_lock(f, name: str):
    """A run folder whose lock another holder has: the Trainer must be refused."""
    lock = RunLock(f.dir / name).acquire()
    try:
        Trainer(_cfg(f, f.dir / name))
    finally:
        lock.release()


# ------------------------------------------------------------------------ the API table
# (id, what the user does, exception type, words the message must hold)

API_CASES = [
    ("nan-prompts", lambda f: pc.read_prompt_file(f.nan), PromptFileError, ["text.ctx", "non-finite", "NaN"]),
    ("int64-prompts", lambda f: pc.read_prompt_file(f.int64), PromptFileError, ["torch.int64", "floating-point"]),
    ("bool-prompts", lambda f: pc.read_prompt_file(f.bool), PromptFileError, ["torch.bool", "floating-point"]),
    ("newer-format", lambda f: pc.read_prompt_file(f.newer), PromptFileError, ["version 7", "newer", "upgrade"]),
    ("bad-format-version", lambda f: pc.read_prompt_file(f.bad_version), PromptFileError,
     ["'format_version'", "'one'", "expected an integer"]),
    ("missing-config", lambda f: pc.read_prompt_file(f.no_config), PromptFileError, ["no 'config' metadata"]),
    ("malformed-config", lambda f: pc.read_prompt_file(f.bad_config), PromptFileError,
     ["'config'", "not a valid CouplingConfig JSON"]),
    ("invalid-config-values", lambda f: pc.read_prompt_file(f.config_values), PromptFileError,
     ["'config'", "text_depth"]),
    ("missing-text-ctx", lambda f: pc.read_prompt_file(f.no_ctx), PromptFileError, ["no tensor 'text.ctx'"]),
    ("missing-deep-key", lambda f: pc.read_prompt_file(f.no_deep), PromptFileError, ["missing ['text.deep.1']"]),
    ("unexpected-key", lambda f: pc.read_prompt_file(f.extra), PromptFileError, ["unexpected ['text.deep.5']"]),
    ("misshaped-deep", lambda f: pc.read_prompt_file(f.misshaped), PromptFileError,
     ["'text.deep.1'", "(4, 16)", "expected (4, 32)"]),
    ("width-metadata", lambda f: pc.read_prompt_file(f.width), PromptFileError, ["'text_width'", "64", "32 wide"]),
    ("coupled-metadata", lambda f: pc.read_prompt_file(f.coupled_flag), PromptFileError,
     ["'coupled'", "'false'", "has coupling layer"]),
    ("train-host-metadata", lambda f: pc.read_prompt_file(f.train_host), PromptFileError,
     ["'train_host'", "JSON list"]),
    ("run-info-metadata", lambda f: pc.read_prompt_file(f.run_info), PromptFileError,
     ["run information", "num_frames"]),
    ("not-a-prompt-file", lambda f: pc.read_prompt_file(f.not_prompts), PromptFileError,
     ["not a promptcouple prompt file"]),
    ("garbage-file", lambda f: pc.read_prompt_file(f.garbage), PromptFileError, ["not a readable safetensors"]),
    ("truncated-prompts", lambda f: pc.read_prompt_file(f.truncated_prompts), PromptFileError,
     ["not a readable safetensors", "truncated"]),
    ("missing-prompt-file", lambda f: pc.read_prompt_file(f.dir / "nope.safetensors"), MissingFileError,
     ["no prompt file", "nope.safetensors"]),
    ("prompt-path-is-folder", lambda f: pc.read_prompt_file(f.folder), MissingFileError, ["found a directory"]),
    ("load-nan-into-wrapper", lambda f: _wrapper(torch.randn(4, 32)).load_prompts(f.nan), PromptFileError,
     ["non-finite"]),
    ("load-nan-prompt-file-object", lambda f: _wrapper(torch.randn(4, 32)).load_prompts(
        pc.PromptFile({**pc.read_prompt_file(f.good).tensors, "vision.ctx": torch.full((4, 32), float("inf"))},
                      pc.CouplingConfig(**SMALL))), PromptFileError, ["'vision.ctx'", "non-finite"]),
    ("nan-hard-prompt", lambda f: _wrapper(torch.full((4, 32), float("nan"))), PromptFileError,
     ["hard prompt", "non-finite"]),
    ("int-hard-prompt", lambda f: _wrapper(torch.zeros(4, 32, dtype=torch.long)), PromptFileError,
     ["hard prompt", "torch.int64"]),
    ("hard-prompt-shape", lambda f: _wrapper(torch.zeros(4, 64)), PromptFileError, ["(4, 64)", "expected (4, 32)"]),
    ("hard-prompt-nan-file", lambda f: _wrapper(f.nan), PromptFileError, ["non-finite"]),
    ("classnames-string", lambda f: f.wrapper.encode_text("archery"), InvalidInputError,
     ["the string 'archery'", "['archery']"]),
    ("classnames-duplicate", lambda f: f.wrapper(f.frames, ["run", "jump", "run"]), InvalidInputError,
     ["classnames[0] and classnames[2]", "'run'", "distinct"]),
    ("classnames-empty-name", lambda f: f.wrapper.encode_text(["run", " "]), InvalidInputError,
     ["classnames[1]", "non-empty string"]),
    ("classnames-empty-list", lambda f: f.wrapper.encode_text([]), InvalidInputError, ["classnames is empty"]),
    ("frames-rank", lambda f: f.wrapper.encode_video(torch.randn(2, 3, 32, 32)), InvalidInputError,
     ["(B, T, C, H, W)", "(2, 3, 32, 32)", "unsqueeze(1)"]),
    ("frames-one-channel", lambda f: f.wrapper.encode_video(torch.randn(2, 2, 1, 32, 32)), InvalidInputError,
     ["1 channel(s)", "takes 3", "RGB"]),
    ("frames-uint8", lambda f: f.wrapper.encode_video(torch.zeros(2, 2, 3, 32, 32, dtype=torch.uint8)),
     InvalidTypeError, ["torch.uint8", "CLIP_MEAN"]),
    ("frames-int64", lambda f: f.wrapper.encode_video(torch.zeros(2, 2, 3, 32, 32, dtype=torch.long)),
     InvalidTypeError, ["torch.int64", "floating-point"]),
    ("frames-zero-videos", lambda f: f.wrapper(torch.randn(0, 2, 3, 32, 32), CLASSES), InvalidInputError,
     ["B=0", "at least one video"]),
    ("frames-zero-frames", lambda f: f.wrapper(torch.randn(2, 0, 3, 32, 32), CLASSES), InvalidInputError,
     ["T=0", "at least one frame"]),
    ("frames-image-size", lambda f: f.wrapper.encode_video(torch.randn(1, 2, 3, 48, 48)), InvalidInputError,
     ["48x48 pixels", "takes 32x32", "data.image_size"]),
    ("convert-onto-itself", lambda f: pc.convert_checkpoint(f.ga2, f.ga2), OutputConflictError,
     ["also an input", "another destination"]),
    ("convert-onto-hard-prompt", lambda f: pc.convert_checkpoint(f.ga2, f.good, hard_prompts=f.good),
     OutputConflictError, ["also an input"]),
    ("convert-into-folder", lambda f: pc.convert_checkpoint(f.ga2, f.folder), OutputConflictError,
     ["is a directory", "give a file name"]),
    ("convert-misshaped", lambda f: pc.convert_checkpoint(f.ga2_misshaped, f.dir / "x1.safetensors"),
     CheckpointError, ["cannot convert", "'text.deep.1'", "(4, 16)"]),
    ("convert-missing-key", lambda f: pc.convert_checkpoint(f.ga2_no_bias, f.dir / "x2.safetensors"),
     CheckpointError, ["proj_b2n_VPT.0.weight", "without", "proj_b2n_VPT.0.bias"]),
    ("convert-nan", lambda f: pc.convert_checkpoint(f.ga2_nan, f.dir / "x3.safetensors"), CheckpointError,
     ["cannot convert", "non-finite"]),
    ("checkpoint-garbage", lambda f: read_checkpoint(f.not_a_checkpoint), CheckpointError,
     ["not a readable PyTorch checkpoint"]),
    ("checkpoint-safetensors-garbage", lambda f: read_checkpoint(f.garbage), CheckpointError,
     ["not a readable safetensors"]),
    ("training-checkpoint-truncated", lambda f: load_checkpoint(f.truncated_run / "checkpoint.pt"), CheckpointError,
     ["truncated", "remove it"]),
    ("label-csv-duplicate-names", lambda f: read_label_csv(f.dup_labels), ListFormatError,
     ["dup.csv:4", "'run'", "also on line 2", "distinct"]),
    ("config-lr-inf", lambda f: load_config(f.cfg, ["optim.lr=.inf"]), ConfigError,
     ["optim.lr", "finite number", "inf"]),
    ("config-lr-nan", lambda f: load_config(f.cfg, ["optim.lr=.nan"]), ConfigError, ["optim.lr", "finite number"]),
    ("output-dir-is-a-file", lambda f: Trainer(_cfg(f, f.a_file)), OutputConflictError,
     ["run.output_dir", "is a file", "another run.output_dir"]),
    ("resume-truncated-checkpoint", lambda f: Trainer(_cfg(f, f.truncated_run), resume=True), CheckpointError,
     ["checkpoint.pt", "truncated"]),
    ("run-folder-locked", lambda f: _held_lock(f, "locked_run"), RunLockedError,
     ["in use by another run", str(os.getpid())]),
    # evaluation outputs are checked before the model is built or any clip is scored
    ("eval-output-is-a-folder", lambda f: evaluate_config(f.cfg, output=f.dir), OutputConflictError,
     ["output", "is a folder", "metrics.json"]),
    ("eval-output-under-a-file", lambda f: evaluate_config(f.cfg, output=f.a_file / "m.json"), InvalidInputError,
     ["a_file is a file", "choose a path in a folder"]),
    ("eval-reports-into-a-file", lambda f: evaluate_config(f.cfg, report_dir=f.a_file), OutputConflictError,
     ["report_dir", "is a file"]),
]


@pytest.mark.parametrize("action, error, words", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_errors_are_typed_and_say_what_to_do(f, action, error, words):
    with pytest.raises(error) as caught:
        action(f)
    assert isinstance(caught.value, PromptcoupleError)
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)


def test_errors_keep_the_builtin_types_they_replace():
    from promptcouple.errors import RunError, UnsupportedHostError

    assert issubclass(PromptFileError, ValueError) and issubclass(ConfigError, ValueError)
    assert issubclass(InvalidTypeError, TypeError) and issubclass(UnsupportedHostError, TypeError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(RunLockedError, RuntimeError)
    assert pc.UnsupportedHostError is UnsupportedHostError and issubclass(pc.AnchorOverlapError, ValueError)
    assert str(MissingFileError("one message")) == "one message"
    assert RunError.exit_status == 1 and ConfigError.exit_status == 2


# ------------------------------------------------------------------------ the CLI table

def cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptcouple", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


CLI_CASES = [
    ("inspect-garbage", lambda f: ["inspect", f.garbage], 2, ["garbage.safetensors", "not a readable safetensors"]),
    ("inspect-missing", lambda f: ["inspect", f.dir / "nope.safetensors"], 2, ["no prompt file"]),
    ("inspect-nan", lambda f: ["inspect", f.nan], 2, ["nan.safetensors", "non-finite"]),
    ("inspect-newer", lambda f: ["inspect", f.newer], 2, ["version 7", "upgrade promptcouple"]),
    ("inspect-no-config", lambda f: ["inspect", f.no_config], 2, ["no 'config' metadata"]),
    ("convert-onto-itself", lambda f: ["convert", f.ga2, f.ga2], 2, ["also an input"]),
    ("convert-into-folder", lambda f: ["convert", f.ga2, f.folder], 2, ["is a directory"]),
    ("convert-misshaped", lambda f: ["convert", f.ga2_misshaped, f.dir / "y.safetensors"], 2, ["cannot convert"]),
    ("convert-missing-key", lambda f: ["convert", f.ga2_no_bias, f.dir / "y.safetensors"], 2, ["without"]),
    ("convert-missing-src", lambda f: ["convert", f.dir / "none.pth", f.dir / "y.safetensors"], 2,
     ["none.pth"]),
    ("train-lr-inf", lambda f: ["train", f.cfg, "--set", "optim.lr=.inf"], 2, ["optim.lr", "finite number"]),
    ("train-missing-config", lambda f: ["train", f.dir / "none.yaml"], 2, ["cannot read config", "none.yaml"]),
    ("train-output-is-file", lambda f: ["train", f.cfg, "--set", f"run.output_dir={f.a_file}"], 2, ["is a file"]),
    ("resume-truncated", lambda f: ["train", f.cfg, "--resume", "--set", f"run.output_dir={f.truncated_run}"], 2,
     ["truncated"]),
    ("eval-nan-prompts", lambda f: ["eval", f.cfg, "--prompts", f.nan], 2, ["non-finite"]),
    ("eval-output-is-a-folder", lambda f: ["eval", f.cfg, "--output", f.dir], 2, ["--output", "is a folder"]),
    ("eval-output-under-a-file", lambda f: ["eval", f.cfg, "--output", f.a_file / "m.json"], 2,
     ["--output", "a_file is a file"]),
    ("eval-out-is-a-file", lambda f: ["eval", f.cfg, "--out", f.a_file], 2, ["--out", "is a file"]),
    # argparse's own errors: one line too (not the usage block), exit status 2
    ("usage-unknown-option", lambda f: ["eval", f.cfg, "--no-such-option"], 2,
     ["unrecognized arguments: --no-such-option", "promptcouple eval --help"]),
    ("usage-unknown-command", lambda f: ["nosuch"], 2, ["invalid choice: 'nosuch'"]),
    ("usage-split-subcommand", lambda f: ["split", "few-shot"], 2, ["required", "promptcouple split few-shot --help"]),
]


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("promptcouple") and ": error: " in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv, status, words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_errors_are_one_line_with_an_exit_status(f, argv, status, words):
    result = cli(*argv(f))
    assert result.returncode == status, (result.returncode, result.stderr)
    line = _one_line_error(result)
    for word in words:
        assert word in line, (word, line)


def test_debug_shows_the_traceback(f):
    for result in (cli("--debug", "inspect", f.nan), cli("inspect", f.nan, env={"PROMPTCOUPLE_DEBUG": "1"})):
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "PromptFileError" in result.stderr


def test_cli_runtime_fault_exits_1(f, tmp_path):
    lock = RunLock(tmp_path / "run").acquire()  # another run holds the folder
    try:
        result = cli("train", f.cfg, "--set", f"run.output_dir={tmp_path / 'run'}")
    finally:
        lock.release()
    assert result.returncode == 1
    assert "in use by another run" in _one_line_error(result)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # the refused run wrote nothing


# ----------------------------------------------------------------------------- data loss

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_convert_onto_an_input_leaves_it_byte_identical(f, tmp_path):
    src = tmp_path / "ga2.pth"
    src.write_bytes(f.ga2.read_bytes())
    hard = tmp_path / "hard.safetensors"
    hard.write_bytes(f.good.read_bytes())
    before = _snapshot(tmp_path)
    assert cli("convert", src, src).returncode == 2
    assert cli("convert", src, hard, "--hard-prompt", hard).returncode == 2
    with pytest.raises(OutputConflictError):
        pc.convert_checkpoint(src, tmp_path / "." / "ga2.pth")  # the same file by another spelling
    assert _snapshot(tmp_path) == before


def test_convert_of_a_bad_checkpoint_writes_nothing(f, tmp_path):
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"an earlier output")
    for src in (f.ga2_misshaped, f.ga2_no_bias, f.ga2_nan):
        with pytest.raises(CheckpointError):
            pc.convert_checkpoint(src, dst)
    assert dst.read_bytes() == b"an earlier output" and _snapshot(tmp_path) == {"out.safetensors": b"an earlier output"}


def test_resuming_a_finished_run_changes_nothing(f, tmp_path):
    out = tmp_path / "run"
    cfg = _config_yaml(tmp_path / "cfg.yaml", f.data, out, epochs=2)
    results = train(load_config(cfg))
    assert results["status"] == "finished" and len(results["history"]) == 2
    before = _snapshot(out)
    again = cli("train", cfg, "--resume")  # a resubmitted job
    assert again.returncode == 0, again.stderr
    assert "has finished" in again.stdout and "nothing changed" in again.stdout
    assert train(load_config(cfg), resume=True) == json.loads((out / "results.json").read_text())
    assert _snapshot(out) == before
    assert not (out / LOCK_NAME).exists()


def test_log_is_truncated_on_resume_without_a_checkpoint(f, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # A run killed before its first checkpoint: its start line and step lines, and a line cut by the kill.
    (out / "log.jsonl").write_text('{"kind": "start", "epoch": 0}\n{"kind": "step", "epoch": 1, "step": 1}\n{"kin')
    cfg = _cfg(f, out, epochs=1)
    cfg.run.log_every = 1
    train(cfg, resume=True)
    kinds = [json.loads(line)["kind"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert kinds.count("start") == 1 and kinds[0] == "start"
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == sorted(set(steps))  # no step twice


def test_resumed_run_keeps_its_history(f, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(f, out, epochs=3)
    cfg.run.stop_after_epochs = 2
    assert len(train(cfg)["history"]) == 2
    cfg.run.stop_after_epochs = None
    results = train(cfg, resume=True)
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3]
    assert [h["epoch"] for h in json.loads((out / "results.json").read_text())["history"]] == [1, 2, 3]


def test_stale_temporaries_of_a_killed_save_are_removed(f, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f".checkpoint.pt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    train(_cfg(f, out, epochs=1))
    assert not stale.exists()
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_an_interrupted_clip_file_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import promptcouple.fileio
    from promptcouple.train import write_clip_file

    path = tmp_path / "anchors.safetensors"
    write_clip_file(path, torch.zeros(2, 2, 3, 4, 4, dtype=torch.uint8), [0, 1], ["a", "b"])
    before = path.read_bytes()

    def dies_half_way(fd):  # the new file is written, not yet on disk nor renamed
        raise OSError("disk full")

    monkeypatch.setattr(promptcouple.fileio.os, "fsync", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_clip_file(path, torch.ones(2, 2, 3, 4, 4, dtype=torch.uint8), [1, 0], ["a", "b"])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["anchors.safetensors"]  # no temporary left


def test_stale_class_features_are_not_served(f):
    wrapper = _wrapper(torch.randn(4, 32)).eval()
    with torch.no_grad():
        first = wrapper.encode_text(CLASSES).clone()
        assert torch.equal(wrapper.encode_text(CLASSES), first)  # served from the cache
        state = {k: v + 0.01 for k, v in wrapper.model.state_dict().items() if k.startswith("transformer.")}
        wrapper.model.load_state_dict(state, strict=False)  # new host weights, in place
        assert not torch.equal(wrapper.encode_text(CLASSES), first)
        wrapper.model.double()  # a dtype change after an evaluation forward
        assert wrapper.encode_text(CLASSES).dtype == torch.float64


# ---------------------------------------------------------------------------- two runs

def test_two_train_processes_into_one_folder(f, tmp_path):
    out = tmp_path / "run"
    epochs = 10  # long enough (seconds) for the second process to start while the first one trains
    cfg = _config_yaml(tmp_path / "cfg.yaml", f.data, out, epochs=epochs)
    first = subprocess.Popen([sys.executable, "-m", "promptcouple", "train", str(cfg)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / LOCK_NAME).exists():  # the first run holds the folder
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = cli("train", cfg)
    still_running = first.poll() is None
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert second.returncode in (1, 2)
    line = _one_line_error(second)
    # While the first run holds the folder the second is refused by the lock, or, once the first has
    # written an epoch's checkpoint (the second takes seconds to start), by that checkpoint, which is
    # checked first; after the first has ended only the checkpoint can refuse it.
    lock_refusal = second.returncode == 1 and "in use by another run" in line
    assert (still_running and lock_refusal) or "already holds a checkpoint" in line, line
    # The first run's outputs are its own and complete.
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and [h["epoch"] for h in results["history"]] == list(range(1, epochs + 1))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("start") == 1
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(1, epochs + 1))
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == epochs
    pc.CouplingPromptWrapper.from_pretrained(tiny_clip(), out / "prompts.safetensors")
    assert not (out / LOCK_NAME).exists()
