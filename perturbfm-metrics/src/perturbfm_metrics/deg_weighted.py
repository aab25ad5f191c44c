"""The ``deg_weighted`` panel: DEG-weighted errors of the delta (Mejia et al. 2025,
"Diversity by Design", arXiv 2506.22641; own implementation).

Per group ``p`` (one perturbation in one context), with deltas against the true
control mean of the context for both sides (``d = mean(true) - ctrl``,
``d^ = mean(pred) - ctrl``) and per-gene weights ``w`` from the truth's DE
strength (:func:`deg_weights`)::

    wmse      = sum_g w_g (d^_g - d_g)^2
    r2w_delta = 1 - sum_g w_g (d^_g - d_g)^2 / sum_g w_g (d_g - dbar_w)^2,   dbar_w = sum_g w_g d_g

Weights (pinned): ``s_g = |t_g|``, Welch's t of the group's true cells vs the
context's control cells (the DEG test of :mod:`perturbfm_metrics.deg`; groups
with < 2 true or control cells use ``|mean_g - mean_c|``, listed); an infinite
``|t|`` (zero variances, different means) is replaced by the group's largest
finite ``s``; then min-max scaled within the group, squared, and normalised to
sum 1: ``w_g = m_g^2 / sum_h m_h^2``, ``m_g = (s_g - min s) / (max s - min s)``
(the transformation of Mejia et al.).

Why they stop rewarding mean collapse: unweighted errors over all genes are
dominated by the many genes that barely move, which a collapsed prediction (the
same delta for every group, e.g. the average response) gets right; the group's
own strong, specific changes are a small share of the genes and barely move the
score. The weights put (by construction) most of the mass on the genes where
this group's truth differs most from its controls, so an averaged prediction,
which dilutes exactly those changes, scores poorly, while a model that gets
them right is rewarded. A change shared by every group (a common shift vs the
controls) remains in the weights; Mejia et al. weight against the other
perturbations for that reason, PerturbFM keeps the controls as reference and
reports the mean-response baseline beside every metric (``references``).

Declared, never scored: a group whose scores are all equal (no gene more
differential than another, e.g. a truth equal to its controls) has no weights;
a group whose true delta is constant over the weighted genes has no variance to
explain (``r2w_delta``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable

from perturbfm_metrics.deg import DEG_TEST_DESCRIPTION, deg_scores

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

#: the weighted variance of the true delta is zero when below (VAR_RTOL * max(1, max|d|))^2.
VAR_RTOL = 1e-12

WEIGHT_RULE = (
    "w_g = m_g^2 / sum_h m_h^2, m_g = (s_g - min s) / (max s - min s) over the group's genes, s_g = |t_g| of the "
    "group's true cells vs the context's control cells (" + DEG_TEST_DESCRIPTION + "); an infinite |t| is "
    "replaced by the group's largest finite s; weights sum to 1 per group (min-max, square, normalise: the "
    "transformation of Mejia et al. 2025)"
)
_VARIANT = (
    "Mejia et al. 2025 (arXiv 2506.22641) weighting; PerturbFM's reference is the context's controls for both "
    "the weights and the deltas (the paper's headline R2_w(delta) weights each perturbation against the other "
    "perturbations and takes deltas against their mean), and the t statistic is Welch's (scanpy 't-test'; "
    "the paper uses 't-test_overestim_var'); a group whose DE scores are all equal has no weights and is "
    "declared not applicable"
)


def deg_weights(scores: np.ndarray) -> tuple[np.ndarray | None, int, str]:
    """Weights of one group from its per-gene DE scores (see :data:`WEIGHT_RULE`).

    Args:
        scores: ``[G]`` nonnegative scores (``|t|``; may hold ``inf`` or NaN).

    Returns:
        ``(weights [G] summing to 1, or None when undefined; number of infinite
        scores replaced; reason when undefined, else "")``.
    """
    s = np.asarray(scores, dtype=np.float64).copy()
    s[np.isnan(s)] = 0.0
    inf = np.isinf(s)
    finite = s[~inf]
    if inf.any():
        if finite.size == 0 or not np.any(finite > 0):
            return None, int(inf.sum()), "every DE score is infinite or 0: no gene ranks between them"
        s[inf] = finite.max()
    lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        return None, int(inf.sum()), (f"every gene has the same DE score ({hi:.3g}): no gene is more "
                                      "differentially expressed than another")
    m = ((s - lo) / (hi - lo)) ** 2
    return m / m.sum(), int(inf.sum()), ""


class DegWeightedPanel(MetricPanel):
    """DEG-weighted MSE and weighted R^2 of the delta (Mejia et al. 2025)."""

    name: ClassVar[str] = "deg_weighted"
    standard: ClassVar[bool] = True
    version: ClassVar[str] = "1"
    description: ClassVar[str] = (
        "DEG-weighted errors of the delta (Mejia et al. 2025, arXiv 2506.22641, reimplemented): weighted MSE and "
        "weighted R^2 of the predicted vs true delta against the context's control mean, per-gene weights from "
        "the truth's DE strength (squared min-max |t| vs the controls, sum 1 per group). They stop rewarding "
        "mean collapse: unweighted errors are dominated by the many genes that barely move, which a collapsed "
        "prediction (the same delta for every group) gets right; the weights concentrate the score on the "
        "genes where the group's truth moves most, the group-specific changes that averaging dilutes"
    )
    metrics: ClassVar[Mapping[str, MetricSpec]] = {
        "wmse": MetricSpec(
            definition="sum_g w_g (pred_delta_g - true_delta_g)^2 over all genes, per group, deltas against the "
            "true control mean of the context; weights: " + WEIGHT_RULE,
            variant=_VARIANT + "; 0 for a perfect prediction, same units as mse",
            higher_is_better=False,
            delta_based=True,
        ),
        "r2w_delta": MetricSpec(
            definition="1 - sum_g w_g (pred_delta_g - true_delta_g)^2 / sum_g w_g (true_delta_g - dbar)^2, "
            "dbar = sum_g w_g true_delta_g (weighted coefficient of determination, sklearn r2_score with "
            "sample_weight = w), deltas against the true control mean of the context; weights: " + WEIGHT_RULE,
            variant=_VARIANT + "; 1 perfect, 0 = predicting the weighted mean true delta for every gene, "
            "unbounded below; a group whose true delta is constant over the weighted genes (weighted variance "
            "<= (1e-12 x max(1, max|delta|))^2) has nothing to explain and is declared not applicable",
            higher_is_better=True,
            delta_based=True,
        ),
    }

    def compute(self, data: EvalData) -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel for the evaluated groups."""
        ids = data.group_ids
        pred = np.asarray(data.pred_delta, dtype=np.float64)
        true = np.asarray(data.true_delta, dtype=np.float64)
        score, fallback = deg_scores(data)
        wmse: dict[str, float] = {}
        r2: dict[str, float] = {}
        no_w: dict[str, str] = {}
        no_var: dict[str, str] = {}
        eff: dict[str, float] = {}
        inf_genes: dict[str, int] = {}
        for i, gid in enumerate(ids):
            w, n_inf, why = deg_weights(score[i])
            if n_inf:
                inf_genes[gid] = n_inf
            if w is None:
                no_w[gid] = "no DE weights: " + why
                continue
            err = float(np.sum(w * (pred[i] - true[i]) ** 2))
            wmse[gid] = err
            eff[gid] = float(1.0 / np.sum(w * w))
            dbar = float(np.sum(w * true[i]))
            var = float(np.sum(w * (true[i] - dbar) ** 2))
            scale = VAR_RTOL * max(1.0, float(np.max(np.abs(true[i]))))
            if not var > scale * scale:
                no_var[gid] = ("true delta constant over the weighted genes (weighted variance "
                               f"{var:.3g}): no variance to explain, R^2 undefined")
                continue
            r2[gid] = 1.0 - err / var
        extra = {"weight_rule": WEIGHT_RULE, "effective_genes": eff, "deg_fallback_groups": dict(fallback),
                 "infinite_t_genes": inf_genes}
        return {
            "wmse": MetricValue(per_group=wmse, extra=dict(extra), not_applicable_groups=dict(no_w)),
            "r2w_delta": MetricValue(per_group=r2, extra=dict(extra), not_applicable_groups={**no_w, **no_var}),
        }
