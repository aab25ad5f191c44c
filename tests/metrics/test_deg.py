"""Tests of the Welch t-test DEG ranking against scipy and the declared edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from perturbfm.testing import make_canonical_adata
from perturbfm_metrics.deg import deg_ranking, deg_scores, top_k_degs, welch_t
from scipy import stats


def _reference_ranking(t: np.ndarray) -> np.ndarray:
    """Gene indices sorted by |t| descending, ties by index (explicit, per gene)."""
    return np.array(sorted(range(len(t)), key=lambda j: (-abs(t[j]), j)))


def _scipy_t(data, adata, dense_cells) -> np.ndarray:
    gid = adata.obs["pfm_group"].astype(str).to_numpy()
    ctx = adata.obs["pfm_context"].astype(str).to_numpy()
    is_ctrl = adata.obs["pfm_is_control"].to_numpy(dtype=bool)
    out = []
    for g in data.groups:
        xg = dense_cells(adata, gid == g.group_id)
        xc = dense_cells(adata, is_ctrl & (ctx == g.context))
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(stats.ttest_ind(xg, xc, equal_var=False, axis=0).statistic)
    return np.array(out)


def test_welch_t_matches_scipy_on_random_data(adata, build_eval, dense_cells):
    data = build_eval(adata)
    ref = _scipy_t(data, adata, dense_cells)
    assert np.isfinite(ref).all()
    g = np.array([x.n_cells for x in data.groups])
    c = np.array([data.control_n[x.context] for x in data.groups])
    var_c = np.stack([data.control_var[x.context] for x in data.groups])
    t = welch_t(data.true_mean, data.true_var, g, data.ctrl_mean, var_c, c)
    np.testing.assert_allclose(t, ref, rtol=1e-7, atol=1e-9)
    score, fallback = deg_scores(data)
    assert fallback == {}
    np.testing.assert_allclose(score, np.abs(ref), rtol=1e-7, atol=1e-9)


def test_top_k_matches_reference_ranking(adata, build_eval, dense_cells):
    data = build_eval(adata)
    ref = _scipy_t(data, adata, dense_cells)
    top = top_k_degs(data, k=100)
    assert top.shape == (len(data.groups), 100)
    for i in range(len(data.groups)):
        np.testing.assert_array_equal(top[i], _reference_ranking(ref[i])[:100])
    # the simulated effect genes (5 per single, |effect| = 1 >> noise) rank first for singles
    eff = adata.uns["perturbfm_test"]["effects"]
    for i, g in enumerate(data.groups):
        if "+" not in g.perturbation:
            hit = set(np.flatnonzero(np.asarray(eff[g.perturbation]) != 0))
            assert set(top[i, :5].tolist()) == hit


def test_k_is_capped_and_validated(adata, build_eval):
    data = build_eval(adata)
    top = top_k_degs(data, k=10_000)
    assert top.shape == (len(data.groups), len(data.genes))
    assert all(sorted(row) == list(range(len(data.genes))) for row in top.tolist())
    assert deg_ranking(data, k=10_000).k == len(data.genes)
    with pytest.raises(ValueError):
        top_k_degs(data, k=0)


def _edited(adata, fn):
    X = adata.X.toarray()
    fn(X, adata.obs)
    out = adata.copy()
    out.X = sp.csr_matrix(X)
    return out


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_zero_denominator_and_ties(build_eval, dense_cells):
    base = make_canonical_adata(n_genes=30, seed=5)

    def edit(X, obs):
        ctx = obs["pfm_context"].astype(str).to_numpy()
        pert = obs["pfm_perturbation"].astype(str).to_numpy()
        X[:, 0] = 0.0                                   # constant everywhere -> t = 0
        X[:, 1] = 1.0                                   # constant, but higher in G0@ctxA -> |t| = inf
        X[(ctx == "ctxA") & (pert == "G0"), 1] = 2.0
        X[(ctx == "ctxB") & (pert == "G1"), 1] = 0.0    # lower in G1@ctxB -> t = -inf
        X[:, 3] = X[:, 2]                               # duplicated column -> identical t (a tie)

    adata = _edited(base, edit)
    data = build_eval(adata)
    ids = data.group_ids
    score, fallback = deg_scores(data)
    assert fallback == {}
    assert (score[:, 0] == 0.0).all()
    a, b = ids.index("G0@ctxA"), ids.index("G1@ctxB")
    assert score[a, 1] == np.inf and score[b, 1] == np.inf
    others = [i for i in range(len(ids)) if i not in (a, b)]
    assert (score[others, 1] == 0.0).all()
    np.testing.assert_array_equal(score[:, 2], score[:, 3])
    var_c = np.stack([data.control_var[g.context] for g in data.groups])
    t = welch_t(data.true_mean, data.true_var, [g.n_cells for g in data.groups], data.ctrl_mean, var_c,
                [data.control_n[g.context] for g in data.groups])
    assert t[a, 1] == np.inf and t[b, 1] == -np.inf

    top = top_k_degs(data, k=30)
    assert top[a, 0] == 1 and top[b, 0] == 1          # infinite |t| ranks first
    for i in range(len(ids)):
        row = top[i].tolist()
        assert row.index(2) + 1 == row.index(3)       # tie broken by gene index
        assert row[-1] == 0 or score[i, row[-1]] == 0.0
    # elsewhere the scores agree with scipy (where scipy's t is finite)
    ref = _scipy_t(data, adata, dense_cells)
    fin = np.isfinite(ref)
    np.testing.assert_allclose(score[fin], np.abs(ref[fin]), rtol=1e-7, atol=1e-9)


def test_fallback_for_groups_with_one_cell(build_eval):
    base = make_canonical_adata(n_genes=40, seed=7, sparse=False)
    gid = base.obs.assign(g=lambda d: d.pfm_perturbation.astype(str) + "@" + d.pfm_context.astype(str))["g"]
    keep = np.ones(base.n_obs, dtype=bool)
    single = np.flatnonzero(gid.to_numpy() == "G2@ctxB")
    keep[single[1:]] = False                            # G2@ctxB keeps a single cell
    adata = base[keep].copy()
    data = build_eval(adata)
    ids = data.group_ids
    i = ids.index("G2@ctxB")
    score, fallback = deg_scores(data)
    assert list(fallback) == ["G2@ctxB"]
    assert "1 true cell" in fallback["G2@ctxB"]
    assert np.isnan(data.true_var[i]).all()
    diff = np.abs(data.true_mean[i] - data.ctrl_mean[i])
    np.testing.assert_allclose(score[i], diff)
    res = deg_ranking(data, k=15)
    np.testing.assert_array_equal(res.indices[i], _reference_ranking(diff)[:15])
    assert res.fallback_groups == fallback
    # other groups still use |t|
    j = ids.index("G2@ctxA")
    assert not np.allclose(score[j], np.abs(data.true_mean[j] - data.ctrl_mean[j]))


def test_fallback_for_context_with_one_control_cell(build_eval):
    adata = make_canonical_adata(n_genes=25, contexts=("ctxA",), n_control=1, seed=9)
    data = build_eval(adata)
    score, fallback = deg_scores(data)
    assert set(fallback) == set(data.group_ids)
    assert all("1 control cell(s) in context ctxA" in why for why in fallback.values())
    np.testing.assert_allclose(score, np.abs(data.true_mean - data.ctrl_mean))
    assert np.isfinite(score).all()


def test_equal_constant_means_with_rounding_give_zero():
    one = np.ones((2, 1))
    # 1.7 averaged over 37 cells is off by an ulp; that is not a difference
    t = welch_t(one * (1.7 + 1.1e-15), one * 0.0, [37, 37], one * 1.7, one * 0.0, [60, 60])
    assert (t == 0.0).all()
    t = welch_t(one * 1.7001, one * 0.0, [37, 37], one * 1.7, one * 0.0, [60, 60])
    assert (t == np.inf).all()
