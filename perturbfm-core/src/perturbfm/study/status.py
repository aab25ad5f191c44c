"""``study_status.json`` and ``study_status.md``: where a study stands.

The status maps each cell key to its run id and status, and says the phase,
finished runs, last successful artifacts, the error and a suggested next step.
Both files are written atomically, under a lock (``.study_status.lock``), and a
whole ``study run`` invocation holds ``.study_run.lock``: a second invocation of
the same study is refused while the first lives.

Rules for state that does not read back (nothing finished is lost silently):

* **Deleting** ``study_status.json`` starts the study afresh (the worker records
  under ``cells/`` are then discarded; the run directories stay in the store).
  ``pfm-bench study run STUDY --rebuild-status`` instead rebuilds it from the
  worker records and the run directories of the store.
* A **damaged** ``study_status.json`` (truncated, not JSON, wrong types) is
  never taken for "no status": it is moved aside to
  ``study_status.damaged-<UTC time>.json`` and the state is rebuilt from the
  worker records and from every run in the store whose ``provenance.json`` names
  a cell's config hash and split (see :mod:`perturbfm.study.integrity`); the
  status records this under ``recovery``.
* A recorded ``run_dir`` outside the store's ``runs/`` folder is not trusted
  (the run is looked up by its id in the store), nor is a run whose provenance
  names another config hash or split (the cell is then ``pending``).
* A finished run whose ``metrics.json``, ``run_status.json`` or
  ``provenance.json`` no longer reads back is **damaged**: the cell is marked
  ``damaged`` with the file and the reason, listed under ``damaged`` in the
  cell (kept across invocations), and run again in a fresh run directory by the
  next ``study run``; the damaged run directory is left untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perturbfm.errors import PerturbFMError
from perturbfm.fsio import atomic_write_json, atomic_write_text
from perturbfm.store import utc_now
from perturbfm.study.integrity import (
    RunDamaged,
    check_run,
    check_run_dir,
    expected_config_hash,
    read_json_object,
    scan_runs,
)
from perturbfm.study.jobs import read_cell_record

STATUS_JSON = "study_status.json"
STATUS_MD = "study_status.md"
STATUS_LOCK = ".study_status.lock"
RUN_LOCK = ".study_run.lock"
#: Cell statuses; ``damaged`` and everything but ``succeeded`` run again.
CELL_STATES = ("pending", "running", "succeeded", "failed", "interrupted", "damaged")


class StudyLockedError(PerturbFMError):
    """Another ``study run`` of the same study holds its lock."""


@dataclass
class StatusRead:
    """``study_status.json`` as read: ``data`` (None when absent or damaged) and
    ``problem`` (why it is damaged; None when it is fine or absent)."""

    data: dict[str, Any] | None
    problem: str | None = None

    @property
    def damaged(self) -> bool:
        return self.problem is not None


def _status_problem(data: dict[str, Any]) -> str | None:
    cells = data.get("cells", {})
    if not isinstance(cells, dict):
        return f"`cells` is a {type(cells).__name__}, not a mapping of cell key -> entry"
    for k, c in cells.items():
        if not isinstance(c, dict):
            return f"cells.{k} is a {type(c).__name__}, not an entry"
        for f in ("run_id", "run_dir"):
            if c.get(f) is not None and not isinstance(c[f], str):
                return f"cells.{k}.{f} is {c[f]!r}, not a string"
        for f in ("attempts", "damaged"):
            if not isinstance(c.get(f, []), list):
                return f"cells.{k}.{f} is not a list"
    if not isinstance(data.get("last_artifacts", []), list):
        return "`last_artifacts` is not a list"
    return None


def read_status(study_dir: Path) -> StatusRead:
    """The status file, telling apart absent (fresh start) from damaged."""
    path = study_dir / STATUS_JSON
    if not path.exists() and not path.is_symlink():
        return StatusRead(None)
    try:
        data = read_json_object(path)
    except RunDamaged as exc:
        return StatusRead(None, exc.reason)
    problem = _status_problem(data)
    return StatusRead(None, problem) if problem else StatusRead(data)


def load_status(study_dir: Path) -> dict[str, Any] | None:
    """The previous status, or None (absent or damaged: see :func:`read_status`)."""
    return read_status(study_dir).data


def set_aside_damaged_status(study_dir: Path) -> Path:
    """Move a damaged ``study_status.json`` aside (kept for inspection); returns its new path."""
    stamp = utc_now().replace(":", "").replace("-", "")
    dest = study_dir / f"study_status.damaged-{stamp}.json"
    n = 2
    while dest.exists():
        dest = study_dir / f"study_status.damaged-{stamp}-{n}.json"
        n += 1
    os.replace(study_dir / STATUS_JSON, dest)
    return dest


def _strings(xs: Any) -> list[str]:
    return [x for x in xs if isinstance(x, str)] if isinstance(xs, list) else []


def reconcile(study_dir: Path, cells: list[Any], previous: dict[str, Any] | None, live: bool = False, *,
              runs_dir: Path | None = None, scan: bool = False) -> dict[str, dict[str, Any]]:
    """Key -> {label, split, seed, run_id, run_dir, status, attempts[, damaged, note, error]}
    from the previous status and the worker records, checked against the run dirs
    of the store (``live``: a run dir still in progress counts as ``running``, not
    ``interrupted``; ``scan``: a cell without a trusted finished run adopts the
    newest succeeded run of its config hash and split found in the store)."""
    runs_dir = runs_dir or study_dir.parent.parent / "runs"
    prev_cells = (previous or {}).get("cells", {})
    prev_cells = prev_cells if isinstance(prev_cells, dict) else {}
    index: dict[tuple[str, str], list[Path]] | None = None
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        entry: dict[str, Any] = {**c.describe(), "run_id": None, "run_dir": None, "status": "pending", "attempts": []}
        old = prev_cells.get(c.key)
        old = old if isinstance(old, dict) else {}
        rec = read_cell_record(study_dir, c.key) if previous is not None else None
        notes: list[str] = []
        damaged = [d for d in old.get("damaged", []) if isinstance(d, dict)]
        candidates: list[tuple[Any, Any]] = []
        for src in (rec or {}, old):
            if src.get("run_id") and (src.get("run_id"), src.get("run_dir")) not in candidates:
                candidates.append((src.get("run_id"), src.get("run_dir")))
            for a in _strings(src.get("previous_attempts", src.get("attempts", []))):
                if a not in entry["attempts"]:
                    entry["attempts"].append(a)
        want = expected_config_hash(c.model, c.config)
        checks = []
        untrusted = False
        for run_id, recorded in candidates:
            chk, note = check_run(runs_dir, run_id, recorded, model=c.model, config=c.config, split_id=c.split_id,
                                  config_hash=want)
            if note:
                notes.append(note)
            if chk.state == "foreign":
                untrusted = True
                notes.append(chk.reason or f"run {run_id} is not trusted")
            elif chk.state == "missing":
                notes.append(f"run dir {chk.run_dir} is gone; the cell will run again")
            else:
                checks.append(chk)
        chosen = next((k for k in checks if k.state == "succeeded"), checks[0] if checks else None)
        if (scan or untrusted) and (chosen is None or chosen.state != "succeeded"):
            if index is None:
                index = scan_runs(runs_dir)
            for d in index.get((want, c.split_id), []):
                chk = check_run_dir(d, model=c.model, config=c.config, split_id=c.split_id, config_hash=want)
                if chk.state == "succeeded":
                    notes.append(f"recovered run {d.name} from the store (its provenance names this cell's config "
                                 "hash and split)")
                    chosen = chk
                    break
        if chosen is not None and chosen.run_dir is not None:
            entry["run_id"], entry["run_dir"] = chosen.run_dir.name, str(chosen.run_dir)
            st = chosen.state
            if st == "damaged":
                info = {"run_id": chosen.run_dir.name, "file": chosen.file, "reason": chosen.reason}
                if info not in damaged:
                    damaged.append(info)
                entry["error"] = (f"finished run {chosen.run_dir.name} is damaged: {chosen.file}: {chosen.reason}; "
                                  "the cell runs again (the damaged run dir is kept)")
            entry["status"] = {"interrupted": "running" if live else "interrupted"}.get(st, st)
        if entry["run_id"] and entry["run_id"] in entry["attempts"]:
            entry["attempts"].remove(entry["run_id"])
        if rec and rec.get("status") == "skipped":
            entry["status"] = "pending"
        if rec and rec.get("error") and entry["status"] not in ("succeeded", "damaged"):
            entry["error"] = str(rec["error"])
            if rec.get("state") == "failed" and entry["status"] in ("interrupted", "running"):
                entry["status"] = "failed"  # e.g. the run raised after its metrics were written
        if damaged:
            entry["damaged"] = damaged
        if notes:
            entry["note"] = "; ".join(dict.fromkeys(notes))
        out[c.key] = entry
    return out


@contextmanager
def run_lock(study_dir: Path, study_file: str) -> Iterator[None]:
    """Hold the study's invocation lock, or raise :class:`StudyLockedError`."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(study_dir / RUN_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout as exc:
        raise StudyLockedError(
            f"another `study run` of this study is in progress (it holds {study_dir / RUN_LOCK})",
            file=study_file, field="study_status.json",
            fix=f"wait for it to finish (watch {study_dir / STATUS_MD}); the lock is released as soon as that "
                "process exits, even if it is killed, so then rerun the same command") from exc
    except OSError as exc:  # a read-only or full store
        raise PerturbFMError(f"cannot create the study's lock file: {exc.strerror or exc}",
                             file=str(study_dir / RUN_LOCK), field="--store",
                             fix=f"make {study_dir} writable (or choose another store with --store) and rerun") from exc
    try:
        yield
    finally:
        lock.release()


def write_status(study_dir: Path, status: dict[str, Any]) -> None:
    """Write ``study_status.json`` and ``study_status.md`` atomically, under the status lock."""
    from filelock import FileLock

    status = {**status, "updated_at": utc_now()}
    with FileLock(str(study_dir / STATUS_LOCK), timeout=60):
        atomic_write_json(study_dir / STATUS_JSON, status)
        atomic_write_text(study_dir / STATUS_MD, status_md(status))


def status_counts(cells: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Status -> number of cells."""
    counts: dict[str, int] = {}
    for c in cells.values():
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    return counts


def status_md(st: dict[str, Any]) -> str:
    """A readable rendering of the status."""
    cells = st.get("cells", {})
    counts = status_counts(cells)
    lines = [f"# Study `{st.get('study')}`: {st.get('phase')}", "",
             f"- updated: {st.get('updated_at')}",
             f"- study file: `{st.get('study_file')}`",
             f"- runs: {len(cells)} planned; " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
             f"- excluded by the plan filter: {st.get('n_excluded', 0)} cells (see plan_filter_report.md)"]
    if st.get("synthetic_datasets"):
        lines.append(f"- **SYNTHETIC DATA**: datasets {', '.join(st['synthetic_datasets'])} are simulated, "
                     "not real screens")
    if st.get("invocation"):
        inv = st["invocation"]
        lines.append(f"- last invocation: executor {inv.get('executor')}, chunk {inv.get('chunk')}, "
                     f"ran {inv.get('ran', 0)} runs")
    if st.get("recovery"):
        rec = st["recovery"]
        lines += ["", "## Recovered state", "", f"{rec.get('reason')}", "",
                  f"- damaged status kept as `{rec.get('backup')}`" if rec.get("backup") else "",
                  f"- finished runs recovered from the store: {rec.get('recovered', 0)}"]
    if st.get("error"):
        lines += ["", "## Error", "", "```", str(st["error"]).strip(), "```"]
    lines += ["", "## Suggested next step", "", str(st.get("next_step") or "nothing to do"), ""]
    if st.get("last_artifacts"):
        lines += ["## Last successful artifacts", ""] + [f"- `{a}`" for a in st["last_artifacts"]] + [""]
    dmg = [(k, d) for k, c in cells.items() for d in c.get("damaged", [])]
    if dmg:
        lines += ["## Damaged runs (kept; their cells ran again)", "", "| key | run id | file | reason |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {d.get('run_id')} | {d.get('file')} | {str(d.get('reason')).replace('|', '/')} |"
                  for k, d in dmg] + [""]
    lines += ["## Runs", "", "| key | label | split | seed | status | run id |", "|---|---|---|---|---|---|"]
    for k, c in cells.items():
        lines.append(f"| {k} | {c['label']} | {c['split']} | {c['seed']} | {c['status']} | {c.get('run_id') or ''} |")
    return "\n".join(line for line in lines if line is not None) + "\n"


def status_json(study_dir: Path) -> dict[str, Any]:
    """A machine-readable digest of a study's status (``study status --json``)."""
    sr = read_status(study_dir)
    if sr.data is None:
        return {"study_dir": str(study_dir), "phase": None, "status_file": str(study_dir / STATUS_JSON),
                "problem": sr.problem or "no study_status.json (the study has not run)"}
    st = sr.data
    cells = st.get("cells", {})
    return {"study": st.get("study"), "study_dir": str(study_dir), "phase": st.get("phase"),
            "counts": status_counts(cells), "total": len(cells), "error": st.get("error"),
            "next_step": st.get("next_step"), "synthetic_datasets": st.get("synthetic_datasets", []),
            "recovery": st.get("recovery"), "updated_at": st.get("updated_at"), "cells": cells}


__all__ = ["CELL_STATES", "STATUS_JSON", "STATUS_MD", "StatusRead", "StudyLockedError", "load_status",
           "read_status", "reconcile", "run_lock", "set_aside_damaged_status", "status_json", "status_md",
           "write_status"]
