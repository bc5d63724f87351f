"""The interval code of the benchmarks on constructed cases whose answers are known."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stats  # noqa: E402


def test_paired_t_interval_by_hand():
    # differences 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776445
    iv = stats.paired_interval([11, 12, 13, 14, 15], [10, 10, 10, 10, 10])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert iv.mean == 3 and iv.n == 5
    assert iv.low == pytest.approx(3 - half, abs=1e-5) and iv.high == pytest.approx(3 + half, abs=1e-5)
    assert iv.excludes_zero
    assert not stats.paired_interval([1, -1, 2, -2], [0, 0, 0, 0]).excludes_zero
    assert stats.paired_interval([1], [0]).high == math.inf  # one pair: no spread to estimate
    with pytest.raises(ValueError, match="equally long"):
        stats.paired_interval([1, 2], [1])


def test_bootstrap_of_identical_methods_is_zero():
    rng = np.random.default_rng(0)
    base, novel = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    iv = stats.bootstrap_hm_difference([stats.CellClips(base, novel, base, novel)], resamples=500)
    assert iv.mean == iv.low == iv.high == 0.0


def test_bootstrap_width_matches_the_binomial_standard_error():
    # a is right on 60% of the clips of both halves, b on 50%, on disjointly drawn clips: the HM
    # difference then is the accuracy difference (10 points) and its standard error that of a
    # difference of two independent proportions over n clips per half, averaged over two halves.
    n = 4000
    rng = np.random.default_rng(1)
    a = [np.r_[np.ones(int(0.6 * n)), np.zeros(n - int(0.6 * n))] for _ in range(2)]
    b = [np.r_[np.ones(n // 2), np.zeros(n - n // 2)] for _ in range(2)]
    a = [rng.permutation(x) for x in a]
    b = [rng.permutation(x) for x in b]
    iv = stats.bootstrap_hm_difference([stats.CellClips(a[0], a[1], b[0], b[1])], resamples=4000, seed=2)
    assert iv.mean == pytest.approx(10.0, abs=1e-9)
    # HM(x, y) ~ (x + y) / 2 near x = y, so each method's HM has variance p(1-p)/(2n)
    se = 100 * math.sqrt((0.6 * 0.4 + 0.5 * 0.5) / (2 * n))
    assert (iv.high - iv.low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert iv.low < 10 < iv.high and iv.excludes_zero


def test_compare_methods_pairs_cells_and_clips():
    hm = {"ivlp": {"d1/s1": 50.0, "d1/s2": 52.0, "d2/s1": 40.0},
          "ga2": {"d1/s1": 51.0, "d1/s2": 54.0, "d2/s1": 43.0}}
    ones, zeros = [1] * 10, [0] * 10
    clips = {"ivlp": {c: {"base": ones[:5] + zeros[:5], "novel": ones[:5] + zeros[:5]} for c in hm["ivlp"]},
             "ga2": {c: {"base": ones[:6] + zeros[:4], "novel": ones[:6] + zeros[:4]} for c in hm["ivlp"]}}
    out = stats.compare_methods(hm, "ivlp", clips, resamples=200)
    assert set(out) == {"ga2"}
    assert out["ga2"]["cells"]["mean"] == pytest.approx(2.0) and out["ga2"]["cells"]["n"] == 3
    assert out["ga2"]["clips"]["mean"] == pytest.approx(10.0)  # 60% vs 50% in every cell
    with pytest.raises(ValueError, match="reference method 'coop'"):
        stats.compare_methods(hm, "coop")
