"""Raw vs calibrated scores of every baseline and CGIO on the real subsets.

Runs each model through ``pfm-bench run`` (default panels: every standard panel, with
the baseline / split-half replicate / independent-control / train-mean references) on
the tasks of ``model_accuracy.py``, and prints, per task and model, for a headline
metric of every panel: the raw value, the calibrated value
``(U - B) / (R - B)`` over the task's resolved groups (pooled over its splits), the
number of unresolvable groups, and for the delta-based ``pcc_delta`` its
independent-control value (shared-control inflation). Each run is a fresh process.

    python benchmarks/calibrated_scores.py [--only devel-doubles,papalexi] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_accuracy import pfm, tasks  # noqa: E402

MODELS = ["control-mean", "train-mean", "additive", "linear", "cgio"]
HEADLINE = [("basic", "pcc_delta"), ("basic", "mse"), ("scperturbench", "edistance"), ("vcc", "discrimination_score_l1"),
            ("vcc", "overlap_at_N"), ("perturbench", "cosine_logfc"), ("vcc2026", "pds_cosine"),
            ("deg_weighted", "wmse")]


def run_one(store: Path, model: str, sid: str) -> dict[str, Any]:
    run_dir = Path(pfm(store, "run", "--model", model, "--split", sid))
    m = json.loads((run_dir / "metrics.json").read_text())
    out: dict[str, Any] = {"fit_s": m["timing_seconds"].get("fit"), "metrics": {}}
    for panel, key in HEADLINE:
        e = m["panels"].get(panel, {}).get("metrics", {}).get(key)
        if e is None or "not_applicable" in e or "per_group" not in e:
            out["metrics"][f"{panel}.{key}"] = None
            continue
        cal = e.get("calibrated", {})
        rows = {}
        for g, u in e["per_group"].items():
            c = cal.get("per_group", {}).get(g)
            rows[g] = {"u": u, "b": e["baseline"]["per_group"].get(g), "r": e["replicate"]["per_group"].get(g),
                       "resolved": c is not None,
                       "indep": (e.get("indep_ctrl") or {}).get("per_group", {}).get(g)}
        out["metrics"][f"{panel}.{key}"] = rows
    return out


def summarise(results: list[dict[str, Any]], metric: str) -> dict[str, float | int | None]:
    rows = [r for res in results for r in (res["metrics"].get(metric) or {}).values()]
    if not rows:
        return {"raw": None, "cal": None, "n_unres": None, "indep": None}
    u = np.array([r["u"] for r in rows])
    res_rows = [r for r in rows if r["resolved"]]
    cal = None
    if res_rows:
        U, B, R = (float(np.mean([r[k] for r in res_rows])) for k in ("u", "b", "r"))
        cal = (U - B) / (R - B) if R != B else None
    ind = [r["indep"] for r in rows if r["indep"] is not None]
    return {"raw": float(u.mean()), "cal": cal, "n_unres": len(rows) - len(res_rows),
            "indep": float(np.mean(ind)) if ind else None}


def f(x: float | None, d: int = 3) -> str:
    """3 significant digits (undefined: –, never 0)."""
    return "–" if x is None else f"{x:.{d}g}" if abs(x) < 0.01 and x != 0 else f"{x:.{d}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated task names")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="", help="write the raw results as JSON here")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        splits = [t for t in tasks(store) if not args.only or t[0] in args.only.split(",")]
        jobs = [(task, sid, m) for task, sid, _g in splits for m in models]
        with ThreadPoolExecutor(args.jobs) as ex:
            outs = list(ex.map(lambda j: run_one(store, j[2], j[1]), jobs))
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (task, _sid, m), o in zip(jobs, outs):
        by.setdefault((task, m), []).append(o)
    if args.out:
        Path(args.out).write_text(json.dumps({f"{t}|{m}": v for (t, m), v in by.items()}))
    metrics = [f"{p}.{k}" for p, k in HEADLINE]
    print("| task | model | " + " | ".join(f"{m.split('.')[1]} raw / cal" for m in metrics)
          + " | pcc_delta indep. ctrl |")
    print("|---|---|" + "---|" * (len(metrics) + 1))
    for (task, m), results in by.items():
        cells = []
        for met in metrics:
            s = summarise(results, met)
            cells.append(f"{f(s['raw'])} / {f(s['cal'], 2)}" + (f" ({s['n_unres']}u)" if s["n_unres"] else ""))
        pcc = summarise(results, "basic.pcc_delta")
        print(f"| {task} | {m} | " + " | ".join(cells) + f" | {f(pcc['indep'])} |")
    print("\nraw: mean over the task's held-out groups; cal: (U - B) / (R - B) over its resolved groups "
          "(0 = mean-response baseline, 1 = split-half replicate); (ku): k unresolvable groups left out.")


if __name__ == "__main__":
    main()
