"""Entry point of perturbfm-bench-adapters: registers implementations with PerturbFM."""

from __future__ import annotations

from typing import Any

from perturbfm import hookimpl


@hookimpl
def pfm_register_dataset_adapters() -> list[type]:
    """The generic ``anndata`` adapter and the ``perturbench``, ``scperturb`` and ``gears`` formats."""
    from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter
    from perturbfm_bench_adapters.formats import FORMAT_ADAPTERS

    return [AnnDataAdapter, *FORMAT_ADAPTERS]


@hookimpl
def pfm_register_split_generators() -> list[type]:
    """``explicit``, ``random-groups``, ``context-ood``, ``loco``, ``perturbation-ood``, ``combo``
    and ``covariate-transfer``."""
    from perturbfm_bench_adapters.generators import GENERATORS
    from perturbfm_bench_adapters.generators_ood import OOD_GENERATORS

    return [*GENERATORS, *OOD_GENERATORS]


@hookimpl
def pfm_register_commands(cli: Any) -> None:
    """``pfm-bench data fetch|verify`` and ``pfm-bench splits import|create-family|families``."""
    from perturbfm_bench_adapters.commands import data_group, splits_group

    cli.add_command(data_group, "data")
    cli.add_command(splits_group, "splits")
