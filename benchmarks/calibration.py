"""Calibration of predicted uncertainty on the real data subsets (see shared/data/README.md),
through the ``pfm-bench`` CLI (one subprocess per step, temporary store).

Models:
  * ``cgio`` (its own predictive variance),
  * ``linear --ensemble 5 --set run.ensemble_mode=bootstrap`` (the linear baseline gives no
    variance on its own; the bootstrap ensemble's spread is its variance).

Tasks:
  * papalexi: unseen single knock-outs, 5 folds over the 25 targets with >= 20 confident
    cells (same folds as benchmarks/cgio_vs_baselines.py). Per fold an ``explicit`` split:
    test = the fold, calibration = ``--n-cal`` (default 5) of the other targets drawn with
    ``default_rng([seed, fold])``, train = the rest.
  * devel-glioma: ``context-ood`` for each of A172 / T98G / U87MG with
    ``calibration_fraction`` (default 0.4) of the *training* groups (K562 + the two other
    lines) moved to calibration.

Every run uses ``--conformal`` and ``run.panels=[basic,uncertainty]``; the numbers come from
each run's ``calibration.json`` (Gaussian block, conformal block, nll, aurc,
aurc_random_reference, ood_auroc). Per task the runs are pooled by a mean weighted by the
number of test groups (each run has one context, where the core's global value is the plain
mean over groups). AURC is the mean of the runs' AURC next to the mean of the random-ranking
reference measured in the same runs, and ``below`` counts runs whose AURC is below it.

Split conformal per gene needs ceil((n+1)L) <= n calibration scores for a finite interval
at level L, i.e. n >= L / (1 - L): 4 for 80%, 9 for 90%, 19 for 95%. With 5 calibration groups
the 90% and 95% intervals are infinite (coverage 1 by construction). The harness does NOT pool
calibration scores across genes (that would need exchangeability across genes); the table
says where a level is infinite.

Usage: .venv/bin/python benchmarks/calibration.py [--n-cal 5] [--cal-fraction 0.4] [--jobs 2]
           [--cgio-set model.epochs=40 ...] [--only papalexi|glioma]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LEVELS = ("80", "90", "95")
#: CGIO defaults take ~2-3 min per fold on 2 shared CPU cores; these keep the whole benchmark in minutes.
CGIO_FAST = ["model.epochs=40", "model.patience=10", "model.cv_folds=2", "model.max_nodes=1000"]


def shared() -> Path:
    raw = Path(os.environ.get("PFM_SHARED_DATA", "../shared/data"))
    return (raw if raw.is_absolute() else REPO / raw).resolve()


def pfm_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("pfm-bench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "perturbfm.cli"]


def pfm(store: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run([*pfm_cmd(), "--store", str(store), *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"pfm-bench {' '.join(args[:3])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout.strip().splitlines()[-1].strip()


def papalexi_splits(store: Path, n_cal: int, seed: int) -> list[tuple[str, str]]:
    import anndata as ad

    path = shared() / "papalexi2021_thp1/papalexi2021_thp1_lowmoi.h5ad"
    ds = last_line(pfm(store, "data", "import", str(path), "--perturbation-key", "perturbation", "--control",
                       "control", "--opt", "obs_filter=confident_assignment=True", "--expression", "counts"))
    obs = ad.read_h5ad(path, backed="r").obs
    counts = obs.loc[obs["confident_assignment"].astype(bool), "perturbation"].astype(str).value_counts()
    targets = sorted(f"{t}@all" for t, n in counts.items() if t != "control" and n >= 20)
    perm = np.random.default_rng(0).permutation(len(targets))
    out = []
    for i, fold in enumerate(np.array_split(perm, 5)):
        test = sorted(targets[j] for j in fold)
        rest = [t for t in targets if t not in test]
        cal = sorted(np.random.default_rng([seed, i]).choice(rest, n_cal, replace=False).tolist())
        sid = last_line(pfm(store, "splits", "create", "--dataset", ds, "--generator", "explicit",
                            "--test", ",".join(test), "--param", "calibration=" + ",".join(cal)))
        out.append((f"fold{i}", sid))
    return out


def glioma_splits(store: Path, cal_fraction: float, seed: int) -> list[tuple[str, str]]:
    path = shared() / "perturbench_devel/norman19_mcfaline23_devel.h5ad"
    ds = last_line(pfm(store, "data", "import", str(path), "--perturbation-key", "condition", "--control", "control",
                       "--context-key", "cell_type"))
    return [(f"holdout-{line}", last_line(pfm(store, "splits", "create", "--dataset", ds, "--generator", "context-ood",
                                              "--context", line, "--seed", str(seed),
                                              "--param", f"calibration_fraction={cal_fraction}")))
            for line in ("A172", "T98G", "U87MG")]


def model_args(name: str, cgio_sets: list[str]) -> list[str]:
    if name == "linear":
        return ["--model", "linear", "--ensemble", "5", "--set", "run.ensemble_mode=bootstrap"]
    return ["--model", "cgio", *[a for s in cgio_sets for a in ("--set", s)]]


def one_run(store: Path, task: str, fold: str, split: str, model: str, cgio_sets: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = pfm(store, "run", "--split", split, *model_args(model, cgio_sets), "--conformal",
               "--set", "run.panels=[basic,uncertainty]", check=False)
    dt = time.perf_counter() - t0
    rec: dict[str, Any] = {"task": task, "fold": fold, "model": model, "seconds": dt}
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
        rec["error"] = f"exit {proc.returncode}: {err[:200]}"
        print(f"  {task}/{fold} {model}: FAILED {rec['error']}", file=sys.stderr)
        return rec
    run_dir = Path(last_line(proc))
    cal = json.loads((run_dir / "calibration.json").read_text())
    met = json.loads((run_dir / "metrics.json").read_text())
    rec.update(cal=cal, n_groups=met["n_groups"], fit_s=met["timing_seconds"]["fit"])
    print(f"  {task}/{fold} {model}: {dt:.0f}s (fit {rec['fit_s']:.0f}s)", file=sys.stderr)
    return rec


def _wmean(vals: list[float], w: list[int]) -> float:
    return float(np.average(vals, weights=w)) if vals else math.nan


def _na_reason(entry: Any) -> str | None:
    return entry.get("not_applicable") if isinstance(entry, dict) else None


def summarise(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["task"], r["model"]) for r in recs}, key=lambda k: (k[0], k[1]))
    for task, model in keys:
        rs = [r for r in recs if r["task"] == task and r["model"] == model]
        ok = [r for r in rs if "cal" in r]
        failed = [f"{r['fold']}: {r['error']}" for r in rs if "error" in r]
        w = [r["n_groups"] for r in ok]
        base = {"task": task, "model": model, "runs": f"{len(ok)}/{len(rs)}", "failed": failed,
                "seconds": sum(r["seconds"] for r in rs)}
        if not ok:
            rows.append({**base, "kind": "-"})
            continue
        n_cal = sorted({v for r in ok for v in [r["cal"].get("conformal", {}).get("n_calibration_groups", {})
                                                  .get("pooled")] if v is not None})
        # AURC (sigma-ranked) vs the random ranking of the same runs; OOD AUROC
        aurc = [r["cal"]["aurc"] for r in ok if isinstance(r["cal"]["aurc"], float)]
        rand = [float(np.mean(list(r["cal"]["aurc_random_reference"].values()))) for r in ok
                if r["cal"].get("aurc_random_reference")]
        below = sum(1 for r in ok if isinstance(r["cal"]["aurc"], float) and r["cal"].get("aurc_random_reference")
                    and r["cal"]["aurc"] < np.mean(list(r["cal"]["aurc_random_reference"].values())))
        ood = [r["cal"]["ood_auroc"] for r in ok]
        ood_s = (f"{np.mean([o for o in ood if isinstance(o, float)]):.3f}"
                 if all(isinstance(o, float) for o in ood) else "n/a")
        ood_why = sorted({_na_reason(o) for o in ood if _na_reason(o)})
        common = {"aurc": float(np.mean(aurc)) if aurc else math.nan, "aurc_random": float(np.mean(rand)) if rand
                  else math.nan, "below": f"{below}/{len(ok)}", "ood": ood_s, "ood_why": ood_why, "n_cal": n_cal}
        gauss = [r["cal"]["gaussian"] for r in ok]
        if all("coverage" in g for g in gauss):
            nll = [r["cal"]["nll"] for r in ok]
            rows.append({**base, **common, "kind": "gaussian",
                         **{lv: _wmean([g["coverage"][lv] for g in gauss], w) for lv in LEVELS},
                         "nll": _wmean(nll, w) if all(isinstance(x, float) for x in nll) else math.nan})
        else:
            rows.append({**base, **common, "kind": "gaussian", "na": gauss[0].get("not_applicable")})
        conf = [r["cal"]["conformal"] for r in ok]
        inf_lv = sorted({lv for c in conf for lvs in c.get("levels_with_infinite_intervals", {}).values()
                         for lv in lvs if str(lv) in LEVELS})
        rows.append({**base, **common, "kind": "conformal",
                     **{lv: _wmean([c["coverage"][lv] for c in conf], w) for lv in LEVELS},
                     "nll": math.nan, "infinite": inf_lv})
    return rows


def fmt(x: Any, g: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}" if g else f"{x:.3f}"


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    head = ["task", "model", "interval", "runs", "n_cal", "cov80", "cov90", "cov95", "max|cov-nom|", "NLL",
            "AURC", "AURC_rand", "below", "OOD_AUROC"]
    lines = [head]
    for r in rows:
        cov = [r.get(lv) for lv in LEVELS]
        dev = max(abs(c - int(lv) / 100) for c, lv in zip(cov, LEVELS)) if all(c is not None for c in cov) else None
        cov_s = [fmt(c) + ("*" if int(lv) in r.get("infinite", []) else "") for c, lv in zip(cov, LEVELS)]
        if r.get("na"):
            cov_s = ["n/a"] * 3
        lines.append([r["task"], r["model"], r["kind"], r["runs"], ",".join(map(str, r.get("n_cal", []))) or "-",
                      *cov_s, fmt(dev), fmt(r.get("nll"), True), fmt(r.get("aurc"), True), fmt(r.get("aurc_random"), True),
                      r.get("below", "-"), r.get("ood", "-")])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    print(f"\nCalibration on real data (papalexi: {args.n_cal} calibration groups per fold; glioma: "
          f"calibration_fraction {args.cal_fraction} of the training groups). Coverage: test-group-weighted mean "
          "over folds of the run's global coverage (share of (group, gene) deltas inside the interval).")
    for line in lines:
        print("  ".join(str(c).ljust(wd) for c, wd in zip(line, widths)))
    print("\n* = the interval at that level is infinite for at least one fold (too few calibration groups: "
          "split conformal needs n >= L/(1-L): 4 at 80%, 9 at 90%, 19 at 95%); its coverage is 1 by construction.")
    print("AURC: sigma-ranked risk-coverage area (lower is better); AURC_rand: expected AURC under a random ranking "
          "in the same runs; below: runs with AURC < AURC_rand.")
    for r in rows:
        if r.get("na"):
            print(f"{r['task']}/{r['model']}: gaussian not applicable: {r['na']}")
        for why in r.get("ood_why", []) if r["kind"] == "conformal" else []:
            print(f"{r['task']}/{r['model']}: OOD AUROC not applicable: {why}")
        for f in r["failed"] if r["kind"] in ("conformal", "-") else []:
            print(f"{r['task']}/{r['model']}: FAILED {f}")
    goal = []
    for r in rows:
        if r["kind"] == "conformal" and all(r.get(lv) is not None for lv in LEVELS):
            bad = [lv for lv in LEVELS if abs(r[lv] - int(lv) / 100) > 0.03]
            goal.append(f"{r['task']}/{r['model']}: conformal within 0.03 of nominal at "
                        f"{'every level' if not bad else 'levels other than ' + ','.join(bad)}; "
                        f"AURC {'below' if r['aurc'] < r['aurc_random'] else 'NOT below'} random "
                        f"({r['below']} runs)")
    print("\nGoal check (conformal coverage within 0.03 of nominal at 80/90/95; AURC below random):")
    for g in goal:
        print("  " + g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cal", type=int, default=5, help="papalexi calibration groups per fold")
    ap.add_argument("--cal-fraction", type=float, default=0.4, help="glioma calibration_fraction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="parallel pfm-bench runs")
    ap.add_argument("--cgio-set", action="append", default=None,
                    help=f"CGIO overrides (default: {' '.join(CGIO_FAST)}); pass 'none' for CGIO's defaults")
    ap.add_argument("--only", choices=["papalexi", "glioma"], default=None)
    ap.add_argument("--models", default="cgio,linear")
    ap.add_argument("--keep-store", action="store_true")
    args = ap.parse_args()
    cgio_sets = CGIO_FAST if args.cgio_set is None else [s for s in args.cgio_set if s != "none"]
    store = Path(tempfile.mkdtemp(prefix="pfm-calib-"))
    t_all = time.perf_counter()
    try:
        jobs = []
        if args.only in (None, "papalexi"):
            jobs += [("papalexi", f, s) for f, s in papalexi_splits(store, args.n_cal, args.seed)]
        if args.only in (None, "glioma"):
            jobs += [("devel-glioma", f, s) for f, s in glioma_splits(store, args.cal_fraction, args.seed)]
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        print(f"store {store}; {len(jobs)} splits x {len(models)} models; cgio overrides: {cgio_sets}",
              file=sys.stderr)
        todo = [(t, f, s, m) for m in models for t, f, s in jobs]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            recs = list(pool.map(lambda j: one_run(store, j[0], j[1], j[2], j[3], cgio_sets), todo))
        rows = summarise(recs)
        print_table(rows, args)
        tot = {m: sum(r["seconds"] for r in recs if r["model"] == m) for m in models}
        print(f"\nwall {time.perf_counter() - t_all:.0f}s with {args.jobs} parallel runs; summed run seconds: "
              + ", ".join(f"{m} {s:.0f}s" for m, s in tot.items()))
    finally:
        if args.keep_store:
            print(f"store kept at {store}", file=sys.stderr)
        else:
            shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
