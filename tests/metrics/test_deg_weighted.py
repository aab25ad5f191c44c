"""Tests of the ``deg_weighted`` panel (Mejia et al. 2025 weighted MSE / weighted R^2 of the delta)."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm.evaluation import evaluate_panels
from perturbfm.testing import make_canonical_adata
from perturbfm_metrics.basic import BasicPanel
from perturbfm_metrics.deg_weighted import DegWeightedPanel, deg_weights
from scipy import stats
from sklearn.metrics import r2_score

KEYS = {"wmse", "r2w_delta"}


def _noisy(seed: int, scale: float = 0.8, sd: float = 0.1):
    def fn(true_delta: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return scale * true_delta + sd * rng.standard_normal(true_delta.shape)
    return fn


def _mean_collapse(true_delta: np.ndarray) -> np.ndarray:
    """Every group predicted as the mean true delta of all groups (mode collapse)."""
    return np.broadcast_to(true_delta.mean(axis=0), true_delta.shape).copy()


def _weights_direct(xg: np.ndarray, xc: np.ndarray) -> np.ndarray:
    """Mejia et al.'s transformation written out: |t| -> min-max -> square -> sum 1."""
    s = np.abs(stats.ttest_ind(xg, xc, equal_var=False, axis=0).statistic)
    m = ((s - s.min()) / (s.max() - s.min())) ** 2
    return m / m.sum()


def test_matches_direct_computation(adata, build_eval, dense_cells):
    data = build_eval(adata, _noisy(1))
    got = DegWeightedPanel().compute(data)
    assert set(got) == KEYS == set(DegWeightedPanel.metrics)
    gid = adata.obs["pfm_group"].astype(str).to_numpy()
    ctx = adata.obs["pfm_context"].astype(str).to_numpy()
    is_ctrl = adata.obs["pfm_is_control"].to_numpy(dtype=bool)
    for i, g in enumerate(data.groups):
        xg = dense_cells(adata, gid == g.group_id)
        xc = dense_cells(adata, is_ctrl & (ctx == g.context))
        w = _weights_direct(xg, xc)
        d = xg.mean(axis=0) - xc.mean(axis=0)
        d_hat = data.pred_delta[i]
        assert got["wmse"].per_group[g.group_id] == pytest.approx(np.sum(w * (d_hat - d) ** 2), rel=1e-9)
        assert got["r2w_delta"].per_group[g.group_id] == pytest.approx(r2_score(d, d_hat, sample_weight=w),
                                                                      rel=1e-9)
        assert got["wmse"].extra["effective_genes"][g.group_id] == pytest.approx(1 / np.sum(w * w), rel=1e-9)
    assert all(got[k].not_applicable_groups == {} for k in KEYS)
    assert all(DegWeightedPanel.metrics[k].delta_based for k in KEYS)
    assert DegWeightedPanel.standard is True


def test_perfect_prediction_scores_zero_and_one(adata, build_eval):
    got = DegWeightedPanel().compute(build_eval(adata))
    assert all(v == pytest.approx(0.0, abs=1e-20) for v in got["wmse"].per_group.values())
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in got["r2w_delta"].per_group.values())


def test_mean_collapse_is_penalised_more_than_by_unweighted_mse(adata, build_eval):
    collapse = build_eval(adata, _mean_collapse)
    good = build_eval(adata, _noisy(2))
    w_c = DegWeightedPanel().compute(collapse)["wmse"].per_group
    w_g = DegWeightedPanel().compute(good)["wmse"].per_group
    m_c = BasicPanel().compute(collapse)["mse"].per_group
    m_g = BasicPanel().compute(good)["mse"].per_group
    ids = collapse.group_ids
    # on every group the collapsed prediction's error is larger weighted than unweighted ...
    assert all(w_c[g] > m_c[g] for g in ids)
    # ... and, against a noisy but specific model, the weighted metric separates them more
    ratio_w = np.mean([w_c[g] for g in ids]) / np.mean([w_g[g] for g in ids])
    ratio_u = np.mean([m_c[g] for g in ids]) / np.mean([m_g[g] for g in ids])
    assert ratio_w > 2 * ratio_u
    r2_c = DegWeightedPanel().compute(collapse)["r2w_delta"].per_group
    r2_g = DegWeightedPanel().compute(good)["r2w_delta"].per_group
    assert np.mean(list(r2_g.values())) > 0.5 > np.mean(list(r2_c.values()))


def test_weight_rule_edge_cases():
    w, n_inf, why = deg_weights(np.array([0.0, 1.0, 3.0, np.inf]))
    assert n_inf == 1 and why == ""
    np.testing.assert_allclose(w, np.array([0.0, 1 / 9, 1.0, 1.0]) / (2 + 1 / 9))  # inf -> largest finite
    assert deg_weights(np.full(5, 2.0))[0] is None  # all equal: undefined, declared
    assert deg_weights(np.array([np.inf, np.inf]))[0] is None
    w, _, _ = deg_weights(np.array([np.nan, 0.0, 2.0]))
    np.testing.assert_allclose(w, [0.0, 0.0, 1.0])


def test_degenerate_groups_are_declared(build_eval):
    base = make_canonical_adata(n_genes=30, cells_per_group=10, n_control=20, seed=7, sparse=False)
    X = np.asarray(base.X, dtype=np.float64).copy()
    pert = base.obs["pfm_perturbation"].astype(str).to_numpy()
    ctx = base.obs["pfm_context"].astype(str).to_numpy()
    # ctxB: the controls and G1 are one constant row -> every |t| is 0 for G1@ctxB: no weights
    rows = (ctx == "ctxB") & np.isin(pert, ["control", "G1"])
    X[rows] = X[rows][0]
    base.X = X
    data = build_eval(base, _noisy(3))
    got = DegWeightedPanel().compute(data)
    for key in KEYS:
        assert "G1@ctxB" not in got[key].per_group
        assert "same DE score" in got[key].not_applicable_groups["G1@ctxB"]
        assert set(got[key].per_group) | set(got[key].not_applicable_groups) == set(data.group_ids)
    out = evaluate_panels([DegWeightedPanel()], data)["deg_weighted"]["metrics"]
    assert all(np.isfinite(out[k]["global"]) and out[k]["n_not_applicable_groups"] == 1 for k in KEYS)


def test_plugin_registers_the_panel():
    from perturbfm.plugins import PluginRegistry

    assert PluginRegistry().get("metric_panel", "deg_weighted").cls is DegWeightedPanel
