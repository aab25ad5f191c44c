"""The CLI as thin wrappers over the API: --json, runs list/show/report, escaped
markup, full split ids, machine-readable stdout, names in --help, demo defaults."""

from __future__ import annotations

import json

import pytest
from perturbfm.cli import main


@pytest.fixture
def split_id(capsys):
    assert main(["data", "import", "--adapter", "synthetic", "--opt", "seed=0", "--opt", "n_genes=40"]) == 0
    ds = capsys.readouterr().out.strip()
    assert main(["splits", "create", "--dataset", ds, "--generator", "random-groups", "--param",
                 "test_fraction=0.25", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["created"] is True and created["params"] == {"test_fraction": 0.25}
    return created["id"]


def test_splits_list_never_truncates_ids(split_id, capsys):
    assert main(["splits", "list"]) == 0
    out = capsys.readouterr().out
    assert split_id in out and "\u2026" not in out
    assert main(["splits", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [split_id] and rows[0]["test"] > 0


def test_param_shorthand_and_generic_param_agree(split_id, capsys):
    ds = json.loads((main(["data", "list", "--json"]), capsys.readouterr().out)[1])[0]["id"]
    assert main(["splits", "create", "--dataset", ds, "--generator", "random-groups", "--test-fraction", "0.25"]) == 0
    assert capsys.readouterr().out.strip() == split_id
    rc = main(["splits", "create", "--dataset", ds, "--generator", "random-groups", "--test-fraction", "0.25",
               "--param", "test_fraction=0.5"])
    assert rc == 2 and "--param" in capsys.readouterr().err


def test_run_stdout_is_the_path_and_runs_commands(split_id, capsys, tmp_path):
    assert main(["run", "--model", "additive", "--split", split_id, "--set", "run.panels=[basic]", "--quiet"]) == 0
    cap = capsys.readouterr()
    run_dir = cap.out.strip()
    assert "\n" not in run_dir and run_dir.endswith("_additive_" + run_dir.rsplit("_", 1)[1]) and cap.err == ""
    assert main(["run", "--model", "additive", "--split", split_id, "--set", "run.panels=[basic]", "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["status"] == "succeeded" and {r["metric"] for r in res["metrics"]} >= {"mse", "pcc_delta"}
    assert "mse" in cap.err  # the human table went to stderr
    assert main(["runs", "list", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 2 and {r["status"] for r in runs} == {"succeeded"}
    rid = runs[-1]["run_id"]
    assert main(["runs", "show", rid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == "additive" and shown["metrics"][0]["panel"] == "basic"
    report = tmp_path / "pfm-home" / "runs" / rid / "report.html"
    report.unlink()
    assert main(["runs", "report", rid]) == 0
    assert capsys.readouterr().out.strip() == str(report) and report.is_file()
    assert main(["runs", "show", "20990101-000000_abcdef1_x_1234567"]) == 2
    assert "runs list" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["[red]abc", "[bold]x[/bold]", "[link=http://x]y"])
def test_markup_in_user_values_is_shown_as_typed(split_id, capsys, value):
    rc = main(["run", "--model", "linear", "--split", split_id, "--set", f"model.n_components={value}"])
    err = capsys.readouterr().err
    assert rc == 2 and value in err


def test_help_lists_installed_names_from_the_registry(capsys):
    from perturbfm.plugins import get_registry

    reg = get_registry()
    for argv, kind in ((["run", "--help"], "model"), (["splits", "create", "--help"], "split_generator"),
                       (["data", "import", "--help"], "dataset_adapter")):
        assert main(argv) == 0
        out = " ".join(capsys.readouterr().out.split())
        for name in reg.names(kind):
            assert name in out, (argv, name)


def test_demo_reads_its_models_from_the_defaults_file(tmp_path, monkeypatch, capsys):
    from perturbfm.defaults import _load

    override = tmp_path / "defaults.yaml"
    override.write_text("demo: {models: [control-mean], generator_params: {test_fraction: 0.3}}\n")
    monkeypatch.setenv("PFM_DEFAULTS", str(override))
    _load.cache_clear()
    assert main(["demo", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in res["runs"]] == ["control-mean"] and res["synthetic"] is True
    assert main(["splits", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["params"] == '{"test_fraction": 0.3}'
    override.write_text("demo: {models: []}\n")
    _load.cache_clear()
    assert main(["demo"]) == 2
    assert "demo.models" in capsys.readouterr().err
    _load.cache_clear()


def test_core_names_no_first_party_plugin():
    """Plugin names live in defaults.yaml; the core's code names none of them."""
    import pathlib
    import re

    import perturbfm

    root = pathlib.Path(perturbfm.__file__).parent
    names = ["random-groups", "control-mean", "train-mean", "cgio", '"linear"', '"additive"', '"anndata"', "'anndata'"]
    for f in ("cli.py", "api.py", "scoring.py", "defaults.py", "__init__.py", "console.py"):
        text = (root / f).read_text()
        for n in names:
            assert not re.search(re.escape(n), text), (f, n)
