"""Typed options: one ``key=value`` parser, one YAML reader, pydantic field types,
validation errors turned into :class:`~perturbfm.errors.ConfigError`, and option
tables generated from the fields.

Every configurable thing (the run section, each model's config, adapter options,
generator parameters, the study file) is a :class:`ConfigModel`: a pydantic model
with ``extra="forbid"``, a ``description`` on every field and constraints
(``ge``/``gt``/``lt``) where they apply. Values arrive from YAML files, from
``--set section.key=value`` / ``--param key=value`` (parsed by
:func:`parse_overrides`, YAML scalars, in one place) or from Python; the field
types below refuse booleans where numbers are meant, ``.nan``/``inf``, strings
where numbers are meant and nested lists where a list of names is meant, and the
error names the dotted field (``run.panels[0]``), the file or option and a fix.

Plugin classes declare their model as the ``config_model`` class attribute
(:func:`config_model_of`); :func:`options_table` renders it for
``pfm-bench plugins --options NAME``.

Length (over 400 lines on purpose): the field types, the parser, the validation-error
translation and the option tables must agree on one vocabulary of types and constraints.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from perturbfm.errors import ConfigError

__all__ = [
    "Bool", "ConfigDefaults", "ConfigModel", "FilePath", "Float", "Int", "Name", "Names", "Text",
    "check_finite", "config_model_of", "defaults_of", "file_fields", "infer_config_model", "options_help",
    "options_table", "parse_key_values", "parse_overrides", "parse_scalar", "read_yaml_mapping",
    "render_options_table", "validate",
]


# --------------------------------------------------------------------------- scalars and overrides
def parse_scalar(text: str) -> Any:
    """A ``key=value`` value as YAML reads a scalar (``3`` -> 3, ``true`` -> True,
    ``[a, b]`` -> list, ``null`` -> None); text that is not valid YAML stays text."""
    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_finite(value: Any, where: str, *, file: str | None = None) -> None:
    """Refuse ``.nan`` / ``.inf`` anywhere inside ``value`` (a config never means them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} is {value!r}, which is not a finite number", file=file, field=where,
                          fix=f"give {where} a finite number (or remove it to keep the default)")
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_finite(v, f"{where}.{k}", file=file)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{where}[{i}]", file=file)


def parse_overrides(items: Iterable[str], *, option: str = "--set",
                    example: str = "model.ridge_lambda=0.5") -> list[tuple[str, Any]]:
    """Parse ``["section.key=value", ...]`` into ``[(key, value), ...]`` in order.

    Values are YAML scalars (:func:`parse_scalar`). Raises :class:`ConfigError`
    naming the option for an item without ``=``, an empty key or a non-finite number.
    """
    out: list[tuple[str, Any]] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{option} {item!r} is not key=value", field=item or option,
                              fix=f"write {option} {example}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"{option} {item!r} has no key before '='", field=option,
                              fix=f"write {option} {example}")
        value = parse_scalar(raw)
        try:
            check_finite(value, key)
        except ConfigError as exc:
            raise ConfigError(f"{option} {item!r}: {exc.message}", field=key, fix=exc.fix) from None
        out.append((key, value))
    return out


def parse_key_values(items: Iterable[str], *, option: str, example: str = "name=value") -> dict[str, Any]:
    """:func:`parse_overrides` as a dict (a later repeat of a key wins)."""
    return dict(parse_overrides(items, option=option, example=example))


def read_yaml_mapping(path: str | Path, *, what: str, fix: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping.

    Refuses, naming the file: an unreadable path or a directory, binary content
    (NUL bytes), text that is not UTF-8, invalid YAML, YAML tags that build
    Python objects, a top level that is not a mapping, and non-finite numbers.
    ``fix`` says what a valid file looks like. An empty file is ``{}``.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory, not a file", file=str(p), fix=f"pass the YAML file; {fix}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", file=str(p),
                          fix="check the path and its permissions") from None
    if b"\x00" in raw:
        raise ConfigError(f"{what} is a binary file, not YAML text", file=str(p), fix=f"pass a YAML text file; {fix}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text (byte {exc.start} is {raw[exc.start:exc.start + 1]!r})",
                          file=str(p), fix="save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = str(exc).replace("\n", " ")
        raise ConfigError(f"{what} is not valid YAML: {detail}", file=str(p), fix="fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = {"list": "a list", "str": "a string", "int": "a number", "float": "a number",
                "bool": "a boolean"}.get(type(data).__name__, type(data).__name__)
        raise ConfigError(f"{what} must hold a mapping (key: value lines) at the top, not {kind}",
                          file=str(p), fix=fix)
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{what}: top-level key {bad[0]!r} is not a name", file=str(p), field=str(bad[0]), fix=fix)
    _check_finite_top(data, p)
    return data


def _check_finite_top(data: Mapping[str, Any], p: Path) -> None:
    for k, v in data.items():
        check_finite(v, str(k), file=str(p))


# --------------------------------------------------------------------------- field types
def _err(kind: str, value: Any) -> PydanticCustomError:
    return PydanticCustomError("config_value", "must be {kind}, got {got}", {"kind": kind, "got": repr(value)})


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err("a number", value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _err("a finite number", value)
        if not value.is_integer():
            raise _err("an integer", value)
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err("a number", value)
    if not math.isfinite(float(value)):
        raise _err("a finite number", value)
    return float(value)


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err("true or false", value)
    return value


def _to_text(value: Any) -> str:
    if not isinstance(value, str):
        raise _err("a string", value)
    return value


def _to_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _err("a non-empty name", value)
    return value.strip()


def _to_names(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, tuple):
        return list(value)
    if not isinstance(value, list):
        raise _err("a list of names like [a, b] (or a comma-separated string)", value)
    return value


#: An integer (an integral float such as ``3.0`` is accepted; booleans and text are not).
Int = Annotated[int, BeforeValidator(_to_int)]
#: A finite number (booleans, text, ``.nan`` and ``inf`` are refused).
Float = Annotated[float, BeforeValidator(_to_float)]
#: ``true`` or ``false`` only.
Bool = Annotated[bool, BeforeValidator(_to_bool)]
#: A string (numbers are not turned into text).
Text = Annotated[str, BeforeValidator(_to_text)]
#: A non-empty name (stripped).
Name = Annotated[str, BeforeValidator(_to_name)]
#: A list of names; a comma-separated string is split.
Names = Annotated[list[Name], BeforeValidator(_to_names)]
#: A file path, or null; resolved against the study file's folder in studies.
FilePath = Annotated[str | None, BeforeValidator(lambda v: v if v is None else _to_text(v))]


def file_field(default: str | None = None, *, description: str) -> Any:
    """A :data:`FilePath` field: marked so that studies resolve and hash it."""
    return Field(default, description=description, json_schema_extra={"file": True})


class ConfigModel(BaseModel):
    """Base of every typed config: unknown keys refused, defaults validated,
    non-finite numbers refused.

    ``coerce_strings``: set True where values may arrive as CLI text
    (``--param test_fraction=0.2``): text given to a field that does not take
    text is read as a YAML scalar first (:func:`parse_scalar`).
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True,
                              validate_assignment=True)
    coerce_strings: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _coerce_cli_text(cls, data: Any) -> Any:
        if not cls.coerce_strings or not isinstance(data, Mapping):
            return data
        out = dict(data)
        for key, value in data.items():
            info = cls.model_fields.get(str(key))
            if info is not None and isinstance(value, str) and not _takes_text(info.annotation):
                out[key] = parse_scalar(value)
        return out


def _takes_text(annotation: Any) -> bool:
    """True when ``annotation`` accepts a string as such (str, a Literal of strings, Optional of those)."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _takes_text(typing.get_args(annotation)[0])
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return any(_takes_text(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


# --------------------------------------------------------------------------- errors
def _is_tag(part: Any) -> bool:
    """pydantic's union/validator tags inside an error location (``function-before[...]``, ``list[str]``)."""
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _path(prefix: str, loc: Sequence[Any]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _field_at(model_cls: type[BaseModel], loc: Sequence[Any]) -> tuple[type[BaseModel], str | None, FieldInfo | None]:
    """The model that holds the last named part of ``loc``, that name and its FieldInfo."""
    current: type[BaseModel] = model_cls
    name: str | None = None
    info: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int):
            continue
        fi = current.model_fields.get(str(part))
        if fi is None:
            if info is not None and (sub := _submodel(info.annotation)) is not None:
                current = sub  # a dict key: keep descending into the value model
                fi = current.model_fields.get(str(part))
                if fi is None:
                    return current, str(part), None
            else:
                return current, str(part), None
        name, info = str(part), fi
        sub = _submodel(fi.annotation)
        if sub is not None:
            current = sub
    return current, name, info


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        sub = _submodel(arg)
        if sub is not None:
            return sub
    return None


def field_type_label(info: FieldInfo) -> str:
    """The type of a field as :func:`type_label` says it, or its ``type_label`` schema extra."""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("type_label"), str):
        return str(extra["type_label"])
    for m in info.metadata:
        fn = getattr(m, "func", None)
        if fn is _to_names:
            return "a list of names"
        if fn is _to_name:
            return "a name"
    return type_label(info.annotation)


def type_label(annotation: Any) -> str:
    """A reader's name for a field type: ``an integer``, ``one of seeds, bootstrap`` ..."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        for m in meta:
            fn = getattr(m, "func", None)
            if fn is _to_names:
                return "a list of names"
            if fn is _to_name:
                return "a name"
        return type_label(base)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [type_label(a) for a in typing.get_args(annotation) if a is not type(None)]
        nullable = type(None) in typing.get_args(annotation)
        return " or ".join(parts) + (" or null" if nullable else "")
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        if not args:
            return "a list"
        item = type_label(args[0])
        return "a list of names" if item in ("a name", "a string") else f"a list of items ({item})"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def constraint_label(info: FieldInfo) -> str:
    """``>= 0, < 1`` from a field's ``ge``/``gt``/``le``/``lt`` constraints."""
    parts = []
    for m in info.metadata:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{op} {v}")
    return ", ".join(parts)


def _default_of(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return PydanticUndefined


def _fix_for(model_cls: type[BaseModel], error: Mapping[str, Any], path: str) -> str:
    holder, name, info = _field_at(model_cls, error["loc"])
    if error["type"] == "extra_forbidden" or info is None:
        known = ", ".join(holder.model_fields) or "none"
        return f"remove {name!r} or use a known key: {known}"
    kind = field_type_label(info)
    cons = constraint_label(info)
    default = _default_of(info)
    fix = f"set {path} to {kind}" + (f" ({cons})" if cons else "")
    if default is not PydanticUndefined:
        fix += f"; default {default!r}"
    if info.description:
        fix += f" — {info.description}"
    return fix


def validation_error(exc: ValidationError, model_cls: type[BaseModel], *, what: str, prefix: str = "",
                     file: str | Callable[[Sequence[Any]], str | None] | None = None) -> ConfigError:
    """Turn a pydantic :class:`ValidationError` into one :class:`ConfigError`.

    Every problem is listed with its dotted field path (``prefix`` + location);
    ``field`` and ``fix`` are those of the first. ``file`` may be a callable mapping
    an error location to the file or option the value came from.
    """
    errors = exc.errors(include_url=False)
    lines: list[str] = []
    first_path, first_fix = "", ""
    first_loc: tuple[int | str, ...] = ()
    for e in errors:
        loc = tuple(p for p in e["loc"] if not _is_tag(p))
        path = _path(prefix, loc)
        if e["type"] == "extra_forbidden":
            msg = f"unknown {(prefix + ' ') if prefix else ''}parameter {str(loc[-1])!r}" if loc else "unknown key"
        elif e["type"] == "config_value":
            msg = f"{path} {e['msg']}"
        elif e["type"] == "missing":
            msg = f"{path} is required"
        else:
            got = e.get("input")
            msg = f"{path}: {e['msg'][0].lower()}{e['msg'][1:]}, got {got!r}"
        lines.append(msg)
        if not first_path:
            first_path, first_loc = path, loc
            first_fix = _fix_for(model_cls, {**e, "loc": loc}, path)
    where = file(first_loc) if callable(file) else file
    head = lines[0] if len(lines) == 1 else f"{len(lines)} problems: " + "; ".join(lines)
    return ConfigError(f"{what}: {head}" if what else head, file=where, field=first_path or None, fix=first_fix)


def validate(model_cls: type[BaseModel], data: Any, *, what: str = "", prefix: str = "",
             file: str | Callable[[Sequence[Any]], str | None] | None = None) -> Any:
    """``model_cls.model_validate(data)``, with errors as :class:`ConfigError`."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, model_cls, what=what, prefix=prefix, file=file) from None


# --------------------------------------------------------------------------- defaults and plugins
class ConfigDefaults(dict[str, Any]):
    """A model's defaults (a plain mapping of parameter -> value) that remembers
    the typed model they came from, so :func:`perturbfm.config.resolve_config`
    can validate against it when only ``default_config()`` is handed over."""

    config_model: type[ConfigModel] | None = None


# a ConfigDefaults dumps as the plain mapping it is
yaml.SafeDumper.add_representer(ConfigDefaults, yaml.representer.SafeRepresenter.represent_dict)
yaml.Dumper.add_representer(ConfigDefaults, yaml.representer.SafeRepresenter.represent_dict)


def defaults_of(model_cls: type[ConfigModel]) -> ConfigDefaults:
    """Every field's default (validated), as a :class:`ConfigDefaults` mapping."""
    out = ConfigDefaults(model_cls().model_dump(mode="python"))
    out.config_model = model_cls
    return out


def config_model_of(obj: Any) -> type[ConfigModel] | None:
    """The typed config of a plugin class or instance: its ``config_model`` (or a
    nested ``Config``) when that is a :class:`pydantic.BaseModel` subclass."""
    for attr in ("config_model", "Config"):
        cand = getattr(obj, attr, None)
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand  # type: ignore[return-value]
    return None


def _inferred_type(default: Any) -> Any:
    if isinstance(default, bool):
        return Bool
    if isinstance(default, int):
        return Int
    if isinstance(default, float):
        return Float
    if isinstance(default, str):
        return Text
    if isinstance(default, (list, tuple)):
        if all(isinstance(v, str) for v in default):
            return Names
        return Annotated[list[Any], BeforeValidator(_to_names)]
    if isinstance(default, dict):
        return dict[str, Any]
    return Any


def infer_config_model(defaults: Mapping[str, Any], name: str = "model") -> type[ConfigModel]:
    """A typed model for a plugin that declares only a defaults dict: each field
    takes the type of its default (an int may stand for a float; ``None`` takes anything)."""
    fields: dict[str, Any] = {}
    for key, default in defaults.items():
        fields[str(key)] = (_inferred_type(default), Field(default=default, description="(no description given)"))
    safe = "".join(c if c.isalnum() else "_" for c in name) or "model"
    return create_model(f"{safe}_config", __base__=ConfigModel, **fields)


def file_fields(model_cls: type[BaseModel]) -> list[str]:
    """Fields marked as file paths (:func:`file_field`)."""
    out = []
    for name, info in model_cls.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("file"):
            out.append(name)
    return out


# --------------------------------------------------------------------------- help from fields
def options_table(model_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """One row per field: ``name``, ``type``, ``default``, ``constraint``, ``description``."""
    rows = []
    for name, info in model_cls.model_fields.items():
        default = _default_of(info)
        rows.append({
            "name": name,
            "type": field_type_label(info),
            "default": None if default is PydanticUndefined else default,
            "required": default is PydanticUndefined,
            "constraint": constraint_label(info),
            "description": info.description or "",
        })
    return rows


def options_help(model_cls: type[BaseModel]) -> dict[str, str]:
    """``{name: help}`` for the ``options`` class attribute older code reads."""
    out = {}
    for r in options_table(model_cls):
        extra = "required" if r["required"] else f"default {r['default']!r}"
        cons = f", {r['constraint']}" if r["constraint"] else ""
        out[r["name"]] = f"{r['description']} ({r['type']}{cons}; {extra})"
    return out


def render_options_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of :func:`options_table` rows (no markup)."""
    cols = ("name", "type", "default", "constraint", "description")
    cells = [[("(required)" if c == "default" and r.get("required") else
               ("" if r[c] is None and c != "default" else
                yaml.safe_dump(r[c], default_flow_style=True).strip().removesuffix("\n...")
                if c == "default" else str(r[c]))) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols[:-1])]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols[:-1], widths)) + "  description"]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row[:-1], widths)) + "  " + row[-1])
    return "\n".join(lines)


def plugin_options(cls: type, kind: str) -> dict[str, Any]:
    """The options of a registered plugin class, from its typed config.

    A model without ``config_model`` is described from its ``default_config()``
    (types inferred from the defaults); an adapter or generator without one from
    its ``options`` help texts (``typed`` is then False).
    """
    model_cls = config_model_of(cls)
    typed = model_cls is not None
    if model_cls is None and kind == "model":
        try:
            defaults = cls().default_config()
        except Exception:  # a plugin's constructor failing is reported, not raised  # noqa: BLE001
            defaults = {}
        model_cls = infer_config_model(defaults, getattr(cls, "name", "model"))
    if model_cls is not None:
        rows = options_table(model_cls)
    else:
        rows = [{"name": k, "type": "", "default": None, "required": False, "constraint": "", "description": str(v)}
                for k, v in dict(getattr(cls, "options", {}) or {}).items()]
    return {"kind": kind, "name": getattr(cls, "name", cls.__name__), "typed": typed,
            "class": f"{cls.__module__}.{cls.__qualname__}", "options": rows}
