"""Entry point of perturbfm-metrics: registers the metric panels and commands."""

from __future__ import annotations

from typing import Any

from perturbfm import hookimpl


@hookimpl
def pfm_register_metric_panels() -> list[type]:
    from perturbfm_metrics.basic import BasicPanel
    from perturbfm_metrics.deg_weighted import DegWeightedPanel
    from perturbfm_metrics.perturbench import PerturBenchPanel
    from perturbfm_metrics.scperturbench import ScPerturBenchPanel
    from perturbfm_metrics.vcc import VccPanel
    from perturbfm_metrics.vcc2026 import Vcc2026Panel

    # the uncertainty panel is the core's (perturbfm.builtin.uncertainty_panel)
    panels: list[type] = [BasicPanel, ScPerturBenchPanel, PerturBenchPanel, VccPanel, Vcc2026Panel, DegWeightedPanel]
    return panels


@hookimpl
def pfm_register_commands(cli: Any) -> None:
    from perturbfm_metrics.commands import register

    register(cli)
