"""Planning a study: import datasets, create splits, check plugins and files,
and expand the grid into cells with stable keys.

Nothing stands in for missing data: a dataset file, split, graph/file parameter
or plugin that is not available excludes the entries that need it, with the
reason, in ``plan_filter_report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perturbfm.config import resolve_config
from perturbfm.datasets import create_split, import_dataset
from perturbfm.errors import ConfigError, PerturbFMError
from perturbfm.hashing import sha256_json
from perturbfm.plugins import PluginRegistry
from perturbfm.store import ArtifactStore
from perturbfm.study.spec import StudySpec, Variant

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


def _missing_files(config: dict[str, Any], base: Path) -> list[str]:
    out = []
    for k, v in config.items():
        if isinstance(v, str) and v and any(k.endswith(s) for s in FILE_PARAM_SUFFIXES):
            p = Path(v) if Path(v).is_absolute() else base / v
            if not p.exists():
                out.append(f"model parameter {k} names a file that does not exist: {p}")
    return out


def cell_key(spec: dict[str, Any]) -> str:
    """The stable key of a grid cell: sha256 of its canonical resolved spec (16 hex)."""
    return sha256_json(spec)[:16]


def _variant_config(v: Variant, registry: PluginRegistry, spec: StudySpec) -> dict[str, Any]:
    defaults = registry.create("model", v.model).default_config()
    unknown = sorted(set(v.set) - set(defaults))
    if unknown:
        raise ConfigError(f"model variant {v.label!r}: unknown {v.model} parameters {', '.join(unknown)}",
                          file=str(spec.path), field=f"models.{v.label}.set",
                          fix=f"known {v.model} parameters: {', '.join(sorted(defaults)) or 'none'}")
    data = {"run": {"seed": 0, "panels": list(spec.panels), **spec.run}, "model": dict(v.set)}
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:  # validate via the core's resolver
        yaml.safe_dump(data, fh)
    try:
        config, _ = resolve_config(defaults, config_file=fh.name, model_name=v.model)
    finally:
        Path(fh.name).unlink()
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
        missing = _missing_files(config["model"], spec.path.parent)
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
        for sname, sid in plan.splits.items():
            for seed in spec.seeds:
                config = {"run": {**base["run"], "seed": seed},
                          "model": {**base["model"], **({"seed": seed} if has_seed else {})}}
                key = cell_key({"label": v.label, "model": v.model, "split": sid, "config": config})
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
