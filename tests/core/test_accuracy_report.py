"""benchmarks/model_accuracy.py's summary: best-baseline choice, paired intervals, calibrated
scores, refusals and the CGIO-vs-base comparison (on hand-made per-group results)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from accuracy_report import calibrated, markdown, summarise  # noqa: E402
from model_accuracy import REFUSAL, _error_message  # noqa: E402

IDS = [f"g{i}" for i in range(8)]


def _ok(pearson, l2, cal=None):
    rows = {g: [p, d] for g, p, d in zip(IDS, pearson, l2)}
    return {"status": "ok", "message": "", "rows": rows, "cal": cal or {}, "fit_s": [1.0, 3.0]}


@pytest.fixture()
def task():
    rng = np.random.default_rng(0)
    base_l2 = 2.0 + rng.uniform(0, 0.5, len(IDS))
    cal = {"mse": {g: {"u": 1.0, "b": 2.0, "r": 0.0, "resolved": i != 0} for i, g in enumerate(IDS)}}
    return {
        "control-mean": _ok([None] * len(IDS), base_l2 + 0.3),
        "train-mean": _ok(list(rng.uniform(0.3, 0.4, len(IDS))), base_l2),
        "linear": _ok(list(rng.uniform(0.5, 0.6, len(IDS))), base_l2 + 0.1),
        "cgio": {**_ok(list(rng.uniform(0.6, 0.7, len(IDS))), base_l2 - 0.2, cal),
                 "base_rows": {g: [0.55, float(v) - 0.19] for g, v in zip(IDS, base_l2)}},
        "scgen": {"status": "refuses", "message": "Error: scgen refuses split kind 'combo'", "rows": {}, "fit_s": []},
    }


def test_best_baseline_per_figure_and_paired_intervals(task):
    s = summarise({"t": task}, ["scgen"])["t"]
    assert s["best_baseline"] == {"pearson": "linear", "l2": "train-mean"}  # control-mean: r undefined
    comps = {(c["label"], c["metric"]): c for c in s["comparisons"]}
    l2 = comps[("cgio − best baseline (train-mean)", "l2")]
    assert l2["mean"] == pytest.approx(-0.2) and l2["high"] < 0 and l2["n"] == len(IDS)
    pr = comps[("cgio − best baseline (linear)", "pearson")]
    assert pr["low"] > 0
    base = comps[("cgio − its own base", "l2")]
    assert base["mean"] == pytest.approx(-0.01)
    assert s["base_note"] is None
    assert s["models"]["scgen"]["status"] == "refuses"
    assert not any(c["a"] == "scgen" for c in s["comparisons"])
    assert s["models"]["control-mean"]["pearson"] is None and s["models"]["control-mean"]["n_r_undefined"] == 8


def test_calibrated_pools_resolved_groups_only(task):
    value, n_unres = calibrated(task["cgio"]["cal"]["mse"])
    assert value == pytest.approx(0.5) and n_unres == 1
    assert calibrated({"g": {"u": 1.0, "b": 2.0, "r": 0.0, "resolved": False}}) == (None, 1)
    assert calibrated(None) == (None, 0)


def test_markdown_shows_refusals_and_omitted_base(task):
    del task["cgio"]["base_rows"]
    summary = summarise({"t": task}, ["scgen"])
    assert "not exposed" in summary["t"]["base_note"] or "omitted" in summary["t"]["base_note"]
    md = markdown(summary, {"t": "a task"})
    assert "| a task (8) | control-mean | – |" in md
    assert "refuses: Error: scgen refuses split kind 'combo'" in md
    assert "cgio − its own base | omitted" in md
    assert "2.0 (1.0–3.0)" in md  # fit time: mean (range over splits)
    assert "*" in md  # an interval excluding 0 is starred


def test_refusal_and_error_message_parsing():
    err = "some progress\nError: model 'scgen' does not support context-ood splits\nFix: use a combo split\n"
    msg = _error_message(err)
    assert msg.startswith("Error: model 'scgen' does not support") and "Fix:" in msg
    assert REFUSAL.search(msg)
    assert not REFUSAL.search(_error_message("Traceback ...\nValueError: shapes (3,) and (4,) not aligned"))
