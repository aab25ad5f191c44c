"""The ``uncertainty`` panel now belongs to the core (calibration metrics are
core-owned: :mod:`perturbfm.calibration_metrics`, registered by the core's
plugin as :class:`perturbfm.builtin.uncertainty_panel.UncertaintyPanel`).

This module re-exports them for code that imported them from here.
"""

from __future__ import annotations

from perturbfm.builtin.uncertainty_panel import UncertaintyPanel
from perturbfm.calibration import LEVELS
from perturbfm.calibration_metrics import (
    NO_OOD,
    NO_UNCERTAINTY,
    VAR_FLOOR,
    auroc,
    coverage,
    gaussian_nll,
    risk_coverage,
    z_of,
)

__all__ = ["LEVELS", "NO_OOD", "NO_UNCERTAINTY", "VAR_FLOOR", "UncertaintyPanel", "auroc", "coverage", "gaussian_nll",
           "risk_coverage", "z_of"]
