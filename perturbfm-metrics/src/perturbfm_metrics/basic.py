"""The ``basic`` panel: errors of group means and the Pearson correlation of deltas.

All keys are per-group values; the core aggregates them per context (mean) and
globally (mean weighted by the true cells of each group). Deltas use the true
control mean of the group's context for both prediction and truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable

from perturbfm_metrics.deg import DEG_TEST_DESCRIPTION, deg_ranking

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

TOP_K = 100
#: a delta vector is constant when max - min <= CONST_RTOL * max(1, max |x|).
CONST_RTOL = 1e-12


def _is_constant(x: np.ndarray) -> np.ndarray:
    """Per row: True where the row is constant (up to :data:`CONST_RTOL`)."""
    if x.shape[1] == 0:
        return np.ones(x.shape[0], dtype=bool)
    spread = np.ptp(x, axis=1)
    scale = np.maximum(1.0, np.max(np.abs(x), axis=1))
    return spread <= CONST_RTOL * scale


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching rows of ``a`` and ``b`` (``[n, G]`` each).

    Rows where either side has zero variance give NaN.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    num = np.sum(ac * bc, axis=1)
    den = np.sqrt(np.sum(ac * ac, axis=1) * np.sum(bc * bc, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    r = np.where(den > 0, r, np.nan)
    return np.clip(r, -1.0, 1.0)


def pearson_delta(pred_delta: np.ndarray, true_delta: np.ndarray, group_ids: list[str]
                  ) -> tuple[np.ndarray, dict[str, str], dict[str, str]]:
    """Per-group Pearson r of predicted vs true deltas, with the pinned rules for
    undefined r.

    * the **true** delta is constant (the group's truth does not vary across genes):
      there is no pattern to correlate with; the group is declared not applicable
      (third element) whatever the prediction;
    * otherwise, a constant **predicted** delta (e.g. the "no change" baseline)
      carries no information about which genes go up or down: r is set to 0.0
      (no linear association, chance level) and the group is listed with the
      reason (second element). It is kept in the aggregates so that a model cannot
      leave a group out of pcc_delta by predicting a constant for it.

    Returns:
        ``(r [n_groups] (NaN for declared groups), group id -> reason for the groups
        set to 0.0, group id -> reason for the declared groups)``.
    """
    pred_delta = np.asarray(pred_delta, dtype=np.float64)
    true_delta = np.asarray(true_delta, dtype=np.float64)
    r = rowwise_pearson(pred_delta, true_delta)
    const_p = _is_constant(pred_delta)
    const_t = _is_constant(true_delta)
    zero: dict[str, str] = {}
    declared: dict[str, str] = {}
    for i in range(len(group_ids)):
        if const_t[i]:
            declared[group_ids[i]] = ("true delta constant across genes (max - min <= 1e-12 x max(1, max|x|)): "
                                      "Pearson r undefined, nothing to correlate with")
        elif const_p[i] or not np.isfinite(r[i]):
            zero[group_ids[i]] = ("predicted delta constant across genes: Pearson r undefined, pcc_delta set to "
                                  "0.0 (no linear association)")
    out = np.where(const_t, np.nan, np.where(const_p | ~np.isfinite(r), 0.0, r))
    return out, zero, declared


class BasicPanel(MetricPanel):
    """MSE (all genes and top-100 DEGs), Pearson r of deltas and RMSE of group means."""

    name: ClassVar[str] = "basic"
    standard: ClassVar[bool] = True
    version: ClassVar[str] = "2"
    description: ClassVar[str] = (
        "Errors of predicted vs true group means and Pearson r of deltas against the true "
        "control mean of the same context (scPerturBench mse / pcc_delta, PerturBench rmse_average)"
    )
    metrics: ClassVar[Mapping[str, MetricSpec]] = {
        "mse": MetricSpec(
            definition="||mean(pred) - mean(true)||^2 / G over all G genes, per group",
            variant="scPerturBench mse over all genes; mean(pred) = true control mean of the context "
            "+ predicted delta",
            higher_is_better=False,
            delta_based=True,
        ),
        "mse_top100_deg": MetricSpec(
            definition="||mean(pred) - mean(true)||^2 / k over the group's top-k DEGs, k = 100 "
            "(capped at the gene count), DEGs from the truth only",
            variant="scPerturBench mse on the top-100 DEGs; DEG test: " + DEG_TEST_DESCRIPTION + ". Only genes "
            "with a DE score > 0 are DEGs (a gene equal in the group's cells and the controls with zero "
            "variances, e.g. zero in both, is not DE at any rank): a group with fewer such genes than k is "
            "averaged over those (extra['n_deg']); a group with none is declared not applicable",
            higher_is_better=False,
            delta_based=True,
        ),
        "pcc_delta": MetricSpec(
            definition="Pearson r(mean(pred) - ctrl, mean(true) - ctrl) over all genes, per group, "
            "ctrl = the true control mean of the group's context for both sides",
            variant="reports r itself (higher is better); scPerturBench stores 1 - r as a distance. "
            "A delta vector is constant when max - min <= 1e-12 * max(1, max|x|). Constant true delta: r is "
            "undefined and there is nothing to correlate with, the group is declared not applicable "
            "(not_applicable_groups). Constant predicted delta with a varying truth (e.g. the 'no change' "
            "control-mean baseline predicting 0 everywhere): r is undefined, the value is 0.0 (no linear "
            "association, chance level; kept in the aggregates so that predicting a constant cannot take a "
            "group out of the score) and the group is listed in extra['undefined_r_groups'] with the reason. "
            "Differs from cell-eval, whose pearson_delta uses each side's own controls",
            higher_is_better=True,
            delta_based=True,
        ),
        "rmse_average": MetricSpec(
            definition="sqrt(mean_g (mean(pred) - mean(true))^2) over all genes, per group",
            variant="PerturBench rmse_average on X as stored; mean(pred) = true control mean of the "
            "context + predicted delta",
            higher_is_better=False,
            delta_based=True,
        ),
    }

    def compute(self, data: EvalData) -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel for the evaluated groups."""
        ids = data.group_ids
        pred_delta = np.asarray(data.pred_delta, dtype=np.float64)
        true_delta = np.asarray(data.true_delta, dtype=np.float64)
        # mean(pred) - mean(true) == pred_delta - true_delta (same control mean on both sides);
        # computed from deltas so that a perfect prediction gives exactly 0.
        sq = (pred_delta - true_delta) ** 2

        mse = sq.mean(axis=1)
        degs = deg_ranking(data, TOP_K)
        mse_top: dict[str, float] = {}
        no_deg: dict[str, str] = {}
        n_deg: dict[str, int] = {}
        for i, gid in enumerate(ids):
            genes = degs.genes(i)
            n_deg[gid] = int(genes.size)
            if genes.size == 0:
                no_deg[gid] = ("no DEG: every gene has DE score 0 (the group's true cells equal the controls "
                               "gene by gene with zero variances)")
            else:
                mse_top[gid] = float(sq[i, genes].mean())
        r, zero_r, undefined_r = pearson_delta(pred_delta, true_delta, ids)
        rmse = np.sqrt(mse)

        def per_group(v: np.ndarray, skip: dict[str, str] | None = None) -> dict[str, float]:
            return {gid: float(x) for gid, x in zip(ids, v) if not skip or gid not in skip}

        deg_extra = {"k": degs.k, "deg_fallback_groups": dict(degs.fallback_groups),
                     "n_deg": {g: n for g, n in n_deg.items() if n < degs.k}}
        return {
            "mse": MetricValue(per_group=per_group(mse)),
            "mse_top100_deg": MetricValue(per_group=mse_top, extra=deg_extra, not_applicable_groups=no_deg),
            "pcc_delta": MetricValue(per_group=per_group(r, undefined_r), extra={"undefined_r_groups": zero_r},
                                     not_applicable_groups=undefined_r),
            "rmse_average": MetricValue(per_group=per_group(rmse)),
        }
