"""Tests of the ``vcc`` panel against independent per-group computations."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm.evaluation import evaluate_panels
from perturbfm.testing import make_canonical_adata
from perturbfm_metrics.vcc import VccPanel, discrimination_l1, mannwhitney_pvalues
from scipy import stats


def _noisy(seed: int):
    def fn(true_delta: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return 0.6 * true_delta + 0.25 * rng.standard_normal(true_delta.shape)
    return fn


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, written out."""
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    prev = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        prev = min(prev, p[i] * m / rank)
        adj[i] = prev
    return adj


def _ref_de(cells: np.ndarray, ctrl: np.ndarray) -> list[int]:
    p = stats.mannwhitneyu(cells, ctrl, axis=0, method="asymptotic", use_continuity=True).pvalue
    p = np.where(np.isnan(p), 1.0, p)  # all-identical gene: no evidence
    fdr = _bh(p)
    mg, mc = np.expm1(cells.mean(axis=0)), np.expm1(ctrl.mean(axis=0))
    lfc = []
    for a, b in zip(mg, mc):
        if b == 0:
            v = 0.0 if a == 0 else np.inf
        else:
            v = np.log2(a / b) if a / b > 0 else np.nan
            v = 0.0 if np.isnan(v) else abs(v)  # pdex: NaN log2FC -> 0
        lfc.append(v)
    sig = [j for j in range(len(p)) if fdr[j] < 0.05]
    return sorted(sig, key=lambda j: (-lfc[j], j))


def test_mannwhitney_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(0.3, 1, (30, 50)), 1)
    y = np.round(rng.normal(0.0, 1, (45, 50)), 1)
    x[:, 3] = 0.0
    y[:, 3] = 0.0  # all identical -> p = 1
    ours = mannwhitney_pvalues(x, y)
    ref = stats.mannwhitneyu(x, y, axis=0, method="asymptotic", use_continuity=True).pvalue
    assert ours[3] == 1.0
    keep = np.arange(50) != 3
    np.testing.assert_allclose(ours[keep], ref[keep], rtol=1e-10)


def test_discrimination_reference_and_normalisation():
    rng = np.random.default_rng(1)
    true = rng.standard_normal((5, 12))
    pred = true.copy()
    pred[0] = true[1]  # group 0 predicted as group 1 -> its own true delta is not the nearest
    drop = [np.array([i]) for i in range(5)]
    got = discrimination_l1(pred, true, drop)
    for i in range(5):
        keep = np.arange(12) != i
        d = [np.abs(true[q, keep] - pred[i, keep]).sum() for q in range(5)]
        rank = sorted(range(5), key=lambda q: d[q]).index(i)
        assert got[i] == pytest.approx(1 - rank / 5)
    assert got[1:].tolist() == [1.0] * 4 and got[0] < 1.0


def test_panel_matches_direct_computation(adata, build_eval, dense_cells):
    data = build_eval(adata, _noisy(2))
    got = VccPanel().compute(data)
    assert set(got) == set(VccPanel.metrics)
    gid = adata.obs["pfm_group"].astype(str).to_numpy()
    ctx = adata.obs["pfm_context"].astype(str).to_numpy()
    is_ctrl = adata.obs["pfm_is_control"].to_numpy(dtype=bool)
    genes = list(adata.var_names)
    for i, g in enumerate(data.groups):
        xg = dense_cells(adata, gid == g.group_id)
        xc = dense_cells(adata, is_ctrl & (ctx == g.context))
        err = xc.mean(axis=0) + data.pred_delta[i] - xg.mean(axis=0)
        assert got["mae"].per_group[g.group_id] == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
        # discrimination, written out over the context's groups
        members = [j for j, h in enumerate(data.groups) if h.context == g.context]
        keep = [k for k, name in enumerate(genes) if name not in g.genes]
        d = {j: np.abs(data.true_delta[j, keep] - data.pred_delta[i, keep]).sum() for j in members}
        rank = sum(1 for j in members if j != i and d[j] <= d[i])
        assert got["discrimination_score_l1"].per_group[g.group_id] == pytest.approx(1 - rank / len(members))
        # overlap_at_N from scipy's MWU, a written-out BH and pdex's log2FC
        t = _ref_de(xg, xc)
        p = _ref_de(xc + data.pred_delta[i], xc)
        k = len(t)
        ref = len(set(t[:k]) & set(p[:k])) / k if k else 0.0
        assert got["overlap_at_N"].per_group[g.group_id] == pytest.approx(ref, abs=1e-12), g.group_id
    vals = np.array(list(got["overlap_at_N"].per_group.values()))
    assert 0 < vals.min() < 1 and vals.max() > 0
    assert evaluate_panels([VccPanel()], data)["vcc"]["metrics"]["mae"]["global"] > 0


def test_perfect_prediction_scores(adata, build_eval):
    data = build_eval(adata)
    got = VccPanel().compute(data)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in got["mae"].per_group.values())
    assert all(v == 1.0 for v in got["discrimination_score_l1"].per_group.values())


def test_no_true_de_genes_declared(build_eval):
    quiet = make_canonical_adata(n_genes=30, effect=0.0, cells_per_group=8, n_control=10, seed=5)
    got = VccPanel().compute(build_eval(quiet))
    ov = got["overlap_at_N"]
    none = [g for g, n in ov.extra["n_true_de"].items() if n == 0]
    assert none and ov.extra["no_true_de_groups"] == none
    # declared with the reason, never scored 0.0
    assert set(ov.not_applicable_groups) == set(none) and not set(none) & set(ov.per_group)
    assert all("no true DE gene" in why for why in ov.not_applicable_groups.values())
    assert set(ov.per_group) | set(none) == {g.group_id for g in build_eval(quiet).groups}
