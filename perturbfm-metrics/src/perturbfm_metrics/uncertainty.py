"""The ``uncertainty`` panel: calibration and usefulness of predicted uncertainty.

Defined on group-mean deltas (METRICS.md, PerturbFM's own; no peer has one).
The inputs are ``data.pred_delta`` and ``data.pred_var`` (``[n_groups, G]``
predictive variance of the delta) and, optionally, conformal intervals in
``data.extra["intervals"] = {level: (lo [n, G], hi [n, G])}`` with ``level`` an
int percentage (50, 80, 90, 95).

Declared rules:

* no variance and no intervals -> every key is not applicable;
* ``nll`` needs the variance (intervals alone do not give it);
* variances are clipped at :data:`VAR_FLOOR` before use;
* the per-group uncertainty score is the mean predicted σ over genes; with
  intervals but no variance it is the mean half-width of the widest given
  level divided by that level's Gaussian z (a σ-equivalent);
* ``ood_auroc`` is pooled over all evaluated groups that carry a label (one
  value for the run); ``per_context`` repeats the pooled value so that the
  core's per-context and global levels both equal it; per-context AUROCs, where
  a context has both classes, are in ``extra``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable
from scipy.stats import norm, rankdata

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

LEVELS = (50, 80, 90, 95)
VAR_FLOOR = 1e-12
NO_UNCERTAINTY = "model gives no predictive variance; run with --conformal for intervals"
NO_OOD = "the split carries no OOD labels"


def z_of(level: int) -> float:
    """Gaussian z of the central interval of ``level`` percent."""
    return float(norm.ppf(0.5 + level / 200.0))


def coverage(true: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per row, the share of entries with ``lo <= true <= hi``."""
    return ((true >= lo) & (true <= hi)).mean(axis=1)


def gaussian_nll(true: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Per row, mean Gaussian negative log-likelihood (variance clipped at VAR_FLOOR)."""
    v = np.maximum(var, VAR_FLOOR)
    return (0.5 * np.log(2 * np.pi * v) + (true - mean) ** 2 / (2 * v)).mean(axis=1)


def risk_coverage(score: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve: groups sorted by ``score`` ascending, cumulative mean risk.

    Ties in ``score`` give the expected curve under a random order within the tie
    (each tied group's risk is replaced by the mean risk of its tie block).

    Returns:
        ``(coverage [n], risk [n])`` with coverage ``k / n`` for ``k = 1..n``.
    """
    order = np.argsort(score, kind="stable")
    s, r = score[order], risk[order].astype(np.float64)
    _, block, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(block, weights=r)
    r = (sums / counts)[block]
    n = len(r)
    k = np.arange(1, n + 1)
    return k / n, np.cumsum(r) / k


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``score`` for ``positive`` (Mann-Whitney; ties count one half)."""
    pos = np.asarray(positive, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(score, method="average")
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


class UncertaintyPanel(MetricPanel):
    """Coverage, NLL, risk-coverage and OOD detection of predicted uncertainty."""

    name: ClassVar[str] = "uncertainty"
    version: ClassVar[str] = "1"
    needs_variance: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Calibration (interval coverage, Gaussian NLL) and usefulness (risk-coverage, OOD AUROC) of "
        "the predicted uncertainty of group-mean deltas"
    )
    metrics: ClassVar[Mapping[str, MetricSpec]] = {
        **{
            f"coverage@{lv}": MetricSpec(
                definition=f"share of the group's genes whose true mean delta lies inside the predicted "
                f"central {lv}% interval (bounds inclusive), per group",
                variant="Gaussian interval pred_delta ± z·sqrt(pred_var) (variance clipped at 1e-12), or the "
                "conformal interval of that level when given; nominal value "
                f"{lv / 100:.2f}",
                higher_is_better=None,
            )
            for lv in LEVELS
        },
        "nll": MetricSpec(
            definition="mean over genes of 0.5·log(2π σ²) + (true − pred)² / (2σ²) of the mean delta, per "
            "group",
            variant="Gaussian with σ² = predicted variance clipped at 1e-12; not applicable without variance",
            higher_is_better=False,
        ),
        "aurc": MetricSpec(
            definition="per context: groups sorted by mean predicted σ (ascending); risk at coverage k/n = "
            "mean over the first k groups of the group's MSE of the mean delta; AURC = mean of the curve",
            variant="ties in σ give the expected curve under random order within the tie; "
            "extra['risk_coverage'] holds the points, extra['random_reference'] the expected AURC under "
            "a random order (= mean MSE) and extra['oracle_reference'] the AURC sorted by the true MSE; "
            "σ-equivalent from conformal intervals when no variance is given",
            higher_is_better=False,
        ),
        "ood_auroc": MetricSpec(
            definition="AUROC of the mean predicted σ separating groups labelled OOD (positive) from IID, "
            "pooled over all labelled evaluated groups",
            variant="Mann-Whitney AUROC, ties count one half; global-only: per_context repeats the pooled "
            "value; per-context AUROCs (contexts with both classes) in extra; not applicable without "
            "labels or when the evaluated groups are all one class",
            higher_is_better=True,
        ),
    }

    def compute(self, data: EvalData) -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel."""
        intervals: dict[int, Any] = {int(k): v for k, v in (data.extra.get("intervals") or {}).items()}
        var = None if data.pred_var is None else np.maximum(np.asarray(data.pred_var, np.float64), VAR_FLOOR)
        if var is None and not intervals:
            return {k: NotApplicable(NO_UNCERTAINTY) for k in self.metrics}
        ids = data.group_ids
        mean = np.asarray(data.pred_delta, dtype=np.float64)
        true = np.asarray(data.true_delta, dtype=np.float64)

        def per_group(v: np.ndarray) -> dict[str, float]:
            return {gid: float(x) for gid, x in zip(ids, v)}

        out: dict[str, MetricValue | NotApplicable] = {}
        for lv in LEVELS:
            if lv in intervals:
                lo, hi = (np.asarray(a, dtype=np.float64) for a in intervals[lv])
                src = "conformal"
            elif var is not None:
                half = z_of(lv) * np.sqrt(var)
                lo, hi, src = mean - half, mean + half, "gaussian"
            else:
                out[f"coverage@{lv}"] = NotApplicable(
                    f"no conformal interval at level {lv} and no predictive variance")
                continue
            out[f"coverage@{lv}"] = MetricValue(per_group=per_group(coverage(true, lo, hi)),
                                                extra={"interval": src, "nominal": lv / 100})
        out["nll"] = (MetricValue(per_group=per_group(gaussian_nll(true, mean, var)),
                                  extra={"var_floor": VAR_FLOOR})
                      if var is not None else NotApplicable("model gives no predictive variance; "
                                                            "conformal intervals do not define a likelihood"))
        if var is not None:
            score, score_src = np.sqrt(var).mean(axis=1), "mean predicted sigma"
        else:
            lv = max(intervals)
            lo, hi = (np.asarray(a, dtype=np.float64) for a in intervals[lv])
            score = ((hi - lo) / (2 * z_of(lv))).mean(axis=1)
            score_src = f"mean half-width of the conformal {lv}% interval / z({lv})"
        out["aurc"] = self._aurc(data, score, ((mean - true) ** 2).mean(axis=1), score_src)
        out["ood_auroc"] = self._ood(data, score)
        return out

    @staticmethod
    def _aurc(data: EvalData, score: np.ndarray, mse: np.ndarray, src: str) -> MetricValue:
        per_ctx: dict[str, float] = {}
        curves: dict[str, list[list[float]]] = {}
        rand: dict[str, float] = {}
        oracle: dict[str, float] = {}
        for ctx, idx in data.context_indices().items():
            cov, risk = risk_coverage(score[idx], mse[idx])
            per_ctx[ctx] = float(risk.mean())
            curves[ctx] = [[float(c), float(r)] for c, r in zip(cov, risk)]
            rand[ctx] = float(mse[idx].mean())
            oracle[ctx] = float(risk_coverage(mse[idx], mse[idx])[1].mean())
        return MetricValue(per_context=per_ctx, extra={"risk_coverage": curves, "random_reference": rand,
                                                       "oracle_reference": oracle, "uncertainty_score": src})

    @staticmethod
    def _ood(data: EvalData, score: np.ndarray) -> MetricValue | NotApplicable:
        if data.ood is None:
            return NotApplicable(NO_OOD)
        ids = data.group_ids
        lab = [i for i, g in enumerate(ids) if g in data.ood]
        unlabelled = [g for g in ids if g not in data.ood]
        if not lab:
            return NotApplicable(NO_OOD + " for the evaluated groups")
        y = np.array([bool(data.ood[ids[i]]) for i in lab])
        if y.all() or not y.any():
            cls = "OOD" if y.all() else "IID"
            return NotApplicable(f"all {len(lab)} labelled evaluated groups are {cls}: AUROC needs both classes")
        pooled = auroc(score[lab], y)
        lab_set = set(lab)
        per_ctx_auc: dict[str, float] = {}
        for ctx, idx in data.context_indices().items():
            sel = [i for i in idx if i in lab_set]
            yc = np.array([bool(data.ood[ids[i]]) for i in sel], dtype=bool)
            if yc.size and yc.any() and not yc.all():
                per_ctx_auc[ctx] = auroc(score[sel], yc)
        return MetricValue(
            per_context={c: pooled for c in data.contexts},
            extra={"pooled": pooled, "n_ood": int(y.sum()), "n_iid": int((~y).sum()),
                   "unlabelled_groups": unlabelled, "per_context_auroc": per_ctx_auc},
        )
