"""Wall time, CPU time and peak memory of PerturbFM's metric panels against cell-eval's full profile
and cell-eval2's ``vcc2026`` preset.

One synthetic, seeded set of files, one context: ``--n-pert`` perturbations (default 1,000;
``--scale`` multiplies it) x ``--n-cells`` cells (100) x ``--n-genes`` genes (2,000) plus
``--n-ctrl`` control cells (1,000). The same Poisson counts are written twice: ``truth.h5ad`` /
``pred.h5ad`` hold ``log1p(counts)`` (CSR float32; read by PerturbFM and cell-eval 0.8.2), and
``truth_counts.h5ad`` / ``pred_counts.h5ad`` hold the counts themselves (CSR float32, integral;
cell-eval2's ``vcc2026`` preset takes raw counts and refuses anything else). The prediction files
hold the *real* control cells (so cell-eval's "each side's own controls" equals PerturbFM's "true
control mean" rule) and ``--n-cells`` predicted cells per perturbation.

Every side runs in a fresh Python subprocess, reading the files, ``--repeats`` times (default 3):

* ``ours``: :func:`perturbfm_metrics.commands.evaluate_files` (exactly what ``pfm-bench eval``
  runs, with its baseline / replicate / independent-control references) with the panels ``basic,
  scperturbench, perturbench, vcc, vcc2026, uncertainty`` (the files carry no predicted variance,
  so the uncertainty panel records its keys as not applicable, by declaration);
* ``ours_vcc2026``: the same with the ``vcc2026`` panel only (the like-for-like side of cell-eval2);
* ``ours_vcc2026_raw``: the same without the references (the panel computed once, on the model's
  prediction: what cell-eval2 computes; the references add the baseline, five split-half replicates
  and, for delta-based metrics, the independent-control run);
* ``celleval``: cell-eval 0.8.2 ``MetricsEvaluator(...).compute(profile="full")`` (its default
  profile: pdex DE of both sides + every anndata and DE metric);
* ``celleval2``: cell-eval2 0.20.0 ``compute_metrics`` with ``EvalConfig.from_preset("vcc2026")``
  on CPU (``device="cpu"``, ``de.backend="pdex"``, ``num_threads=--threads``; ``pert_col`` /
  ``control`` set to the files' labels), then its aggregate and its frozen-scale score.

CPU time (user + sys of the subprocess and of any children it waited for, all threads) is
printed too: on a shared, loaded machine it is the steadier measure. Peak memory is the peak RSS
of each subprocess (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read at its end: it counts
numpy/polars/numba native allocations, which tracemalloc does not). Times are the wall time of the
evaluation call (imports and file reading included for every side: each starts from the files).
Each figure is reported as the median over the repeats with its [min, max] spread; ratios are of
medians. Nothing is asserted: this is a report, with the machine load printed next to it.

Usage::

    .venv/bin/python benchmarks/metrics_vs_celleval.py [--scale 0.1] [--threads 2] [--keep DIR]
    .venv/bin/python benchmarks/metrics_vs_celleval.py --n-pert 50 --n-cells 50 --n-genes 500 --repeats 3
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
OUR_PANELS = ("basic", "scperturbench", "perturbench", "vcc", "vcc2026", "uncertainty")
SIDES = ("ours", "ours_vcc2026", "ours_vcc2026_raw", "celleval", "celleval2")
LABELS = {"ours": "ours (all panels)", "ours_vcc2026": "ours (vcc2026)", "ours_vcc2026_raw": "ours (vcc2026, raw)",
          "celleval": "cell-eval 0.8.2 full", "celleval2": "cell-eval2 vcc2026"}


# ----------------------------------------------------------------------------- data
def make_files(out: Path, *, n_pert: int, n_cells: int = N_CELLS, n_genes: int = N_GENES,
               n_ctrl: int = N_CTRL, seed: int = 0) -> tuple[Path, Path]:
    """Write ``truth.h5ad`` and ``pred.h5ad`` (CSR float32, log1p of Poisson counts) and their
    counts twins ``truth_counts.h5ad`` / ``pred_counts.h5ad`` (the same counts, CSR float32)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    base = np.exp(rng.normal(-0.5, 1.2, n_genes))  # per-gene mean count of control cells

    def cells(mu: np.ndarray, n: int) -> sp.csr_matrix:
        lam = mu[None, :] * rng.gamma(20.0, 1 / 20.0, size=(n, 1))  # mild size-factor variation
        return sp.csr_matrix(rng.poisson(lam).astype(np.float32))

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
    for fname, rows, lab in (("truth", t_rows, t_lab), ("pred", p_rows, p_lab)):
        counts = sp.vstack(rows, format="csr")
        obs = pd.DataFrame({"perturbation": pd.Categorical(lab)}, index=[f"{fname[0]}{i}" for i in range(len(lab))])
        ad.AnnData(X=counts, obs=obs, var=var.copy()).write_h5ad(out / f"{fname}_counts.h5ad")
        logx = counts.copy()
        logx.data = np.log1p(logx.data)
        ad.AnnData(X=logx, obs=obs, var=var.copy()).write_h5ad(out / f"{fname}.h5ad")
        paths.append(out / f"{fname}.h5ad")
        del counts, logx
    return paths[0], paths[1]


def counts_twin(path: Path | str) -> Path:
    """The counts file written beside a log1p file by :func:`make_files`."""
    p = Path(path)
    return p.with_name(p.stem + "_counts.h5ad")


# ----------------------------------------------------------------------------- sides
def side_ours(truth: str, pred: str, outdir: str, panels: tuple[str, ...] = OUR_PANELS, raw: bool = False) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    from perturbfm_metrics import commands
    from perturbfm_metrics.commands import evaluate_files

    if raw:  # the panels on the model's prediction only, no references
        from perturbfm.evaluation import evaluate_panels

        commands.evaluate_with_references = lambda p, d: (evaluate_panels(p, d), {})  # type: ignore[assignment]

    m = evaluate_files(pred, truth, perturbation_key="perturbation", control="control", panels=panels)
    wall = time.perf_counter() - t0
    Path(outdir, f"ours_metrics_{'_'.join(panels)}{'_raw' if raw else ''}.json").write_text(json.dumps(m))
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


def side_celleval2(truth: str, pred: str, outdir: str, threads: int) -> dict:
    """cell-eval2 0.20.0, vcc2026 preset on CPU, on the counts twins of the files."""
    import logging
    import warnings
    from dataclasses import replace

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    from cell_eval2 import EvalConfig, aggregate_metrics_wide, compute_metrics, score_metrics

    cfg = EvalConfig.from_preset("vcc2026")
    cfg = replace(cfg, pert_col="perturbation", control="control", device="cpu", num_threads=threads,
                  de=replace(cfg.de, backend="pdex"))
    df = compute_metrics(str(counts_twin(pred)), str(counts_twin(truth)), config=cfg)
    wide = aggregate_metrics_wide(df)
    scored = score_metrics(wide, scale="low-random_high-1_v10")
    wall = time.perf_counter() - t0
    mean = wide.filter(wide["statistic"] == "mean").row(0, named=True)
    keys = {k: v for k, v in mean.items() if k != "statistic"}
    keys["avg_score (low-random_high-1_v10)"] = scored["low-random_high-1_v10"].to_list()[-1]
    return {"wall_s": wall, "n_metrics": len(keys), "n_rows": df["perturbation"].n_unique(), "keys": keys}


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


def _spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    v = sorted(values)
    mid = len(v) // 2
    med = v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])
    return med, v[0], v[-1]


def _fmt(values: list[float], unit: str, digits: int = 1) -> str:
    med, lo, hi = _spread(values)
    return f"{med:8.{digits}f} {unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies --n-pert")
    ap.add_argument("--n-pert", type=int, default=N_PERT, help="perturbations (before --scale)")
    ap.add_argument("--n-cells", type=int, default=N_CELLS, help="cells per perturbation (truth and prediction)")
    ap.add_argument("--n-genes", type=int, default=N_GENES, help="genes")
    ap.add_argument("--n-ctrl", type=int, default=N_CTRL, help="control cells")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process runs per side")
    ap.add_argument("--threads", type=int, default=2, help="cell-eval / cell-eval2 num_threads")
    ap.add_argument("--keep", default=None, help="directory for the files (default: a temp dir)")
    ap.add_argument("--only", choices=SIDES, default=None, help="run one side only")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma-separated sides to run")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--truth", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pred", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--outdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child process: one side, then its own peak RSS and CPU time
        import resource

        if args.side == "ours":
            rep = side_ours(args.truth, args.pred, args.outdir)
        elif args.side == "ours_vcc2026":
            rep = side_ours(args.truth, args.pred, args.outdir, panels=("vcc2026",))
        elif args.side == "ours_vcc2026_raw":
            rep = side_ours(args.truth, args.pred, args.outdir, panels=("vcc2026",), raw=True)
        elif args.side == "celleval":
            rep = side_celleval(args.truth, args.pred, args.outdir, args.threads)
        else:
            rep = side_celleval2(args.truth, args.pred, args.outdir, args.threads)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        rep["peak_rss_mb"] = ru.ru_maxrss / 1024  # KiB on Linux
        rep["cpu_s"] = ru.ru_utime + ru.ru_stime + ch.ru_utime + ch.ru_stime  # all threads (+ children)
        print(json.dumps(rep))
        return

    sides = [args.only] if args.only else [x.strip() for x in args.sides.split(",") if x.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        ap.error(f"unknown side(s) {unknown}; choose from {', '.join(SIDES)}")
    n_pert = max(2, round(args.n_pert * args.scale))
    size = {"n_pert": n_pert, "n_cells": args.n_cells, "n_genes": args.n_genes, "n_ctrl": args.n_ctrl}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        truth, pred = d / "truth.h5ad", d / "pred.h5ad"
        meta = d / "bench_size.json"
        files = [truth, pred, counts_twin(truth), counts_twin(pred)]
        reuse = (args.keep and all(f.exists() for f in files) and meta.exists()
                 and json.loads(meta.read_text()) == size)
        if not reuse:
            truth, pred = make_files(d, **size)
            meta.write_text(json.dumps(size))
        print(f"data: {n_pert} perturbations x {args.n_cells} cells x {args.n_genes} genes + {args.n_ctrl} controls, "
              f"{'reused' if reuse else 'written'} in {time.perf_counter() - t0:.1f} s; repeats: {args.repeats}; "
              f"cores: {os.cpu_count()}; load before: {_load()}", flush=True)
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for rep_i in range(args.repeats):
            for side in sides:  # interleaved, so a load change hits every side alike
                r = run_side(side, truth, pred, d, args.threads)
                runs[side].append(r)
                print(f"  run {rep_i + 1} {LABELS[side]:>22}: eval {r['wall_s']:8.1f} s (process "
                      f"{r['process_s']:.1f} s, CPU {r['cpu_s']:.1f} s), peak RSS {r['peak_rss_mb']:7.0f} MB; "
                      f"load after: {_load()}", flush=True)
        print(f"\nmedian [min, max] over {args.repeats} fresh-process runs:")
        for side in sides:
            rs = runs[side]
            print(f"  {LABELS[side]:>22}: wall {_fmt([r['wall_s'] for r in rs], 's')}, "
                  f"CPU {_fmt([r['cpu_s'] for r in rs], 's')}, peak RSS {_fmt([r['peak_rss_mb'] for r in rs], 'MB', 0)}")

        def med(side: str, what: str) -> float:
            return _spread([r[what] for r in runs[side]])[0]

        def ratio(a: str, b: str, goal: str = "") -> None:
            if a in runs and b in runs:
                print(f"  {LABELS[a]} / {LABELS[b]}: wall {med(a, 'wall_s') / med(b, 'wall_s'):.3f}, "
                      f"CPU {med(a, 'cpu_s') / med(b, 'cpu_s'):.3f}, "
                      f"peak RSS {med(a, 'peak_rss_mb') / med(b, 'peak_rss_mb'):.3f}{goal}")

        print("ratios of medians:")
        ratio("ours", "celleval", " (goals: wall <= 0.2, peak RSS <= 1)")
        ratio("ours", "celleval2")
        ratio("ours_vcc2026", "celleval2")
        ratio("ours_vcc2026_raw", "celleval2")
        ratio("ours_vcc2026", "celleval")
        if "celleval" in runs:
            c = runs["celleval"][-1]
            print(f"  cell-eval computed {c['n_metrics']} metric columns x {c['n_rows']} perturbations")
        for side in ("ours", "ours_vcc2026", "ours_vcc2026_raw"):
            if side in runs:
                print(f"\n{LABELS[side]} values (global):")
                for k, v in runs[side][-1]["keys"].items():
                    print(f"    {k:<55} {v if isinstance(v, str) else f'{v:.4f}'}")
                break
        if "celleval2" in runs:
            print("\ncell-eval2 vcc2026 values (mean over perturbations; its counts twin of the same data):")
            for k, v in runs["celleval2"][-1]["keys"].items():
                print(f"    {k:<55} {v:.4f}")


if __name__ == "__main__":
    main()
