"""The study file: parsing, ``${VAR}`` expansion and validation.

A study YAML holds ``name``, ``datasets``, ``splits``, ``models``, ``seeds``,
``panels``, optional ``run`` (extra run parameters such as ``max_cells``) and
optional ``claims``. Paths may use ``${PFM_SHARED_DATA}`` (default: the
``shared/data`` folder beside the repository) and any other environment
variable (``${VAR:-default}`` gives a default).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perturbfm.errors import ConfigError

SHARED_ENV = "PFM_SHARED_DATA"
TOP_KEYS = {"name", "description", "datasets", "splits", "models", "seeds", "panels", "run", "claims", "requires"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset entry: an adapter, an optional source path and adapter options."""

    name: str
    adapter: str
    path: str | None
    options: dict[str, Any]


@dataclass(frozen=True)
class SplitSpec:
    """A split entry: generated (``dataset`` + ``generator`` + ``params`` + ``seed``)
    or an already stored/imported split (``id``)."""

    name: str
    dataset: str | None
    generator: str | None
    params: dict[str, Any]
    seed: int
    id: str | None = None


@dataclass(frozen=True)
class Variant:
    """One configuration of one model, named by its unique ``label``."""

    label: str
    model: str
    set: dict[str, Any]


@dataclass
class StudySpec:
    """A parsed study file."""

    name: str
    path: Path
    datasets: dict[str, DatasetSpec]
    splits: dict[str, SplitSpec]
    variants: list[Variant]
    seeds: list[int]
    panels: list[str]
    run: dict[str, Any] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    #: distribution -> version specifier the study needs (``requires: {perturbfm-models: ">=0.1"}``)
    requires: dict[str, str] = field(default_factory=dict)


def default_shared_data(start: Path) -> Path:
    """``$PFM_SHARED_DATA``, else ``<repo>/../shared/data`` where ``<repo>`` is the
    first ancestor of ``start`` that has such a sibling folder (else the core's
    source checkout)."""
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env).expanduser().resolve()
    for anc in [start, *start.parents]:
        if (anc.parent / "shared" / "data").is_dir():
            return (anc.parent / "shared" / "data").resolve()
    repo = Path(__file__).resolve().parents[4]
    return (repo.parent / "shared" / "data").resolve()


def expand_vars(obj: Any, env: dict[str, str], where: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``obj``."""
    if isinstance(obj, dict):
        return {k: expand_vars(v, env, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_vars(v, env, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, str):
        return obj

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in env:
            return env[var]
        if default is not None:
            return default
        raise ConfigError(f"study field {where} uses ${{{var}}}, which is not set", field=where,
                          fix=f"export {var}=... or write ${{{var}:-default}}")

    return _VAR.sub(sub, obj)


def _need(cond: bool, msg: str, path: Path, fld: str, fix: str) -> None:
    if not cond:
        raise ConfigError(msg, file=str(path), field=fld, fix=fix)


def _variants(entries: Any, path: Path) -> list[Variant]:
    _need(isinstance(entries, list) and bool(entries), "models must be a non-empty list", path, "models",
          "write e.g. `models: [{model: additive}, {model: linear, label: linear_l1, set: {ridge_lambda: 1.0}}]`")
    out: list[Variant] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"model": entry}
        _need(isinstance(entry, dict), f"models[{i}] must be a name or a mapping", path, f"models[{i}]",
              "give {model: NAME, label: LABEL, set: {...}} or {name: NAME, variants: [...]}")
        if "variants" in entry:
            mname = entry.get("name") or entry.get("model")
            _need(isinstance(mname, str), f"models[{i}] has variants but no name", path, f"models[{i}].name",
                  "add `name: <model>`")
            for j, v in enumerate(entry["variants"] or [{}]):
                v = dict(v or {})
                out.append(_variant({"model": mname, **v}, path, f"models[{i}].variants[{j}]"))
        else:
            if "name" in entry and "model" not in entry:
                entry = {**entry, "model": entry["name"]}
            out.append(_variant(entry, path, f"models[{i}]"))
    labels = [v.label for v in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    _need(not dup, f"model labels must be unique; repeated: {', '.join(dup)}", path, "models",
          "give each variant its own `label`")
    return out


def _variant(entry: dict[str, Any], path: Path, where: str) -> Variant:
    unknown = set(entry) - {"model", "name", "label", "set"}
    _need(not unknown, f"{where}: unknown keys {sorted(unknown)}", path, where, "use model, label, set")
    model = entry.get("model")
    _need(isinstance(model, str) and bool(model), f"{where}: `model` is missing", path, where, "add `model: NAME`")
    label = str(entry.get("label") or model)
    _need(bool(_NAME.match(label)), f"{where}: label {label!r} must be letters, digits, . _ -", path,
          f"{where}.label", "choose a simple label such as linear_l1")
    sets = entry.get("set") or {}
    _need(isinstance(sets, dict), f"{where}.set must be a mapping of model parameters", path, f"{where}.set",
          "write `set: {ridge_lambda: 1.0}`")
    return Variant(label=label, model=str(model), set=dict(sets))


def parse_study(data: dict[str, Any], path: Path) -> StudySpec:
    """Validate a (variable-expanded) study mapping."""
    _need(isinstance(data, dict), "a study file must be a mapping", path, "", "see studies/example.yaml")
    unknown = set(data) - TOP_KEYS
    _need(not unknown, f"unknown study keys: {', '.join(sorted(unknown))}", path, ",".join(sorted(unknown)),
          f"use {', '.join(sorted(TOP_KEYS))}")
    name = str(data.get("name") or "")
    _need(bool(_NAME.match(name)), f"study name {name!r} must be letters, digits, . _ -", path, "name",
          "set `name: my_study`")
    datasets: dict[str, DatasetSpec] = {}
    for dname, d in (data.get("datasets") or {}).items():
        _need(isinstance(d, dict) and "adapter" in d, f"dataset {dname!r} needs an adapter", path,
              f"datasets.{dname}", "write {adapter: synthetic, options: {...}} or {adapter: anndata, path: ...}")
        datasets[str(dname)] = DatasetSpec(str(dname), str(d["adapter"]), d.get("path"), dict(d.get("options") or {}))
    splits: dict[str, SplitSpec] = {}
    for sname, s in (data.get("splits") or {}).items():
        fld = f"splits.{sname}"
        _need(isinstance(s, dict), f"split {sname!r} must be a mapping", path, fld, "see studies/example.yaml")
        if s.get("id"):
            splits[str(sname)] = SplitSpec(str(sname), s.get("dataset"), None, {}, int(s.get("seed", 0)),
                                           id=str(s["id"]))
            continue
        _need(s.get("dataset") in datasets, f"split {sname!r} names unknown dataset {s.get('dataset')!r}", path,
              f"{fld}.dataset", f"use one of: {', '.join(datasets) or 'none defined'}")
        _need(isinstance(s.get("generator"), str), f"split {sname!r} needs a generator", path, f"{fld}.generator",
              "e.g. generator: random-groups")
        splits[str(sname)] = SplitSpec(str(sname), s["dataset"], s["generator"], dict(s.get("params") or {}),
                                       int(s.get("seed", 0)))
    _need(bool(splits), "a study needs at least one split", path, "splits", "add a `splits:` mapping")
    seeds = data.get("seeds", [0])
    _need(isinstance(seeds, list) and seeds and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds),
          "seeds must be a non-empty list of integers", path, "seeds", "write `seeds: [0, 1]`")
    _need(len(set(seeds)) == len(seeds), "seeds must not repeat", path, "seeds", "list each seed once")
    panels = data.get("panels", ["basic"])
    if isinstance(panels, str):
        panels = [p.strip() for p in panels.split(",") if p.strip()]
    _need(isinstance(panels, list) and bool(panels), "panels must be a non-empty list", path, "panels",
          "write `panels: [basic]`")
    run = dict(data.get("run") or {})
    _need("seed" not in run and "panels" not in run, "run.seed / run.panels come from `seeds` and `panels`", path,
          "run", "remove them from `run:`")
    claims = list(data.get("claims") or [])
    ids = [str(c.get("id")) for c in claims if isinstance(c, dict)]
    _need(len(ids) == len(claims) and len(set(ids)) == len(ids) and all(ids), "every claim needs a unique id",
          path, "claims", "give each claim `id: c1`")
    return StudySpec(name=name, path=path, datasets=datasets, splits=splits, variants=_variants(data.get("models"), path),
                     seeds=[int(x) for x in seeds], panels=[str(p) for p in panels], run=run, claims=claims,
                     description=str(data.get("description") or ""), raw=data,
                     requires=_requires(data.get("requires"), path))


def _requires(value: Any, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    _need(isinstance(value, dict) and all(isinstance(k, str) for k in value), "requires must map distribution "
          "names to version specifiers", path, "requires", 'write `requires: {perturbfm-models: ">=0.1"}`')
    return {k: "" if v is None else str(v) for k, v in value.items()}


def load_study(path: str | Path) -> StudySpec:
    """Read, expand and validate a study file."""
    p = Path(path).expanduser().resolve()
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read study file: {exc}", file=str(p), fix="check the path") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"study file is not valid YAML: {exc}", file=str(p), fix="fix the YAML syntax") from exc
    env = dict(os.environ)
    env[SHARED_ENV] = str(default_shared_data(p.parent))
    return parse_study(expand_vars(data, env), p)
