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
