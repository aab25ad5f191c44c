"""Entry point (group ``perturbfm``): registers the ``biolord`` model."""

from __future__ import annotations

from typing import Any

from perturbfm import hookimpl


@hookimpl
def pfm_register_models() -> list[Any]:
    from perturbfm_biolord.model import BiolordModel

    return [BiolordModel]
