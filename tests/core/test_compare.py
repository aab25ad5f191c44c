"""The comparison report (perturbfm.compare / `pfm-bench compare`) on fake run dirs
in the metrics.json schema, raw-only and with reference objects; the HTML is
checked in headless Chromium when it is installed (required under CI=true)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from perturbfm.cli import main
from perturbfm.compare import EMBEDDED_TM, compare_runs, group_kind
from perturbfm.errors import PerturbFMError

SPLIT = "a" * 64
SINGLES = [f"G{i}@ctx0" for i in range(8)]
COMBOS = [f"G{i}+G{i + 1}@ctx1" for i in range(8)]
GROUPS = SINGLES + COMBOS
RNG = np.random.default_rng(0)
TRUTH = RNG.normal(0.5, 0.15, len(GROUPS))
BASE = TRUTH - 0.3  # the mean-response baseline
REP = TRUTH + 0.3  # the split-half replicate (pcc-like: higher is better)
TM = TRUTH - 0.1 + RNG.normal(0, 0.01, len(GROUPS))  # train-mean
MODELS = {"train-mean": TM, "good": TM + 0.15 + RNG.normal(0, 0.02, len(GROUPS)),
          "bad": TM - 0.2 + RNG.normal(0, 0.02, len(GROUPS)), "same": TM + 0.05 * np.tile([1.0, -1.0], len(GROUPS) // 2)}


def _obj(vals: np.ndarray, groups: list[str] = GROUPS) -> dict[str, Any]:
    pg = {g: float(v) for g, v in zip(GROUPS, vals) if g in groups}
    ctx: dict[str, list[float]] = {}
    for g, v in pg.items():
        ctx.setdefault(g.rpartition("@")[2], []).append(v)
    return {"global": float(np.mean(list(pg.values()))), "per_context": {c: float(np.mean(v)) for c, v in ctx.items()},
            "per_group": pg}


def _entry(vals: np.ndarray, hib: bool, refs: bool, *, flip: bool = False, skip: str | None = None,
           undef: str | None = None) -> dict[str, Any]:
    """A metric entry; ``flip``: an error metric (lower is better) from the same numbers;
    ``skip``: a group declared not applicable; ``undef``: a group stored as 0.0 and listed
    in ``extra.undefined_r_groups`` (as the basic panel does for a constant prediction)."""
    f = (lambda x: 1.0 - x) if flip else (lambda x: x)
    groups = [g for g in GROUPS if g != skip]
    e: dict[str, Any] = {"definition": "test metric", "variant": "", "higher_is_better": hib, **_obj(f(vals), groups)}
    if skip:
        e["not_applicable_groups"] = {skip: "constant prediction"}
    if undef:
        e["per_group"][undef] = 0.0
        e["extra"] = {"undefined_r_groups": {undef: "predicted delta constant: r undefined, set to 0.0"}}
    if refs:
        u, b, r = f(vals), f(BASE), f(REP)
        cal = {g: float((u[i] - b[i]) / (r[i] - b[i])) for i, g in enumerate(GROUPS) if g in groups and i != 0}
        e["baseline"] = _obj(b)
        e["replicate"] = {**_obj(r), "seed_sd": {"per_group": {g: 0.01 for g in GROUPS}}, "n_seeds": 5}
        e["calibrated"] = {"global": float(np.mean(list(cal.values()))), "per_context": {}, "per_group": cal,
                           "unresolvable": [GROUPS[0]], "n_unresolvable": 1}
        e["train_mean"] = _obj(f(TM))
    return e


def _run(root: Path, name: str, model: str, *, refs: bool, split: str = SPLIT, seed: int = 0,
         synthetic: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    vals = MODELS[model]
    metrics = {
        "run_id": name, "synthetic": synthetic, "model": model, "split": split, "dataset": "d" * 64,
        "groups": [{"group_id": g, "context": g.rpartition("@")[2], "n_true_cells": 10,
                    "label": "seen" if i % 2 else "unseen", "ood": i % 4 == 0} for i, g in enumerate(GROUPS)],
        "panels": {"basic": {"metrics": {
            "pcc": _entry(vals, True, refs, skip="G3@ctx0" if model == "bad" else None,
                          undef="G5@ctx0" if model == "same" else None),
            "mse": _entry(vals, False, refs, flip=True),
            "nll": {"definition": "x", "not_applicable": "point model"} if model != "good" else
            {**_entry(vals, False, False), "definition": "nll"},
        }}},
    }
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def _rows(res: dict[str, Any], metric: str, stratum: str = "all") -> dict[str, dict[str, Any]]:
    m = next(m for m in res["metrics"] if m["id"] == metric)
    return {r["row"]: r for r in m["strata"][stratum]["rows"]}


def test_group_kind() -> None:
    assert group_kind("KLF1@k562") == "single" and group_kind("KLF1+MAP2K6@k562") == "combination"
    assert group_kind("A+B") == "combination" and group_kind("A") == "single"


def test_raw_only_runs_with_a_train_mean_run(tmp_path: Path) -> None:
    runs = [_run(tmp_path, f"r_{m}", m, refs=False) for m in MODELS]
    runs.append(_run(tmp_path, "r_good_seed1", "good", refs=False, seed=1))  # same values: one observation
    res = compare_runs(runs, tmp_path / "out", plots=False)
    pcc = _rows(res, "basic.pcc")
    assert pcc["good"]["raw_vs_reference"]["verdict"] == "better"
    assert pcc["bad"]["raw_vs_reference"]["verdict"] == "worse"
    assert pcc["same"]["raw_vs_reference"]["verdict"] == "tie"
    assert pcc["train-mean"]["is_reference"] and pcc["train-mean"]["raw_vs_reference"] is None
    # seeds averaged within group: two runs, still one value per group
    assert pcc["good"]["n_runs"] == 2 and pcc["good"]["raw"]["n_groups"] == 16
    assert pcc["good"]["raw_vs_reference"]["n_groups"] == 16
    # a group declared not applicable for a model is left out of its pairs, not scored 0
    assert pcc["bad"]["raw"]["n_groups"] == 15 and pcc["bad"]["raw_vs_reference"]["n_groups"] == 15
    assert pcc["same"]["raw"]["n_groups"] == 15 and pcc["same"]["n_undefined_groups"] == 1  # 0.0 by declaration
    assert pcc["same"]["raw"]["estimate"] == pytest.approx(np.mean(np.delete(MODELS["same"], 5)))
    mse = _rows(res, "basic.mse")  # lower is better: the same ordering
    assert mse["good"]["raw_vs_reference"]["verdict"] == "better" and mse["good"]["raw_vs_reference"][
        "difference"]["high"] < 0
    assert mse["bad"]["raw_vs_reference"]["verdict"] == "worse"
    # no reference objects: calibrated values, baseline and replicate are unavailable, never 0
    assert pcc["good"]["calibrated"]["estimate"] is None and "no calibrated object" in pcc["good"]["calibrated"]["note"]
    assert "no baseline object" in pcc["baseline (mean response)"]["not_applicable"]
    nll = _rows(res, "basic.nll")
    assert nll["bad"]["not_applicable"] == "point model" and nll["good"]["raw"]["estimate"] is not None
    assert nll["good"]["raw_vs_reference"]["verdict"] == "undefined"  # the reference has no values
    # strata: single vs combination from the group id, labels, OOD
    assert set(res["strata"]) == {"all", "single", "combination", "label=seen", "label=unseen", "ood",
                                  "in-distribution"}
    assert res["strata"]["single"]["n_groups"] == 8 and res["strata"]["ood"]["n_groups"] == 4
    assert _rows(res, "basic.pcc", "combination")["good"]["raw"]["n_groups"] == 8
    # outputs: JSON (no NaN), CSV with empty cells for undefined values, HTML with "–"
    out = tmp_path / "out"
    assert json.loads((out / "compare.json").read_text())["schema"] == "perturbfm.compare/1"
    with open(out / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    good = next(r for r in rows if r["metric"] == "basic.pcc" and r["stratum"] == "all" and r["row"] == "good")
    assert good["raw_verdict"] == "better" and good["cal_mean"] == "" and float(good["raw_n_groups"]) == 16
    html = (out / "compare.html").read_text()
    assert "SYNTHETIC DATA" in html and "higher is better" in html and "lower is better" in html
    assert "–" in html and "not applicable: point model" in html and "(+1 undefined)" in html


def test_references_from_metrics_json_when_no_train_mean_run(tmp_path: Path) -> None:
    runs = [_run(tmp_path, f"r_{m}", m, refs=True) for m in ("good", "bad", "same")]
    res = compare_runs(runs, tmp_path / "out", plots=False)
    m = next(m for m in res["metrics"] if m["id"] == "basic.pcc")
    assert m["reference"]["source"] == "metrics.json train_mean"
    pcc = _rows(res, "basic.pcc")
    assert EMBEDDED_TM in pcc and pcc[EMBEDDED_TM]["is_reference"]
    assert pcc["good"]["raw_vs_reference"]["verdict"] == "better"
    assert pcc["bad"]["raw_vs_reference"]["verdict"] == "worse"
    # calibrated: (u - b) / (r - b) per group, unresolvable groups left out; higher is better
    assert pcc["good"]["calibrated"]["n_groups"] == 15 and pcc["good"]["n_unresolvable"] == 1
    assert pcc["good"]["calibrated_vs_reference"]["verdict"] == "better"
    assert pcc["bad"]["calibrated_vs_reference"]["verdict"] == "worse"
    expect = np.mean([(TM[i] - BASE[i]) / (REP[i] - BASE[i]) for i in range(1, 16)])
    assert pcc[EMBEDDED_TM]["calibrated"]["estimate"] == pytest.approx(expect)
    assert pcc["baseline (mean response)"]["calibrated"]["estimate"] == 0.0
    assert pcc["replicate (split-half)"]["calibrated"]["estimate"] == 1.0
    assert pcc["replicate (split-half)"]["raw_vs_reference"]["verdict"] == "better"
    mse = _rows(res, "basic.mse")  # lower is better raw; calibrated is direction-free
    assert mse["good"]["raw_vs_reference"]["verdict"] == "better"
    assert mse["good"]["calibrated"]["estimate"] == pytest.approx(pcc["good"]["calibrated"]["estimate"])
    # a reference that is neither a run nor in metrics.json: verdicts undefined, with the reason
    res2 = compare_runs(runs, tmp_path / "out2", reference="linear", plots=False)
    p2 = _rows(res2, "basic.pcc")
    assert p2["good"]["raw_vs_reference"]["verdict"] == "undefined"
    assert "'linear' is not among the runs" in p2["good"]["raw_vs_reference"]["verdict_reason"]


def test_mismatched_splits_are_refused(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "r_tm", "train-mean", refs=False),
            _run(tmp_path, "r_good", "good", refs=False, split="b" * 64)]
    with pytest.raises(PerturbFMError) as exc:
        compare_runs(runs, tmp_path / "out", plots=False)
    msg = str(exc.value)
    assert "not on the same split" in msg and "r_tm" in msg and "r_good" in msg and "aaaaaaaaaaaa" in msg
    assert "bbbbbbbbbbbb" in msg
    assert not (tmp_path / "out" / "compare.json").exists()


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [_run(tmp_path, f"r_{m}", m, refs=True) for m in MODELS]
    out = tmp_path / "cmp"
    rc = main(["--store", str(tmp_path / "store"), "compare", *map(str, runs[1:]), f"tm={runs[0]}",
               "--reference", "tm", "--out", str(out)])
    assert rc == 0
    assert capsys.readouterr().out.strip().endswith("compare.html")
    res = json.loads((out / "compare.json").read_text())
    assert res["reference"] == "tm" and res["models"][-1] == "tm"
    assert _rows(res, "basic.pcc")["good"]["raw_vs_reference"]["verdict"] == "better"
    assert (out / "compare.html").read_text().count("<img") == 3  # one plot per applicable metric
    bad = _run(tmp_path, "r_other", "bad", refs=False, split="c" * 64)
    rc = main(["--store", str(tmp_path / "store"), "compare", str(runs[0]), str(bad), "--out", str(tmp_path / "x")])
    assert rc == 2


def test_study_report_embeds_one_leaderboard_per_split(tmp_path: Path) -> None:
    from perturbfm.study.report import render_study_report, write_leaderboards

    cells = {f"{m}-{seed}": {"status": "succeeded", "label": m, "split": "s1", "seed": seed,
                             "run_dir": str(_run(tmp_path, f"r_{m}_{seed}", m, refs=True))}
             for m in ("train-mean", "good") for seed in (0, 1)}
    cells["broken"] = {"status": "succeeded", "label": "good", "split": "s/2", "seed": 0,
                       "run_dir": str(tmp_path / "missing")}
    boards = write_leaderboards(tmp_path / "study" / "compare", {"cells": cells})
    assert [b["split"] for b in boards] == ["s/2", "s1"]
    assert "cannot read metrics.json" in boards[0]["error"]
    assert (tmp_path / "study" / "compare" / "s1" / "compare.html").exists()
    good = [r for r in boards[1]["rows"] if r[0] == "basic.pcc" and r[1] == "good"][0]
    assert good[4] == "better" and good[6] == "better"
    html = render_study_report("t", {"cells": {}, "phase": "complete"}, [], [], [], [], leaderboards=boards)
    assert "Leaderboards" in html and "compare/s1/compare.html" in html and "not produced" in html


def test_html_renders_in_headless_chromium_without_js_errors(tmp_path: Path, chromium: str) -> None:
    runs = [_run(tmp_path, f"r_{m}", m, refs=True) for m in MODELS]
    res = compare_runs(runs, tmp_path / "out")
    page = Path(res["files"]["html"])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_tag = re.search(r"<html[^>]*>", dom.stdout)
    assert html_tag and "data-js-errors" not in html_tag.group(0), html_tag
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    n_tables = sum(len(m["strata"]) for m in res["metrics"])
    assert f'data-pfm-ready="{n_tables}"' in dom.stdout
    assert dom.stdout.count("<img") == 3 and "data:image/svg+xml;base64," in dom.stdout
    assert "SYNTHETIC DATA" in dom.stdout and "better" in dom.stdout and "worse" in dom.stdout
