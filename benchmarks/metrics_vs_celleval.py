"""Wall time and peak memory of PerturbFM's full metric panels against cell-eval's full profile.

One synthetic, seeded pair of .h5ad files (truth and prediction) in log1p space, one
context: ``1,000 perturbations x 100 cells x 2,000 genes`` plus 1,000 control cells
(``--scale`` multiplies the number of perturbations). The prediction file holds the
*real* control cells (so cell-eval's "each side's own controls" equals PerturbFM's
"true control mean" rule) and 100 predicted cells per perturbation.

Each side runs in a fresh Python subprocess, reading the same files:

* ours: :func:`perturbfm_metrics.commands.evaluate_files` (exactly what
  ``pfm-bench eval`` runs) with the panels ``basic, scperturbench, perturbench,
  vcc, uncertainty`` (the files carry no predicted variance, so the uncertainty
  panel records its keys as not applicable, by declaration);
* cell-eval: ``MetricsEvaluator(...).compute(profile="full")`` (its default profile:
  pdex DE of both sides + every anndata and DE metric).

CPU time (user + sys of the subprocess, all threads) is printed too: on a shared,
loaded machine it is the steadier measure. Peak memory is the peak RSS of each subprocess (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` read at its end: it counts numpy/polars/numba native allocations, which
tracemalloc does not). Times are the wall time of the evaluation call (imports and
file reading included for both: each side starts from the files). Nothing is
asserted: this is a report, with the machine load printed next to it.

Usage::

    .venv/bin/python benchmarks/metrics_vs_celleval.py [--scale 0.1] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_PERT, N_CELLS, N_GENES, N_CTRL = 1000, 100, 2000, 1000
OUR_PANELS = ("basic", "scperturbench", "perturbench", "vcc", "uncertainty")


# ----------------------------------------------------------------------------- data
def make_files(out: Path, *, n_pert: int, n_cells: int = N_CELLS, n_genes: int = N_GENES,
               n_ctrl: int = N_CTRL, seed: int = 0) -> tuple[Path, Path]:
    """Write ``truth.h5ad`` and ``pred.h5ad`` (CSR float32, log1p of Poisson counts)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    base = np.exp(rng.normal(-0.5, 1.2, n_genes))  # per-gene mean count of control cells

    def cells(mu: np.ndarray, n: int) -> sp.csr_matrix:
        lam = mu[None, :] * rng.gamma(20.0, 1 / 20.0, size=(n, 1))  # mild size-factor variation
        return sp.csr_matrix(np.log1p(rng.poisson(lam)).astype(np.float32))

    def effect() -> np.ndarray:
        lfc = np.zeros(n_genes)
        hit = rng.choice(n_genes, 40, replace=False)
        lfc[hit] = rng.normal(0.0, 1.0, hit.size)
        return lfc

    perts = [genes[p % n_genes] for p in range(n_pert)]
    t_rows, p_rows, t_lab, p_lab = [cells(base, n_ctrl)], [], ["control"] * n_ctrl, ["control"] * n_ctrl
    p_rows.append(t_rows[0])  # the prediction's controls ARE the real controls
    for p, name in enumerate(perts):
        lfc = effect()
        lfc[p % n_genes] = np.log(0.15)  # knock-down of the target
        pred_lfc = 0.8 * lfc + rng.normal(0.0, 0.15, n_genes) * (lfc != 0)
        t_rows.append(cells(base * np.exp(lfc), n_cells))
        p_rows.append(cells(base * np.exp(pred_lfc), n_cells))
        t_lab += [name] * n_cells
        p_lab += [name] * n_cells
    var = pd.DataFrame(index=genes)
    paths = []
    for fname, rows, lab in (("truth.h5ad", t_rows, t_lab), ("pred.h5ad", p_rows, p_lab)):
        X = sp.vstack(rows, format="csr")
        obs = pd.DataFrame({"perturbation": pd.Categorical(lab)}, index=[f"{fname[0]}{i}" for i in range(len(lab))])
        ad.AnnData(X=X, obs=obs, var=var.copy()).write_h5ad(out / fname)
        paths.append(out / fname)
        del X
    return paths[0], paths[1]


# ----------------------------------------------------------------------------- sides
def side_ours(truth: str, pred: str, outdir: str) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    from perturbfm_metrics.commands import evaluate_files

    m = evaluate_files(pred, truth, perturbation_key="perturbation", control="control", panels=OUR_PANELS)
    wall = time.perf_counter() - t0
    Path(outdir, "ours_metrics.json").write_text(json.dumps(m))
    keys = {f"{p}.{k}": (e.get("global") if "global" in e else "n/a: " + e["not_applicable"])
            for p, sec in m["panels"].items() for k, e in sec["metrics"].items()}
    return {"wall_s": wall, "keys": keys}


def side_celleval(truth: str, pred: str, outdir: str, threads: int) -> dict:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    from cell_eval import MetricsEvaluator

    ev = MetricsEvaluator(adata_pred=pred, adata_real=truth, control_pert="control", pert_col="perturbation",
                          num_threads=threads, outdir=outdir)
    results, agg = ev.compute(profile="full", write_csv=False)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "n_metrics": len(results.columns) - 1, "n_rows": results.height}


def run_side(side: str, truth: Path, pred: Path, outdir: Path, threads: int) -> dict:
    """Run one side in a fresh subprocess; return its report plus its peak RSS."""
    cmd = [sys.executable, __file__, "--side", side, "--truth", str(truth), "--pred", str(pred),
           "--outdir", str(outdir), "--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{proc.stderr[-4000:]}")
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    rep["process_s"] = total
    return rep


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 1,000 perturbations")
    ap.add_argument("--threads", type=int, default=2, help="cell-eval num_threads")
    ap.add_argument("--keep", default=None, help="directory for the files (default: a temp dir)")
    ap.add_argument("--only", choices=("ours", "celleval"), default=None, help="run one side only")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--truth", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pred", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--outdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child process: one side, then its own peak RSS
        import resource

        rep = (side_ours(args.truth, args.pred, args.outdir) if args.side == "ours"
               else side_celleval(args.truth, args.pred, args.outdir, args.threads))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        rep["peak_rss_mb"] = ru.ru_maxrss / 1024  # KiB on Linux
        rep["cpu_s"] = ru.ru_utime + ru.ru_stime  # all threads; robust to a loaded machine
        print(json.dumps(rep))
        return

    n_pert = max(2, round(N_PERT * args.scale))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        truth, pred = d / "truth.h5ad", d / "pred.h5ad"
        if not (args.keep and truth.exists() and pred.exists()):
            truth, pred = make_files(d, n_pert=n_pert)
        print(f"data: {n_pert} perturbations x {N_CELLS} cells x {N_GENES} genes + {N_CTRL} controls, "
              f"written in {time.perf_counter() - t0:.1f} s; load before: {_load()}", flush=True)
        reps = {}
        for side in ("ours", "celleval"):
            if args.only and side != args.only:
                continue
            reps[side] = run_side(side, truth, pred, d, args.threads)
            print(f"{side:>9}: eval {reps[side]['wall_s']:8.1f} s (process {reps[side]['process_s']:.1f} s, "
                  f"CPU {reps[side]['cpu_s']:.1f} s), "
                  f"peak RSS {reps[side]['peak_rss_mb']:8.0f} MB; load after: {_load()}", flush=True)
        if "ours" in reps:
            for k, v in reps["ours"]["keys"].items():
                print(f"    {k:<45} {v if isinstance(v, str) else f'{v:.4f}'}")
        if len(reps) == 2:
            o, c = reps["ours"], reps["celleval"]
            print(f"ratio ours/cell-eval: time {o['wall_s'] / c['wall_s']:.3f} (goal <= 0.2), CPU time "
                  f"{o['cpu_s'] / c['cpu_s']:.3f}, "
                  f"peak RSS {o['peak_rss_mb'] / c['peak_rss_mb']:.3f} (goal <= 1); cell-eval computed "
                  f"{c['n_metrics']} metric columns x {c['n_rows']} perturbations; cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
