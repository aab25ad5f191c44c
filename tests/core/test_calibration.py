"""Ensembles and conformal intervals (deterministic, synthetic Gaussian noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from perturbfm.calibration import (
    LEVELS,
    bootstrap_groups,
    combine_ensemble,
    conformal_quantiles,
    conformalize,
    reliability,
)
from perturbfm.interfaces import Prediction


def _pred(mu: np.ndarray, var: np.ndarray | None = None) -> Prediction:
    return Prediction([f"g{i}" for i in range(mu.shape[0])], mu, var)


@pytest.mark.parametrize("normalised", [True, False])
def test_conformal_coverage_within_finite_sample_bounds(normalised: bool) -> None:
    rng = np.random.default_rng(0)
    n_cal, n_test, genes = 39, 400, 500
    sigma = rng.uniform(0.2, 2.0, size=(n_cal + n_test, genes)) if normalised else np.full((n_cal + n_test, genes), 0.7)
    mu = rng.normal(size=(n_cal + n_test, genes))
    y = mu + sigma * rng.standard_normal(mu.shape)
    var = sigma**2 if normalised else None
    cal = _pred(mu[:n_cal], None if var is None else var[:n_cal])
    test = _pred(mu[n_cal:], None if var is None else var[n_cal:])
    res = conformalize(y[:n_cal] - 0, cal, ["c"] * n_cal, test, ["c"] * n_test)
    # exact marginal bounds for exchangeable scores: L <= P(cover) <= L + 1/(n+1); the test average over
    # 400 x 500 cells has sd <= 0.5/sqrt(500 genes) around the per-gene mean (genes are independent)
    tol = 3 * 0.5 / math.sqrt(genes)
    for lv in LEVELS:
        lo, hi = res.intervals[lv]
        cov = float(np.mean((y[n_cal:] >= lo) & (y[n_cal:] <= hi)))
        assert lv / 100 - tol <= cov <= lv / 100 + 1 / (n_cal + 1) + tol, (lv, cov)


def test_too_few_calibration_groups_give_infinite_intervals_and_say_so() -> None:
    scores = np.arange(1.0, 6.0)[:, None] * np.ones((5, 3))
    q = conformal_quantiles(scores, (50, 80, 90))
    assert q[50].tolist() == [3.0] * 3  # ceil(6*0.5) = 3rd smallest
    assert q[80].tolist() == [5.0] * 3  # ceil(6*0.8) = 5th
    assert np.isinf(q[90]).all()  # ceil(6*0.9) = 6 > 5
    cal = _pred(np.zeros((5, 3)))
    res = conformalize(scores, cal, ["c"] * 5, _pred(np.zeros((2, 3))), ["c"] * 2, levels=(50, 90))
    assert res.infinite_levels["pooled"] == [90]
    assert any("needs at least 9 calibration groups" in n for n in res.notes)


def test_mondrian_calibrates_each_context() -> None:
    rng = np.random.default_rng(1)
    cal_ctx = ["a"] * 30 + ["b"] * 30
    scale = np.array([0.1] * 30 + [3.0] * 30)[:, None]
    y = scale * rng.standard_normal((60, 20))
    res = conformalize(y, _pred(np.zeros((60, 20))), cal_ctx, _pred(np.zeros((2, 20))), ["a", "b"], mondrian=True)
    lo, hi = res.intervals[90]
    assert (hi[0] - lo[0]).mean() * 10 < (hi[1] - lo[1]).mean()
    assert res.n_calibration == {"pooled": 60, "a": 30, "b": 30}


def test_ensemble_total_variance() -> None:
    m1 = _pred(np.array([[0.0, 2.0]]), np.array([[1.0, 1.0]]))
    m2 = _pred(np.array([[2.0, 2.0]]), np.array([[3.0, 1.0]]))
    out = combine_ensemble([m1, m2])
    np.testing.assert_allclose(out.mean_delta, [[1.0, 2.0]])
    np.testing.assert_allclose(out.var_delta, [[2.0 + 1.0, 1.0 + 0.0]])
    point = combine_ensemble([_pred(np.array([[0.0]])), _pred(np.array([[2.0]]))])
    np.testing.assert_allclose(point.var_delta, [[1.0]])
    assert "variance of member means" in point.info["ensemble_variance"]


def test_bootstrap_ensemble_variance_separates_far_from_near_groups() -> None:
    """Ridge regression of effects on a 1-D perturbation feature; far test groups
    (outside the training range) get larger ensemble variance than near ones."""
    rng = np.random.default_rng(3)
    ids = [f"t{i}" for i in range(40)]
    x_train = dict(zip(ids, rng.uniform(0, 1, 40)))
    genes = 30
    w = rng.normal(size=genes)
    y_train = {g: x * w + 0.3 * rng.standard_normal(genes) for g, x in x_train.items()}
    x_near = rng.uniform(0, 1, 10)
    x_far = rng.uniform(4, 5, 10)
    members = []
    for k in range(10):
        sub = bootstrap_groups(ids, seed=k)
        X = np.array([[1.0, x_train[g]] for g in sub])
        Y = np.stack([y_train[g] for g in sub])
        beta = np.linalg.solve(X.T @ X + 1e-3 * np.eye(2), X.T @ Y)
        xq = np.concatenate([x_near, x_far])
        members.append(_pred(np.column_stack([np.ones_like(xq), xq]) @ beta))
    var = combine_ensemble(members).var_delta.mean(axis=1)
    assert var[10:].min() > var[:10].max()


def test_reliability_of_exact_gaussian_is_diagonal() -> None:
    rng = np.random.default_rng(5)
    var = rng.uniform(0.5, 2, size=(200, 200))
    y = np.sqrt(var) * rng.standard_normal(var.shape)
    pts = reliability(y, np.zeros_like(y), var)
    assert len(pts) == 19
    assert max(abs(nominal - emp) for nominal, emp in pts) < 0.01
    assert reliability(y, np.zeros_like(y), None) == []
