"""Run reports rebuilt from metrics/provenance/calibration alone, and checked in
headless Chromium when it is installed (required under CI=true)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from perturbfm.report import render_run_report_from_dir, verification_state

CALIBRATION = {
    "gaussian": {"coverage": {"50": 0.47, "80": 0.76, "95": 0.93},
                 "reliability": [[0.5, 0.47], [0.8, 0.76], [0.95, 0.93]]},
    "conformal": {"not_applicable": "no calibration split"},
    "nll": 1.23,
    "risk_coverage": [[0.2, 0.01], [0.5, 0.02], [1.0, 0.04]],
    "aurc": 0.021,
    "ood_auroc": {"not_applicable": "no OOD labels in this split"},
}


def _run_dir(tmp: Path, *, synthetic: bool, verification: object | None, calibration: bool, gates: bool) -> Path:
    d = tmp / "20260101-000000_abcdef1_cgio_1234abc"
    d.mkdir(parents=True)
    groups = ["A@ctx0", "B@ctx0", "C@ctx1"]
    entry = {"definition": "r", "variant": "", "higher_is_better": True, "global": 0.5,
             "per_context": {"ctx0": 0.4, "ctx1": 0.7}, "per_group": dict(zip(groups, [0.3, 0.5, 0.7]))}
    metrics = {
        "run_id": d.name, "synthetic": synthetic, "model": "cgio", "split": "f" * 64, "n_groups": 3,
        "n_true_cells": 30, "panels": {"basic": {"metrics": {"pcc_delta": entry,
                                                             "nll": {"definition": "x", "not_applicable": "point model"}}},
                                       "extra": {"metrics": {"mse": {**entry, "higher_is_better": False}}}},
        "groups": [{"group_id": g, "context": g[-4:], "n_true_cells": 10} for g in groups],
        "model_notes": {"C@ctx1": "unseen context"}, "model_info": {}, "conventions": {"aggregation": "x"},
        "model_diagnostics": {"gates": {"ctx0": {"go": 0.8, "coexpr": 0.3}, "ctx1": {"go": 0.2, "coexpr": 0.9}}}
        if gates else {},
    }
    ds = {"hash": "e" * 64, "source": {"path": "/x.h5ad"}, "licence": "CC0", "citation": "Someone 2020",
          "expression_space": "log1p"}
    if verification is not None:
        ds["verification"] = verification
    prov = {"dataset": ds, "split": {"id": "f" * 64, "generator": "explicit", "params": {}, "seed": 0,
                                     "counts": {"train": 5, "test": 3}},
            "model": {"distribution": "perturbfm-models", "version": "0.1.0"}, "config_hash": "c" * 64, "git": {}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "provenance.json").write_text(json.dumps(prov))
    if calibration:
        (d / "calibration.json").write_text(json.dumps(CALIBRATION))
    return d


def test_report_from_dir_has_panels_calibration_gates_and_banners(tmp_path: Path) -> None:
    d = _run_dir(tmp_path, synthetic=True, verification=None, calibration=True, gates=True)
    html = render_run_report_from_dir(d).read_text()
    assert "SYNTHETIC DATA" in html
    assert "UNVERIFIED DATA: no verification was recorded (missing field)" in html
    for needle in ("pcc_delta", "context ctx1", "n/a: point model", "extra", "Calibration", "50% -&gt; 0.470",
                   "n/a: no calibration split", "no OOD labels", "aurc", "Graph reliance (CGIO gates)", "coexpr"):
        assert needle in html, needle
    assert html.count("<img") >= 4  # per-group, gates heatmap, risk-coverage, reliability
    assert not (d / "predictions.h5ad").exists()


def test_report_without_calibration_or_gates_and_verified_data(tmp_path: Path) -> None:
    d = _run_dir(tmp_path, synthetic=False, verification={"status": "verified", "sha256": "ab"}, calibration=False,
                 gates=False)
    html = render_run_report_from_dir(d).read_text()
    assert "class='banner'" not in html
    assert "Calibration" not in html and "Graph reliance" not in html
    (d / "calibration.json").write_text(json.dumps({"nll": 2.0}))  # partial file: tolerated
    html = render_run_report_from_dir(d).read_text()
    assert "Calibration" in html and "not recorded" in html


def test_verification_state() -> None:
    assert verification_state({"status": "verified"})[0]
    assert verification_state("verified against registry sha256")[0]
    assert not verification_state({"status": "unverified"})[0]
    assert not verification_state(None, known=False)[0]


def _flags(tmp: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}"]


def test_report_renders_in_headless_chromium(tmp_path: Path, chromium: str) -> None:
    d = _run_dir(tmp_path, synthetic=True, verification=None, calibration=True, gates=True)
    report = render_run_report_from_dir(d)
    dom = subprocess.run([chromium, *_flags(tmp_path), "--dump-dom", report.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table") >= 5 and dom.stdout.count("<img") >= 4
    assert "data:image/png;base64," in dom.stdout and "UNVERIFIED DATA" in dom.stdout
    shot = tmp_path / "report.png"
    proc = subprocess.run([chromium, *_flags(tmp_path), f"--screenshot={shot}", "--window-size=1200,2400",
                           report.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    keep = os.environ.get("PFM_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
