"""Tests of the ``basic`` metric panel against direct per-group computations."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm.evaluation import evaluate_panels
from perturbfm.testing import make_canonical_adata
from perturbfm_metrics.basic import BasicPanel
from scipy import stats

KEYS = {"mse", "mse_top100_deg", "pcc_delta", "rmse_average"}


def _direct(data, adata, dense_cells) -> dict[str, dict[str, float]]:
    """Every key computed per group, from the cells, with explicit loops."""
    gid = adata.obs["pfm_group"].astype(str).to_numpy()
    ctx = adata.obs["pfm_context"].astype(str).to_numpy()
    is_ctrl = adata.obs["pfm_is_control"].to_numpy(dtype=bool)
    out: dict[str, dict[str, float]] = {k: {} for k in KEYS}
    for i, g in enumerate(data.groups):
        xg = dense_cells(adata, gid == g.group_id)
        xc = dense_cells(adata, is_ctrl & (ctx == g.context))
        ctrl = xc.mean(axis=0)
        true_mean = xg.mean(axis=0)
        pred_mean = ctrl + data.pred_delta[i]
        err = pred_mean - true_mean
        out["mse"][g.group_id] = float(np.sum(err**2) / len(err))
        out["rmse_average"][g.group_id] = float(np.sqrt(np.mean(err**2)))
        t = stats.ttest_ind(xg, xc, equal_var=False, axis=0).statistic
        top = sorted(range(len(t)), key=lambda j: (-abs(t[j]), j))[:100]
        out["mse_top100_deg"][g.group_id] = float(np.mean([err[j] ** 2 for j in top]))
        out["pcc_delta"][g.group_id] = float(np.corrcoef(pred_mean - ctrl, true_mean - ctrl)[0, 1])
    return out


def _noisy(seed: int):
    def fn(true_delta: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return 0.7 * true_delta + 0.2 * rng.standard_normal(true_delta.shape)
    return fn


def test_every_key_matches_direct_computation(adata, build_eval, dense_cells):
    data = build_eval(adata, _noisy(1))
    got = BasicPanel().compute(data)
    assert set(got) == KEYS == set(BasicPanel.metrics)
    ref = _direct(data, adata, dense_cells)
    for key in KEYS:
        assert set(got[key].per_group) == set(data.group_ids)
        for g in data.group_ids:
            assert got[key].per_group[g] == pytest.approx(ref[key][g], rel=1e-9, abs=1e-12), (key, g)
    # the values are informative, not degenerate
    r = np.array(list(got["pcc_delta"].per_group.values()))
    assert 0.3 < r.min() and r.max() < 1.0
    assert got["pcc_delta"].extra["undefined_r_groups"] == {}
    mse = np.array(list(got["mse"].per_group.values()))
    top = np.array(list(got["mse_top100_deg"].per_group.values()))
    assert (mse > 0).all() and (top > 0).all()
    assert got["mse_top100_deg"].extra["k"] == 100
    assert got["mse_top100_deg"].extra["deg_fallback_groups"] == {}


def test_perfect_prediction(adata, build_eval):
    data = build_eval(adata)  # predicted delta = the true delta
    got = BasicPanel().compute(data)
    for g in data.group_ids:
        assert got["mse"].per_group[g] == pytest.approx(0.0, abs=1e-20)
        assert got["mse_top100_deg"].per_group[g] == pytest.approx(0.0, abs=1e-20)
        assert got["rmse_average"].per_group[g] == pytest.approx(0.0, abs=1e-10)
        assert got["pcc_delta"].per_group[g] == pytest.approx(1.0, abs=1e-12)


def test_constant_prediction_rule(adata, build_eval):
    # the "no change" baseline: delta 0 everywhere -> r undefined -> 0.0, listed
    zero = build_eval(adata, lambda d: np.zeros_like(d))
    got = BasicPanel().compute(zero)
    assert all(v == 0.0 for v in got["pcc_delta"].per_group.values())
    undefined = got["pcc_delta"].extra["undefined_r_groups"]
    assert set(undefined) == set(zero.group_ids)
    assert all("predicted delta constant" in why for why in undefined.values())
    # MSE of the baseline is the mean squared true delta
    for i, g in enumerate(zero.group_ids):
        assert got["mse"].per_group[g] == pytest.approx(np.mean(zero.true_delta[i] ** 2), rel=1e-12)
    assert "0.0" in BasicPanel.metrics["pcc_delta"].variant
    assert "1 - r" in BasicPanel.metrics["pcc_delta"].variant

    # mixed: only one group constant (non-zero constant), the others get a real r
    def one_const(d: np.ndarray) -> np.ndarray:
        out = _noisy(2)(d)
        out[1] = 0.25
        return out

    data = build_eval(adata, one_const)
    got = BasicPanel().compute(data)
    ids = data.group_ids
    assert list(got["pcc_delta"].extra["undefined_r_groups"]) == [ids[1]]
    assert got["pcc_delta"].per_group[ids[1]] == 0.0
    for i in (0, 2, 3):
        r = np.corrcoef(data.pred_delta[i], data.true_delta[i])[0, 1]
        assert got["pcc_delta"].per_group[ids[i]] == pytest.approx(r, rel=1e-9)
    evaluate_panels([BasicPanel()], data)  # all finite: accepted


def test_evaluate_panels_aggregates_with_cell_weights(build_eval):
    base = make_canonical_adata(n_genes=120, cells_per_group=30, seed=11, sparse=False)
    gid = (base.obs["pfm_perturbation"].astype(str) + "@" + base.obs["pfm_context"].astype(str)).to_numpy()
    rng = np.random.default_rng(0)
    keep = np.ones(base.n_obs, dtype=bool)
    for g in np.unique(gid):  # uneven group sizes so that weighting matters
        if g.startswith("control"):
            continue
        idx = np.flatnonzero(gid == g)
        keep[idx[rng.integers(3, 30):]] = False
    adata = base[keep].copy()
    data = build_eval(adata, _noisy(3))
    sizes = np.array([g.n_cells for g in data.groups])
    assert len(set(sizes.tolist())) > 3

    out = evaluate_panels([BasicPanel()], data)
    section = out["basic"]
    assert section["version"] == "2"
    assert set(section["metrics"]) == KEYS
    raw = BasicPanel().compute(data)
    for key in KEYS:
        entry = section["metrics"][key]
        spec = BasicPanel.metrics[key]
        assert entry["definition"] == spec.definition and entry["variant"] == spec.variant
        assert entry["higher_is_better"] is (key == "pcc_delta")
        vals = np.array([raw[key].per_group[g] for g in data.group_ids])
        assert entry["per_group"] == pytest.approx(dict(zip(data.group_ids, vals)))
        want_global = float(np.sum(sizes * vals) / np.sum(sizes))
        assert entry["global"] == pytest.approx(want_global, rel=1e-12)
        assert entry["global"] != pytest.approx(float(vals.mean()), rel=1e-6)
        for c in ("ctxA", "ctxB"):
            mask = np.array([g.context == c for g in data.groups])
            assert entry["per_context"][c] == pytest.approx(float(vals[mask].mean()), rel=1e-12)
    assert section["metrics"]["mse_top100_deg"]["extra"]["k"] == 100


def test_small_gene_panel_caps_k(build_eval):
    adata = make_canonical_adata(n_genes=20, seed=2)
    data = build_eval(adata, _noisy(4))
    got = BasicPanel().compute(data)
    assert got["mse_top100_deg"].extra["k"] == 20
    for g in data.group_ids:  # top-k over all genes == all genes
        assert got["mse_top100_deg"].per_group[g] == pytest.approx(got["mse"].per_group[g], rel=1e-12)


def test_plugin_registers_the_panel():
    from perturbfm.plugins import PluginRegistry

    reg = PluginRegistry()
    assert "basic" in reg.names("metric_panel")
    assert reg.get("metric_panel", "basic").cls is BasicPanel
