"""Config resolution and the parameter ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from perturbfm.config import ledger_csv, resolve_config
from perturbfm.errors import ConfigError


def test_precedence_and_ledger(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  ridge_lambda: 0.5\n  n_components: 5\nrun:\n  seed: 3\n")
    resolved, ledger = resolve_config({"ridge_lambda": 0.1, "n_components": 10, "emb": None},
                                      config_file=cfg, sets=["model.n_components=7", "seed=4"], model_name="linear")
    assert resolved["model"] == {"ridge_lambda": 0.5, "n_components": 7, "emb": None}
    assert resolved["run"]["seed"] == 4
    src = {r.parameter: r.source for r in ledger}
    assert src["model.ridge_lambda"] == f"config file {cfg}"
    assert src["model.n_components"] == "CLI --set"
    assert src["model.emb"] == "default (linear)"
    assert src["run.seed"] == "CLI --set"
    assert src["run.max_cells"] == "default"
    csv = ledger_csv(ledger)
    assert csv.splitlines()[0] == "parameter,value,source"
    assert len(csv.splitlines()) == len(ledger) + 1


@pytest.mark.parametrize(
    "sets, match",
    [
        (["model.nope=1"], "unknown model parameter"),
        (["nope=1"], "unknown parameter"),
        (["model.n_components=abc"], "must be a number"),
        (["model.n_components=1.5"], "must be an integer"),
        (["novalue"], "is not key=value"),
        (["zzz.seed=1"], "unknown section"),
    ],
)
def test_bad_values_are_refused(sets: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_config({"n_components": 10}, sets=sets)


def test_bad_config_file_names_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("modle:\n  x: 1\n")
    with pytest.raises(ConfigError) as err:
        resolve_config({}, config_file=cfg)
    assert err.value.file == str(cfg) and err.value.field == "modle" and err.value.fix


# ------------------------------------------------------------------ typed sections
def test_typed_model_config_is_used_from_the_defaults_or_explicitly() -> None:
    from perturbfm_models.baselines.linear import LinearConfig, LinearModel

    defaults = LinearModel().default_config()
    resolved, ledger = resolve_config(defaults, sets=["model.ridge_lambda=1", "run.panels=basic, vcc"],
                                      model_name="linear")
    assert resolved["model"] == {"n_components": 10, "ridge_lambda": 1.0, "pert_embedding_file": None}
    assert isinstance(resolved["model"]["ridge_lambda"], float) and resolved["run"]["panels"] == ["basic", "vcc"]
    with pytest.raises(ConfigError, match="greater than or equal to 1") as err:  # the schema's constraint
        resolve_config(dict(defaults), config_model=LinearConfig, sets=["model.n_components=0"], model_name="linear")
    assert err.value.field == "model.n_components" and "K: principal components" in (err.value.fix or "")
    assert {r.parameter: r.source for r in ledger}["model.n_components"] == "default (linear)"


@pytest.mark.parametrize("sets, field, needle", [
    (["run.panels=[[basic]]"], "run.panels", "list of panel names"),
    (["run.panels=[]"], "run.panels", "names no panel"),
    (["run.panels=3"], "run.panels", "list of panel names"),
    (["run.seed=.nan"], "run.seed", "not a finite number"),
    (["run.max_cells=-.inf"], "run.max_cells", "not a finite number"),
    (["run.seed=-1"], "run.seed", "greater than or equal to 0"),
    (["run.seed=true"], "run.seed", "must be a number"),
    (["run.max_cells=0"], "run.max_cells", "greater than 0"),
    (["run.ensemble=0"], "run.ensemble", "greater than or equal to 1"),
    (["run.replicate_seeds=1"], "run.replicate_seeds", "greater than or equal to 2"),
    (["run.ensemble_mode=jackknife"], "run.ensemble_mode", "'seeds' or 'bootstrap'"),
    (["run.conformal=yes please"], "run.conformal", "true or false"),
    (["model.n_components=[red]abc"], "model.n_components", "got '[red]abc'"),
    (["model.n_components=[1, 2]"], "model.n_components", "must be a number"),
])
def test_run_and_model_values_are_refused_with_dotted_field(sets: list[str], field: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")) as err:
        resolve_config({"n_components": 10}, sets=sets)
    assert err.value.field == field and err.value.fix


@pytest.mark.parametrize("content, needle", [
    (b"\x00\x01\x02", "binary"), (b"run:\n  seed: \xff\n", "UTF-8"), (b"- run\n- model\n", "not a list"),
    (b"seed\n", "not a string"), (b"run: [1, 2]\n", "must be a mapping"), (b"run:\n  panels: [[basic]]\n",
                                                                          "list of panel names"),
    (b"run:\n  seed: .nan\n", "finite"), (b"model:\n  nope: 1\n", "unknown model parameter"),
])
def test_bad_config_files_name_the_file_and_a_fix(tmp_path: Path, content: bytes, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as err:
        resolve_config({"n_components": 10}, config_file=cfg)
    assert err.value.file == str(cfg) and err.value.fix


def test_following_the_fix_of_an_unknown_parameter_works() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config({"n_components": 10}, sets=["model.n_component=3"])
    assert "n_components" in (err.value.fix or "")
    resolved, _ = resolve_config({"n_components": 10}, sets=["model.n_components=3"])
    assert resolved["model"]["n_components"] == 3


def test_study_style_file_data_is_attributed_in_the_ledger() -> None:
    resolved, ledger = resolve_config({"n_components": 10}, file_data={"model": {"n_components": 4}},
                                      file_label="study s.yaml", sets=["run.seed=2"])
    src = {r.parameter: r.source for r in ledger}
    assert resolved["model"]["n_components"] == 4 and src["model.n_components"] == "study s.yaml"
    assert src["run.seed"] == "CLI --set" and src["run.panels"] == "default"
