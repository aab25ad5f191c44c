"""Entry point (group ``perturbfm``): registers the ``gears`` model."""

from __future__ import annotations

from typing import Any

from perturbfm import hookimpl


@hookimpl
def pfm_register_models() -> list[Any]:
    from perturbfm_gears.model import GearsModel

    return [GearsModel]
