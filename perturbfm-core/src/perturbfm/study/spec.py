"""The study file: parsing, ``${VAR}`` expansion and validation.

A study YAML holds ``name``, ``datasets``, ``splits``, ``models``, ``seeds``,
``panels``, optional ``run`` (extra run parameters such as ``max_cells``) and
optional ``claims``; its structure is :class:`StudyFile` (typed, unknown keys
refused). Relative paths are relative to the study file's folder. Paths may use ``${PFM_SHARED_DATA}`` (default: the
``shared/data`` folder beside the repository) and any other environment
variable (``${VAR:-default}`` gives a default).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from perturbfm.errors import ConfigError
from perturbfm.options import ConfigModel, Int, Name, Names, Text, read_yaml_mapping, validate

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


def _study_name(value: Any) -> Any:
    if not isinstance(value, str) or not _NAME.match(value):
        raise PydanticCustomError("config_value", "must be letters, digits, . _ - (starting with a letter or "
                                  "digit), got {got}", {"got": repr(value)})
    return value


def _mapping_or_empty(value: Any) -> Any:
    return {} if value is None else value


StudyName = Annotated[str, BeforeValidator(_study_name)]
Section = BeforeValidator(_mapping_or_empty)


class DatasetEntry(ConfigModel):
    """``datasets.<name>``: an adapter, an optional source path and adapter options."""

    adapter: Name = Field(description="dataset adapter plugin (see `pfm-bench plugins`)")
    path: Text | None = Field(None, description="source file; a relative path is relative to the study file")
    options: Annotated[dict[str, Any], Section] = Field(default_factory=dict, description="adapter options")


class SplitEntry(ConfigModel):
    """``splits.<name>``: generated (dataset + generator + params + seed) or stored (id)."""

    dataset: Name | None = Field(None, description="name of a dataset of this study")
    generator: Name | None = Field(None, description="split generator plugin (see `pfm-bench plugins`)")
    params: Annotated[dict[str, Any], Section] = Field(default_factory=dict, description="generator parameters")
    seed: Int = Field(0, ge=0, description="seed of the generator")
    id: Name | None = Field(None, description="id (or unique prefix) of a stored split, instead of a generator")


class VariantEntry(ConfigModel):
    """One model variant: ``{model: NAME, label: LABEL, set: {...}}``."""

    model: Name = Field(description="model plugin")
    name: Name | None = Field(None, description="same as model")
    label: StudyName | None = Field(None, description="unique label of the variant (default: the model name)")
    set: Annotated[dict[str, Any], Section] = Field(default_factory=dict, description="model parameters")


class StudyFile(ConfigModel):
    """The top level of a study file (the structure; cross-references are checked after)."""

    name: StudyName = Field(description="the study's name (its folder under <store>/studies)")
    description: Text = Field("", description="free text")
    datasets: Annotated[dict[Name, DatasetEntry], Section] = Field(default_factory=dict, description="datasets")
    splits: Annotated[dict[Name, SplitEntry], Section] = Field(default_factory=dict, description="splits")
    models: list[Any] = Field(description="model variants")
    seeds: list[Int] = Field([0], min_length=1, description="run seeds (each cell is run once per seed)")
    panels: Names = Field(["basic"], min_length=1, description="metric panels of every run")
    run: Annotated[dict[str, Any], Section] = Field(default_factory=dict, description="extra run parameters")
    claims: Annotated[list[Any], BeforeValidator(lambda v: [] if v is None else v)] = Field(
        default_factory=list, description="claims checked on the results")
    requires: dict[str, Any] | None = Field(None, description="distribution -> version specifier")


def _variants(entries: Any, path: Path) -> list[Variant]:
    _need(isinstance(entries, list) and bool(entries), "models must be a non-empty list", path, "models",
          "write e.g. `models: [{model: MODEL_A}, {model: MODEL_B, label: b_strong, set: {PARAM: 1.0}}]` "
          "with installed model names (`pfm-bench plugins`)")
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
            unknown = sorted(set(entry) - {"name", "model", "variants"})
            _need(not unknown, f"models[{i}]: unknown keys {unknown}", path, f"models[{i}]",
                  "a variants entry holds name and variants only")
            variants = entry["variants"] or [{}]
            _need(isinstance(variants, list), f"models[{i}].variants must be a list", path, f"models[{i}].variants",
                  "write `variants: [{label: a}, {label: b, set: {...}}]`")
            for j, v in enumerate(variants):
                _need(v is None or isinstance(v, dict), f"models[{i}].variants[{j}] must be a mapping", path,
                      f"models[{i}].variants[{j}]", "write {label: LABEL, set: {...}}")
                out.append(_variant({"model": mname, **(v or {})}, path, f"models[{i}].variants[{j}]"))
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
    v = validate(VariantEntry, entry, what="study", prefix=where, file=str(path))
    return Variant(label=v.label or v.model, model=v.model, set=dict(v.set))


def resolve_path(value: str, base: Path) -> str:
    """``value`` as an absolute path: ``~`` expanded, a relative path taken from ``base``."""
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def parse_study(data: dict[str, Any], path: Path) -> StudySpec:
    """Validate a (variable-expanded) study mapping.

    Relative dataset paths are resolved against the study file's folder, so the
    same study opens the same files whatever the current directory.
    """
    _need(isinstance(data, dict), "a study file must be a mapping", path, "", "see studies/example.yaml")
    unknown = set(data) - TOP_KEYS
    _need(not unknown, f"unknown study keys: {', '.join(sorted(unknown))}", path, ",".join(sorted(unknown)),
          f"use {', '.join(sorted(TOP_KEYS))}")
    top = validate(StudyFile, data, what="study", file=str(path))
    base = path.parent
    datasets = {name: DatasetSpec(name, d.adapter, None if d.path is None else resolve_path(d.path, base),
                                  dict(d.options)) for name, d in top.datasets.items()}
    splits: dict[str, SplitSpec] = {}
    for sname, s in top.splits.items():
        fld = f"splits.{sname}"
        if s.id:
            splits[sname] = SplitSpec(sname, s.dataset, None, {}, s.seed, id=s.id)
            continue
        _need(s.dataset in datasets, f"split {sname!r} names unknown dataset {s.dataset!r}", path,
              f"{fld}.dataset", f"use one of: {', '.join(datasets) or 'none defined'}")
        _need(s.generator is not None, f"split {sname!r} needs a generator", path, f"{fld}.generator",
              "name an installed split generator, e.g. `generator: NAME` (see `pfm-bench plugins`)")
        splits[sname] = SplitSpec(sname, s.dataset, s.generator, dict(s.params), s.seed)
    _need(bool(splits), "a study needs at least one split", path, "splits", "add a `splits:` mapping")
    _need(len(set(top.seeds)) == len(top.seeds), "seeds must not repeat", path, "seeds", "list each seed once")
    run = dict(top.run)
    _need("seed" not in run and "panels" not in run, "run.seed / run.panels come from `seeds` and `panels`", path,
          "run", "remove them from `run:`")
    from perturbfm.config import RunConfig

    validate(RunConfig, run, what="study", prefix="run", file=str(path))
    claims = list(top.claims)
    ids = [str(c.get("id")) for c in claims if isinstance(c, dict) and c.get("id") is not None]
    _need(len(ids) == len(claims) and len(set(ids)) == len(ids) and all(ids), "every claim needs a unique id",
          path, "claims", "give each claim `id: c1`")
    return StudySpec(name=top.name, path=path, datasets=datasets, splits=splits,
                     variants=_variants(data.get("models"), path), seeds=list(top.seeds), panels=list(top.panels),
                     run=run, claims=claims, description=top.description, raw=data,
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
    data = read_yaml_mapping(p, what="study file", fix="a study is a mapping with name, datasets, splits, models, "
                             "seeds and panels; see studies/example.yaml")
    env = dict(os.environ)
    env[SHARED_ENV] = str(default_shared_data(p.parent))
    return parse_study(expand_vars(data, env), p)
