"""perturbfm.options: the one key=value parser, the YAML reader, typed fields, errors and help tables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from perturbfm.errors import ConfigError
from perturbfm.options import (
    Bool,
    ConfigModel,
    FilePath,
    Float,
    Int,
    Names,
    config_model_of,
    defaults_of,
    file_field,
    file_fields,
    infer_config_model,
    options_help,
    options_table,
    parse_key_values,
    parse_overrides,
    plugin_options,
    read_yaml_mapping,
    render_options_table,
    validate,
)
from pydantic import Field


class Demo(ConfigModel):
    """A config exercising every field type."""

    k: Int = Field(3, ge=1, description="how many")
    lam: Float = Field(0.5, ge=0.0, lt=1.0, description="a fraction")
    on: Bool = Field(False, description="a switch")
    mode: Literal["a", "b"] = Field("a", description="a choice")
    names: Names = Field(["x"], description="some names")
    table: FilePath = file_field(None, description="a file")


class CliDemo(Demo):
    coerce_strings = True


def test_parse_overrides_reads_yaml_scalars_in_order() -> None:
    got = parse_overrides(["a.b=3", "c=true", "d=[x, y]", "e=", "f=null", "g=hello world", "h=a=b", "i=[unclosed"])
    assert got == [("a.b", 3), ("c", True), ("d", ["x", "y"]), ("e", ""), ("f", None), ("g", "hello world"),
                   ("h", "a=b"), ("i", "[unclosed")]
    assert parse_key_values(["x=1", "x=2"], option="--param") == {"x": 2}


@pytest.mark.parametrize("item, needle", [
    ("novalue", "is not key=value"), ("=3", "no key"), ("k=.nan", "not a finite number"),
    ("k=.inf", "not a finite number"), ("k=-.inf", "not a finite number"), ("k=[1, .nan]", "k[1]"),
    ("k={a: .NaN}", "k.a"),
])
def test_parse_overrides_refuses_with_the_option_and_a_fix(item: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")) as err:
        parse_overrides([item], option="--param", example="x=1")
    assert err.value.fix and err.value.field
    assert "--param" in err.value.render()


@pytest.mark.parametrize("content, needle", [
    (b"\x00\x01\x02\x03", "binary"), (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"), (b"run: {seed: \xff}\n", "UTF-8"),
    (b"\xfe\xffrun: 1", "UTF-8"), (b"- a\n- b\n", "not a list"), (b"42\n", "not a number"),
    (b"just text\n", "not a string"), (b"run: [\n", "not valid YAML"), (b"a: !!python/object:os.system x\n",
                                                                        "not valid YAML"),
    (b"a: .nan\n", "not a finite number"), (b"a: {b: [1, -.inf]}\n", "not a finite number"),
    (b"1: x\n", "not a name"),
])
def test_read_yaml_mapping_refuses_naming_the_file(tmp_path: Path, content: bytes, needle: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as err:
        read_yaml_mapping(p, what="config file", fix="write key: value lines")
    assert err.value.file == str(p) and err.value.fix


def test_read_yaml_mapping_directory_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        read_yaml_mapping(tmp_path, what="study file", fix="x")
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml_mapping(tmp_path / "nope.yaml", what="study file", fix="x")
    (tmp_path / "e.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "e.yaml", what="config file", fix="x") == {}


@pytest.mark.parametrize("field, value, needle", [
    ("k", "abc", "must be a number"), ("k", 1.5, "must be an integer"), ("k", True, "must be a number"),
    ("k", 0, "greater than or equal to 1"), ("k", [1], "must be a number"), ("k", float("nan"), "finite"),
    ("lam", "0.2", "must be a number"), ("lam", False, "must be a number"), ("lam", 1.0, "less than 1"),
    ("lam", float("inf"), "finite"), ("lam", None, "must be a number"),
    ("on", "yes", "true or false"), ("on", 1, "true or false"), ("on", None, "true or false"),
    ("mode", "c", "'a' or 'b'"), ("mode", 1, "'a' or 'b'"),
    ("names", [["x"]], "non-empty name"), ("names", [1], "non-empty name"), ("names", 3, "list of names"),
    ("names", [""], "non-empty name"), ("table", 5, "must be a string"), ("extra", 1, "unknown"),
])
def test_field_types_refuse_with_dotted_path_and_fix(field: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        validate(Demo, {field: value}, what="model 'demo'", prefix="model", file="--set")
    e = err.value
    assert e.field and e.field.startswith(f"model.{field}")
    assert e.file == "--set" and e.fix
    if field != "extra":
        assert field in e.fix and "default" in e.fix


def test_every_error_is_listed_and_values_are_normalised() -> None:
    with pytest.raises(ConfigError) as err:
        validate(Demo, {"k": "x", "lam": 2.0})
    assert err.value.message.startswith("2 problems") and err.value.field == "k"
    ok = validate(Demo, {"k": 4.0, "lam": 0, "names": "a, b ,c", "table": "t.tsv"})
    assert ok.k == 4 and isinstance(ok.k, int) and ok.lam == 0.0 and isinstance(ok.lam, float)
    assert ok.names == ["a", "b", "c"] and ok.table == "t.tsv"


def test_cli_text_is_read_as_yaml_scalars_only_where_coerce_strings() -> None:
    got = validate(CliDemo, {"k": "7", "lam": "0.25", "on": "true", "names": "p,q", "mode": "b"})
    assert (got.k, got.lam, got.on, got.names, got.mode) == (7, 0.25, True, ["p", "q"], "b")
    with pytest.raises(ConfigError, match="finite"):
        validate(CliDemo, {"lam": ".nan"})
    with pytest.raises(ConfigError, match="must be a number"):
        validate(CliDemo, {"lam": "nan"})


def test_defaults_table_and_help_come_from_the_fields() -> None:
    d = defaults_of(Demo)
    assert dict(d) == {"k": 3, "lam": 0.5, "on": False, "mode": "a", "names": ["x"], "table": None}
    assert d.config_model is Demo and file_fields(Demo) == ["table"]
    import json

    import yaml

    assert yaml.safe_load(yaml.safe_dump(d)) == dict(d) == json.loads(json.dumps(d))
    rows = {r["name"]: r for r in options_table(Demo)}
    assert rows["k"] == {"name": "k", "type": "an integer", "default": 3, "required": False, "constraint": ">= 1",
                         "description": "how many"}
    assert rows["lam"]["constraint"] == ">= 0.0, < 1.0" and rows["mode"]["type"] == "one of a, b"
    assert rows["names"]["type"] == "a list of names" and rows["table"]["type"] == "a string or null"
    text = render_options_table(options_table(Demo))
    assert text.splitlines()[0].split() == ["name", "type", "default", "constraint", "description"]
    assert "how many" in text and len(text.splitlines()) == 1 + len(Demo.model_fields)
    assert "default 3" in options_help(Demo)["k"]


def test_inferred_models_type_fields_by_their_defaults() -> None:
    m = infer_config_model({"n": 10, "x": 0.1, "flag": True, "s": "a", "l": ["a"], "free": None}, "third/party")
    assert validate(m, {"n": 2.0, "x": 1, "l": "a,b", "free": [1, {"a": 2}]}).model_dump() == {
        "n": 2, "x": 1.0, "flag": True, "s": "a", "l": ["a", "b"], "free": [1, {"a": 2}]}
    for bad in ({"n": 1.5}, {"x": "y"}, {"flag": "no"}, {"s": 3}, {"l": [["a"]]}, {"zz": 1}):
        with pytest.raises(ConfigError):
            validate(m, bad)


def test_plugin_options_for_typed_untyped_and_option_dict_plugins() -> None:
    class Typed:
        name = "typed"
        config_model = Demo

    class Untyped:
        name = "untyped"

        def default_config(self) -> dict[str, object]:
            return {"alpha": 1.0}

    class OldGenerator:
        name = "old"
        options = {"frac": "a fraction"}

    assert config_model_of(Typed) is Demo and config_model_of(Untyped) is None
    t = plugin_options(Typed, "model")
    assert t["typed"] and [r["name"] for r in t["options"]] == list(Demo.model_fields)
    u = plugin_options(Untyped, "model")
    assert not u["typed"] and u["options"][0]["name"] == "alpha" and u["options"][0]["type"] == "a number"
    o = plugin_options(OldGenerator, "split_generator")
    assert o["options"] == [{"name": "frac", "type": "", "default": None, "required": False, "constraint": "",
                             "description": "a fraction"}]
