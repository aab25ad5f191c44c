"""Planning a study: import datasets, create splits, check plugins and files,
and expand the grid into cells with stable keys.

Nothing stands in for missing data: a dataset file, split, graph/file parameter
or plugin that is not available excludes the entries that need it, with the
reason, in ``plan_filter_report.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perturbfm.config import resolve_config, section_model
from perturbfm.datasets import create_split, import_dataset
from perturbfm.errors import ConfigError, PerturbFMError
from perturbfm.hashing import sha256_file, sha256_json
from perturbfm.options import config_model_of, file_fields
from perturbfm.plugins import PluginRegistry
from perturbfm.store import ArtifactStore
from perturbfm.study.spec import StudySpec, Variant, resolve_path

#: Model parameters that name a file (a graph, an embedding table ...): checked before anything runs.
FILE_PARAM_SUFFIXES = ("_file", "_table", "_path", "edge_list")


@dataclass
class Cell:
    """One run of the grid: a model variant on a split with a seed."""

    key: str
    label: str
    model: str
    split_name: str
    split_id: str
    seed: int
    config: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "model": self.model, "split": self.split_name,
                "split_id": self.split_id, "seed": self.seed}


@dataclass
class Exclusion:
    """A study entry left out of the grid, and why."""

    kind: str
    entry: str
    reason: str
    cells: int


@dataclass
class Plan:
    """The expanded grid and what was excluded."""

    cells: list[Cell] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)
    datasets: dict[str, str] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    variant_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: every input file the plan opens: kind, entry, parameter, absolute path, sha256 (None when missing)
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def hash(self) -> str:
        """sha256 of the planned cells and the input files' paths and contents."""
        return sha256_json({"cells": [c.key for c in self.cells], "datasets": self.datasets, "splits": self.splits,
                            "inputs": self.inputs})


def _input(kind: str, entry: str, param: str, path: str) -> dict[str, Any]:
    p = Path(path)
    return {"kind": kind, "entry": entry, "parameter": param, "path": path,
            "sha256": sha256_file(p) if p.is_file() else None}


def _file_params(config: dict[str, Any], typed: list[str]) -> list[str]:
    """Model parameters naming a file: the typed model's file fields, else by name suffix."""
    return [k for k, v in config.items() if isinstance(v, str) and v
            and (k in typed or any(k.endswith(s) for s in FILE_PARAM_SUFFIXES))]


def _missing_files(config: dict[str, Any], base: Path, typed: Sequence[str] = ()) -> list[str]:
    out = []
    for k in _file_params(config, list(typed)):
        p = Path(resolve_path(config[k], base))
        if not p.is_file():
            out.append(f"model parameter {k} names a file that does not exist: {p}")
    return out


def cell_key(spec: dict[str, Any]) -> str:
    """The stable key of a grid cell: sha256 of its canonical resolved spec (16 hex)."""
    return sha256_json(spec)[:16]


def _variant_config(v: Variant, registry: PluginRegistry, spec: StudySpec) -> dict[str, Any]:
    """The variant's resolved config, validated by the core's resolver against the
    model's typed config; file parameters are made absolute (relative to the study file)."""
    model_cls = registry.get("model", v.model).cls
    defaults = registry.create("model", v.model).default_config()
    schema = section_model(defaults, v.model, config_model_of(model_cls))
    unknown = sorted(set(v.set) - set(schema.model_fields))
    if unknown:
        raise ConfigError(f"model variant {v.label!r}: unknown {v.model} parameters {', '.join(unknown)}",
                          file=str(spec.path), field=f"models.{v.label}.set",
                          fix=f"known {v.model} parameters: {', '.join(sorted(schema.model_fields)) or 'none'}")
    sets = dict(v.set)
    for k in _file_params(sets, file_fields(schema)):
        sets[k] = resolve_path(sets[k], spec.path.parent)
    data = {"run": {"seed": 0, "panels": list(spec.panels), **spec.run}, "model": sets}
    try:
        config, _ = resolve_config(defaults, model_name=v.model, config_model=schema, file_data=data,
                                   file_label=f"study {spec.path}")
    except ConfigError as exc:
        raise ConfigError(f"model variant {v.label!r}: {exc.message}", file=str(spec.path),
                          field=f"models.{v.label}.set.{(exc.field or '').removeprefix('model.')}"
                          if (exc.field or "").startswith("model.") else exc.field, fix=exc.fix) from None
    return config


def build_plan(spec: StudySpec, store: ArtifactStore, registry: PluginRegistry,
               say: Any = lambda _m: None) -> Plan:
    """Resolve every dataset, split and model variant of ``spec`` and expand the grid."""
    plan = Plan()
    n_seeds = len(spec.seeds)
    n_var = len(spec.variants)
    ds_reason: dict[str, str] = {}
    for name, d in spec.datasets.items():
        n_cells = n_var * n_seeds * sum(1 for s in spec.splits.values() if s.dataset == name)
        if d.adapter not in registry.names("dataset_adapter"):
            ds_reason[name] = f"dataset adapter plugin {d.adapter!r} is not installed or failed to load"
        elif d.path is not None and not Path(d.path).exists():
            ds_reason[name] = f"dataset file not found: {d.path}"
        if d.path is not None:
            plan.inputs.append(_input("dataset", name, "path", d.path))
        if name in ds_reason:
            plan.exclusions.append(Exclusion("dataset", name, ds_reason[name], n_cells))
            continue
        say(f"importing dataset {name}")
        stored, _ = import_dataset(store, d.adapter, d.path, dict(d.options), registry=registry)
        plan.datasets[name] = stored.hash
    for name, s in spec.splits.items():
        n_cells = n_var * n_seeds
        reason = None
        if s.id is not None:
            try:
                plan.splits[name] = store.splits.get(s.id).id
            except PerturbFMError as exc:
                reason = f"split id {s.id} is not in the store ({exc.message})"
        elif s.dataset in ds_reason:
            reason = f"its dataset {s.dataset!r} is unavailable: {ds_reason[s.dataset]}"
        elif s.generator not in registry.names("split_generator"):
            reason = f"split generator plugin {s.generator!r} is not installed or failed to load"
        else:
            assert s.dataset is not None  # read_study: a split without an id names one of the study's datasets
            try:
                sid, _, _ = create_split(store, plan.datasets[s.dataset], s.generator, dict(s.params), s.seed,
                                         registry=registry)
                plan.splits[name] = sid
            except PerturbFMError as exc:
                reason = f"the split cannot be generated: {exc.message}"
        if reason:
            plan.exclusions.append(Exclusion("split", name, reason, n_cells))
    for v in spec.variants:
        n_cells = len(plan.splits) * n_seeds
        if v.model not in registry.names("model"):
            try:
                registry.get("model", v.model)
                reason = f"model plugin {v.model!r} is not available"
            except PerturbFMError as exc:
                reason = f"model plugin {v.model!r} is not available: {exc.message}"
            plan.exclusions.append(Exclusion("model", v.label, reason, n_cells))
            continue
        config = _variant_config(v, registry, spec)
        typed = file_fields(section_model(config["model"], v.model, config_model_of(registry.get("model",
                                                                                                   v.model).cls)))
        missing = _missing_files(config["model"], spec.path.parent, typed)
        for k in _file_params(config["model"], typed):
            plan.inputs.append(_input("model", v.label, k, config["model"][k]))
        if missing:
            plan.exclusions.append(Exclusion("model", v.label, "; ".join(missing) + " (graph/file not available)",
                                             n_cells))
            continue
        plan.variant_configs[v.label] = config
    for p in spec.panels:
        if p not in registry.names("metric_panel"):
            raise ConfigError(f"metric panel {p!r} is not registered (registered: "
                              f"{', '.join(registry.names('metric_panel'))})", file=str(spec.path), field="panels",
                              fix="install the plugin that provides it or remove it from `panels`")
    for v in spec.variants:
        if v.label not in plan.variant_configs:
            continue
        base = plan.variant_configs[v.label]
        has_seed = "seed" in base["model"]
        files = {i["parameter"]: i["sha256"] for i in plan.inputs if i["kind"] == "model" and i["entry"] == v.label}
        for sname, sid in plan.splits.items():
            for seed in spec.seeds:
                config = {"run": {**base["run"], "seed": seed},
                          "model": {**base["model"], **({"seed": seed} if has_seed else {})}}
                key = cell_key({"label": v.label, "model": v.model, "split": sid, "config": config,
                                **({"files": files} if files else {})})
                plan.cells.append(Cell(key, v.label, v.model, sname, sid, seed, config))
    return plan


def filter_report_md(spec: StudySpec, plan: Plan) -> str:
    """``plan_filter_report.md``: what was excluded from the grid, and why."""
    lines = [f"# Plan filter report: study `{spec.name}`", "",
             f"Grid: {len(spec.variants)} model variants x {len(spec.splits)} splits x {len(spec.seeds)} seeds "
             f"= {len(spec.variants) * len(spec.splits) * len(spec.seeds)} cells requested; "
             f"{len(plan.cells)} planned.", "",
             "Nothing stands in for missing data: an excluded entry is not run, and no substitute is used.", ""]
    if not plan.exclusions:
        lines.append("No entries were excluded: every dataset file, split, graph/file and plugin was available.")
    else:
        lines += ["| kind | entry | cells excluded | reason |", "|---|---|---|---|"]
        for e in plan.exclusions:
            lines.append(f"| {e.kind} | {e.entry} | {e.cells} | {e.reason.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
