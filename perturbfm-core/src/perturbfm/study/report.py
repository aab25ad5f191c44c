"""A study's ``report.html``: banners, status, mean +- sd per label x split over
seeds, plots, claims with status, exclusions and links to run reports.

Results on simulated data are marked everywhere they appear: a study banner, a
``data`` column (``SYNTHETIC`` / ``real``) in the results, claims and runs tables.
Run files that no longer read back are skipped here (the status marks the cell
damaged), never a crash."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from perturbfm.fsio import atomic_write_json, atomic_write_text
from perturbfm.hashing import sha256_json
from perturbfm.report import _png, banners, render_template
from perturbfm.study.integrity import RunDamaged, read_json_object

LEADERBOARDS_INDEX = "leaderboards.json"


def _data_mark(synthetic: Any) -> str:
    return "SYNTHETIC" if synthetic else "real" if synthetic is not None else "?"


def _study_banners(cells: dict[str, dict[str, Any]], status: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    syn = status.get("synthetic_datasets") or []
    if syn:
        seen.append(f"SYNTHETIC DATA: dataset{'s' if len(syn) > 1 else ''} {', '.join(syn)} of this study "
                    f"{'are' if len(syn) > 1 else 'is'} simulated, not a real screen; results and claims on "
                    f"{'them' if len(syn) > 1 else 'it'} are marked SYNTHETIC and say nothing about real responses")
    for c in cells.values():
        if c["status"] != "succeeded":
            continue
        d = Path(c["run_dir"])
        try:
            m = read_json_object(d / "metrics.json")
            p = read_json_object(d / "provenance.json")
        except RunDamaged:
            continue
        for b in banners(m, p):
            if syn and b.startswith("SYNTHETIC"):
                continue
            text = f"{b} (split {c['split']})" if b.startswith("UNVERIFIED") else b
            if text not in seen:
                seen.append(text)
    return seen


def render_study_report(name: str, status: dict[str, Any], rows: list[dict[str, Any]], columns: list[str],
                        claims: list[dict[str, Any]], exclusions: list[Any], *,
                        leaderboards: list[dict[str, Any]] | None = None) -> str:
    """The HTML text of a study report (template ``study_report.html.j2``;
    ``leaderboards``: see :func:`write_leaderboards`)."""
    cells = status.get("cells", {})
    syn_splits = set(status.get("synthetic_splits") or [])
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["split"]), []).append(r)
    results = []
    for (label, split), rs in groups.items():
        syn_rows = [r.get("synthetic") for r in rs if r.get("synthetic") is not None]
        ok = [r for r in rs if r["status"] == "succeeded"]
        cellv = []
        for col in columns:
            vals = [r[col] for r in ok if r.get(col) is not None]
            cellv.append(f"{np.mean(vals):.4g} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.2g}" if vals else "–")
        mark = _data_mark(any(syn_rows) or split in syn_splits if syn_rows or syn_splits else None)
        results.append([label, split, mark, f"{len(ok)}/{len(rs)}"] + cellv)
    return render_template(
        "study_report.html.j2", name=name, banners=_study_banners(cells, status), phase=str(status.get("phase")),
        n_succeeded=sum(1 for c in cells.values() if c["status"] == "succeeded"), n_cells=len(cells),
        next_step=str(status.get("next_step")), error=str(status["error"]) if status.get("error") else "",
        columns=list(columns), results=results,
        bars=_bars(groups, columns[:4]) if columns and any(r["status"] == "succeeded" for r in rows) else None,
        show_leaderboards=leaderboards is not None or status.get("phase") not in (None, "complete"),
        leaderboards=None if leaderboards is None else [_board_view(b) for b in leaderboards],
        claims=[{"id": c["id"], "statement": c.get("statement") or "", "data": _data_mark(c.get("synthetic")),
                 "status": c["status"], "test": c["test"], "n": c.get("n", 0), "statistic": c.get("statistic", ""),
                 "ci_p": str(c.get("ci") or c.get("p_value") or ""), "reason": c.get("reason", "")} for c in claims],
        exclusions=[[e.kind, e.entry, e.cells, e.reason] for e in exclusions],
        runs=[{"label": c["label"], "split": c["split"], "seed": c["seed"], "status": c["status"],
               "data": _data_mark(c["split"] in syn_splits if "synthetic_splits" in status else None),
               "run_id": c.get("run_id") or "", "run_dir": str(c.get("run_dir"))} for c in cells.values()])


def _board_view(b: dict[str, Any]) -> dict[str, Any]:
    """A leaderboard entry as the template shows it (``error`` set when it was not produced)."""
    return {"split": b["split"], "link": b["link"], "error": b.get("error"), "reference": str(b.get("reference")),
            "rows": b.get("rows") or []}


def _bars(groups: dict[tuple[str, str], list[dict[str, Any]]], columns: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({s for _, s in groups})
    labels = list(dict.fromkeys(lbl for lbl, _ in groups))
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 3.0), squeeze=False)
    width = 0.8 / max(1, len(splits))
    for ax, col in zip(axes[0], columns):
        for j, s in enumerate(splits):
            means, sds = [], []
            for lbl in labels:
                vals = [r[col] for r in groups.get((lbl, s), []) if r["status"] == "succeeded" and r.get(col) is not None]
                means.append(float(np.mean(vals)) if vals else np.nan)
                sds.append(float(np.std(vals)) if vals else 0.0)
            ax.bar(np.arange(len(labels)) + j * width, means, width, yerr=sds, label=s)
        ax.set_xticks(np.arange(len(labels)) + width * (len(splits) - 1) / 2, labels, rotation=45, fontsize=7)
        ax.set_title(col, fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def write_leaderboards(out_root: Path, status: dict[str, Any]) -> list[dict[str, Any]]:
    """One comparison (:func:`perturbfm.compare.compare_runs`) per split of the study's
    succeeded runs, in ``out_root/<split>/``; each entry: split, link, summary rows
    (stratum ``all``) or the error that prevented it."""
    from perturbfm.compare import compare_runs

    by_split: dict[str, list[dict[str, Any]]] = {}
    for c in status.get("cells", {}).values():
        if c.get("status") == "succeeded" and c.get("run_dir"):
            by_split.setdefault(str(c["split"]), []).append(c)
    out: list[dict[str, Any]] = []
    cache = _cached_boards(out_root)
    for split, cs in sorted(by_split.items()):
        folder = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
        key = _board_key(split, cs)
        if key in cache and cache[key]["split"] == split and (out_root / folder / "compare.html").is_file():
            out.append(cache[key])
            continue
        entry: dict[str, Any] = {"split": split, "link": f"{out_root.name}/{folder}/compare.html", "key": key}
        try:
            res = compare_runs([c["run_dir"] for c in cs], out_root / folder, labels=[c["label"] for c in cs])
        except Exception as exc:  # the study report is still written; the reason is shown
            entry["error"] = f"{type(exc).__name__}: {exc}"
            out.append(entry)
            continue
        entry["rows"] = [
            [m["id"], r["row"], _iv(r.get("raw")), _iv((r.get("raw_vs_reference") or {}).get("difference")),
             _verdict(r, "raw_vs_reference"), _iv(r.get("calibrated")), _verdict(r, "calibrated_vs_reference")]
            for m in res["metrics"] for r in m["strata"].get("all", {}).get("rows", [])
            if r["kind"] == "model" and not r.get("not_applicable")]
        entry["reference"] = res["reference"]
        out.append(entry)
    try:
        atomic_write_json(out_root / LEADERBOARDS_INDEX, {"boards": [b for b in out if "error" not in b]})
    except (OSError, ValueError, TypeError):  # a cache only: the report is still written
        pass
    return out


def _board_key(split: str, cells: list[dict[str, Any]]) -> str:
    """What a split's leaderboard depends on: its runs (id, label) and their metrics.json."""
    parts = []
    for c in sorted(cells, key=lambda c: (Path(c["run_dir"]).name, str(c["label"]))):
        try:
            st = (Path(c["run_dir"]) / "metrics.json").stat()
            fp = [st.st_size, st.st_mtime_ns]
        except OSError:
            fp = None
        parts.append([Path(c["run_dir"]).name, str(c["label"]), fp])
    return sha256_json({"split": split, "runs": parts})[:32]


def _cached_boards(out_root: Path) -> dict[str, dict[str, Any]]:
    """Leaderboards written by an earlier invocation, by key (reused when nothing they depend on changed)."""
    try:
        boards = read_json_object(out_root / LEADERBOARDS_INDEX).get("boards")
    except RunDamaged:
        return {}
    if not isinstance(boards, list):
        return {}
    return {b["key"]: b for b in boards if _board_ok(b)}


def _board_ok(b: Any) -> bool:
    """A cached board has the shape the report renders (anything else is recomputed)."""
    return (isinstance(b, dict) and all(isinstance(b.get(k), str) for k in ("key", "split", "link"))
            and isinstance(b.get("rows"), list) and all(isinstance(r, list) and len(r) == 7 for r in b["rows"])
            and all(isinstance(x, (str, int, float)) for r in b["rows"] for x in r))


def _verdict(row: dict[str, Any], key: str) -> str:
    if row.get("is_reference"):
        return "reference"
    v = (row.get(key) or {}).get("verdict")
    return "–" if v in (None, "undefined") else str(v)


def _iv(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("estimate") is None:
        return "–"
    lo, hi = iv.get("low"), iv.get("high")
    return f"{iv['estimate']:.4g}" + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else " [–]")


def write_study_report(path: Path, *args: Any) -> Path:
    """Write the study report atomically, with the per-split leaderboards in
    ``<study dir>/compare/<split>/`` (``args``: those of :func:`render_study_report`)."""
    status = args[1]
    # the leaderboards compare every finished run: written once, when the study is complete
    # (a partial study's report says so instead of recomputing them after every chunk)
    boards = write_leaderboards(path.parent / "compare", status) if status.get("phase") == "complete" else None
    atomic_write_text(path, render_study_report(*args, leaderboards=boards))
    return path
