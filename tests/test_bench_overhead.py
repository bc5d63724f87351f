"""The overhead benchmark runs (tiny smoke setting) and writes the documented keys."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_overhead_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_overhead.py"), "--tiny", "--reps", "1",
           "--classes", "4,8", "--memory-classes", "8", "--json", str(out), "--plot", str(tmp_path / "b.png")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"vision_ratio", "text_ratio", "step_ratio", "checkpointing_memory_saving"} <= set(data)
    assert set(data["step_ratio"]) == {"4", "8"}
    assert data["text_seconds"]["short_length"] < data["text_seconds"]["full_length"] == 77
    assert (tmp_path / "b.png").stat().st_size > 0
