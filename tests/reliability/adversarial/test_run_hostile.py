"""Adversarial ``pfm-bench run`` attempts (reliability issue classes 1, 7, 9, 11):
observers that exit or interrupt, panels and models returning junk, a hanging
model under ``run.timeout_s``, two runs started at once, unwritable run roots and
``ulimit -f``, and sampling options that cannot work.

A hostile plugin is put on ``PYTHONPATH`` as a module plus a ``*.dist-info`` with
its entry point (no pip install); ``HOSTILE`` in the environment picks what it
does. Every attempt must end ``ok`` or as a clean error, and every run that got a
directory must leave a ``run_status.json`` (never ``running``) and no
``metrics.json`` when it failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import BIN, Attempt, attempt, check, classify, record

PLUGIN = r'''
import os, sys, time
import numpy as np
from perturbfm import hookimpl
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, Model, NotApplicable, Prediction

MODES = set(os.environ.get("HOSTILE", "").split("+"))


def _mode(prefix):
    for m in MODES:
        if m.startswith(prefix):
            return m[len(prefix):]
    return ""


def _raise(kind):
    if kind == "exit0":
        sys.exit(0)
    if kind == "exit3":
        raise SystemExit(3)
    if kind == "kbi":
        raise KeyboardInterrupt()
    if kind == "runtime":
        raise RuntimeError("observer broke")
    if kind == "baseexc":
        raise BaseException("bare BaseException")


class HostilePanel(MetricPanel):
    name = "hostile"
    description = "returns what HOSTILE says"
    metrics = {"score": MetricSpec(definition="junk on purpose")}

    def compute(self, data):
        ids = data.group_ids
        m = _mode("panel_")
        if m == "list":
            return [1, 2]
        if m == "str":
            return "score"
        if m == "none":
            return None
        if m == "value_str":
            return {"score": "0.5"}
        if m == "pergroup_str":
            return {"score": MetricValue(per_group={g: "abc" for g in ids})}
        if m == "pergroup_none":
            return {"score": MetricValue(per_group={g: None for g in ids})}
        if m == "nan":
            return {"score": MetricValue(per_group={g: float("nan") for g in ids})}
        if m == "missing_group":
            return {"score": MetricValue(per_group={g: 1.0 for g in ids[1:]})}
        if m == "extra_array":
            return {"score": MetricValue(per_group={g: 1.0 for g in ids}, extra={"curve": object()})}
        if m == "exit":
            sys.exit(0)
        if m == "numpy_ok":
            return {"score": MetricValue(per_group={g: np.float32(0.25) for g in ids},
                                         extra={"n": np.int64(3), "curve": np.arange(3.0)})}
        return {"score": MetricValue(per_group={g: 1.0 for g in ids})}


class HostileModel(Model):
    name = "hostile-model"

    def default_config(self):
        return {}

    def fit(self, train, val, config):
        self.genes = train.genes
        if "model_sleep" in MODES:
            time.sleep(600)
        if "model_busy" in MODES:
            while True:
                try:
                    time.sleep(0.05)
                except Exception:  # a model that swallows every Exception still hits the limit
                    pass
        if "model_exit" in MODES:
            sys.exit(0)

    def predict(self, queries):
        n, g = len(queries), len(self.genes)
        ids = [q.group_id for q in queries]
        m = _mode("model_")
        if m == "list":
            return [[0.0] * g for _ in queries]
        if m == "none":
            return None
        if m == "str_delta":
            return Prediction(ids, "not an array")
        if m == "shape":
            return Prediction(ids, np.zeros((n, g + 1)))
        if m == "nan":
            d = np.zeros((n, g)); d[0, 0] = np.nan
            return Prediction(ids, d)
        if m == "ids_int":
            return Prediction(list(range(n)), np.zeros((n, g)))
        if m == "info_object":
            return Prediction(ids, np.zeros((n, g)), info={"x": object()})
        return Prediction(ids, np.zeros((n, g)))

    def diagnostics(self):
        m = _mode("model_")
        if m == "diag_numpy":
            return {"loss": np.float32(0.5), "steps": np.int64(10), "curve": np.linspace(0, 1, 3),
                    "nested": {"best": np.float64(0.1)}}
        if m == "diag_list":
            return [1, 2, 3]
        if m == "diag_object":
            return {"model": object()}
        if m == "diag_nan":
            return {"loss": float("nan")}
        return {}


@hookimpl
def pfm_register_metric_panels():
    return [HostilePanel]


@hookimpl
def pfm_register_models():
    return [HostileModel]


@hookimpl
def pfm_run_started(run_dir, run_info):
    _raise(_mode("started_"))


@hookimpl
def pfm_run_finished(run_dir, run_info, status):
    if "finished_write_metrics" in MODES:
        with open(os.path.join(run_dir, "metrics.json"), "w") as fh:
            fh.write("{}")
    for m in sorted(MODES):
        if m.startswith("finished_") and m != "finished_write_metrics":
            _raise(m[len("finished_"):])
'''


def _install(target: Path) -> None:
    (target / "pfm_hostile_plugin.py").write_text(PLUGIN)
    info = target / "pfm_hostile_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pfm-hostile-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[perturbfm]\nhostile = pfm_hostile_plugin\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    target = root / "plugins"
    target.mkdir()
    _install(target)
    store = root / "store"
    base_env = {"PYTHONPATH": str(target)}
    a = check(attempt("import", 1, ["data", "import", "--adapter", "synthetic", "--opt", "n_genes=24",
                                     "--opt", "n_singles=6", "--opt", "n_doubles=2", "--opt", "cells_per_group=10",
                                     "--opt", "n_control=40"], store=store, expect_error=False, env=base_env))
    ds = _last_id(a.stdout)
    a = check(attempt("split", 1, ["splits", "create", "--dataset", ds, "--generator", "random-groups",
                                   "--test-fraction", "0.4"], store=store, expect_error=False, env=base_env))
    return {"store": store, "split": _last_id(a.stdout), "env": base_env}


def _last_id(stdout: str) -> str:
    """The id a command prints alone on its last line."""
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    assert lines and " " not in lines[-1], stdout
    return lines[-1]


def _runs(store: Path) -> set[Path]:
    runs = store / "runs"
    return set(runs.iterdir()) if runs.is_dir() else set()


def _run(env: dict, case: str, cls: int, mode: str, *, model: str = "train-mean", panels: str = "[basic]",
         expect_error: bool, must_name: tuple[str, ...] = (), extra: tuple[str, ...] = (),
         timeout: float = 120) -> tuple[Attempt, dict | None, Path | None]:
    before = _runs(env["store"])
    a = attempt(case, cls, ["run", "--model", model, "--split", env["split"], "--set", f"run.panels={panels}",
                            *extra], store=env["store"], expect_error=expect_error, must_name=must_name,
                timeout=timeout, env={**env["env"], "HOSTILE": mode})
    new = sorted(_runs(env["store"]) - before)
    if not new:
        return a, None, None
    assert len(new) == 1, new
    status = json.loads((new[0] / "run_status.json").read_text())
    assert status["status"] in ("succeeded", "failed"), status  # never left running
    if status["status"] == "failed":
        assert not (new[0] / "metrics.json").exists()
    return a, status, new[0]


OBSERVER_KINDS = ("exit0", "exit3", "kbi", "runtime", "baseexc")


@pytest.mark.parametrize("hook", ["started", "finished"])
@pytest.mark.parametrize("kind", OBSERVER_KINDS)
def test_observer_that_exits_or_interrupts_does_not_stop_the_run(env: dict, hook: str, kind: str) -> None:
    a, status, run_dir = _run(env, f"observer {hook} {kind}", 1, f"{hook}_{kind}", expect_error=False)
    check(a)
    assert status is not None and status["status"] == "succeeded"
    assert any(f"pfm_run_{hook}" in e for e in status["observer_errors"]), status
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("failure", ["panel_nan", "model_nan", "model_diag_object"])
@pytest.mark.parametrize("then", ["", "+finished_exit0", "+finished_kbi"])
def test_observer_cannot_leave_metrics_in_a_failed_run(env: dict, failure: str, then: str) -> None:
    model = "hostile-model" if failure.startswith("model_") else "train-mean"
    a, status, run_dir = _run(env, f"observer writes metrics.json after {failure}{then}", 1,
                              f"finished_write_metrics+{failure}{then}", model=model, panels="[basic,hostile]",
                              expect_error=True, must_name=("status: failed",))
    check(a)
    assert status is not None and status["status"] == "failed"
    assert not (run_dir / "metrics.json").exists()
    assert "metrics_withdrawn" in status


PANEL_JUNK = {
    "list": ("hostile", "list"),
    "str": ("hostile", "str"),
    "none": ("hostile", "nonetype"),
    "value_str": ("hostile", "score"),
    "pergroup_str": ("hostile", "score"),
    "pergroup_none": ("hostile", "score"),
    "nan": ("hostile", "score", "non-finite"),
    "missing_group": ("hostile", "score"),
    "extra_array": ("hostile", "score", "extra"),
    "exit": ("hostile", "systemexit"),
}


@pytest.mark.parametrize("mode", sorted(PANEL_JUNK))
def test_panel_returning_junk_gives_a_clean_failed_run(env: dict, mode: str) -> None:
    a, status, run_dir = _run(env, f"panel {mode}", 1, f"panel_{mode}", panels="[basic,hostile]",
                              expect_error=True, must_name=PANEL_JUNK[mode])
    check(a)
    assert status is not None and status["status"] == "failed"
    assert "hostile" in json.dumps(status)


def test_panel_numpy_scalars_are_converted(env: dict) -> None:
    a, status, run_dir = _run(env, "panel numpy scalars", 1, "panel_numpy_ok", panels="[basic,hostile]",
                              expect_error=False)
    check(a)
    m = json.loads((run_dir / "metrics.json").read_text())["panels"]["hostile"]["metrics"]["score"]
    assert m["global"] == pytest.approx(0.25) and m["extra"]["curve"] == [0.0, 1.0, 2.0]


MODEL_JUNK = {
    "list": ("hostile-model", "prediction"),
    "none": ("hostile-model", "prediction"),
    "str_delta": ("hostile-model", "mean_delta"),
    "shape": ("mean_delta", "shape"),
    "nan": ("mean_delta", "non-finite"),
    "ids_int": ("hostile-model", "group_ids"),
    "info_object": ("hostile-model", "info"),
    "diag_list": ("hostile-model", "diagnostics"),
    "diag_object": ("hostile-model", "diagnostics"),
    "diag_nan": ("hostile-model", "diagnostics", "loss"),
    "exit": ("hostile-model", "fit", "systemexit"),
}


@pytest.mark.parametrize("mode", sorted(MODEL_JUNK))
def test_model_returning_junk_gives_a_clean_failed_run(env: dict, mode: str) -> None:
    a, status, _ = _run(env, f"model {mode}", 1, f"model_{mode}", model="hostile-model", expect_error=True,
                        must_name=MODEL_JUNK[mode])
    check(a)
    assert status is not None and status["status"] == "failed"


def test_model_numpy_diagnostics_are_converted(env: dict) -> None:
    a, status, run_dir = _run(env, "model numpy diagnostics", 1, "model_diag_numpy", model="hostile-model",
                              expect_error=False)
    check(a)
    diag = json.loads((run_dir / "metrics.json").read_text())["model_diagnostics"]
    assert diag == {"loss": 0.5, "steps": 10, "curve": [0.0, 0.5, 1.0], "nested": {"best": 0.1}}


@pytest.mark.parametrize("mode", ["model_sleep", "model_busy"])
def test_hanging_model_hits_the_timeout(env: dict, mode: str) -> None:
    a, status, _ = _run(env, f"hanging model {mode}", 1, mode, model="hostile-model", expect_error=True,
                        must_name=("run.timeout_s", "timed out"), extra=("--set", "run.timeout_s=2"), timeout=60)
    check(a)
    assert status is not None and status["status"] == "failed" and status.get("timed_out") is True
    # the fix: a limit the model can meet (a well-behaved model under the same limit succeeds)
    check(_run(env, "timeout followed", 1, "", model="hostile-model", expect_error=False,
               extra=("--set", "run.timeout_s=60"))[0])


@pytest.mark.parametrize("value", ["0", "-5", "abc", "true"])
def test_bad_timeout_is_a_config_error(env: dict, value: str) -> None:
    a, status, _ = _run(env, f"timeout_s={value}", 1, "", expect_error=True, must_name=("run.timeout_s",),
                        extra=("--set", f"run.timeout_s={value}"))
    check(a)
    assert status is None  # refused before a run directory exists


@pytest.mark.parametrize("option,value", [("max_cells", "0"), ("max_cells", "-3"), ("seed", "-1")])
def test_sampling_options_are_config_errors_naming_the_option(env: dict, option: str, value: str) -> None:
    a, status, _ = _run(env, f"{option}={value}", 11, "", expect_error=True, must_name=(f"run.{option}", "fix"),
                        extra=("--set", f"run.{option}={value}"))
    check(a)
    assert status is None
    check(_run(env, f"{option} fixed", 11, "", expect_error=False, extra=("--set", f"run.{option}=5"))[0])


@pytest.mark.parametrize("n", [2, 3])
def test_runs_started_together_never_collide(env: dict, n: int) -> None:
    before = _runs(env["store"])
    full_env = {**os.environ, "PFM_HOME": str(env["store"]), "COLUMNS": "200", **env["env"]}
    argv = [str(BIN / "pfm-bench"), "run", "--model", "train-mean", "--split", env["split"], "--set",
            "run.panels=[basic]"]
    procs = [subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        a = Attempt(f"{n} concurrent runs", 7, argv[1:], False, rc=p.returncode, stdout=out, stderr=err)
        a.outcome = classify(a, ())
        record(a)
        check(a)
    new = _runs(env["store"]) - before
    assert len(new) == n
    assert all(json.loads((d / "run_status.json").read_text())["status"] == "succeeded" for d in new)


def _limited(env: dict, case: str, blocks: int) -> Attempt:
    argv = ["run", "--model", "train-mean", "--split", env["split"], "--set", "run.panels=[basic]"]
    cmd = f"ulimit -f {blocks}; exec {BIN / 'pfm-bench'} " + " ".join(argv)
    full_env = {**os.environ, "PFM_HOME": str(env["store"]), "COLUMNS": "200", **env["env"]}
    a = Attempt(case, 9, argv, True)
    proc = subprocess.run(["bash", "-c", cmd], env=full_env, capture_output=True, text=True, timeout=120)
    a.rc, a.stdout, a.stderr = proc.returncode, proc.stdout, proc.stderr
    a.outcome = classify(a, ("ulimit -f", "predictions.h5ad"))
    record(a)
    return a


@pytest.mark.parametrize("blocks", [64, 512])
def test_file_size_limit_is_a_clean_error_and_the_fix_works(env: dict, blocks: int) -> None:
    before = _runs(env["store"])
    check(_limited(env, f"ulimit -f {blocks}", blocks))
    new = sorted(_runs(env["store"]) - before)
    assert len(new) == 1
    status = json.loads((new[0] / "run_status.json").read_text())
    assert status["status"] == "failed" and not (new[0] / "metrics.json").exists()
    check(_run(env, "ulimit fix followed", 9, "", expect_error=False)[0])  # fix: no limit


def test_runs_path_that_is_a_file_is_a_clean_error(env: dict, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(env["store"], store, ignore=shutil.ignore_patterns("runs"))
    (store / "runs").write_text("not a directory")
    a = attempt("runs is a file", 9, ["run", "--model", "train-mean", "--split", env["split"], "--set",
                                      "run.panels=[basic]"], store=store, expect_error=True,
                must_name=(str(store / "runs"), "fix"), env=env["env"])
    check(a)
    (store / "runs").unlink()
    check(attempt("runs is a file: fixed", 9, ["run", "--model", "train-mean", "--split", env["split"], "--set",
                                                "run.panels=[basic]"], store=store, expect_error=False,
                  env=env["env"]))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_run_root_is_a_clean_error_and_the_fix_works(env: dict) -> None:
    runs = env["store"] / "runs"
    runs.mkdir(exist_ok=True)
    runs.chmod(0o555)
    try:
        a = _run(env, "read-only runs dir", 9, "", expect_error=True, must_name=(str(runs), "chmod"))[0]
        check(a)
    finally:
        runs.chmod(0o755)
    check(_run(env, "read-only fixed", 9, "", expect_error=False)[0])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
