"""``study_status.json`` and ``study_status.md``: where a study stands.

The status maps each cell key to its run id and status, and says the phase,
finished runs, last successful artifacts, the error and a suggested next step.
Both files are written atomically. Deleting ``study_status.json`` starts the
study afresh (the worker records under ``cells/`` are then discarded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perturbfm.fsio import atomic_write_json, atomic_write_text
from perturbfm.store import utc_now
from perturbfm.study.jobs import read_cell_record

STATUS_JSON = "study_status.json"
STATUS_MD = "study_status.md"


def run_finished(run_dir: str | Path | None) -> bool:
    """A run counts as finished when its ``run_status.json`` says succeeded and
    ``metrics.json`` exists."""
    if not run_dir:
        return False
    d = Path(run_dir)
    try:
        st = json.loads((d / "run_status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return st.get("status") == "succeeded" and (d / "metrics.json").is_file()


def run_state(run_dir: str | Path | None) -> str:
    """``succeeded``, ``failed``, ``interrupted`` (running / no metrics) or ``missing``."""
    if not run_dir or not Path(run_dir).is_dir():
        return "missing"
    if run_finished(run_dir):
        return "succeeded"
    try:
        st = json.loads((Path(run_dir) / "run_status.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        st = None
    return "failed" if st == "failed" else "interrupted"


def load_status(study_dir: Path) -> dict[str, Any] | None:
    """The previous status, or None (start afresh)."""
    try:
        return json.loads((study_dir / STATUS_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def reconcile(study_dir: Path, cells: list[Any], previous: dict[str, Any] | None,
              live: bool = False) -> dict[str, dict[str, Any]]:
    """Key -> {label, split, seed, run_id, run_dir, status, attempts} from the
    previous status and the worker records, checked against the run dirs
    (``live``: a run dir still in progress counts as ``running``, not ``interrupted``)."""
    prev_cells = (previous or {}).get("cells", {})
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        entry: dict[str, Any] = {**c.describe(), "run_id": None, "run_dir": None, "status": "pending", "attempts": []}
        old = prev_cells.get(c.key) or {}
        rec = read_cell_record(study_dir, c.key) if previous is not None else None
        for src in (old, rec or {}):
            if src.get("run_id"):
                entry["run_id"], entry["run_dir"] = src["run_id"], src.get("run_dir")
            for a in src.get("previous_attempts", src.get("attempts", [])):
                if a not in entry["attempts"]:
                    entry["attempts"].append(a)
        if entry["run_dir"]:
            state = run_state(entry["run_dir"])
            entry["status"] = "succeeded" if state == "succeeded" else ("failed" if state == "failed" else
                                                                        "running" if live else "interrupted")
            if state == "missing":
                entry["status"] = "pending"
                entry["note"] = f"run dir {entry['run_dir']} is gone; the cell will run again"
        if rec and rec.get("status") == "skipped":
            entry["status"] = "pending"
        if rec and rec.get("error") and entry["status"] != "succeeded":
            entry["error"] = rec["error"]
            if rec.get("state") == "failed" and entry["status"] in ("interrupted", "running"):
                entry["status"] = "failed"  # e.g. the run raised after its metrics were written
        out[c.key] = entry
    return out


def write_status(study_dir: Path, status: dict[str, Any]) -> None:
    """Write ``study_status.json`` and ``study_status.md`` atomically."""
    status = {**status, "updated_at": utc_now()}
    atomic_write_json(study_dir / STATUS_JSON, status)
    atomic_write_text(study_dir / STATUS_MD, status_md(status))


def status_md(st: dict[str, Any]) -> str:
    """A readable rendering of the status."""
    cells = st.get("cells", {})
    counts: dict[str, int] = {}
    for c in cells.values():
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    lines = [f"# Study `{st.get('study')}`: {st.get('phase')}", "",
             f"- updated: {st.get('updated_at')}",
             f"- study file: `{st.get('study_file')}`",
             f"- runs: {len(cells)} planned; " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
             f"- excluded by the plan filter: {st.get('n_excluded', 0)} cells (see plan_filter_report.md)"]
    if st.get("invocation"):
        inv = st["invocation"]
        lines.append(f"- last invocation: executor {inv.get('executor')}, chunk {inv.get('chunk')}, "
                     f"ran {inv.get('ran', 0)} runs")
    if st.get("error"):
        lines += ["", "## Error", "", "```", str(st["error"]).strip(), "```"]
    lines += ["", "## Suggested next step", "", str(st.get("next_step") or "nothing to do"), ""]
    if st.get("last_artifacts"):
        lines += ["## Last successful artifacts", ""] + [f"- `{a}`" for a in st["last_artifacts"]] + [""]
    lines += ["## Runs", "", "| key | label | split | seed | status | run id |", "|---|---|---|---|---|---|"]
    for k, c in cells.items():
        lines.append(f"| {k} | {c['label']} | {c['split']} | {c['seed']} | {c['status']} | {c.get('run_id') or ''} |")
    return "\n".join(lines) + "\n"
