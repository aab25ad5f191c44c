"""The core's own plugin module (entry point ``core``)."""

from __future__ import annotations

from typing import Any

from perturbfm import hookimpl


@hookimpl
def pfm_register_dataset_adapters() -> list[type]:
    from perturbfm.builtin.synthetic import SyntheticAdapter

    return [SyntheticAdapter]


@hookimpl
def pfm_register_metric_panels() -> list[type]:
    """The calibration panel: its values are the core's calibration metrics (calibration_metrics.py)."""
    from perturbfm.builtin.uncertainty_panel import UncertaintyPanel

    return [UncertaintyPanel]


@hookimpl
def pfm_register_executors() -> list[type]:
    from perturbfm.builtin.executors import ProcessExecutor, RayExecutor, SerialExecutor

    return [SerialExecutor, ProcessExecutor, RayExecutor]


@hookimpl
def pfm_register_commands(cli: Any) -> None:
    """``pfm-bench study run``: config-driven ablation grids; ``pfm-bench plugins new``: the plugin kit."""
    from perturbfm.plugin_kit.commands import register_commands

    register_commands(cli)
    from perturbfm.study.cli import study

    cli.add_command(study, "study")
