"""Uncertainty the harness adds around any model: ensembles, split-conformal
intervals on held-out calibration *groups*, and reliability data.

Conventions (written into ``calibration.json``):

* Ensemble of K members: mean = mean of member means; total variance = mean of
  member variances (0 for point models) + variance of member means (ddof 0).
* Split conformal, per gene: scores s = |y − μ| / σ on the calibration groups'
  true mean deltas (σ = predicted standard deviation where the model gives a
  variance, else 1); the interval at level L is μ ± q·σ with q the
  ⌈(n+1)L⌉-th smallest of the n scores. When ⌈(n+1)L⌉ > n the finite-sample
  guarantee needs an infinite interval, and the interval *is* infinite (the
  report says how many calibration groups that level needs; ``median_quantile``
  is null there, see ``levels_with_infinite_intervals``). The Mondrian
  variant calibrates each context on its own calibration groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perturbfm.interfaces import Prediction

LEVELS = (50, 80, 90, 95)
RELIABILITY_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))
SIGMA_FLOOR = 1e-8


def combine_ensemble(members: Sequence[Prediction]) -> Prediction:
    """Aggregate member predictions: mean of means, mean of variances + variance of means."""
    if len(members) == 1:
        return members[0]
    ids = members[0].group_ids
    for m in members[1:]:
        if m.group_ids != ids:
            raise ValueError("ensemble members predicted different groups")
    means = np.stack([np.asarray(m.mean_delta, dtype=np.float64) for m in members])
    within = [np.asarray(m.var_delta, dtype=np.float64) for m in members if m.var_delta is not None]
    mean_var = np.mean(within, axis=0) if len(within) == len(members) else np.zeros_like(means[0])
    notes: dict[str, str] = {}
    for k, m in enumerate(members):
        for gid, note in m.notes.items():
            notes.setdefault(gid, note if k == 0 else f"member {k}: {note}")
    return Prediction(
        group_ids=list(ids),
        mean_delta=means.mean(axis=0),
        var_delta=mean_var + means.var(axis=0),
        notes=notes,
        info={**members[0].info, "ensemble_members": len(members),
              "ensemble_variance": "mean of member variances + variance of member means"
              if len(within) == len(members) else "variance of member means (members give no variance)"},
    )


def bootstrap_groups(group_ids: Sequence[str], seed: int) -> list[str]:
    """The distinct groups of a with-replacement resample of ``group_ids``."""
    rng = np.random.default_rng([seed, 7919])
    ids = sorted(group_ids)
    picks = rng.integers(0, len(ids), size=len(ids))
    return sorted({ids[i] for i in picks})


@dataclass
class ConformalResult:
    """Intervals for the evaluated groups and how they were calibrated."""

    intervals: dict[int, tuple[np.ndarray, np.ndarray]]
    quantiles: dict[str, dict[int, np.ndarray]]
    n_calibration: dict[str, int]
    infinite_levels: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (quantiles summarised by median over genes)."""
        return {
            "n_calibration_groups": self.n_calibration,
            "median_quantile": {
                scope: {str(lv): float(np.median(q)) if np.isfinite(q).all() else None for lv, q in qs.items()}
                for scope, qs in self.quantiles.items()
            },
            "levels_with_infinite_intervals": {k: v for k, v in self.infinite_levels.items() if v},
            "notes": self.notes,
        }


def conformal_quantiles(scores: np.ndarray, levels: Sequence[int] = LEVELS) -> dict[int, np.ndarray]:
    """Per-gene split-conformal quantiles of ``scores`` ``[n, G]``."""
    n = scores.shape[0]
    srt = np.sort(scores, axis=0)
    out = {}
    for lv in levels:
        k = math.ceil((n + 1) * lv / 100)
        out[lv] = srt[k - 1] if k <= n else np.full(scores.shape[1], np.inf)
    return out


def _sigma(var: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if var is None:
        return np.ones(shape)
    return np.sqrt(np.maximum(var, SIGMA_FLOOR**2))


def conformalize(
    cal_true_delta: np.ndarray,
    cal_pred: Prediction,
    cal_contexts: Sequence[str],
    test_pred: Prediction,
    test_contexts: Sequence[str],
    *,
    mondrian: bool = False,
    levels: Sequence[int] = LEVELS,
) -> ConformalResult:
    """Calibrate on held-out calibration groups and build test intervals."""
    cal_sigma = _sigma(cal_pred.var_delta, cal_true_delta.shape)
    scores = np.abs(cal_true_delta - cal_pred.mean_delta) / cal_sigma
    test_mu = np.asarray(test_pred.mean_delta, dtype=np.float64)
    test_sigma = _sigma(test_pred.var_delta, test_mu.shape)
    normalised = "normalised by predicted sigma" if cal_pred.var_delta is not None else \
        "absolute residuals (the model gives no variance)"
    notes = [f"split conformal per gene, scores |y - mu| {normalised}"]
    cal_ctx = np.asarray(cal_contexts)
    test_ctx = np.asarray(test_contexts)
    pooled = conformal_quantiles(scores, levels)
    quantiles: dict[str, dict[int, np.ndarray]] = {"pooled": pooled}
    n_cal = {"pooled": int(scores.shape[0])}
    q_rows = {lv: np.broadcast_to(pooled[lv], test_mu.shape).copy() for lv in levels}
    if mondrian:
        notes.append("Mondrian: each context calibrated on its own calibration groups")
        for c in sorted(set(test_ctx.tolist())):
            rows = cal_ctx == c
            if not rows.any():
                notes.append(f"context {c} has no calibration groups: used the pooled quantiles")
                continue
            qc = conformal_quantiles(scores[rows], levels)
            quantiles[c] = qc
            n_cal[c] = int(rows.sum())
            for lv in levels:
                q_rows[lv][test_ctx == c] = qc[lv]
    infinite = {scope: [lv for lv, q in qs.items() if not np.isfinite(q).all()] for scope, qs in quantiles.items()}
    for scope, lvs in infinite.items():
        for lv in lvs:
            need = math.ceil(lv / (100 - lv))
            notes.append(f"{scope}: level {lv}% needs at least {need} calibration groups "
                         f"(have {n_cal[scope]}); its intervals are infinite")
    intervals = {lv: (test_mu - q_rows[lv] * test_sigma, test_mu + q_rows[lv] * test_sigma) for lv in levels}
    return ConformalResult(intervals, quantiles, n_cal, infinite, notes)


def reliability(
    true_delta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray | None,
    intervals_at: Any = None,
) -> list[list[float]]:
    """[[nominal, empirical coverage], ...] of central Gaussian intervals over
    (group, gene) cells; ``intervals_at(level) -> (lo, hi)`` overrides them."""
    from scipy.stats import norm

    out = []
    for lv in RELIABILITY_LEVELS:
        if intervals_at is not None:
            lo, hi = intervals_at(lv)
        else:
            if var is None:
                return []
            z = norm.ppf(0.5 + lv / 2)
            sd = np.sqrt(np.maximum(var, 0))
            lo, hi = mean - z * sd, mean + z * sd
        out.append([lv, float(np.mean((true_delta >= lo) & (true_delta <= hi)))])
    return out
