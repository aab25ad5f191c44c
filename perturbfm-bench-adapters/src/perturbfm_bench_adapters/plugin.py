"""Entry point of perturbfm-bench-adapters: registers implementations with PerturbFM."""

from __future__ import annotations

from perturbfm import hookimpl


@hookimpl
def pfm_register_dataset_adapters() -> list[type]:
    """The ``anndata`` adapter."""
    from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter

    return [AnnDataAdapter]


@hookimpl
def pfm_register_split_generators() -> list[type]:
    """The ``explicit``, ``random-groups`` and ``context-ood`` generators."""
    from perturbfm_bench_adapters.generators import GENERATORS

    return list(GENERATORS)
