"""Calibration metrics of predicted uncertainty, owned by the core.

One function, :func:`calibrate`, computes them once per run from the model's
predicted variances and (optionally) the conformal intervals fitted on the
split's calibration groups (:func:`perturbfm.calibration.conformalize`). It
returns

* the values of the ``uncertainty`` metric panel (registered by the core's own
  plugin, :mod:`perturbfm.builtin.uncertainty_panel`), attached to the run's
  :class:`~perturbfm.evaldata.EvalData` so the panel reads them instead of
  recomputing, and
* the ``calibration.json`` document the run writes.

Definitions (METRICS.md), on group-mean deltas:

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
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from perturbfm.calibration import LEVELS, ConformalResult, reliability
from perturbfm.evaldata import CoreCalibration, EvalData
from perturbfm.evaluation import aggregate
from perturbfm.interfaces import MetricValue, NotApplicable

VAR_FLOOR = 1e-12
NO_UNCERTAINTY = "model gives no predictive variance; run with --conformal for intervals"
NO_OOD = "the split carries no OOD labels"

Values = dict[str, MetricValue | NotApplicable]


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


def uncertainty_values(data: EvalData, intervals: Mapping[int, Any] | None = None) -> Values:
    """The ``uncertainty`` panel's keys for ``data``, with conformal ``intervals``
    (``{level: (lo, hi)}``) where given, else Gaussian intervals from the variance."""
    ivals: dict[int, Any] = {int(k): v for k, v in (intervals or {}).items()}
    var = None if data.pred_var is None else np.maximum(np.asarray(data.pred_var, np.float64), VAR_FLOOR)
    keys = ([f"coverage@{lv}" for lv in LEVELS] + ["nll", "aurc", "ood_auroc"])
    if var is None and not ivals:
        return {k: NotApplicable(NO_UNCERTAINTY) for k in keys}
    ids = data.group_ids
    mean = np.asarray(data.pred_delta, dtype=np.float64)
    true = np.asarray(data.true_delta, dtype=np.float64)

    def per_group(v: np.ndarray) -> dict[str, float]:
        return {gid: float(x) for gid, x in zip(ids, v)}

    out: Values = {}
    for lv in LEVELS:
        if lv in ivals:
            lo, hi = (np.asarray(a, dtype=np.float64) for a in ivals[lv])
            src = "conformal"
        elif var is not None:
            half = z_of(lv) * np.sqrt(var)
            lo, hi, src = mean - half, mean + half, "gaussian"
        else:
            out[f"coverage@{lv}"] = NotApplicable(f"no conformal interval at level {lv} and no predictive variance")
            continue
        out[f"coverage@{lv}"] = MetricValue(per_group=per_group(coverage(true, lo, hi)),
                                            extra={"interval": src, "nominal": lv / 100})
    out["nll"] = (MetricValue(per_group=per_group(gaussian_nll(true, mean, var)), extra={"var_floor": VAR_FLOOR})
                  if var is not None else NotApplicable("model gives no predictive variance; "
                                                        "conformal intervals do not define a likelihood"))
    if var is not None:
        score, score_src = np.sqrt(var).mean(axis=1), "mean predicted sigma"
    else:
        lv = max(ivals)
        lo, hi = (np.asarray(a, dtype=np.float64) for a in ivals[lv])
        score = ((hi - lo) / (2 * z_of(lv))).mean(axis=1)
        score_src = f"mean half-width of the conformal {lv}% interval / z({lv})"
    out["aurc"] = _aurc(data, score, ((mean - true) ** 2).mean(axis=1), score_src)
    out["ood_auroc"] = _ood(data, score)
    return out


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


def _summary(values: Values, data: EvalData) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in values.items():
        if isinstance(v, NotApplicable):
            out[key] = {"not_applicable": v.reason}
        else:
            agg = aggregate(v, data.groups)
            out[key] = {"global": agg["global"], "per_context": agg["per_context"],
                        **({"extra": agg["extra"]} if "extra" in agg else {})}
    return out


def calibrate(data: EvalData, conformal: ConformalResult | None, run_cfg: Mapping[str, Any]
              ) -> tuple[CoreCalibration, dict[str, Any]]:
    """Compute the calibration metrics of a run once.

    Returns the panel values (conformal intervals where calibrated, else Gaussian;
    attach them with ``data.calibration = result``) and the ``calibration.json``
    document (Gaussian and conformal coverage side by side, reliability curves,
    NLL, AURC and OOD AUROC)."""
    gauss_vals = uncertainty_values(data)
    conf_vals = (uncertainty_values(data, {lv: conformal.intervals[lv] for lv in LEVELS})
                 if conformal is not None else None)
    result = CoreCalibration(data.pred_delta, data.pred_var, dict(conf_vals if conf_vals is not None else gauss_vals))
    doc: dict[str, Any] = {
        "schema": 1,
        "levels": list(LEVELS),
        "ensemble": {"members": int(run_cfg["ensemble"]), "mode": run_cfg["ensemble_mode"]},
        "variance_available": data.pred_var is not None,
    }
    gauss = _summary(gauss_vals, data)
    cov = {str(lv): gauss.get(f"coverage@{lv}") for lv in LEVELS}
    if data.pred_var is not None:
        doc["gaussian"] = {"coverage": {k: v["global"] for k, v in cov.items() if v and "global" in v},
                           "coverage_detail": cov,
                           "reliability": reliability(data.true_delta, data.pred_delta, data.pred_var)}
    else:
        doc["gaussian"] = {"not_applicable": "the model gives no predictive variance"}
    if conformal is not None and conf_vals is not None:
        conf = _summary(conf_vals, data)
        doc["conformal"] = {
            "coverage": {str(lv): conf[f"coverage@{lv}"].get("global") for lv in LEVELS},
            "coverage_detail": {str(lv): conf[f"coverage@{lv}"] for lv in LEVELS},
            "reliability": reliability(data.true_delta, data.pred_delta, None,
                                       intervals_at=lambda lv: conformal.intervals[round(100 * lv)]),
            "mondrian": bool(run_cfg["conformal_mondrian"]),
            **conformal.summary(),
        }
    else:
        doc["conformal"] = {"not_applicable": "conformal intervals were not requested (run.conformal=false)"}
    for key in ("nll", "aurc", "ood_auroc"):
        entry = gauss[key]
        doc[key] = entry.get("global", entry) if "not_applicable" not in entry else entry
        if key == "aurc" and "extra" in entry:
            doc["risk_coverage"] = entry["extra"].get("risk_coverage")
            doc["aurc_random_reference"] = entry["extra"].get("random_reference")
    return result, doc
