"""``summary.csv`` / ``summary.json``: one row per planned run with model label,
split, seed, run id, status, whether the data are synthetic, and every global metric
raw (``panel.key``) and calibrated (``panel.key.calibrated``: 0 = mean-response
baseline, 1 = split-half replicate; empty where undefined)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from perturbfm.fsio import atomic_write_json, atomic_write_text

BASE_COLUMNS = ["label", "model", "split", "split_id", "seed", "key", "run_id", "status", "synthetic"]
CALIBRATED = ".calibrated"


def summary_rows(cells: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """(rows, metric columns, metric meta: column -> {higher_is_better, definition})."""
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    meta: dict[str, Any] = {}
    for c in cells.values():
        row: dict[str, Any] = {"label": c["label"], "model": c["model"], "split": c["split"],
                               "split_id": c["split_id"], "seed": c["seed"], "key": c["key"],
                               "run_id": c.get("run_id") or "", "status": c["status"]}
        if c["status"] == "succeeded":
            m = json.loads((Path(c["run_dir"]) / "metrics.json").read_text())
            row["synthetic"] = bool(m.get("synthetic"))
            for pname, panel in m.get("panels", {}).items():
                for k, e in panel.get("metrics", {}).items():
                    col = f"{pname}.{k}"
                    if col not in columns:
                        columns.append(col)
                        meta[col] = {"higher_is_better": e.get("higher_is_better"), "definition": e.get("definition")}
                    row[col] = None if "not_applicable" in e else float(e["global"])
                    cal = (e.get("calibrated") or {}).get("global")
                    row[col + CALIBRATED] = None if cal is None else float(cal)
                    if "not_applicable" in e:
                        row[f"{col}__not_applicable"] = e["not_applicable"]
        rows.append(row)
    return rows, columns, meta


def write_summary(study_dir: Path, cells: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Write ``summary.csv`` and ``summary.json`` atomically."""
    rows, columns, meta = summary_rows(cells)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    out_cols = [x for c in columns for x in (c, c + CALIBRATED)]
    w.writerow(BASE_COLUMNS + out_cols)
    for r in rows:
        w.writerow([r.get(k, "") for k in BASE_COLUMNS]
                   + ["" if r.get(c) is None else repr(r[c]) for c in out_cols])
    atomic_write_text(study_dir / "summary.csv", buf.getvalue())
    atomic_write_json(study_dir / "summary.json", {
        "metrics": meta, "rows": rows,
        "convention": "global value of each metric: per group -> mean per context -> mean weighted by true cells; "
                      "<metric>.calibrated = (raw - baseline) / (replicate - baseline) over resolved groups",
    })
    return rows, columns
