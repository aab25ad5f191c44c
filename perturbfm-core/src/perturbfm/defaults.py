"""Defaults that name plugins: the one place in the core allowed to.

The core's code never names a first-party plugin; where a default needs one (the
display order of the standard metric panels, the reference model of
``pfm-bench compare``, the models and generator of the demo) it reads it from
here. Each value is a plain default: a plugin that is not installed is skipped
(panel order) or reported by the command that uses it.

A panel may also declare its place itself with a class attribute
``standard_rank`` (an int; lower comes first), which wins over
:data:`PANEL_ORDER`.
"""

from __future__ import annotations

from typing import Any

#: display order of the standard metric panels (unlisted panels follow, by name)
PANEL_ORDER: tuple[str, ...] = ("basic", "scperturbench", "perturbench", "vcc", "vcc2026", "deg_weighted",
                                "uncertainty")

#: the reference model of ``pfm-bench compare`` (its value may also come from metrics.json)
COMPARE_REFERENCE = "train-mean"

#: the demo's models, generator and generator parameters
DEMO_MODELS: tuple[str, ...] = ("control-mean", "train-mean", "additive", "linear", "cgio")
DEMO_GENERATOR = "random-groups"
DEMO_GENERATOR_PARAMS: dict[str, Any] = {"test_fraction": 0.25}


def panel_rank(name: str, cls: type | None = None) -> tuple[int, str]:
    """Sort key of a panel in the standard order: its ``standard_rank`` when it
    declares one, else its place in :data:`PANEL_ORDER`, else after all of them."""
    rank = getattr(cls, "standard_rank", None) if cls is not None else None
    if isinstance(rank, int) and not isinstance(rank, bool):
        return rank, name
    order = {n: k for k, n in enumerate(PANEL_ORDER)}
    return order.get(name, len(order)), name


def as_dict() -> dict[str, Any]:
    """Every default, e.g. for ``pfm-bench demo`` or documentation."""
    return {"panel_order": list(PANEL_ORDER), "compare_reference": COMPARE_REFERENCE,
            "demo_models": list(DEMO_MODELS), "demo_generator": DEMO_GENERATOR,
            "demo_generator_params": dict(DEMO_GENERATOR_PARAMS)}
