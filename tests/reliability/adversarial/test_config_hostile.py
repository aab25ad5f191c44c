"""Hostile configuration: config files, ``--set`` values, study files and plugin
options (issue 18 classes 4 and 13, issue 19 item 4).

Cases are generated per field type across the run section, every first-party
model's typed config, the split generators and the study file: every bad value
must give a clean error naming the file or option, the dotted field and a fix,
never a traceback or a silent acceptance. CLI attempts run the installed
``pfm-bench`` in a fresh process (see harness.py); the bulk of generated values
goes through the Python API and is recorded with :func:`record_outcome`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import attempt, check, record_outcome
from perturbfm.errors import ConfigError, PerturbFMError

BAD_BY_TYPE: dict[str, list[Any]] = {
    "an integer": ["abc", 1.5, True, [1], {"a": 1}, float("nan"), float("inf"), None],
    "a number": ["abc", True, [0.1], {"a": 1}, float("nan"), float("-inf"), None, "0.1"],
    "true or false": ["yes please", 1, 0, None, [True], "true"],
    "a list of names": [[["a"]], [1], 3, [None], [""], {"a": 1}],
}


# ----------------------------------------------------------------------------- a store with one split
@pytest.fixture(scope="module")
def store_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from perturbfm.datasets import create_split, import_dataset
    from perturbfm.store import ArtifactStore

    root = tmp_path_factory.mktemp("hostile_config") / "store"
    st = ArtifactStore(root)
    opts = {"seed": 0, "n_genes": 20, "n_singles": 5, "n_doubles": 2, "cells_per_group": 6, "n_control": 12,
            "n_contexts": 2}
    ds, _ = import_dataset(st, "synthetic", None, opts)
    sid, _, _ = create_split(st, ds.hash, "random-groups", {"test_fraction": 0.3}, 0)
    return root, sid


def _run(store_split: tuple[Path, str], *extra: str, model: str = "linear") -> list[str]:
    return ["run", "--model", model, "--split", store_split[1], *extra]


# ----------------------------------------------------------------------------- config files (class 13)
CONFIG_FILES: dict[str, bytes] = {
    "binary": b"\x00\x01\x02\x03\xff\xfe",
    "png_header": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "latin1": "model:\n  note: caf\xe9\n".encode("latin-1"),
    "yaml_list": b"- run\n- model\n",
    "yaml_scalar": b"42\n",
    "yaml_string": b"hello\n",
    "unknown_section": b"modle:\n  ridge_lambda: 1\n",
    "unknown_model_key": b"model:\n  ridge_lamda: 1\n",
    "section_is_list": b"model: [1, 2]\n",
    "nested_panels": b"run:\n  panels: [[basic]]\n",
    "nan_value": b"model:\n  ridge_lambda: .nan\n",
    "python_tag": b"model:\n  ridge_lambda: !!python/object/apply:os.getcwd []\n",
    "invalid_yaml": b"model: {ridge_lambda: [\n",
}


#: cases also tried through the CLI in a fresh process (each costs a process start); all go through the API
CLI_CASES = {"binary", "latin1", "yaml_list", "nested_panels", "nan", "no_equals", "split_seed_text"}


def _api(case: str, issue_class: int, fn: Any, *, file: str | None = None, field: str | None = None) -> None:
    """Call ``fn`` (which must raise a ConfigError), record and assert a clean error."""
    try:
        fn()
        outcome = "silent_wrong"
    except ConfigError as exc:
        text = exc.render()
        named = (file is None or exc.file == file) and (field is None or field in text)
        outcome = "clean_error" if named and exc.fix else "unclear_error"
    except Exception as exc:  # noqa: BLE001  (would be a traceback in the CLI)
        outcome = "traceback"
        raise AssertionError(f"{case}: {type(exc).__name__}: {exc}") from exc
    record_outcome(f"api: {case}", issue_class, outcome)
    assert outcome == "clean_error", case


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_bad_config_file_is_a_clean_error(case: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from perturbfm.config import resolve_config
    from perturbfm_models.baselines.linear import LinearModel

    cfg = tmp_path / f"{case}.yaml"
    cfg.write_bytes(CONFIG_FILES[case])
    _api(f"config file {case}", 13, lambda: resolve_config(LinearModel().default_config(), config_file=cfg,
                                                           model_name="linear"), file=str(cfg))
    if case in CLI_CASES:
        store_split = request.getfixturevalue("store_split")
        check(attempt(f"config file {case}", 13, _run(store_split, "--config", str(cfg)), store=store_split[0],
                      expect_error=True, must_name=[cfg.name, "fix"]))


# ----------------------------------------------------------------------------- --set (class 13)
SETS = {
    "nan": ("run.seed=.nan", "run.seed"),
    "inf": ("model.ridge_lambda=.inf", "model.ridge_lambda"),
    "nested_panels": ("run.panels=[[basic]]", "run.panels"),
    "no_equals": ("novalue", "novalue"),
    "bool_for_int": ("model.n_components=true", "model.n_components"),
    "negative_lambda": ("model.ridge_lambda=-1", "model.ridge_lambda"),
    "unknown_section": ("zzz.seed=1", "zzz.seed"),
    "bad_mode": ("run.ensemble_mode=jackknife", "run.ensemble_mode"),
}


@pytest.mark.parametrize("case", sorted(SETS))
def test_bad_set_is_a_clean_error(case: str, request: pytest.FixtureRequest) -> None:
    from perturbfm.config import resolve_config
    from perturbfm_models.baselines.linear import LinearModel

    item, field = SETS[case]
    _api(f"--set {case}", 13, lambda: resolve_config(LinearModel().default_config(), sets=[item],
                                                     model_name="linear"), field=field)
    if case in CLI_CASES:
        store_split = request.getfixturevalue("store_split")
        check(attempt(f"--set {case}", 13, _run(store_split, "--set", item), store=store_split[0],
                      expect_error=True, must_name=["--set", field, "fix"]))


def test_following_the_fix_of_a_set_typo_runs(store_split: tuple[Path, str]) -> None:
    from perturbfm.config import resolve_config
    from perturbfm_models.baselines.linear import LinearModel

    with pytest.raises(ConfigError) as err:
        resolve_config(LinearModel().default_config(), sets=["model.ridge_lamda=0.5"], model_name="linear")
    assert "ridge_lambda" in (err.value.fix or "")
    check(attempt("--set typo, fix followed", 13, _run(store_split, "--set", "model.ridge_lambda=0.5"),
                  store=store_split[0], expect_error=False))


# ----------------------------------------------------------------------------- plugins --options
def test_plugins_options_ambiguous_name_and_its_fix(store_split: tuple[Path, str]) -> None:
    a = check(attempt("--options ambiguous", 13, ["plugins", "--options", "gears"], store=store_split[0],
                      expect_error=True, must_name=["--options", "model:gears", "fix"]))
    assert "dataset_adapter" in a.stdout + a.stderr
    ok = check(attempt("--options ambiguous, fix followed", 13, ["plugins", "--options", "model:gears", "--json"],
                       store=store_split[0], expect_error=False))
    import json

    rows = {r["name"]: r for r in json.loads(ok.stdout)["options"]}
    assert rows["epochs"]["type"] == "an integer" and rows["epochs"]["constraint"] == ">= 1"


# ----------------------------------------------------------------------------- study files (classes 13 and 4)
def _study(tmp: Path, **over: Any) -> dict[str, Any]:
    data = {"name": "hostile", "seeds": [0], "panels": ["basic"],
            "datasets": {"syn": {"adapter": "synthetic", "options": {"n_genes": 20, "n_singles": 4,
                                                                     "n_doubles": 2}}},
            "splits": {"rg": {"dataset": "syn", "generator": "random-groups", "params": {"test_fraction": 0.3}}},
            "models": ["control-mean"]}
    data.update(over)
    return data


STUDIES: dict[str, tuple[bytes | dict[str, Any], str]] = {
    "binary": (b"\x00\x00\x01\x02study", "binary"),
    "latin1": ("name: caf\xe9\n".encode("latin-1"), "UTF-8"),
    "list": (b"- name: x\n", "mapping"),
    "scalar": (b"3\n", "mapping"),
    "unknown_key": ({"modles": ["additive"]}, "modles"),
    "label_spaces": ({"models": [{"model": "additive", "label": "a b"}]}, "models[0].label"),
    "dataset_no_adapter": ({"datasets": {"syn": {"path": "x.h5ad"}}}, "datasets.syn.adapter"),
    "variant_set_list": ({"models": [{"model": "linear", "set": [1]}]}, "models[0].set"),
    "seeds_bool": ({"seeds": [True]}, "seeds[0]"),
    "run_unknown": ({"run": {"max_cell": 3}}, "run.max_cell"),
    "nested_panels": ({"panels": [["basic"]]}, "panels[0]"),
    "seed_text": ({"seeds": ["zero"]}, "seeds[0]"),
    "split_seed_text": ({"splits": {"rg": {"dataset": "syn", "generator": "random-groups", "seed": "x"}}},
                        "splits.rg.seed"),
    "run_nan": ({"run": {"max_cells": float("nan")}}, "run.max_cells"),
}


@pytest.mark.parametrize("case", sorted(STUDIES))
def test_bad_study_file_is_a_clean_error(case: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from perturbfm.study.spec import load_study

    content, field = STUDIES[case]
    p = tmp_path / f"study_{case}.yaml"
    p.write_bytes(content if isinstance(content, bytes) else yaml.safe_dump(_study(tmp_path, **content)).encode())
    _api(f"study file {case}", 13, lambda: load_study(p), file=str(p.resolve()), field=field)
    if case in CLI_CASES:
        store_split = request.getfixturevalue("store_split")
        check(attempt(f"study file {case}", 13, ["study", "run", str(p), "--executor", "serial"],
                      store=store_split[0], expect_error=True, must_name=[p.name, field, "fix"]))


@pytest.mark.parametrize("rel", ["data.h5ad", "./data.h5ad", "sub/../data.h5ad", "../study/data.h5ad"])
def test_study_paths_do_not_depend_on_the_cwd(rel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perturbfm.study.plan import _file_params
    from perturbfm.study.spec import load_study, resolve_path

    study, decoy = tmp_path / "study", tmp_path / "cwd"
    (study / "sub").mkdir(parents=True)
    decoy.mkdir()
    p = study / "s.yaml"
    data = _study(tmp_path, models=[{"model": "linear", "set": {"pert_embedding_file": rel}}])
    data["datasets"]["real"] = {"adapter": "anndata", "path": rel}
    p.write_text(yaml.safe_dump(data))
    seen = set()
    for cwd in (decoy, study, tmp_path):
        monkeypatch.chdir(cwd)
        spec = load_study(p)
        emb = spec.variants[0].set["pert_embedding_file"]
        assert _file_params({"pert_embedding_file": emb}, ["pert_embedding_file"]) == ["pert_embedding_file"]
        seen.add((spec.datasets["real"].path, resolve_path(emb, spec.path.parent)))
    assert seen == {(str(study / "data.h5ad"), str(study / "data.h5ad"))}
    record_outcome(f"study relative path {rel}", 4, "ok", expect_error=False)


# ----------------------------------------------------------------------------- generated values, Python API
def _model_cases() -> list[tuple[str, str, Any, str]]:
    """(model, field, bad value, type) for every typed field of every first-party model."""
    from perturbfm.options import field_type_label
    from perturbfm_models.baselines.additive import AdditiveConfig
    from perturbfm_models.baselines.linear import LinearConfig
    from perturbfm_models.cgio.config import CGIOConfig

    models: list[tuple[str, Any]] = [("linear", LinearConfig), ("additive", AdditiveConfig), ("cgio", CGIOConfig)]
    try:
        from perturbfm_gears.model import GearsConfig

        models.append(("gears", GearsConfig))
    except ImportError:  # the GEARS plugin is optional
        pass
    out = []
    for name, cls in models:
        for field, info in cls.model_fields.items():
            kind = field_type_label(info)
            for bad in BAD_BY_TYPE.get(kind, ["not-a-choice", 3, [1]] if "one of" in kind else []):
                out.append((name, field, bad, kind))
    return out


def test_every_typed_model_field_refuses_bad_values() -> None:
    from perturbfm.config import resolve_config
    from perturbfm.options import config_model_of
    from perturbfm.plugins import get_registry

    reg = get_registry()
    cases = _model_cases()
    assert len(cases) > 150
    for model, field, bad, kind in cases:
        cls = reg.get("model", model).cls
        set_value = yaml.safe_dump(bad, default_flow_style=True).strip().removesuffix("\n...")
        try:
            resolve_config(cls().default_config(), config_model=config_model_of(cls), model_name=model,
                           sets=[f"model.{field}={set_value}"])
            outcome = "silent_wrong"
        except ConfigError as exc:
            named = exc.field in (f"model.{field}", field) or (exc.field or "").startswith(f"model.{field}")
            outcome = "clean_error" if named and exc.fix and "--set" in exc.render() else "unclear_error"
        except Exception as exc:  # noqa: BLE001  (a traceback in the CLI)
            outcome = f"traceback: {type(exc).__name__}: {exc}"
        record_outcome(f"model {model}.{field}={set_value!r} ({kind})", 13, outcome.split(":")[0])
        assert outcome == "clean_error", (model, field, bad, outcome)


def test_every_generator_refuses_bad_parameters() -> None:
    from perturbfm.dataset import GroupInfo
    from perturbfm.options import field_type_label
    from perturbfm.plugins import get_registry

    reg = get_registry()
    groups = {f"G{i}@c{j}": GroupInfo(group_id=f"G{i}@c{j}", perturbation=f"G{i}", context=f"c{j}",
                                      covariates="", n_cells=5) for i in range(6) for j in range(2)}
    n = 0
    for name in reg.names("split_generator"):
        cls = reg.get("split_generator", name).cls
        model = getattr(cls, "config_model", None)
        assert model is not None, f"generator {name} declares no typed parameters"
        for field, info in model.model_fields.items():
            kind = field_type_label(info)
            # CLI text that reads as a valid value ("0.1", "true") is accepted by generators on purpose
            bads = [b for b in BAD_BY_TYPE.get(kind, [[["x"]], {"a": 1}]) if b not in ("0.1", "true")]
            if kind == "a number":
                bads = [*bads, "nan", ".inf", "-1e999"]
            for bad in bads:
                n += 1
                try:
                    cls().generate(groups, {field: bad}, 0)
                    outcome = "silent_wrong"
                except ConfigError as exc:
                    outcome = "clean_error" if field in exc.render() and exc.fix else "unclear_error"
                except PerturbFMError:
                    outcome = "clean_error"
                except Exception as exc:  # noqa: BLE001
                    outcome = f"traceback: {type(exc).__name__}: {exc}"
                record_outcome(f"generator {name}.{field}={bad!r}", 13, outcome.split(":")[0])
                assert outcome == "clean_error", (name, field, bad, outcome)
    assert n > 40

