"""The ``uncertainty`` metric panel, registered by the core's own plugin.

Its values are the core's calibration metrics (:mod:`perturbfm.calibration_metrics`).
In a run the core computes them once and attaches them to the evaluation inputs;
the panel then returns that result instead of recomputing. Used on its own (e.g.
``pfm-bench eval`` or a test), it computes them from ``data.pred_var`` and, when
given, conformal intervals in ``data.extra["intervals"] = {level: (lo, hi)}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from perturbfm.calibration import LEVELS
from perturbfm.calibration_metrics import uncertainty_values
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable

if TYPE_CHECKING:
    from perturbfm.evaldata import EvalData


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
        """The core's calibration result for this prediction, else computed here."""
        cal = data.calibration
        if cal is not None and cal.applies_to(data):
            return dict(cal.values)
        return uncertainty_values(data, data.extra.get("intervals"))
