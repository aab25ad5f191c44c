"""The core's own plugin module (entry point ``core``)."""

from __future__ import annotations

from perturbfm import hookimpl


@hookimpl
def pfm_register_dataset_adapters() -> list[type]:
    from perturbfm.builtin.synthetic import SyntheticAdapter

    return [SyntheticAdapter]


@hookimpl
def pfm_register_executors() -> list[type]:
    from perturbfm.builtin.executors import SerialExecutor

    return [SerialExecutor]
