"""The optional MLflow observer plugin (plugins/perturbfm-mlflow).

End to end: the plugin is pip-installed with ``--target`` into a private
directory (never into the venv), ``pfm-bench`` runs in a subprocess with that
directory on PYTHONPATH, and the local MLflow file store is read back with
``MlflowClient``. Needs ``mlflow`` (``mlflow-skinny`` is enough): skipped when it
is missing, except under ``CI=true`` where a missing mlflow fails.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "perturbfm-mlflow"
BIN = Path(sys.executable).parent
ARTIFACTS = {"run_status.json", "metrics.json", "calibration.json", "provenance.json", "report.html"}


def _require_mlflow() -> Any:
    try:
        return importlib.import_module("mlflow.tracking")
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mlflow is required under CI (pip install mlflow-skinny): {exc}")
        pytest.skip(f"mlflow not installed ({exc}); pip install mlflow-skinny")


@pytest.fixture(scope="module")
def mlflow_tracking() -> Any:
    return _require_mlflow()


@pytest.fixture(scope="module")
def plugin_target(tmp_path_factory: pytest.TempPathFactory, mlflow_tracking: Any) -> Path:
    """perturbfm-mlflow installed into a private --target directory. Built from a private copy:
    pip builds in-tree (build/, *.egg-info), and xdist workers may install at the same time."""
    target = tmp_path_factory.mktemp("mlflow-plugin")
    src = tmp_path_factory.mktemp("mlflow-plugin-src") / "perturbfm-mlflow"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(src)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return target


def _pfm(args: list[str], *, store: Path, target: Path, env_extra: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PFM_HOME": str(store), "COLUMNS": "200", "PYTHONPATH": str(target), **(env_extra or {})}
    for var in ("PFM_MLFLOW_TRACKING_URI", "PFM_MLFLOW_EXPERIMENT", "MLFLOW_ALLOW_FILE_STORE",
                "MLFLOW_TRACKING_URI"):
        if var not in (env_extra or {}):
            env.pop(var, None)
    proc = subprocess.run([str(BIN / "pfm-bench"), *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"pfm-bench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def split_store(tmp_path_factory: pytest.TempPathFactory, plugin_target: Path) -> tuple[Path, str, str]:
    """A store with a tiny synthetic dataset and a split: (store, dataset hash, split id)."""
    store = tmp_path_factory.mktemp("store")
    ds = _pfm(["data", "import", "--adapter", "synthetic", "--opt", "n_genes=50", "--opt", "n_singles=6",
               "--opt", "n_doubles=3", "--opt", "cells_per_group=15", "--opt", "n_control=40"],
              store=store, target=plugin_target).stdout.strip()
    sp = _pfm(["splits", "create", "--dataset", ds, "--generator", "random-groups", "--test-fraction", "0.3"],
              store=store, target=plugin_target).stdout.strip()
    return store, ds, sp


def _run_dir(proc: subprocess.CompletedProcess[str]) -> Path:
    return Path(proc.stdout.strip().splitlines()[-1])


def test_run_is_logged_to_the_local_mlflow_store(split_store: tuple[Path, str, str], plugin_target: Path,
                                                 mlflow_tracking: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, dataset, split = split_store
    listing = _pfm(["plugins"], store=store, target=plugin_target).stdout
    assert "perturbfm-mlflow" in listing
    run_dir = _run_dir(_pfm(["run", "--model", "train-mean", "--split", split, "--set", "run.seed=5", "--set", "run.panels=[basic]"],
                            store=store, target=plugin_target, env_extra={"PFM_MLFLOW_EXPERIMENT": "pfm-test"}))
    assert run_dir.parent == store / "runs"
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["status"] == "succeeded" and not status.get("observer_errors")
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert "perturbfm-mlflow" in prov["plugins"]

    mlruns = store / "mlruns"  # default: file:<store root>/mlruns
    assert mlruns.is_dir()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow_tracking.MlflowClient(tracking_uri=mlruns.as_uri())
    exp = client.get_experiment_by_name("pfm-test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    params = run.data.params
    assert params["model"] == "train-mean" and params["split"] == split and params["dataset"] == dataset
    assert params["config.run.seed"] == "5"
    assert json.loads(params["config.run.panels"]) == ["basic"]
    tags = run.data.tags
    assert tags["pfm.run_id"] == run_dir.name and tags["pfm.synthetic"] == "true"
    assert tags["pfm.status"] == "succeeded" and "pfm.observer_error" not in tags

    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = {f"{panel}.{key}": entry["global"]
                for panel, section in metrics["panels"].items() for key, entry in section["metrics"].items()
                if isinstance(entry.get("global"), (int, float)) and math.isfinite(entry["global"])}
    assert {"basic.mse", "basic.pcc_delta", "basic.rmse_average", "basic.mse_top100_deg"} <= set(expected)
    assert run.data.metrics == pytest.approx(expected)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert ARTIFACTS <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(run_dir.parent.parent / "dl")))
    assert json.loads(local.read_text()) == metrics


def test_a_broken_tracking_store_never_breaks_the_run(split_store: tuple[Path, str, str], plugin_target: Path,
                                                      tmp_path: Path) -> None:
    store, _, split = split_store
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the MLflow store's parent directory should be")
    proc = _pfm(["run", "--model", "train-mean", "--split", split, "--set", "run.seed=6", "--set", "run.panels=[basic]"], store=store,
                target=plugin_target, env_extra={"PFM_MLFLOW_TRACKING_URI": (blocker / "mlruns").as_uri()})
    run_dir = _run_dir(proc)
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["status"] == "succeeded"
    assert (run_dir / "metrics.json").exists() and (run_dir / "report.html").exists()
    assert "perturbfm-mlflow: pfm_run_started failed" in proc.stderr
    assert "(the PerturbFM run is not affected)" in proc.stderr


# -- in-process: failed runs, not-applicable and non-finite metrics ---------------------------------------


@pytest.fixture
def plugin_module(mlflow_tracking: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    for var in ("PFM_MLFLOW_TRACKING_URI", "PFM_MLFLOW_EXPERIMENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return importlib.import_module("perturbfm_mlflow.plugin")


def test_helpers_without_a_store(plugin_module: Any, tmp_path: Path) -> None:
    p = plugin_module
    run_dir = tmp_path / "root" / "runs" / "r1"
    assert p.tracking_uri(run_dir) == (tmp_path / "root" / "mlruns").resolve().as_uri()
    assert p.experiment_name() == "perturbfm"
    assert p.flatten({"run": {"seed": 1, "panels": ["basic"], "x": None}, "model": {}}) == {
        "run.seed": "1", "run.panels": '["basic"]', "run.x": "null", "model": "{}"}
    values, na = p.metric_values({"panels": {"pan": {"metrics": {
        "ok": {"global": 0.5}, "nan": {"global": float("nan")}, "inf": {"global": float("inf")},
        "flag": {"global": True}, "na": {"not_applicable": "no variance predicted"}, "weird key!": {"global": 2}}}}})
    assert values == {"pan.ok": 0.5, "pan.weird key_": 2.0}
    assert na == {"pan.na": "no variance predicted"}
    assert p.is_file_store("file:///x/mlruns") and p.is_file_store("/x/mlruns") and p.is_file_store("C:\\x")
    assert not p.is_file_store("http://localhost:5000") and not p.is_file_store("sqlite:///m.db")


def test_failed_run_is_marked_failed_with_not_applicable_tags(plugin_module: Any, mlflow_tracking: Any,
                                                              tmp_path: Path) -> None:
    run_dir = tmp_path / "root" / "runs" / "r-failed"
    run_dir.mkdir(parents=True)
    (run_dir / "provenance.json").write_text(json.dumps({"dataset": {"hash": "d" * 64}}))
    (run_dir / "run_status.json").write_text(json.dumps({"status": "failed"}))
    (run_dir / "metrics.json").write_text(json.dumps({"panels": {"cal": {"metrics": {
        "coverage": {"not_applicable": "model predicts no variance"}, "mse": {"global": 1.5}}}}}))
    info = {"run_id": "r-failed", "model": "m", "split": "s", "config": {"run": {"seed": 0}}, "synthetic": False}
    plugin_module.pfm_run_started(str(run_dir), info)
    plugin_module.pfm_run_finished(str(run_dir), info, "failed")
    client = mlflow_tracking.MlflowClient(tracking_uri=(tmp_path / "root" / "mlruns").as_uri())
    exp = client.get_experiment_by_name("perturbfm")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED" and run.info.run_name == "r-failed"
    assert run.data.params["dataset"] == "d" * 64 and run.data.tags["pfm.synthetic"] == "false"
    assert run.data.metrics == {"cal.mse": 1.5}
    assert run.data.tags["pfm.not_applicable.cal.coverage"] == "model predicts no variance"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"provenance.json", "run_status.json",
                                                                        "metrics.json"}
