"""Run configuration: defaults, a config file and ``--set`` overrides, merged
with a ledger that records where every parameter's value came from."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from perturbfm.errors import ConfigError

#: Run-level parameters and their defaults.
RUN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "panels": "standard",
    "replicate_seeds": 5,
    "max_cells": 2000,
    "ensemble": 1,
    "ensemble_mode": "seeds",
    "conformal": False,
    "conformal_mondrian": False,
    "timeout_s": None,  # seconds for fit + predict together; None: no limit (perturbfm.run.guards)
}
ENSEMBLE_MODES = ("seeds", "bootstrap")

SECTIONS = ("run", "model")


@dataclass(frozen=True)
class LedgerRow:
    """One parameter: its final value and where it came from."""

    parameter: str
    value: Any
    source: str


def _parse_set(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not key=value", field=item, fix="write --set model.ridge_lambda=0.5")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _coerce_panels(param: str, value: Any, origin: str) -> Any:
    """``run.panels``: ``standard`` (every installed standard panel) or a list of panel names."""
    fix = f"set {param} to standard, or a list of panel names like [basic, vcc]"
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",") if v.strip()]
        if names == ["standard"]:
            return "standard"
        value = names
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{param} must be 'standard' or a list of panel names, got {value!r}", field=param,
                          file=origin, fix=fix)
    if not value:
        raise ConfigError(f"{param} names no panel", field=param, file=origin, fix=fix)
    return [v.strip() for v in value]


def _coerce(param: str, value: Any, default: Any, origin: str) -> Any:
    """Check ``value`` against the default's type (ints may stand for floats)."""
    if param == "run.panels":
        return _coerce_panels(param, value, origin)
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{param} must be true or false, got {value!r}", field=param, file=origin,
                              fix=f"set {param} to true or false")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{param} must be a number, got {value!r}", field=param, file=origin,
                              fix=f"set {param} to a number like {default!r}")
        if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{param} must be an integer, got {value!r}", field=param, file=origin,
                              fix=f"set {param} to an integer like {default!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{param} must be a finite number, got {value!r}", field=param, file=origin,
                              fix=f"set {param} to a number like {default!r}")
        return type(default)(value)
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{param} must be a list, got {value!r}", field=param, file=origin,
                              fix=f"give a list, e.g. {list(default)!r} or a comma-separated string")
        return list(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{param} must be a string, got {value!r}", field=param, file=origin,
                          fix=f"set {param} to a string")
    return value


def resolve_config(
    model_defaults: Mapping[str, Any],
    *,
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    model_name: str = "model",
) -> tuple[dict[str, Any], list[LedgerRow]]:
    """Merge defaults < config file < ``--set``; unknown keys are refused.

    ``--set`` keys may carry a section (``model.ridge_lambda``, ``run.seed``) or
    be bare when the name is unique across sections.

    Returns:
        (``{"run": {...}, "model": {...}}``, the ledger of every parameter).
    """
    defaults = {"run": dict(RUN_DEFAULTS), "model": copy.deepcopy(dict(model_defaults))}
    resolved = copy.deepcopy(defaults)
    source = {(s, k): "default" if s == "run" else f"default ({model_name})" for s in SECTIONS for k in defaults[s]}

    if config_file is not None:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc}", file=str(path), fix="check the path") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file is not valid YAML: {exc}", file=str(path), fix="fix the YAML syntax") from exc
        if not isinstance(data, dict):
            raise ConfigError("config file must be a mapping with sections run: and model:", file=str(path),
                              fix="write `run: {...}` and `model: {...}`")
        for section, values in data.items():
            if section not in SECTIONS:
                raise ConfigError(f"unknown config section {section!r}", file=str(path), field=str(section),
                                  fix=f"use sections {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"section {section!r} must be a mapping", file=str(path), field=section,
                                  fix=f"write `{section}:` followed by key: value lines")
            for k, v in values.items():
                _assign(resolved, defaults, source, section, str(k), v, f"config file {path}", str(path))

    for item in sets:
        key, value = _parse_set(item)
        if "." in key:
            section, k = key.split(".", 1)
        else:
            owners = [s for s in SECTIONS if key in defaults[s]]
            if len(owners) != 1:
                known = ", ".join(f"{s}.{k}" for s in SECTIONS for k in defaults[s])
                raise ConfigError(
                    f"--set {key}: " + ("unknown parameter" if not owners else "ambiguous; say which section"),
                    field=key, fix=f"known parameters: {known}",
                )
            section, k = owners[0], key
        if section not in SECTIONS:
            raise ConfigError(f"--set {key}: unknown section {section!r}", field=key,
                              fix=f"use {', '.join(SECTIONS)}")
        _assign(resolved, defaults, source, section, k, value, "CLI --set", "--set")

    ledger = [
        LedgerRow(f"{s}.{k}", resolved[s][k], source[(s, k)]) for s in SECTIONS for k in sorted(resolved[s])
    ]
    return resolved, ledger


def _assign(
    resolved: dict[str, Any],
    defaults: dict[str, Any],
    source: dict[tuple[str, str], str],
    section: str,
    key: str,
    value: Any,
    origin: str,
    file: str,
) -> None:
    if key not in defaults[section]:
        known = ", ".join(sorted(defaults[section])) or "none"
        raise ConfigError(f"unknown {section} parameter {key!r}", field=f"{section}.{key}", file=file,
                          fix=f"known {section} parameters: {known}")
    resolved[section][key] = _coerce(f"{section}.{key}", value, defaults[section][key], file)
    source[(section, key)] = origin


def ledger_csv(rows: Sequence[LedgerRow]) -> str:
    """``parameters.csv``: parameter,value,source (values as YAML scalars)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["parameter", "value", "source"])
    for r in rows:
        w.writerow([r.parameter, yaml.safe_dump(r.value, default_flow_style=True).strip().removesuffix("\n..."), r.source])
    return buf.getvalue()
