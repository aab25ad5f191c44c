"""Entry point (group ``perturbfm``): registers the ``cpa`` model."""

from __future__ import annotations

from typing import Any

from perturbfm import hookimpl


@hookimpl
def pfm_register_models() -> list[Any]:
    from perturbfm_cpa.model import CpaModel

    return [CpaModel]
