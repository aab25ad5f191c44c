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
                  ) -> tuple[np.ndarray, dict[str, str]]:
    """Per-group Pearson r of predicted vs true deltas, with the declared rule for
    undefined r.

    Where either delta vector is constant, r is undefined: the value is 0.0 and
    the group is returned in the second element with the reason.

    Returns:
        ``(r [n_groups], group id -> reason for the groups set to 0.0)``.
    """
    r = rowwise_pearson(pred_delta, true_delta)
    const_p = _is_constant(np.asarray(pred_delta, dtype=np.float64))
    const_t = _is_constant(np.asarray(true_delta, dtype=np.float64))
    undefined = const_p | const_t | ~np.isfinite(r)
    reasons: dict[str, str] = {}
    for i in np.flatnonzero(undefined):
        sides = [s for s, c in (("predicted", const_p[i]), ("true", const_t[i])) if c]
        what = " and ".join(sides) + " delta constant" if sides else "zero variance"
        reasons[group_ids[i]] = f"{what}: Pearson r undefined, pcc_delta set to 0.0"
    return np.where(undefined, 0.0, r), reasons


class BasicPanel(MetricPanel):
    """MSE (all genes and top-100 DEGs), Pearson r of deltas and RMSE of group means."""

    name: ClassVar[str] = "basic"
    standard: ClassVar[bool] = True
    version: ClassVar[str] = "1"
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
        ),
        "mse_top100_deg": MetricSpec(
            definition="||mean(pred) - mean(true)||^2 / k over the group's top-k DEGs, k = 100 "
            "(capped at the gene count), DEGs from the truth only",
            variant="scPerturBench mse on the top-100 DEGs; DEG test: " + DEG_TEST_DESCRIPTION,
            higher_is_better=False,
        ),
        "pcc_delta": MetricSpec(
            definition="Pearson r(mean(pred) - ctrl, mean(true) - ctrl) over all genes, per group, "
            "ctrl = the true control mean of the group's context for both sides",
            variant="reports r itself (higher is better); scPerturBench stores 1 - r as a distance. "
            "Where either delta vector is constant (max - min <= 1e-12 * max(1, max|x|), e.g. the "
            "'no change' control-mean baseline predicting 0 everywhere) r is undefined: the group's "
            "value is 0.0 by declaration and it is listed in extra['undefined_r_groups'] with the "
            "reason. Differs from cell-eval, whose pearson_delta uses each side's own controls",
            higher_is_better=True,
        ),
        "rmse_average": MetricSpec(
            definition="sqrt(mean_g (mean(pred) - mean(true))^2) over all genes, per group",
            variant="PerturBench rmse_average on X as stored; mean(pred) = true control mean of the "
            "context + predicted delta",
            higher_is_better=False,
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
        mse_top = np.take_along_axis(sq, degs.indices, axis=1).mean(axis=1)
        r, undefined = pearson_delta(pred_delta, true_delta, ids)
        rmse = np.sqrt(mse)

        def per_group(v: np.ndarray) -> dict[str, float]:
            return {gid: float(x) for gid, x in zip(ids, v)}

        deg_extra = {"k": degs.k, "deg_fallback_groups": dict(degs.fallback_groups)}
        return {
            "mse": MetricValue(per_group=per_group(mse)),
            "mse_top100_deg": MetricValue(per_group=per_group(mse_top), extra=deg_extra),
            "pcc_delta": MetricValue(per_group=per_group(r), extra={"undefined_r_groups": undefined}),
            "rmse_average": MetricValue(per_group=per_group(rmse)),
        }
