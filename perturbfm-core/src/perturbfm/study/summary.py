"""``summary.csv`` / ``summary.json``: one row per planned run with model label,
split, seed, run id, status, whether the data are synthetic, and every global metric
raw (``panel.key``) and calibrated (``panel.key.calibrated``: 0 = mean-response
baseline, 1 = split-half replicate; empty where undefined).

``synthetic`` is set on every row, whatever its status: true when the split's
dataset is simulated (from the store) or the run's ``metrics.json`` says so.
A succeeded run whose ``metrics.json`` no longer reads back becomes a
``damaged`` row with no metric values (never a crash, never a stale number)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from perturbfm.fsio import atomic_write_json, atomic_write_text
from perturbfm.study.integrity import RunDamaged, read_run_metrics

BASE_COLUMNS = ["label", "model", "split", "split_id", "seed", "key", "run_id", "status", "synthetic"]
CALIBRATED = ".calibrated"


def summary_rows(cells: dict[str, dict[str, Any]], synthetic: dict[str, bool] | None = None,
                 ) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """(rows, metric columns, metric meta: column -> {higher_is_better, definition});
    ``synthetic``: split name -> whether its dataset is simulated."""
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    meta: dict[str, Any] = {}
    for c in cells.values():
        row: dict[str, Any] = {"label": c["label"], "model": c["model"], "split": c["split"],
                               "split_id": c["split_id"], "seed": c["seed"], "key": c["key"],
                               "run_id": c.get("run_id") or "", "status": c["status"]}
        if synthetic is not None and c["split"] in synthetic:
            row["synthetic"] = bool(synthetic[c["split"]])
        if c["status"] == "succeeded":
            try:
                m = read_run_metrics(Path(c["run_dir"]))
            except RunDamaged as exc:
                row.update(status="damaged", damaged=f"{exc.file}: {exc.reason}")
                rows.append(row)
                continue
            row["synthetic"] = bool(m.get("synthetic")) or bool(row.get("synthetic"))
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


def write_summary(study_dir: Path, cells: dict[str, dict[str, Any]], *, synthetic: dict[str, bool] | None = None,
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """Write ``summary.csv`` and ``summary.json`` atomically."""
    rows, columns, meta = summary_rows(cells, synthetic)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    out_cols = [x for c in columns for x in (c, c + CALIBRATED)]
    w.writerow(BASE_COLUMNS + out_cols)
    for r in rows:
        w.writerow([r.get(k, "") for k in BASE_COLUMNS]
                   + ["" if r.get(c) is None else repr(r[c]) for c in out_cols])
    atomic_write_text(study_dir / "summary.csv", buf.getvalue())
    syn = sorted({r["split"] for r in rows if r.get("synthetic")})
    atomic_write_json(study_dir / "summary.json", {
        "metrics": meta, "rows": rows, "synthetic": bool(syn), "synthetic_splits": syn,
        "convention": "global value of each metric: per group -> mean per context -> mean weighted by true cells; "
                      "<metric>.calibrated = (raw - baseline) / (replicate - baseline) over resolved groups",
    })
    return rows, columns
