"""The overhead benchmark runs (tiny smoke setting) and writes the documented keys."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_overhead_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_overhead.py"), "--tiny", "--reps", "2",
           "--classes", "4,8", "--memory-classes", "8", "--json", str(out), "--plot", str(tmp_path / "b.png"),
           "--parts", "vision,text,step,throughput,memory", "--batch", "2", "--compile", "--compile-backend",
           "aot_eager", "--precision", "bf16"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"vision_ratio", "text_ratio", "step_ratio", "checkpointing_memory_saving"} <= set(data)
    assert set(data["step_ratio"]) == {"4", "8"}
    assert data["text_seconds"]["short_length"] < data["text_seconds"]["full_length"] == 77
    assert (tmp_path / "b.png").stat().st_size > 0
    for key in ("vision", "text"):  # every figure carries its spread and the load
        assert {"a", "b", "ratio", "load_before", "load_after", "readable"} <= set(data[key])
        assert data[key]["ratio"]["n"] == 2 and data[key]["ratio"]["min"] <= data[key]["ratio"]["median"]
    assert set(data["compiled_step"]) == {"4", "8"}
    assert set(data["throughput"]["clips_per_second"]) == {"ours", "reference_style", "full_finetune"}
    assert data["precision"] == "bf16"


def test_timing_ratio_is_per_pair_and_flags_wide_spreads(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import timing

    # Pairs run A B, B A, A B, B A; a always takes twice as long as the b beside it while the load
    # doubles every pair (b = 1, 2, 4, 8 s): per-pair ratios stay exactly 2 though each side is spread wide.
    clock = iter([0, 2, 2, 3, 3, 5, 5, 9, 9, 17, 17, 21, 21, 29, 29, 45])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    c = timing.compare(lambda: None, lambda: None, reps=4, warmup=0)
    assert c.a.n == c.b.n == 4 and c.ratio.median == 2.0 and c.ratio.min == c.ratio.max == 2.0
    assert c.readable and c.a.relative_iqr > 0.5
    noisy = iter([0, 1, 1, 2, 2, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 21])  # ratios 1, 1/3, 1, 12
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(noisy))
    assert not timing.compare(lambda: None, lambda: None, reps=4, warmup=0).readable


def test_gpu_check_dry_run(tmp_path):
    """The GPU script's steps, on a tiny model on the CPU: every JSON it promises is written."""
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--dry-run"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("overhead_fp32", "overhead_bf16", "overhead_fp16_compiled", "memory_bf16"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["device"] == "cpu", name
    assert json.loads((tmp_path / "overhead_fp16_compiled.json").read_text())["precision"] == "fp16"
    assert '"ddp_ok": true' in (tmp_path / "gpu_check.log").read_text()


def test_method_part_writes_every_variant_as_a_ratio_to_ivlp(tmp_path):
    """``--parts method``: one training step of each variant, interleaved, as ratios to IVLP's, with the load."""
    out = tmp_path / "method.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_overhead.py"), "--tiny", "--reps", "1", "--batch", "2",
           "--method-classes", "6", "--parts", "method,method-profile", "--warmup", "0", "--threads", "1",
           "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    method = json.loads(out.read_text())["method"]
    variants = ["ivlp", "coupling", "anchors", "anchors_cached", "ga2", "ga2_cached"]
    assert list(method["seconds"]) == variants and set(method["ratio"]) == set(variants) - {"ivlp"}
    assert method["reference"] == "ivlp" and method["classes"] == 6 and method["clips"] == 2
    for name in method["ratio"]:
        ratio = method["ratio"][name]
        assert ratio["n"] == 1 and ratio["median"] > 0 and "readable" in ratio
        assert abs(ratio["median"] - method["seconds"][name]["median"] / method["seconds"]["ivlp"]["median"]) < 1e-9
        assert method["cpu_ratio"][name]["median"] > 0
    assert "load average" in method["uptime_before"] and "load average" in method["uptime_after"]
    assert [w / c > 0 for w, c in method["times"]["ga2"]] == [True]
    pooled = tmp_path / "pooled.json"  # two runs' rounds as one table
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_overhead.py"), "--pool", str(out), str(out),
                          "--json", str(pooled)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(pooled.read_text())["cpu_ratio"]["ga2"]["n"] == 2
    profile = json.loads(out.read_text())["method_profile"]
    assert set(profile["added_cpu_seconds"]) == {"anchor clip in the prompted vision pass", "frozen view of the anchor clip",
                                             "anchor labels in the prompted text pass", "coupling layer"}


def test_interleave_takes_each_ratio_within_its_round(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import timing

    # Three commands over four rounds; the load doubles every round, and within a round b takes
    # 1.5x and c 3x what a takes: every per-round ratio is exact though each command spreads 8x.
    assert timing.rotations(3, 4) == [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]]
    cost, calls = {"a": 2.0, "b": 3.0, "c": 6.0}, []

    def fake_timed(fn, device=None):  # wall seconds; CPU seconds, unloaded, are the cost itself
        name = fn()
        calls.append(name)
        return cost[name] * 2 ** ((len(calls) - 1) // 3), cost[name]

    monkeypatch.setattr(timing, "timed_with_cpu", fake_timed)
    r = timing.interleave({n: (lambda n=n: n) for n in "abc"}, reference="a", reps=4, warmup=0)
    assert calls == ["a", "b", "c", "c", "b", "a", "b", "c", "a", "a", "c", "b"]
    assert r.ratio["b"].min == r.ratio["b"].max == 1.5 and r.ratio["c"].median == 3.0
    assert r.seconds["a"].max == 8 * r.seconds["a"].min and r.readable("c")
    assert r.cpu_seconds["a"].max == r.cpu_seconds["a"].min == 2.0 and r.cpu_ratio["c"].median == 3.0
    assert r.order[1] == ["c", "b", "a"] and "load average" in r.uptime_before
