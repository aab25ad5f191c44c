"""`pfm-bench` end to end: import -> split -> run -> run directory, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pfm_cli import pfm

DOUBLES_WITH_SINGLES = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]


def _synthetic_split(store: Path) -> tuple[str, str]:
    ds = pfm(["data", "import", "--adapter", "synthetic", "--opt", "n_genes=80", "--opt", "n_singles=8",
              "--opt", "n_doubles=4", "--opt", "cells_per_group=20", "--opt", "n_control=60"], store=store)
    dataset = ds.stdout.strip()
    sp = pfm(["splits", "create", "--dataset", dataset, "--generator", "random-groups", "--test-fraction", "0.3",
              "--seed", "1"], store=store)
    return dataset, sp.stdout.strip()


def test_synthetic_run_writes_a_complete_run_directory(tmp_path: Path) -> None:
    store = tmp_path / "store"
    dataset, split = _synthetic_split(store)
    assert len(dataset) == 64 and len(split) == 64
    again = pfm(["splits", "create", "--dataset", dataset[:10], "--generator", "random-groups", "--test-fraction",
                 "0.3", "--seed", "1"], store=store)
    assert again.stdout.strip() == split and "exists" in again.stderr
    res = pfm(["run", "--model", "additive", "--split", split[:9], "--set", "run.seed=3"], store=store)
    run_dir = Path(res.stdout.strip().splitlines()[-1])
    assert run_dir.parent == store / "runs"
    stamp, split7, model, cfg7 = run_dir.name.split("_")
    assert len(stamp) == 15 and split7 == split[:7] and model == "additive" and len(cfg7) == 7
    for name in ("config.resolved.yaml", "parameters.csv", "predictions.h5ad", "metrics.json",
                 "run_status.json", "report.html", "provenance.json"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["synthetic"] is True and "SYNTHETIC" in metrics["synthetic_note"]
    basic = metrics["panels"]["basic"]["metrics"]
    assert set(basic) == {"mse", "mse_top100_deg", "pcc_delta", "rmse_average"}
    for entry in basic.values():
        assert {"global", "per_context", "per_group", "definition"} <= set(entry)
    # no run.panels given: every installed standard panel, each metric with its references
    from perturbfm.plugins import get_registry

    reg = get_registry()
    standard = {n for n in reg.names("metric_panel") if getattr(reg.get("metric_panel", n).cls, "standard", False)}
    assert set(metrics["panels"]) == standard >= {"basic", "scperturbench", "perturbench", "vcc"}
    assert metrics["panel_selection"]["selection"].startswith("standard")
    assert metrics["references"]["replicate_seeds"] == 5
    for panel in metrics["panels"].values():
        for key, entry in panel["metrics"].items():
            if "not_applicable" in entry:
                continue
            assert {"baseline", "replicate", "calibrated", "train_mean"} <= set(entry), key
            if entry.get("delta_based"):
                assert "indep_ctrl" in entry, key
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["status"] == "succeeded"
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["dataset"]["hash"] == dataset and prov["split"]["id"] == split
    assert {"perturbfm-core", "perturbfm-models", "perturbfm-metrics"} <= set(prov["plugins"])
    assert "run.seed,3,CLI --set" in (run_dir / "parameters.csv").read_text()
    report = (run_dir / "report.html").read_text()
    assert "SYNTHETIC DATA" in report and "pcc_delta" in report and "<img" in report
    assert "calibrated" in report and "replicate" in report
    listing = pfm(["splits", "list"], store=store).stdout
    assert split[:12] in listing
    shown = json.loads(pfm(["splits", "show", split], store=store).stdout)
    assert shown["id"] == split and shown["dataset"] == dataset


def test_unknown_split_is_refused_without_a_run(tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = pfm(["run", "--model", "additive", "--split", "abcdef12"], store=store, check=False)
    assert res.returncode == 2
    assert "unknown split" in res.stderr and "Traceback" not in res.stderr
    assert not (store / "runs").exists()


def test_tampered_split_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _, split = _synthetic_split(store)
    path = store / "splits" / f"{split}.json"
    path.write_text(path.read_text().replace('"test"', '"train"', 1))
    res = pfm(["run", "--model", "additive", "--split", split], store=store, check=False)
    assert res.returncode == 2 and "does not match its hash" in res.stderr


def test_bad_set_is_a_short_error(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _, split = _synthetic_split(store)
    res = pfm(["run", "--model", "linear", "--split", split, "--set", "model.ridge_lamda=1"], store=store,
              check=False)
    assert res.returncode == 2 and "unknown model parameter 'ridge_lamda'" in res.stderr
    assert "ridge_lambda" in res.stderr and "Traceback" not in res.stderr


def test_malformed_import_names_file_field_and_fix(tmp_path: Path) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd

    path = tmp_path / "bad.h5ad"
    ad.AnnData(np.ones((4, 3)), obs=pd.DataFrame({"cond": ["a", "b", "control", "a"]},
                                                  index=[f"c{i}" for i in range(4)])).write_h5ad(path)
    res = pfm(["data", "import", str(path), "--perturbation-key", "perturbation"], store=tmp_path / "s", check=False)
    assert res.returncode == 2
    assert str(path) in res.stderr.replace("\n", "") and "perturbation" in res.stderr and "fix:" in res.stderr
    assert not (tmp_path / "s" / "datasets").exists() or not any((tmp_path / "s" / "datasets").iterdir())


def test_devel_additive_doubles_pearson_delta(tmp_path: Path, shared_data: Path) -> None:
    """Whole path check: import -> explicit split -> additive -> pcc_delta 0.870 ± 0.01."""
    store = tmp_path / "store"
    dataset = pfm(["data", "import", str(shared_data / "perturbench_devel" / "norman19_mcfaline23_devel.h5ad"),
                   "--perturbation-key", "condition", "--control", "control", "--context-key", "cell_type"],
                  store=store).stdout.strip()
    test = ",".join(f"{d}@k562" for d in DOUBLES_WITH_SINGLES)
    split = pfm(["splits", "create", "--dataset", dataset, "--generator", "explicit", "--test", test],
                store=store).stdout.strip()
    run_dir = Path(pfm(["run", "--model", "additive", "--split", split, "--set", "run.panels=[basic]"], store=store).stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pcc = metrics["panels"]["basic"]["metrics"]["pcc_delta"]
    assert set(pcc["per_group"]) == {f"{d}@k562" for d in DOUBLES_WITH_SINGLES}
    assert pcc["per_context"]["k562"] == pytest.approx(0.870, abs=0.01)
    assert metrics["synthetic"] is False
