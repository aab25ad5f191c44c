"""Defaults that name plugins (demo models, default adapter, comparison reference).

They live in ``defaults.yaml`` beside this module, so that no core code names a
first-party plugin. ``$PFM_DEFAULTS`` may point to a YAML file that overrides
some of them (same keys; a section's missing keys keep the shipped values).
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from perturbfm.errors import ConfigError

ENV = "PFM_DEFAULTS"
_SHIPPED = Path(__file__).with_name("defaults.yaml")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the defaults file: {type(exc).__name__}: {exc}", file=str(path),
                          field=ENV, fix=f"fix the YAML file, or unset ${ENV}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError("the defaults file must map section names to mappings", file=str(path), field=ENV,
                          fix="write e.g. 'demo: {models: [a, b]}'")
    return data


@lru_cache(maxsize=4)
def _load(override: str | None) -> dict[str, Any]:
    data = _read(_SHIPPED)
    if override:
        for section, values in _read(Path(override)).items():
            data[section] = {**data.get(section, {}), **values}
    return data


def load_defaults() -> dict[str, Any]:
    """The defaults (a fresh copy): sections ``demo``, ``import``, ``compare``."""
    return copy.deepcopy(_load(os.environ.get(ENV) or None))


def demo_models() -> list[str]:
    """Model names the demo runs."""
    models = load_defaults()["demo"].get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"demo.models must be a non-empty list of model names, got {models!r}", field="demo.models",
                          file=os.environ.get(ENV) or str(_SHIPPED), fix="write e.g. demo: {models: [a, b]}")
    return list(models)


def panel_order() -> tuple[str, ...]:
    """Display order of the standard metric panels (``panels.order``; unlisted panels follow, by name)."""
    order = load_defaults().get("panels", {}).get("order", [])
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise ConfigError(f"panels.order must be a list of panel names, got {order!r}", field="panels.order",
                          file=os.environ.get(ENV) or str(_SHIPPED), fix="write e.g. panels: {order: [a, b]}")
    return tuple(order)


def panel_rank(name: str, cls: type | None = None) -> tuple[int, str]:
    """Sort key of a panel in the standard order: its ``standard_rank`` class attribute
    when it declares one (an int, lower first), else its place in :func:`panel_order`,
    else after all of them."""
    rank = getattr(cls, "standard_rank", None) if cls is not None else None
    if isinstance(rank, int) and not isinstance(rank, bool):
        return rank, name
    order = {n: k for k, n in enumerate(panel_order())}
    return order.get(name, len(order)), name


def compare_reference() -> str:
    """The reference model of ``pfm-bench compare`` (``compare.reference``)."""
    return str(load_defaults()["compare"]["reference"])


#: the shipped values at import time (kept for callers of the constants)
PANEL_ORDER: tuple[str, ...] = panel_order()
COMPARE_REFERENCE: str = compare_reference()


def as_dict() -> dict[str, Any]:
    """Every default, e.g. for documentation."""
    return load_defaults()
