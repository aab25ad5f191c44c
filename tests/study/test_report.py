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


# --------------------------------------------------------------------------- escaping (jinja2 autoescape)
XSS = "<script>alert('x')</script>\"&"


def _assert_escaped(page: str) -> None:
    assert "<script" not in page.lower(), page[page.lower().find("<script") - 200:][:400]
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&#34;&amp;" in page


def test_run_report_escapes_labels_and_model_sections(tmp_path: Path) -> None:
    from perturbfm.interfaces import ReportSection
    from perturbfm.report import render_run_report, write_run_report

    d = _run_dir(tmp_path, synthetic=True, verification="bad" + XSS, calibration=True, gates=False)
    metrics = json.loads((d / "metrics.json").read_text())
    label = f"{XSS}@ctx0"  # a perturbation label from the data
    metrics["groups"][0]["group_id"] = label
    metrics["model_notes"] = {label: "note " + XSS}
    for panel in metrics["panels"].values():
        for entry in panel["metrics"].values():
            if "per_group" in entry:
                entry["per_group"] = {label if g == "A@ctx0" else g: v for g, v in entry["per_group"].items()}
                entry["per_context"][XSS] = 0.1
    metrics["panels"]["p" + XSS] = {"metrics": {"m" + XSS: {"definition": XSS, "not_applicable": XSS}}}
    metrics["model_info"] = {XSS: XSS}
    metrics["conventions"] = {XSS: XSS}
    metrics["references"] = {"definitions": {XSS: XSS}, "unsplittable_groups": {XSS: XSS}}
    metrics["panel_selection"] = {"selection": "narrower: " + XSS}
    prov = json.loads((d / "provenance.json").read_text())
    prov["dataset"]["citation"] = XSS
    prov["split"]["generator"] = XSS
    sections = [ReportSection(XSS, XSS, ["ctx", XSS], [[XSS, 0.5], ["c1", XSS]], heatmap=True),
                ReportSection(XSS, rows=[1], headers=["a"])]  # a row that is no list: the section says so

    page = write_run_report(d, metrics, prov, sections).read_text()
    _assert_escaped(page)
    assert page.count("<h2>&lt;script&gt;") == 2 and "this section could not be rendered" in page
    assert page.count("class='banner'") == 3 and page.rstrip().endswith("</html>")
    # the markup itself is intact: the same tables as for benign labels
    plain = render_run_report(json.loads((d / "metrics.json").read_text()),
                              json.loads((d / "provenance.json").read_text()), None, None)
    assert page.count("<table>") > plain.count("<table>") >= 6


def test_study_report_escapes_every_value(tmp_path: Path) -> None:
    from perturbfm.study.plan import Exclusion
    from perturbfm.study.report import render_study_report

    run_dir = str(tmp_path / ("r'" + XSS))  # a quote cannot leave the href attribute
    status = {"phase": "p" + XSS, "next_step": XSS, "error": XSS, "synthetic_datasets": [XSS],
              "synthetic_splits": [XSS],
              "cells": {"c": {"status": "succeeded", "run_dir": run_dir, "split": XSS, "label": XSS, "seed": 0,
                              "run_id": XSS}}}
    rows = [{"label": XSS, "split": XSS, "status": "succeeded", "synthetic": True, XSS: 0.5}]
    claims = [{"id": XSS, "statement": XSS, "synthetic": True, "status": XSS, "test": XSS, "n": 1,
               "statistic": XSS, "ci": XSS, "reason": XSS}]
    boards = [{"split": XSS, "link": XSS, "reference": XSS, "rows": [[XSS, XSS, XSS, XSS, XSS, 0.5, XSS]]},
              {"split": XSS, "link": XSS, "error": XSS}]
    page = render_study_report(XSS, status, rows, [XSS], claims, [Exclusion("model", XSS, XSS, 1)],
                               leaderboards=boards)
    _assert_escaped(page)
    assert "<title>PerturbFM study &lt;script&gt;" in page and "<b>&lt;script&gt;" in page
    assert "href='" + str(tmp_path) + "/r&#39;&lt;script&gt;" in page
    assert page.count("<td>SYNTHETIC</td>") == 3 and page.count("<img") == 1


def test_report_templates_are_autoescaped_package_data() -> None:
    import fnmatch
    import importlib.resources
    import tomllib

    from perturbfm.report import _env

    root = Path(__file__).resolve().parents[2] / "perturbfm-core"
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["perturbfm"]
    names = [p.name for p in (importlib.resources.files("perturbfm") / "templates").iterdir() if p.name.endswith(".j2")]
    assert {"run_report.html.j2", "study_report.html.j2", "report_macros.html.j2"} <= set(names)
    autoescape = _env().autoescape
    for name in names:
        assert callable(autoescape) and autoescape(name) is True, name
        assert any(fnmatch.fnmatch(f"templates/{name}", p) for p in patterns), name
