"""The unit of work of a study: one grid cell, as a picklable dict, run in a
worker (any executor) by :func:`run_cell_job`.

The worker writes ``cells/<key>.json`` atomically when the run directory is
created (state ``running``, with the run id) and when it ends, so an
interrupted study can tell which run dir belongs to which cell. A run whose
metric panels are incomplete writes ``STOP``: jobs that have not started yet
are skipped and the study stops.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

from perturbfm import hookimpl
from perturbfm.errors import PanelIncompleteError
from perturbfm.fsio import atomic_write_json
from perturbfm.store import utc_now

STOP_FILE = "STOP"


def read_stop(study_dir: str | Path) -> str | None:
    """The reason written to ``STOP``, or None when the study is not stopped."""
    p = Path(study_dir) / STOP_FILE
    if not p.exists():
        return None
    try:
        return p.read_bytes().decode("utf-8", errors="replace").strip() or "(no reason recorded)"
    except OSError as exc:
        return f"(the STOP file cannot be read: {exc.strerror or exc})"


def cell_record_path(study_dir: str | Path, key: str) -> Path:
    return Path(study_dir) / "cells" / f"{key}.json"


def read_cell_record(study_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The worker's record of a cell, or None (absent, or not a well-formed record)."""
    p = cell_record_path(study_dir, key)
    try:
        rec = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, truncated, not UTF-8, not JSON
        return None
    if not isinstance(rec, dict):
        return None
    for f in ("run_id", "run_dir", "state", "status"):
        if rec.get(f) is not None and not isinstance(rec[f], str):
            return None  # a record of the wrong shape is no record: the status and the store decide
    if not isinstance(rec.get("previous_attempts", []), list):
        rec["previous_attempts"] = []
    return rec


class _CellObserver:
    """Records the run id of a cell as soon as its run directory exists."""

    def __init__(self, study_dir: str, key: str, attempts: list[str]) -> None:
        self.study_dir = study_dir
        self.key = key
        self.attempts = attempts

    @hookimpl
    def pfm_run_started(self, run_dir: str, run_info: dict[str, Any]) -> None:
        atomic_write_json(cell_record_path(self.study_dir, self.key), {
            "key": self.key, "state": "running", "run_id": run_info["run_id"], "run_dir": run_dir,
            "pid": os.getpid(), "started_at": utc_now(), "previous_attempts": self.attempts,
        })


def run_cell_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (in any process). ``job`` keys: store, study_dir, key, model,
    split, config_file, label. Returns a small JSON-able result."""
    from perturbfm.plugins import get_registry
    from perturbfm.run import execute_run
    from perturbfm.store import ArtifactStore

    study_dir, key = job["study_dir"], job["key"]
    stop = Path(study_dir) / STOP_FILE
    reason = read_stop(study_dir)
    if reason is not None:
        return {"key": key, "status": "skipped", "reason": "the study was stopped: " + reason}
    prev = read_cell_record(study_dir, key) or {}
    attempts = list(prev.get("previous_attempts", [])) + ([prev["run_id"]] if prev.get("run_id") else [])
    registry = get_registry()
    observer = _CellObserver(study_dir, key, attempts)
    name = f"pfm-study-cell-{key}-{os.getpid()}"
    registry.pm.register(observer, name=name)
    out: dict[str, Any] = {"key": key, "label": job.get("label")}
    try:
        res = execute_run(ArtifactStore(job["store"]), model=job["model"], split=job["split"],
                          config_file=job["config_file"], registry=registry)
        out.update(status=res.status, run_id=res.run_id, run_dir=str(res.run_dir))
        if res.error is not None:
            out["error"] = res.error.render()
        if isinstance(res.error, PanelIncompleteError):
            out["panel_incomplete"] = True
            from perturbfm.fsio import atomic_write_text

            atomic_write_text(stop, f"run {res.run_id} (cell {key}, {job.get('label')}) has incomplete metric "
                                    f"panels; metrics.json was not written\n{res.error.render()}\n")
    except Exception as exc:  # a bug in a plugin: record it against the cell, never lose the study
        out.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        rec = read_cell_record(study_dir, key) or {}
        if rec.get("state") == "running" and rec.get("run_id"):
            out.update(run_id=rec["run_id"], run_dir=rec["run_dir"])
    finally:
        registry.pm.unregister(name=name)
    atomic_write_json(cell_record_path(study_dir, key), {
        **out, "state": out["status"], "finished_at": utc_now(), "previous_attempts": attempts})
    return out
