"""The offline examples run end to end."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,expect", [
    ("wrap_two_lines.py", "train accuracy"),
    ("load_prompts.py", "identical logits: True"),
    ("predict.py", "same probabilities as predict: True"),
])
def test_example_runs(script, expect, tmp_path):
    args = [sys.executable, str(ROOT / "examples" / script)]
    if script == "wrap_two_lines.py":
        args += ["--steps", "3"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
