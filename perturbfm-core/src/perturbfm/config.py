"""Run configuration: defaults, a config file and ``--set`` overrides, merged
with a ledger that records where every parameter's value came from.

The ``run:`` section is :class:`RunConfig`; the ``model:`` section is the
model's typed config (:mod:`perturbfm.options`). The ledger is a thin layer over
the validated models: a field not in ``model_fields_set`` is a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from perturbfm.errors import ConfigError
from perturbfm.options import (
    Bool,
    ConfigModel,
    Float,
    Int,
    infer_config_model,
    parse_overrides,
    read_yaml_mapping,
    validate,
)

ENSEMBLE_MODES = ("seeds", "bootstrap")
SECTIONS = ("run", "model")
CONFIG_FILE_FIX = "write `run: {seed: 0}` and `model: {ridge_lambda: 0.5}` (sections run: and model:)"


def _panels(value: Any) -> Any:
    """``standard``, a list of panel names, or a comma-separated string of them."""
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",") if v.strip()]
        if names == ["standard"]:
            return "standard"
        value = names
    elif isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PydanticCustomError("config_value", "must be 'standard' or a list of panel names like [basic, vcc], "
                                  "got {got}", {"got": repr(value)})
    if not value:
        raise PydanticCustomError("config_value", "names no panel", {})
    return [v.strip() for v in value]


class RunConfig(ConfigModel):
    """The ``run:`` section: parameters of the harness, not of the model."""

    seed: Int = Field(default=0, ge=0, description="seed of the run (model seed offsets, bootstrap draws, subsampling)")
    panels: Annotated[str | list[str], BeforeValidator(_panels)] = Field(
        default="standard", description="metric panels: standard (every installed standard panel) or a list of names",
        json_schema_extra={"type_label": "standard or a list of panel names"})
    replicate_seeds: Int = Field(default=5, ge=2, description="replicate splits of the true cells behind the "
                                 "split-half reference ceiling")
    max_cells: Int = Field(default=2000, gt=0, description="cells per group used by cell-level panels (subsampled)")
    ensemble: Int = Field(default=1, ge=1, description="members trained (seed or bootstrap ensemble) for a variance")
    ensemble_mode: Literal["seeds", "bootstrap"] = Field(
        default="seeds", description="seeds: vary the model seed; bootstrap: resample training groups")
    conformal: Bool = Field(default=False, description="split-conformal intervals on the split's calibration groups")
    conformal_mondrian: Bool = Field(default=False, description="conformal intervals calibrated per context (Mondrian)")
    timeout_s: Float | None = Field(default=None, gt=0, description="seconds allowed for fit + predict together; "
                                    "null: no limit (the run fails as timed out past it)")
    env_call_timeout_s: Float | None = Field(
        default=None, gt=0, description="seconds allowed for each fit or predict call of a model running in its own "
        "environment (the subprocess is killed past it); null: no per-call limit")
    env_max_cells_per_group: Int = Field(
        default=500, gt=0, description="cells per group sent to a model running in its own environment "
        "(subsampled with run.seed; recorded in the provenance)")


#: Run-level parameters and their defaults.
RUN_DEFAULTS: dict[str, Any] = RunConfig().model_dump()


@dataclass(frozen=True)
class LedgerRow:
    """One parameter: its final value and where it came from."""

    parameter: str
    value: Any
    source: str


def _parse_set(item: str) -> tuple[str, Any]:
    """One ``--set key=value`` (kept for callers; see :func:`perturbfm.options.parse_overrides`)."""
    return parse_overrides([item])[0]


def section_model(model_defaults: Mapping[str, Any], model_name: str = "model",
                  config_model: type[BaseModel] | None = None) -> type[BaseModel]:
    """The typed model of the ``model:`` section: ``config_model``, else the one the
    defaults came from (:func:`perturbfm.options.defaults_of`), else one inferred
    from the defaults' types."""
    if config_model is not None:
        return config_model
    remembered = getattr(model_defaults, "config_model", None)
    if isinstance(remembered, type) and issubclass(remembered, BaseModel):
        return remembered
    return infer_config_model(model_defaults, model_name)


def resolve_config(
    model_defaults: Mapping[str, Any],
    *,
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    model_name: str = "model",
    config_model: type[BaseModel] | None = None,
    file_data: Mapping[str, Any] | None = None,
    file_label: str | None = None,
) -> tuple[dict[str, Any], list[LedgerRow]]:
    """Merge defaults < config file < ``--set``, validated by the typed models.

    ``--set`` keys may carry a section (``model.ridge_lambda``, ``run.seed``) or
    be bare when the name is unique across sections. ``config_model`` is the
    model's typed config (see :func:`section_model` for the fallbacks).
    ``file_data`` stands for an already-read config mapping (a study's variant),
    with ``file_label`` its source in the ledger.

    Returns:
        (``{"run": {...}, "model": {...}}``, the ledger of every parameter).

    Raises:
        ConfigError: naming the file or ``--set``, the dotted field and a fix.
    """
    schemas: dict[str, type[BaseModel]] = {"run": RunConfig,
                                           "model": section_model(model_defaults, model_name, config_model)}
    known = {s: list(schemas[s].model_fields) for s in SECTIONS}
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    source: dict[tuple[str, str], tuple[str, str]] = {}  # (section, key) -> (ledger source, file/option)

    if config_file is not None or file_data is not None:
        where = str(config_file) if config_file is not None else (file_label or "config")
        data = read_yaml_mapping(config_file, what="config file", fix=CONFIG_FILE_FIX) if config_file is not None \
            else dict(file_data or {})
        origin = f"config file {where}" if config_file is not None else (file_label or "config")
        for section, sec_values in data.items():
            if section not in SECTIONS:
                raise ConfigError(f"unknown config section {section!r}", file=where, field=str(section),
                                  fix=f"use sections {', '.join(SECTIONS)}: {CONFIG_FILE_FIX}")
            if sec_values is None:
                continue
            if not isinstance(sec_values, Mapping):
                raise ConfigError(f"section {section!r} must be a mapping, not {type(sec_values).__name__}",
                                  file=where, field=section, fix=f"write `{section}:` followed by key: value lines")
            for k, v in sec_values.items():
                values[section][str(k)] = v
                source[(section, str(k))] = (origin, where)

    for key, value in parse_overrides(sets):
        if "." in key:
            section, k = key.split(".", 1)
        else:
            owners = [s for s in SECTIONS if key in known[s]]
            if len(owners) != 1:
                listing = ", ".join(f"{s}.{k}" for s in SECTIONS for k in known[s])
                raise ConfigError(
                    f"--set {key}: " + ("unknown parameter" if not owners else "ambiguous; say which section"),
                    field=key, file="--set", fix=f"known parameters: {listing}",
                )
            section, k = owners[0], key
        if section not in SECTIONS:
            raise ConfigError(f"--set {key}: unknown section {section!r}", field=key, file="--set",
                              fix=f"use {', '.join(SECTIONS)}, e.g. --set model.{k}=... or --set run.{k}=...")
        values[section][k] = value
        source[(section, k)] = ("CLI --set", "--set")

    resolved: dict[str, Any] = {}
    ledger: list[LedgerRow] = []
    for section in SECTIONS:
        schema = schemas[section]
        for k in values[section]:
            if k not in schema.model_fields:
                listing = ", ".join(sorted(known[section])) or "none"
                raise ConfigError(f"unknown {section} parameter {k!r}", field=f"{section}.{k}",
                                  file=source[(section, k)][1], fix=f"known {section} parameters: {listing}")

        def file_of(loc: Sequence[Any], section: str = section) -> str | None:
            return source.get((section, str(loc[0])), ("", None))[1] if loc else None

        what = "run config" if section == "run" else f"model {model_name!r}"
        obj = validate(schema, values[section], what=what, prefix=section, file=file_of)
        resolved[section] = obj.model_dump(mode="python")
        default_label = "default" if section == "run" else f"default ({model_name})"
        # a model's typed config may say where its defaults come from (e.g. the authors' published ones)
        defaults_source = getattr(schema, "defaults_source", None)
        if section != "run" and isinstance(defaults_source, str) and defaults_source:
            default_label = f"default ({model_name}: {defaults_source})"
        for k in sorted(resolved[section]):
            src = source[(section, k)][0] if k in obj.model_fields_set else default_label
            ledger.append(LedgerRow(f"{section}.{k}", resolved[section][k], src))
    return resolved, ledger


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
