"""Third-party plugins: a pip-installed model is usable without touching
PerturbFM; a broken plugin is listed with its error and fails only the runs
that need it; an incomplete panel fails the run and writes no metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from pfm_cli import pfm


def _split(store: Path, target: Path) -> str:
    dataset = pfm(["data", "import", "--adapter", "synthetic", "--opt", "n_genes=60", "--opt", "n_singles=6",
                   "--opt", "n_doubles=3", "--opt", "cells_per_group=15", "--opt", "n_control=40"],
                  store=store, pythonpath=target).stdout.strip()
    return pfm(["splits", "create", "--dataset", dataset, "--generator", "context-ood", "--context", "ctx2"],
               store=store, pythonpath=target).stdout.strip()


def test_plugins_lists_distributions_and_errors(tmp_path: Path, plugin_target: Path) -> None:
    out = json.loads(pfm(["plugins", "--json"], store=tmp_path, pythonpath=plugin_target).stdout)
    by_dist = {p["distribution"]: p for p in out["plugins"]}
    assert by_dist["perturbfm-metrics"]["registers"]["metric_panel"][0] == "basic"
    assert "additive" in by_dist["perturbfm-models"]["registers"]["model"]
    assert "anndata" in by_dist["perturbfm-bench-adapters"]["registers"]["dataset_adapter"]
    assert by_dist["pfm-example-model"]["registers"] == {"model": ["example-shrunk-mean"]}
    assert by_dist["pfm-example-model"]["version"] == "0.3.0"
    assert "a_module_that_does_not_exist" in by_dist["pfm-broken-plugin"]["error"]
    table = pfm(["plugins"], store=tmp_path, pythonpath=plugin_target).stdout
    assert "pfm-broken-plugin" in table and "perturbfm-models" in table


def test_third_party_model_runs(tmp_path: Path, plugin_target: Path) -> None:
    store = tmp_path / "store"
    split = _split(store, plugin_target)
    res = pfm(["run", "--model", "example-shrunk-mean", "--split", split, "--set", "model.shrink=0.25", "--set", "run.panels=[basic]"],
              store=store, pythonpath=plugin_target)
    run_dir = Path(res.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "example-shrunk-mean"
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert {k: prov["model"][k] for k in ("name", "distribution", "version")} == {
        "name": "example-shrunk-mean", "distribution": "pfm-example-model", "version": "0.3.0"}
    assert prov["model"]["spec"]["class"] == "pfm_example_model.model.ShrunkMeanModel"
    # the context is unseen (context-ood), so the model must say what it did
    assert all("unseen" in n for n in metrics["model_notes"].values()) and metrics["model_notes"]


def test_incomplete_panel_fails_the_run_without_metrics(tmp_path: Path, plugin_target: Path) -> None:
    store = tmp_path / "store"
    split = _split(store, plugin_target)
    res = pfm(["run", "--model", "train-mean", "--split", split, "--set", "run.panels=[basic,incomplete]"],
              store=store, pythonpath=plugin_target, check=False)
    assert res.returncode == 1
    assert "declared_but_missing" in res.stderr and "metrics.json was NOT written" in res.stderr
    (run_dir,) = (store / "runs").iterdir()
    assert not (run_dir / "metrics.json").exists()
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["status"] == "failed"
    assert ["incomplete", "declared_but_missing", "missing"] in status["missing"]


def test_model_of_a_disabled_plugin_fails_clearly(tmp_path: Path, plugin_target: Path) -> None:
    store = tmp_path / "store"
    split = _split(store, plugin_target)
    res = pfm(["run", "--model", "example-shrunk-mean", "--split", split], store=store, pythonpath=plugin_target,
              check=False, env_extra={"PFM_DISABLE_PLUGINS": "pfm-example-model"})
    assert res.returncode == 2 and "no model named 'example-shrunk-mean'" in res.stderr
    assert "pfm-example-model (disabled" in res.stderr.replace("\n", "")
