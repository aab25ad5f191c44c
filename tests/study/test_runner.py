"""Budget, chunks, resume after SIGKILL, fresh starts and stopping on incomplete panels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue
from study_helpers import BIN, pfm, succeeded_runs, summary_metrics, tiny_study


def _grid200(tmp_path: Path) -> Path:
    splits = {n: {"dataset": "syn", "generator": "random-groups", "params": {"test_fraction": 0.3}, "seed": s}
              for n, s in (("a", 0), ("b", 1))}
    return tiny_study(tmp_path / "big.yaml", name="big", models=["control-mean"], seeds=list(range(100)),
                      splits=splits)


def test_budget_refuses_before_any_run(tmp_path: Path, store: Path) -> None:
    proc = pfm(["study", "run", str(_grid200(tmp_path))], store=store, check=False)
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "200 pending runs, more than the budget of 64" in err and "nothing was started" in err
    assert f"pfm-bench --store {store} study run {tmp_path / 'big.yaml'} --chunk 64" in err
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())
    st = json.loads((store / "studies" / "big" / "study_status.json").read_text())
    assert st["phase"] == "refused" and "--chunk 64" in st["next_step"]
    proc = pfm(["study", "run", str(_grid200(tmp_path))], store=store, check=False, env_extra={"PFM_MAX_RUNS": "10"})
    assert proc.returncode == 2 and "budget of 10" in " ".join(proc.stderr.split())


def test_chunks_complete_a_200_run_grid(tmp_path: Path, store: Path) -> None:
    study = _grid200(tmp_path)
    invocations = 0
    while True:
        pfm(["study", "run", str(study), "--chunk", "64"], store=store, timeout=900)
        invocations += 1
        st = json.loads((store / "studies" / "big" / "study_status.json").read_text())
        if st["phase"] == "complete":
            break
        assert st["phase"] == "partial" and st["invocation"]["ran"] == 64, st
        assert "--chunk 64" in st["next_step"]
    assert invocations == 4
    assert len(succeeded_runs(store)) == 200
    assert len(summary_metrics(store / "studies" / "big")) == 200


def _run_keys(store: Path) -> Counter[tuple[str, str, int]]:
    """(model, split, seed) of every succeeded run dir (a cell of these studies)."""
    out: Counter[tuple[str, str, int]] = Counter()
    for d in succeeded_runs(store):
        cfg = yaml.safe_load((d / "config.resolved.yaml").read_text())
        out[(cfg["model_name"], cfg["split"], cfg["run"]["seed"])] += 1
    return out


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    models = [{"model": "control-mean"}, {"model": "additive"}, {"model": "linear"}]
    study = tiny_study(tmp_path / "s.yaml", name="resume", models=models, seeds=[0, 1])
    ref_store, store = tmp_path / "ref", tmp_path / "killed"
    pfm(["study", "run", str(study), "--executor", "serial"], store=ref_store)
    env = {**os.environ}
    proc = subprocess.Popen([str(BIN / "pfm-bench"), "--store", str(store), "study", "run", str(study),
                             "--executor", "process", "--workers", "1"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = store / "studies" / "resume" / "cells"
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        recs = [json.loads(p.read_text()) for p in cells.glob("*.json")] if cells.exists() else []
        if any(r.get("state") == "succeeded" for r in recs) and any(r.get("state") == "running" for r in recs):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed, "never caught the study in the middle of a run"
    st = json.loads((store / "studies" / "resume" / "study_status.json").read_text())
    assert st["phase"] == "running"  # what a killed invocation leaves behind
    pfm(["study", "run", str(study), "--executor", "process", "--workers", "1"], store=store)
    st = json.loads((store / "studies" / "resume" / "study_status.json").read_text())
    assert st["phase"] == "complete"
    assert any(c["attempts"] for c in st["cells"].values()), "the interrupted run should be recorded as an attempt"
    counts = _run_keys(store)
    assert len(counts) == 6 and set(counts.values()) == {1}, counts
    assert summary_metrics(store / "studies" / "resume") == summary_metrics(ref_store / "studies" / "resume")


def test_resume_skips_finished_reruns_failed_and_fresh_start(tmp_path: Path, store: Path) -> None:
    from perturbfm.study.runner import run_study

    study = tiny_study(tmp_path / "s.yaml", name="again", models=["control-mean"], seeds=[0, 1])
    first = run_study(study, store=store, executor="serial")
    assert first.phase == "complete" and first.ran == 2
    assert run_study(study, store=store, executor="serial").ran == 0
    run_dir = Path(next(iter(first.status["cells"].values()))["run_dir"])
    (run_dir / "metrics.json").unlink()  # an interrupted/failed run: rerun it
    st = json.loads((run_dir / "run_status.json").read_text())
    (run_dir / "run_status.json").write_text(json.dumps({**st, "status": "failed"}))
    again = run_study(study, store=store, executor="serial")
    assert again.ran == 1 and again.phase == "complete"
    (store / "studies" / "again" / "study_status.json").unlink()
    assert run_study(study, store=store, executor="serial").ran == 2


class _Incomplete(MetricPanel):
    name = "incomplete-for-study"
    metrics = {"ok": MetricSpec("x", higher_is_better=True), "never": MetricSpec("declared, never computed")}

    def compute(self, data: Any) -> dict[str, MetricValue]:
        return {"ok": MetricValue(per_group={g: 1.0 for g in data.group_ids})}


class _IncompletePlugin:
    from perturbfm import hookimpl

    @hookimpl
    def pfm_register_metric_panels(self) -> list[type]:
        return [_Incomplete]


def test_incomplete_panels_stop_the_study(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perturbfm.plugins as plugins
    from perturbfm.study.runner import run_study

    reg = plugins.PluginRegistry(extra_plugins=[("incomplete-test", _IncompletePlugin())])
    monkeypatch.setattr(plugins, "get_registry", lambda: reg)
    study = tiny_study(tmp_path / "s.yaml", name="stops", models=["control-mean", "additive"], seeds=[0, 1],
                       panels=["basic", "incomplete-for-study"])
    out = run_study(study, store=store, executor="serial", registry=reg)
    assert out.phase == "stopped"
    assert "incomplete metric panels" in out.status["error"] and "never" in out.status["error"]
    statuses = Counter(c["status"] for c in out.status["cells"].values())
    assert statuses == {"failed": 1, "pending": 3}, statuses
    md = (store / "studies" / "stops" / "study_status.md").read_text()
    assert "stopped" in md and "fix the metric panel" in md
