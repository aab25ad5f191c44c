"""Tests of the ``perturbench`` panel against explicit per-group / per-pair computations."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm.evaluation import evaluate_panels
from perturbfm.interfaces import NotApplicable
from perturbfm.testing import make_canonical_adata
from perturbfm_metrics.basic import BasicPanel
from perturbfm_metrics.perturbench import PerturBenchPanel, diagonal_rank

RANKS = ("rank_rmse_average", "rank_cosine_logfc", "rank_rmse_average_transpose",
         "rank_cosine_logfc_transpose")
KEYS = {"rmse_average", "cosine_logfc", *RANKS, "pred_var_ratio", "collapsed_gene_frac"}


def _noisy(seed: int, scale: float = 0.2):
    def fn(true_delta: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return 0.7 * true_delta + scale * rng.standard_normal(true_delta.shape)
    return fn


def _lfc(mean, ctrl):
    return np.log2(np.maximum(mean, 0) + 0.1) - np.log2(np.maximum(ctrl, 0) + 0.1)


def _cos(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _direct(data) -> dict[str, dict[str, float]]:
    """Every per-group key with explicit loops over groups and pairs (no ties in these data)."""
    out: dict[str, dict[str, float]] = {k: {} for k in ("cosine_logfc", *RANKS)}
    pm, tm, cm = data.ctrl_mean + data.pred_delta, data.true_mean, data.ctrl_mean
    for i, g in enumerate(data.groups):
        out["cosine_logfc"][g.group_id] = _cos(_lfc(pm[i], cm[i]), _lfc(tm[i], cm[i]))
    for idx in data.context_indices().values():
        n = len(idx)
        rmse = {(q, p): float(np.sqrt(np.mean((pm[q] - tm[p]) ** 2))) for q in idx for p in idx}
        cos = {(q, p): _cos(_lfc(pm[q], cm[q]), _lfc(tm[p], cm[p])) for q in idx for p in idx}
        for p in idx:
            gid = data.groups[p].group_id
            out["rank_rmse_average"][gid] = sum(rmse[q, p] < rmse[p, p] for q in idx) / (n - 1)
            out["rank_cosine_logfc"][gid] = sum(cos[q, p] > cos[p, p] for q in idx) / (n - 1)
            out["rank_rmse_average_transpose"][gid] = sum(rmse[p, q] < rmse[p, p] for q in idx) / (n - 1)
            out["rank_cosine_logfc_transpose"][gid] = sum(cos[p, q] > cos[p, p] for q in idx) / (n - 1)
    return out


def _var_ratio(data):
    out = {}
    for ctx, idx in data.context_indices().items():
        pm = (data.ctrl_mean + data.pred_delta)[idx]
        tm = data.true_mean[idx]
        ratios = [pm[:, j].var() / tm[:, j].var() for j in range(pm.shape[1]) if tm[:, j].var() > 1e-20]
        out[ctx] = (float(np.median(ratios)), float(np.mean(np.array(ratios) < 0.1)))
    return out


def test_every_key_matches_direct_computation(adata, build_eval):
    data = build_eval(adata, _noisy(1, scale=0.6))
    got = PerturBenchPanel().compute(data)
    assert set(got) == KEYS == set(PerturBenchPanel.metrics)
    assert got["rmse_average"].per_group == BasicPanel().compute(data)["rmse_average"].per_group
    ref = _direct(data)
    for key in ("cosine_logfc", *RANKS):
        for g in data.group_ids:
            assert got[key].per_group[g] == pytest.approx(ref[key][g], rel=1e-9, abs=1e-12), (key, g)
    ranks = np.array([[got[k].per_group[g] for g in data.group_ids] for k in RANKS])
    assert (ranks > 0).any() and (ranks < 1).all()  # informative: not all perfect with this noise
    for ctx, (median, frac) in _var_ratio(data).items():
        assert got["pred_var_ratio"].per_context[ctx] == pytest.approx(median, rel=1e-9)
        assert got["collapsed_gene_frac"].per_context[ctx] == pytest.approx(frac)
    assert got["pred_var_ratio"].per_group is None


def test_perfect_predictions_rank_zero(adata, build_eval):
    data = build_eval(adata)
    got = PerturBenchPanel().compute(data)
    for key in RANKS:
        assert all(v == 0.0 for v in got[key].per_group.values()), key
    assert all(v == pytest.approx(1.0) for v in got["cosine_logfc"].per_group.values())
    assert all(v == pytest.approx(1.0, rel=1e-9) for v in got["pred_var_ratio"].per_context.values())
    assert all(v == 0.0 for v in got["collapsed_gene_frac"].per_context.values())


def test_mode_collapse_ranks_near_half(build_eval):
    singles = tuple(f"G{i}" for i in range(40))
    adata = make_canonical_adata(n_genes=60, singles=singles, doubles=(), cells_per_group=6,
                                 n_control=20, seed=8, sparse=False)
    data = build_eval(adata, lambda d: np.tile(d.mean(axis=0), (len(d), 1)))  # one prediction for all
    got = PerturBenchPanel().compute(data)
    for key in RANKS:
        vals = np.array(list(got[key].per_group.values()))
        assert len(vals) == 80 and abs(vals.mean() - 0.5) < 0.1, key
    # transposed: the one prediction ranks the truths of the context, a permutation -> mean exactly 0.5
    for key in ("rank_rmse_average_transpose", "rank_cosine_logfc_transpose"):
        assert np.mean(list(got[key].per_group.values())) == pytest.approx(0.5, abs=1e-12)
    assert all(v == pytest.approx(1.0) for v in got["collapsed_gene_frac"].per_context.values())
    assert all(v < 1e-20 for v in got["pred_var_ratio"].per_context.values())
    # ties are broken with the recorded seed: same seed, same values; another seed, other values
    assert got["rank_rmse_average"].extra["tie_seed"] == data.seed == 0
    again = PerturBenchPanel().compute(data)
    assert again["rank_rmse_average"].per_group == got["rank_rmse_average"].per_group
    data.seed = 1
    other = PerturBenchPanel().compute(data)
    assert other["rank_rmse_average"].per_group != got["rank_rmse_average"].per_group


def test_transpose_differs_with_a_hub_prediction():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(6, 20))
    pred = true + 0.8 * rng.normal(size=(6, 20))
    pred[0] = true.mean(axis=0)  # a "hub" close to every truth
    M = np.sqrt(((pred[:, None, :] - true[None, :, :]) ** 2).mean(-1))
    r = diagonal_rank(M, higher_is_better=False, rng=np.random.default_rng(0))
    rt = diagonal_rank(M.T, higher_is_better=False, rng=np.random.default_rng(0))
    want = [sum(M[q, p] < M[p, p] for q in range(6)) / 5 for p in range(6)]
    want_t = [sum(M[q, p] < M[q, q] for p in range(6)) / 5 for q in range(6)]
    np.testing.assert_allclose(r, want)
    np.testing.assert_allclose(rt, want_t)
    assert not np.allclose(r, rt)
    with pytest.raises(ValueError):
        diagonal_rank(M[:1, :1], higher_is_better=False, rng=np.random.default_rng(0))


def test_single_group_contexts_and_declared_rules(build_eval):
    base = make_canonical_adata(n_genes=40, seed=4, sparse=False)
    pert = base.obs["pfm_perturbation"].astype(str).to_numpy()
    ctx = base.obs["pfm_context"].astype(str).to_numpy()
    keep = ~((ctx == "ctxB") & ~np.isin(pert, ["control", "G1"]))  # ctxB keeps one group
    data = build_eval(base[keep].copy(), _noisy(2))
    got = PerturBenchPanel().compute(data)
    for key in RANKS:  # alone in its context: declared, not a chance-level 0.5
        assert "G1@ctxB" not in got[key].per_group
        assert "no other group" in got[key].not_applicable_groups["G1@ctxB"]
        assert got[key].extra["single_group_contexts"] == ["ctxB"]
    assert set(got["pred_var_ratio"].per_context) == {"ctxA"}
    assert "ctxB" in got["pred_var_ratio"].extra["skipped_contexts"]
    out = evaluate_panels([PerturBenchPanel()], data)["perturbench"]["metrics"]
    assert set(out) == KEYS and all(np.isfinite(v["global"]) for v in out.values())

    only = base[(ctx == "ctxA") & np.isin(pert, ["control", "G3"])].copy()  # one group in all
    got = PerturBenchPanel().compute(build_eval(only, _noisy(3)))
    for key in (*RANKS, "pred_var_ratio", "collapsed_gene_frac"):
        assert isinstance(got[key], NotApplicable) and got[key].reason
    evaluate_panels([PerturBenchPanel()], build_eval(only, _noisy(3)))  # declared, accepted


def test_zero_and_negative_predictions(adata, build_eval):
    zero = PerturBenchPanel().compute(build_eval(adata, lambda d: np.zeros_like(d)))
    assert all(v == 0.0 for v in zero["cosine_logfc"].per_group.values())
    assert len(zero["cosine_logfc"].extra["undefined_groups"]) == 16
    data = build_eval(adata, lambda d: d - 10.0)  # predicted means below 0: clipped, reported
    got = PerturBenchPanel().compute(data)
    assert set(got["cosine_logfc"].extra["clipped_groups"]) == set(data.group_ids)
    evaluate_panels([PerturBenchPanel()], data)


def test_plugin_registers_the_panel():
    from perturbfm.plugins import PluginRegistry

    assert PluginRegistry().get("metric_panel", "perturbench").cls is PerturBenchPanel
