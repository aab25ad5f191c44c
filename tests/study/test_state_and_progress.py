"""Study state checks (trusted run dirs, damaged files), synthetic marks, progress and ``--json``,
and process-executor workers that die with an interrupted parent."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from perturbfm.study.claims import claims_document, evaluate_claims
from perturbfm.study.integrity import RunDamaged, check_run, read_run_metrics
from perturbfm.study.status import read_status, status_md
from perturbfm.study.summary import summary_rows
from study_helpers import pfm, tiny_study

ENTRY = {"higher_is_better": True, "definition": "r", "global": 0.5, "per_group": {"A@c": 0.4, "B@c": 0.6}}


def _run(tmp: Path, name: str = "20260101-000000_abc_m_123", *, config_hash: str = "h" * 64,
         split: str = "s" * 64, status: str = "succeeded", metrics: Any = None) -> Path:
    d = tmp / "runs" / name
    d.mkdir(parents=True)
    (d / "run_status.json").write_text(json.dumps({"status": status}))
    (d / "provenance.json").write_text(json.dumps({"config_hash": config_hash, "split": {"id": split}}))
    m = {"synthetic": True, "panels": {"basic": {"metrics": {"pcc": ENTRY}}}} if metrics is None else metrics
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def test_read_run_metrics_names_file_and_field(tmp_path: Path) -> None:
    d = _run(tmp_path, metrics={"panels": {"basic": {"metrics": {"pcc": {**ENTRY, "global": "0.5"}}}}})
    with pytest.raises(RunDamaged) as exc:
        read_run_metrics(d)
    assert exc.value.file == d / "metrics.json" and "panels.basic.metrics.pcc.global" in exc.value.reason
    (d / "metrics.json").write_text('{"panels": {"basic": ')
    with pytest.raises(RunDamaged, match="not valid JSON"):
        read_run_metrics(d)
    (d / "metrics.json").write_text(json.dumps({"panels": {"basic": {"metrics": {"pcc": {"not_applicable": "x"}}}}}))
    assert read_run_metrics(d)["panels"]["basic"]["metrics"]["pcc"]["not_applicable"] == "x"


def test_check_run_trusts_only_this_cells_runs_inside_the_store(tmp_path: Path) -> None:
    from perturbfm.study.integrity import expected_config_hash

    cfg = {"run": {"seed": 0}, "model": {}}
    want = expected_config_hash("m", cfg)
    good = _run(tmp_path, "r1", config_hash=want)
    other = _run(tmp_path, "r2", config_hash="x" * 64)
    runs = tmp_path / "runs"
    kw = {"model": "m", "config": cfg, "split_id": "s" * 64}
    chk, note = check_run(runs, "r1", str(good), **kw)
    assert chk.state == "succeeded" and note is None
    chk, note = check_run(runs, "r1", "/elsewhere/r1", **kw)
    assert chk.state == "succeeded" and "not trusted" in (note or "")
    assert check_run(runs, "r2", str(other), **kw)[0].state == "foreign"
    assert check_run(runs, "../r1", None, **kw)[0].state == "foreign"
    assert check_run(runs, "gone", None, **kw)[0].state == "missing"
    os.symlink(good, runs / "link")
    assert check_run(runs, "link", None, **kw)[0].state == "foreign"
    (good / "metrics.json").write_text("[]")
    chk, _ = check_run(runs, "r1", None, **kw)
    assert chk.state == "damaged" and chk.file == str(good / "metrics.json") and "list" in (chk.reason or "")


def test_read_status_tells_absent_from_damaged(tmp_path: Path) -> None:
    assert read_status(tmp_path).data is None and not read_status(tmp_path).damaged
    (tmp_path / "study_status.json").write_text('{"cells": {"k": {"run_id": 3}}}')
    sr = read_status(tmp_path)
    assert sr.damaged and "cells.k.run_id" in (sr.problem or "")
    (tmp_path / "study_status.json").write_text('{"cells": {"k": {"run_id": "r"}}, "phase": "complete"}')
    assert read_status(tmp_path).data == {"cells": {"k": {"run_id": "r"}}, "phase": "complete"}


def test_synthetic_mark_on_every_row_and_claim(tmp_path: Path) -> None:
    d = _run(tmp_path)
    cells = {"a": {"label": "m", "model": "m", "split": "syn", "split_id": "s", "seed": 0, "key": "a",
                   "run_id": d.name, "run_dir": str(d), "status": "succeeded"},
             "b": {"label": "m", "model": "m", "split": "syn", "split_id": "s", "seed": 1, "key": "b",
                   "run_id": None, "run_dir": None, "status": "pending"},
             "c": {"label": "m", "model": "m", "split": "real", "split_id": "t", "seed": 0, "key": "c",
                   "run_id": None, "run_dir": None, "status": "failed"}}
    rows, cols, _ = summary_rows(cells, {"syn": True, "real": False})
    assert [r["synthetic"] for r in rows] == [True, True, False] and cols == ["basic.pcc"]
    (d / "metrics.json").write_text('{"panels": 5}')
    rows, _, _ = summary_rows(cells, {"syn": True, "real": False})
    assert rows[0]["status"] == "damaged" and "panels" in rows[0]["damaged"] and "basic.pcc" not in rows[0]
    claim = {"id": "c1", "better": "m", "worse": "n", "metric": "basic.pcc"}
    out = evaluate_claims([claim, {**claim, "id": "c2", "split": "real"}], ["syn", "real"], [0],
                          lambda *_: "status pending", lambda _s: None, synthetic={"syn": True, "real": False})
    assert out[0]["synthetic"] is True and "SYNTHETIC" in out[0]["synthetic_note"]
    assert out[1]["synthetic"] is False and "synthetic_note" not in out[1]
    doc = claims_document(out, {"syn": True, "real": False})
    assert doc["synthetic"] is True and doc["synthetic_splits"] == ["syn"] and doc["claims"] == out


def test_status_md_lists_damaged_runs_and_recovery() -> None:
    md = status_md({"study": "s", "phase": "complete", "synthetic_datasets": ["syn"],
                    "recovery": {"reason": "study_status.json was damaged: empty", "backup": "/x", "recovered": 2},
                    "cells": {"k": {"label": "m", "split": "a", "seed": 0, "status": "succeeded", "run_id": "r2",
                                    "damaged": [{"run_id": "r1", "file": "/r1/metrics.json", "reason": "empty"}]}}})
    assert "SYNTHETIC DATA" in md and "Recovered state" in md and "| k | r1 | /r1/metrics.json | empty |" in md


def test_cli_json_progress_lines_and_status(tmp_path: Path, store: Path) -> None:
    study = tiny_study(tmp_path / "s.yaml", name="prog", models=["control-mean"], seeds=[0, 1])
    proc = pfm(["study", "run", str(study), "--executor", "serial", "--json"], store=store)
    out = json.loads(proc.stdout)
    assert out["phase"] == "complete" and out["ran"] == 2 and out["counts"] == {"succeeded": 2}
    assert out["synthetic_datasets"] == ["syn"] and Path(out["artifacts"]["summary.csv"]).is_file()
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert lines[-1].startswith("[2/2] succeeded: control-mean / rg / seed"), proc.stderr
    st = json.loads(pfm(["study", "status", "prog", "--json"], store=store).stdout)
    assert st["phase"] == "complete" and st["total"] == 2
    assert "# Study `prog`: complete" in pfm(["study", "status", str(study)], store=store).stdout
    bad = pfm(["study", "status", "nope"], store=store, check=False)
    assert bad.returncode == 2 and "prog" in bad.stderr and "fix:" in bad.stderr
    refused = pfm(["study", "run", str(study), "--chunk", "0", "--json"], store=store, check=False)
    assert refused.returncode == 2 and json.loads(refused.stdout)["error"]["field"] == "--chunk"


def test_progress_bar_on_a_terminal() -> None:
    from perturbfm.study.cli import _Progress
    from rich.console import Console

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=120)
    with _Progress(con) as p:
        p({"done": 0, "total": 4, "running": [], "changed": []})
        p({"done": 3, "total": 4, "running": ["additive / rg / seed 1"], "changed": [{"status": "succeeded"}]})
    text = buf.getvalue()
    assert "3/4" in text and "additive / rg / seed 1" in text
    plain = io.StringIO()
    with _Progress(Console(file=plain, force_terminal=False, width=120)) as p:
        p({"done": 1, "total": 4, "running": [], "changed": [
            {"key": "k", "label": "m", "split": "rg", "seed": 0, "status": "succeeded", "run_id": "r"}]})
    assert plain.getvalue() == "[1/4] succeeded: m / rg / seed 0 (run r)\n"


def sleepy(x: int) -> int:
    """A picklable job that outlives any test unless its worker is killed."""
    time.sleep(120)
    return x


def _children() -> set[int]:
    out: set[int] = set()
    for t in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            out |= {int(c) for c in (t / "children").read_text().split()}
        except OSError:
            continue
    return {p for p in out if "resource_tracker" not in _cmdline(p)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "resource_tracker"  # gone already: not a live child


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_interrupted_process_pool_kills_its_workers() -> None:
    from perturbfm.builtin.executors import ProcessExecutor

    before = _children()

    def interrupt(*_a: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 6.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            ProcessExecutor(workers=2).map(sleepy, [1, 2, 3])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 30
    assert _children() - before == set()


def test_run_of_the_same_config_resolved_with_an_extra_default_is_trusted(tmp_path: Path) -> None:
    import yaml
    from perturbfm.hashing import sha256_json

    cfg = {"run": {"seed": 1}, "model": {"alpha": 2}}
    resolved = {"model_name": "m", "run": {"seed": 1, "new_default": True}, "model": {"alpha": 2}}
    d = _run(tmp_path, "r1", config_hash=sha256_json(resolved))
    (d / "config.resolved.yaml").write_text(yaml.safe_dump({**resolved, "split": "s" * 64}))
    kw = {"model": "m", "split_id": "s" * 64}
    assert check_run(tmp_path / "runs", "r1", None, config=cfg, **kw)[0].state == "succeeded"
    assert check_run(tmp_path / "runs", "r1", None, config={**cfg, "run": {"seed": 2}}, **kw)[0].state == "foreign"
    (d / "config.resolved.yaml").write_text(yaml.safe_dump({**resolved, "model": {"alpha": 3}, "split": "s" * 64}))
    assert check_run(tmp_path / "runs", "r1", None, config=cfg, **kw)[0].state == "foreign"  # hash no longer matches
