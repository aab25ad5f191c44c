"""The calibration contract end to end through ``pfm-bench run``: ensembles,
Gaussian and conformal intervals, Mondrian calibration, ``calibration.json`` and
the ``uncertainty`` panel, on a small SYNTHETIC dataset (in-process CLI, < 60 s)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from perturbfm.cli import main

LEVELS = ("50", "80", "90", "95")
UNCERTAINTY_KEYS = {"coverage@50", "coverage@80", "coverage@90", "coverage@95", "nll", "aurc", "ood_auroc"}
PANELS = "run.panels=[basic,uncertainty]"


def _cli(store: Path, *args: str) -> int:
    return main(["--store", str(store), *args])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store: a synthetic dataset, a split with a calibration fold and one without."""
    store = tmp_path_factory.mktemp("calib-store")
    cap = _Capture()
    with cap:
        assert _cli(store, "data", "import", "--adapter", "synthetic", "--opt", "n_genes=60", "--opt", "n_singles=10",
                    "--opt", "n_doubles=5", "--opt", "cells_per_group=20", "--opt", "n_control=60") == 0
    ds = cap.last()
    with cap:
        # 45 groups: 14 test, 31 left -> 19 calibration groups (enough for a finite 95% pooled quantile:
        # ceil(20 * 0.95) = 19 <= 19), 12 train
        assert _cli(store, "splits", "create", "--dataset", ds, "--generator", "random-groups",
                    "--test-fraction", "0.3", "--param", "calibration_fraction=0.6") == 0
    cal_split = cap.last()
    with cap:
        assert _cli(store, "splits", "create", "--dataset", ds, "--generator", "random-groups",
                    "--test-fraction", "0.3") == 0
    plain_split = cap.last()
    return {"store": store, "dataset": ds, "cal": cal_split, "plain": plain_split, "runs": {}}


class _Capture:
    """Collect stdout of in-process CLI calls made from a module-scoped fixture (no capsys there)."""

    def __init__(self) -> None:
        import io

        self._io = io
        self.lines: list[str] = []

    def __enter__(self) -> None:
        import contextlib

        self._buf = self._io.StringIO()
        self._cm = contextlib.redirect_stdout(self._buf)
        self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)
        self.lines = [ln.strip() for ln in self._buf.getvalue().splitlines() if ln.strip()]

    def last(self) -> str:
        return self.lines[-1]


def _run(env: dict[str, Any], key: str, *args: str) -> Path:
    """Run once per key (module cache) and return the run directory."""
    if key in env["runs"]:
        return env["runs"][key]
    store: Path = env["store"]
    before = set((store / "runs").iterdir()) if (store / "runs").exists() else set()
    cap = _Capture()
    with cap:
        rc = _cli(store, "run", *args, "--set", "run.panels=[basic,uncertainty]")  # calibration is what is tested
    assert rc == 0, (rc, cap.lines[-20:])
    new = set((store / "runs").iterdir()) - before
    assert len(new) == 1
    run_dir = new.pop()
    env["runs"][key] = run_dir
    return run_dir


def _json(run_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((run_dir / name).read_text())


def _finite_unit(x: Any) -> bool:
    return isinstance(x, float) and math.isfinite(x) and 0.0 <= x <= 1.0


# ------------------------------------------------------------------------------------------- (a)
def test_point_model_without_conformal_says_not_applicable(env: dict[str, Any]) -> None:
    run_dir = _run(env, "train-mean", "--model", "train-mean", "--split", env["cal"])
    cal = _json(run_dir, "calibration.json")
    assert cal["variance_available"] is False
    assert cal["ensemble"] == {"members": 1, "mode": "seeds"}
    assert "no predictive variance" in cal["gaussian"]["not_applicable"]
    assert "not requested" in cal["conformal"]["not_applicable"]
    for key in ("nll", "aurc", "ood_auroc"):
        assert cal[key]["not_applicable"].strip()
    metrics = _json(run_dir, "metrics.json")
    assert _json(run_dir, "run_status.json")["status"] == "succeeded"
    assert metrics["conventions"]["intervals"] == "none (no variance)"
    assert all("global" in e for e in metrics["panels"]["basic"]["metrics"].values())
    # calibration groups were not evaluated (not requested): test groups only
    split = json.loads(next((env["store"] / "splits").glob(f"{env['cal']}*.json")).read_text())
    n_test = sum(1 for r in split["assignments"].values() if r == "test")
    assert metrics["n_groups"] == n_test


# ------------------------------------------------------------------------------------------- (b)
def test_bootstrap_ensemble_gives_variance_and_gaussian_coverage(env: dict[str, Any]) -> None:
    run_dir = _run(env, "linear-ens", "--model", "linear", "--split", env["cal"], "--ensemble", "3",
                   "--set", "run.ensemble_mode=bootstrap", "--set", PANELS)
    cal = _json(run_dir, "calibration.json")
    assert cal["variance_available"] is True
    assert cal["ensemble"] == {"members": 3, "mode": "bootstrap"}
    cov = cal["gaussian"]["coverage"]
    assert set(cov) == set(LEVELS) and all(_finite_unit(cov[lv]) for lv in LEVELS)
    assert [cov[lv] for lv in LEVELS] == sorted(cov[lv] for lv in LEVELS)  # nested intervals
    rel = cal["gaussian"]["reliability"]
    assert len(rel) == 19 and all(_finite_unit(e) for _, e in rel)
    assert "not requested" in cal["conformal"]["not_applicable"]
    assert math.isfinite(cal["nll"]) and math.isfinite(cal["aurc"])
    assert cal["aurc_random_reference"] and cal["risk_coverage"]
    metrics = _json(run_dir, "metrics.json")
    assert metrics["model_info"]["ensemble_members"] == 3
    assert metrics["model_info"]["ensemble_mode"] == "bootstrap"
    assert metrics["conventions"]["intervals"] == "Gaussian from the predicted variance"
    import anndata as ad

    pa = ad.read_h5ad(run_dir / "predictions.h5ad")
    assert not any(k.startswith("conformal_") for k in pa.layers)


# ------------------------------------------------------------------------------------------- (c)
def test_conformal_without_calibration_groups_is_refused_before_a_run_dir(env: dict[str, Any]) -> None:
    store: Path = env["store"]
    before = sorted(p.name for p in (store / "runs").iterdir()) if (store / "runs").exists() else []
    for flag in ("--conformal", "--mondrian"):
        assert _cli(store, "run", "--model", "train-mean", "--split", env["plain"], flag) == 2
    after = sorted(p.name for p in (store / "runs").iterdir()) if (store / "runs").exists() else []
    assert after == before


# ------------------------------------------------------------------------------------------- (d)
def test_conformal_writes_coverage_reliability_and_quantiles(env: dict[str, Any]) -> None:
    run_dir = _run(env, "linear-conf", "--model", "linear", "--split", env["cal"], "--ensemble", "3",
                   "--set", "run.ensemble_mode=bootstrap", "--conformal", "--set", PANELS)
    cal = _json(run_dir, "calibration.json")
    conf = cal["conformal"]
    assert conf["mondrian"] is False
    assert set(conf["coverage"]) == set(LEVELS) and all(_finite_unit(conf["coverage"][lv]) for lv in LEVELS)
    assert [conf["coverage"][lv] for lv in LEVELS] == sorted(conf["coverage"][lv] for lv in LEVELS)
    assert all(conf["coverage_detail"][lv]["extra"]["interval"] == "conformal"
               for lv in LEVELS if "extra" in conf["coverage_detail"][lv])
    assert len(conf["reliability"]) == 19 and all(_finite_unit(e) for _, e in conf["reliability"])
    split = json.loads(next((env["store"] / "splits").glob(f"{env['cal']}*.json")).read_text())
    n_cal = sum(1 for r in split["assignments"].values() if r == "calibration")
    assert conf["n_calibration_groups"] == {"pooled": n_cal}
    mq = conf["median_quantile"]["pooled"]
    assert set(mq) >= set(LEVELS)
    finite = [mq[lv] for lv in LEVELS]
    assert all(math.isfinite(q) and q > 0 for q in finite) and finite == sorted(finite)
    assert conf["levels_with_infinite_intervals"] == {}  # 19 calibration groups suffice for 95%
    assert any("normalised by predicted sigma" in n for n in conf["notes"])
    # the Gaussian block is still there (the variance exists), alongside the conformal one
    assert set(cal["gaussian"]["coverage"]) == set(LEVELS)
    metrics = _json(run_dir, "metrics.json")
    assert metrics["conventions"]["intervals"] == "conformal (see calibration.json)"
    assert metrics["n_groups"] == sum(1 for r in split["assignments"].values() if r == "test")
    unc = metrics["panels"]["uncertainty"]["metrics"]
    assert all(abs(unc[f"coverage@{lv}"]["global"] - conf["coverage"][lv]) < 1e-12 for lv in LEVELS)
    import anndata as ad

    pa = ad.read_h5ad(run_dir / "predictions.h5ad")
    for lv in LEVELS:
        lo, hi = pa.layers[f"conformal_lo_{lv}"], pa.layers[f"conformal_hi_{lv}"]
        assert (lo <= hi).all()


# ------------------------------------------------------------------------------------------- (e)
def test_mondrian_calibrates_per_context_and_names_infinite_levels(env: dict[str, Any]) -> None:
    run_dir = _run(env, "train-mean-mondrian", "--model", "train-mean", "--split", env["cal"], "--mondrian",
                   "--set", PANELS)
    cal = _json(run_dir, "calibration.json")
    conf = cal["conformal"]
    assert conf["mondrian"] is True
    metrics = _json(run_dir, "metrics.json")
    test_ctx = {g["context"] for g in metrics["groups"]}
    n_cal = conf["n_calibration_groups"]
    assert "pooled" in n_cal and sum(v for k, v in n_cal.items() if k != "pooled") <= n_cal["pooled"]
    assert set(n_cal) - {"pooled"} <= test_ctx
    assert all(_finite_unit(conf["coverage"][lv]) for lv in LEVELS)
    assert any("Mondrian" in n for n in conf["notes"])
    assert any("absolute residuals" in n for n in conf["notes"])  # a point model: no variance to normalise by
    # ~6 calibration groups per context cannot give a finite 95% quantile (needs 19)
    assert conf["levels_with_infinite_intervals"]
    # every scope whose calibration set is too small for a level says so, with the finite-sample rule
    for scope, lvls in conf["levels_with_infinite_intervals"].items():
        for lv in lvls:
            need = math.ceil(lv / (100 - lv))
            assert n_cal[scope] < need
            assert any(n.startswith(f"{scope}: level {lv}% needs at least {need} calibration groups") for n in conf["notes"])
            assert conf["median_quantile"][scope][str(lv)] is None  # JSON has no inf: null = infinite
    assert cal["gaussian"]["not_applicable"]
    assert cal["variance_available"] is False


# ------------------------------------------------------------------------------------------- (f)
def test_uncertainty_panel_complete_for_variance_and_not_applicable_for_point(env: dict[str, Any]) -> None:
    var_run = _run(env, "linear-ens", "--model", "linear", "--split", env["cal"], "--ensemble", "3",
                   "--set", "run.ensemble_mode=bootstrap", "--set", PANELS)
    unc = _json(var_run, "metrics.json")["panels"]["uncertainty"]["metrics"]
    assert set(unc) == UNCERTAINTY_KEYS
    for key, e in unc.items():
        if key == "ood_auroc" and "not_applicable" in e:  # only when the evaluated groups are one class
            assert "both classes" in e["not_applicable"] or "OOD labels" in e["not_applicable"]
            continue
        assert "not_applicable" not in e, (key, e)
        assert math.isfinite(e["global"])
    point_run = _run(env, "train-mean-unc", "--model", "train-mean", "--split", env["cal"], "--set", PANELS)
    metrics = _json(point_run, "metrics.json")
    unc = metrics["panels"]["uncertainty"]["metrics"]
    assert set(unc) == UNCERTAINTY_KEYS
    for key, e in unc.items():
        assert "global" not in e
        assert isinstance(e["not_applicable"], str) and e["not_applicable"].strip(), key
        assert e["definition"]
    assert all("global" in e for e in metrics["panels"]["basic"]["metrics"].values())
    assert _json(point_run, "run_status.json")["status"] == "succeeded"
