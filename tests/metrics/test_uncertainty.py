"""Tests of the ``uncertainty`` panel: calibration on synthetic Gaussian noise and
the not-applicable rules."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm.dataset import control_stats, group_table
from perturbfm.evaluation import build_eval_data, evaluate_panels
from perturbfm.interfaces import NotApplicable, Prediction
from perturbfm_metrics.uncertainty import NO_OOD, NO_UNCERTAINTY, UncertaintyPanel, auroc, risk_coverage
from scipy import stats

LEVELS = (50, 80, 90, 95)


def _data(adata, *, sigma=None, var_scale=1.0, ood=None, seed=0, with_var=True):
    """EvalData whose predicted delta = true delta + N(0, sigma^2) per (group, gene)."""
    groups = [g for g in group_table(adata).values() if not g.is_control]
    ctrl = control_stats(adata)
    probe = build_eval_data(adata, groups, ctrl, Prediction([g.group_id for g in groups],
                                                           np.zeros((len(groups), adata.n_vars))))
    true = probe.true_delta
    rng = np.random.default_rng(seed)
    if sigma is None:
        sigma = rng.uniform(0.05, 0.5, size=true.shape)
    pred = true + sigma * rng.standard_normal(true.shape)
    var = (var_scale * sigma) ** 2 * np.ones_like(true) if with_var else None
    return build_eval_data(adata, groups, ctrl, Prediction([g.group_id for g in groups], pred, var_delta=var),
                           ood=ood)


def test_gaussian_coverage_is_nominal(adata):
    got = UncertaintyPanel().compute(_data(adata))
    for lv in LEVELS:
        vals = np.array(list(got[f"coverage@{lv}"].per_group.values()))
        assert vals.mean() == pytest.approx(lv / 100, abs=0.03), lv
        assert got[f"coverage@{lv}"].extra["interval"] == "gaussian"
    # too-small variance under-covers
    narrow = UncertaintyPanel().compute(_data(adata, var_scale=0.3))
    assert np.mean(list(narrow["coverage@90"].per_group.values())) < 0.5


def test_nll_and_aurc_match_reference(adata):
    data = _data(adata, seed=3)
    got = UncertaintyPanel().compute(data)
    mean, var, true = data.pred_delta, data.pred_var, data.true_delta
    for i, g in enumerate(data.group_ids):
        ref = -np.mean(stats.norm.logpdf(true[i], loc=mean[i], scale=np.sqrt(var[i])))
        assert got["nll"].per_group[g] == pytest.approx(ref, rel=1e-10)
    aurc = got["aurc"]
    assert aurc.per_group is None
    for ctx, idx in data.context_indices().items():
        sig = np.sqrt(var[idx]).mean(axis=1)
        mse = ((mean[idx] - true[idx]) ** 2).mean(axis=1)
        order = sorted(range(len(idx)), key=lambda j: sig[j])
        curve = [np.mean([mse[j] for j in order[:k]]) for k in range(1, len(idx) + 1)]
        assert aurc.per_context[ctx] == pytest.approx(np.mean(curve), rel=1e-12)
        assert aurc.extra["random_reference"][ctx] == pytest.approx(mse.mean())
        assert len(aurc.extra["risk_coverage"][ctx]) == len(idx)
        assert aurc.extra["oracle_reference"][ctx] <= aurc.per_context[ctx] + 1e-15
    out = evaluate_panels([UncertaintyPanel()], data)["uncertainty"]["metrics"]
    assert "not_applicable" in out["ood_auroc"] and out["ood_auroc"]["not_applicable"] == NO_OOD


def test_tied_uncertainty_gives_random_reference():
    cov, risk = risk_coverage(np.ones(4), np.array([4.0, 0.0, 2.0, 2.0]))
    np.testing.assert_allclose(risk, 2.0)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])


def test_no_variance_and_no_intervals_is_not_applicable(adata):
    got = UncertaintyPanel().compute(_data(adata, with_var=False))
    assert set(got) == set(UncertaintyPanel.metrics)
    assert all(isinstance(v, NotApplicable) and v.reason == NO_UNCERTAINTY for v in got.values())
    evaluate_panels([UncertaintyPanel()], _data(adata, with_var=False))  # complete: declared, not missing


def test_conformal_intervals_without_variance(adata):
    data = _data(adata, with_var=False)
    true = data.true_delta
    lo, hi = true - 0.1, true + 0.1
    lo[:, :30] = true[:, :30] + 0.05  # 30 of 150 genes outside
    data.extra["intervals"] = {90: (lo, hi)}
    got = UncertaintyPanel().compute(data)
    assert all(v == pytest.approx(0.8) for v in got["coverage@90"].per_group.values())
    assert got["coverage@90"].extra["interval"] == "conformal"
    assert isinstance(got["nll"], NotApplicable) and isinstance(got["coverage@50"], NotApplicable)
    assert got["aurc"].per_context and "conformal" in got["aurc"].extra["uncertainty_score"]


def test_ood_auroc_rules(adata):
    ids = [g for g in group_table(adata) if not g.startswith("control")]
    half = {g: i % 2 == 0 for i, g in enumerate(ids)}
    data = _data(adata, ood=half)
    got = UncertaintyPanel().compute(data)["ood_auroc"]
    score = np.sqrt(data.pred_var).mean(axis=1)
    y = np.array([half[g] for g in data.group_ids])
    pairs = [(a, b) for a in score[y] for b in score[~y]]
    ref = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert got.extra["pooled"] == pytest.approx(ref)
    assert set(got.per_context.values()) == {got.extra["pooled"]}
    assert auroc(np.array([1.0, 1.0, 2.0]), np.array([True, False, True])) == pytest.approx(0.75)
    one = UncertaintyPanel().compute(_data(adata, ood={g: True for g in ids}))["ood_auroc"]
    assert isinstance(one, NotApplicable) and "all" in one.reason and "OOD" in one.reason
    none = UncertaintyPanel().compute(_data(adata))["ood_auroc"]
    assert isinstance(none, NotApplicable) and none.reason == NO_OOD
