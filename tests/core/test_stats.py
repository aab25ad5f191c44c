"""perturbfm.stats: one value per group, bootstrap intervals, Wilcoxon, verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
from perturbfm import stats


def test_interval_covers_the_truth_in_a_simulation() -> None:
    """Nominal 95% intervals of a mean over 25 groups cover the true mean most of the time."""
    rng = np.random.default_rng(0)
    truth = 0.3
    samples = [rng.normal(truth, 1.0, 25) for _ in range(200)]
    ivs = stats.bootstrap_intervals(samples, n_resamples=1000, seed=1)
    assert {iv.method for iv in ivs} == {"BCa"}
    coverage = np.mean([iv.contains(truth) for iv in ivs])
    assert 0.88 <= coverage <= 0.99, coverage
    # batched = one call each (up to rounding), and deterministic given the seed
    for i in (0, 7):
        one = stats.bootstrap_interval(samples[i], n_resamples=1000, seed=1)
        assert (one.low, one.high) == pytest.approx((ivs[i].low, ivs[i].high), rel=1e-12)
    assert stats.bootstrap_interval(samples[0], seed=3) == stats.bootstrap_interval(samples[0], seed=3)


def test_group_means_average_seeds_within_group() -> None:
    seed0 = {"A": 1.0, "B": 2.0, "C": float("nan")}
    seed1 = {"A": 3.0, "B": 2.0, "C": None}
    assert stats.group_means([seed0, seed1]) == {"A": 2.0, "B": 2.0}
    # a deterministic model run with 5 identical seeds is one observation per group
    one = stats.group_means([{"A": 1.0, "B": 2.0, "D": 4.0}])
    five = stats.group_means([{"A": 1.0, "B": 2.0, "D": 4.0}] * 5)
    assert one == five
    assert stats.bootstrap_interval(list(five.values())).n_groups == 3


def test_all_equal_tiny_and_empty_samples_never_crash() -> None:
    eq = stats.bootstrap_interval([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert (eq.estimate, eq.low, eq.high, eq.method) == (0.5, 0.5, 0.5, "percentile") and "degenerate" in eq.note
    tiny = stats.bootstrap_interval([0.1, 0.3, 0.2])
    assert tiny.method == "percentile" and "too few for BCa" in tiny.note and tiny.defined
    one = stats.bootstrap_interval([0.7])
    assert one.estimate == 0.7 and one.low is None and one.method == "undefined" and not one.defined
    none = stats.bootstrap_interval([float("nan"), None])  # type: ignore[list-item]
    assert none.estimate is None and none.n_groups == 0
    # a BCa failure on degenerate jackknife data falls back to percentile, with the reason
    spike = stats.bootstrap_interval([0.0] * 9 + [1.0])
    assert spike.defined and spike.method in ("BCa", "percentile")
    if spike.method == "percentile":
        assert "BCa" in spike.note
    for iv in (eq, tiny, one, none, spike):
        json.dumps(iv.to_dict(), allow_nan=False)


def test_wilcoxon_matches_scipy_and_all_zero_is_undefined() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(0.2, 1.0, 20)
    w = stats.wilcoxon_test(d)
    ref = scipy.stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="exact")
    assert w.p_value == pytest.approx(ref.pvalue) and w.statistic == pytest.approx(ref.statistic)
    assert w.n_groups == 20 and w.n_nonzero == 20 and "exact" in w.method
    with_zeros = np.concatenate([d[:10], [0.0, 0.0]])
    wz = stats.wilcoxon_test(with_zeros)
    refz = scipy.stats.wilcoxon(with_zeros, zero_method="wilcox", method="exact")
    assert wz.p_value == pytest.approx(refz.pvalue) and wz.n_nonzero == 10 and "2 zero" in wz.note
    zero = stats.wilcoxon_test([0.0, 0.0, 0.0])
    assert zero.p_value is None and zero.method == "undefined" and "all differences are zero" in zero.note
    assert stats.wilcoxon_test([]).p_value is None
    json.dumps(zero.to_dict(), allow_nan=False)


def test_verdicts_follow_the_direction() -> None:
    a = {f"g{i}": 1.0 + 0.05 * i for i in range(12)}
    b = {g: v - 0.5 + 0.01 * (i % 3) for i, (g, v) in enumerate(a.items())}
    up = stats.compare_paired(a, b, higher_is_better=True)
    assert up.verdict == "better" and up.n_groups == 12 and up.difference.low > 0
    assert stats.compare_paired(a, b, higher_is_better=False).verdict == "worse"
    assert stats.compare_paired(b, a, higher_is_better=True).verdict == "worse"
    assert stats.compare_paired(a, b, higher_is_better=None).verdict == "undefined"
    assert stats.compare_paired(a, a, higher_is_better=True).verdict == "tie"
    noisy = {g: v + (0.3 if i % 2 else -0.3) for i, (g, v) in enumerate(a.items())}
    assert stats.compare_paired(noisy, a, higher_is_better=True).verdict == "tie"
    assert stats.compare_paired({"g0": 1.0}, {"g0": 0.0}, higher_is_better=True).verdict == "undefined"
    d = up.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d) >= {"difference", "wilcoxon", "verdict", "verdict_reason", "n_groups"}
    # pairing is over the groups both sides have
    partial = stats.compare_paired({**a, "extra": 9.0}, b, higher_is_better=True)
    assert partial.n_groups == 12
