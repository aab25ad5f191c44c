"""Old-vs-new timing of the group x group metric code (discrimination, the vcc panel, the
PerturBench rank keys), each measurement a fresh process.

"old" is the ``perturbfm_metrics`` package of a git revision (default: the commit before the
vectorised code, ``600f034``), extracted with ``git archive`` into a temporary folder and put
first on ``PYTHONPATH``; "new" is the working tree (``new-torch`` forces the torch backend on
CPU, ``PFM_METRICS_BACKEND=torch``). Each repeat is a new Python process: the input is built
(seeded, synthetic) inside it and only the metric call is timed. Prints, per case and side, the
median and the range of the repeats, the speed-up (old median / new median), the peak RSS and
whether the results equal the old ones. The process CPU time of the call is printed too: on a
shared, oversubscribed machine it is the steadier figure (single-threaded code; with several
threads it exceeds the wall time). Nothing is asserted: this is a report.

Usage::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/metrics_old_vs_new.py \\
        [--cases disc:1000x2000,vcc:1000x2000] [--repeat 3] [--sides old,new,new-torch] [--old-rev REV]

Cases: ``disc:NxG`` (discrimination_l1 of N groups x G genes, one context), ``vcc:NxG``
(the whole vcc panel, N groups of ``--cells`` cells, ``--controls`` control cells, sparse
zero-inflated log1p counts), ``rank:NxG`` (the PerturBench panel).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CASES = "disc:1000x2000,vcc:1000x2000,rank:1000x2000"
OLD_REV = "600f034"


# ----------------------------------------------------------------------------- worker (one process)
def _deltas(n: int, g: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    true = rng.standard_normal((n, g))
    pred = 0.6 * true + 0.5 * rng.standard_normal((n, g))
    drop = [np.array([i % g]) for i in range(n)]
    return pred, true, drop


def _eval_data(n: int, g: int, cells: int, controls: int, seed: int = 0):  # noqa: ANN202
    """Synthetic (labelled so) one-context EvalData: zero-inflated Poisson counts, log1p, sparse."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    from perturbfm.dataset import (
        CONTEXT_COL,
        CONTROL_COL,
        COVARIATES_COL,
        PERT_COL,
        control_stats,
        group_table,
    )
    from perturbfm.evaluation import build_eval_data
    from perturbfm.interfaces import Prediction

    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.6, 0.5, g)  # ~ 70 % zeros overall
    blocks, labels = [], []
    for k in range(n + 1):
        m = controls if k == 0 else cells
        shift = np.ones(g)
        if k:
            hit = rng.choice(g, 20, replace=False)
            shift[hit] = rng.choice([0.3, 3.0], 20)
        blocks.append(sp.csr_matrix(np.log1p(rng.poisson(lam * shift, (m, g))).astype(np.float32)))
        labels += ["non-targeting" if k == 0 else f"G{k - 1}"] * m
    obs = pd.DataFrame({PERT_COL: labels, CONTROL_COL: [x == "non-targeting" for x in labels],
                        CONTEXT_COL: "ctx"})
    obs[COVARIATES_COL] = ""
    obs.index = [f"c{i}" for i in range(len(obs))]
    adata = ad.AnnData(sp.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(g)]))
    adata.uns["synthetic"] = True
    groups = [x for x in group_table(adata).values() if not x.is_control]
    ctrl = control_stats(adata)
    zero = Prediction(group_ids=[x.group_id for x in groups], mean_delta=np.zeros((len(groups), g)))
    data = build_eval_data(adata, groups, ctrl, zero)
    td = np.asarray(data.true_delta, dtype=np.float64)
    data.pred_delta = 0.6 * td + 0.05 * rng.standard_normal(td.shape)
    return data


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=float).encode()).hexdigest()[:12]


def worker(case: str) -> dict[str, object]:
    """Build the case's input, time the metric call once, return the figures."""
    import perturbfm_metrics

    kind, size = case.split(":")
    n, g = (int(v) for v in size.lower().split("x"))
    if kind == "disc":
        from perturbfm_metrics.vcc import discrimination_l1

        pred, true, drop = _deltas(n, g)
        if os.environ.get("PFM_METRICS_BACKEND") == "torch":
            import torch  # noqa: F401 - the import (seconds) stays out of the timing
        t, c = time.perf_counter(), time.process_time()
        out = discrimination_l1(pred, true, drop)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        result = _digest(np.round(out, 12).tolist())
    else:
        data = _eval_data(n, g, int(os.environ["BENCH_CELLS"]), int(os.environ["BENCH_CONTROLS"]))
        if kind == "vcc":
            from perturbfm_metrics.vcc import VccPanel as Panel
        elif kind == "rank":
            from perturbfm_metrics.perturbench import PerturBenchPanel as Panel
        else:
            raise SystemExit(f"unknown case kind {kind!r}: use disc, vcc or rank")
        if os.environ.get("PFM_METRICS_BACKEND") == "torch":
            import torch  # noqa: F401
        t, c = time.perf_counter(), time.process_time()
        res = Panel().compute(data)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        vals = {k: v.per_group for k, v in sorted(res.items()) if hasattr(v, "per_group") and v.per_group}
        result = _digest({k: {gid: round(x, 12) for gid, x in v.items()} for k, v in vals.items()})
    return {"seconds": seconds, "cpu_seconds": cpu, "result": result, "package": perturbfm_metrics.__file__,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ----------------------------------------------------------------------------- driver
def _old_tree(rev: str, dest: Path) -> Path:
    """``perturbfm-metrics/src`` of ``rev`` extracted under ``dest``."""
    tar = dest / "old.tar"
    with tar.open("wb") as fh:
        subprocess.run(["git", "archive", rev, "perturbfm-metrics/src"], cwd=ROOT, stdout=fh, check=True)
    with tarfile.open(tar) as tf:
        tf.extractall(dest, filter="data")
    return dest / "perturbfm-metrics" / "src"


def _run(case: str, side: str, old_src: Path, cells: int, controls: int) -> dict[str, object]:
    env = dict(os.environ, BENCH_CELLS=str(cells), BENCH_CONTROLS=str(controls))
    if side == "old":
        env["PYTHONPATH"] = os.pathsep.join([str(old_src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PFM_METRICS_BACKEND"] = "torch" if side == "new-torch" else "numpy"
    if side == "new-torch":
        env.setdefault("PFM_METRICS_DEVICE", "cpu")
    out = subprocess.run([sys.executable, __file__, "--worker", case], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{side} {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the cases and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per case and side")
    ap.add_argument("--sides", default="old,new,new-torch")
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--cells", type=int, default=50, help="cells per group (vcc, rank cases)")
    ap.add_argument("--controls", type=int, default=500, help="control cells (vcc, rank cases)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    sides = args.sides.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        old_src = _old_tree(args.old_rev, Path(tmp))
        print(f"{'case':18s} {'side':10s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'speed-up':>8s} "
              f"{'cpu s':>8s} {'cpu x':>6s} {'peak MB':>8s}  same as old", flush=True)
        for case in args.cases.split(","):
            runs = {s: [_run(case, s, old_src, args.cells, args.controls) for _ in range(args.repeat)]
                    for s in sides}
            base = statistics.median(r["seconds"] for r in runs["old"]) if "old" in runs else float("nan")
            cbase = statistics.median(r["cpu_seconds"] for r in runs["old"]) if "old" in runs else float("nan")
            ref = runs["old"][0]["result"] if "old" in runs else None
            for s, rs in runs.items():
                t = [float(r["seconds"]) for r in rs]
                c = statistics.median(float(r["cpu_seconds"]) for r in rs)
                same = "-" if ref is None else str(all(r["result"] == ref for r in rs))
                if s == "old" and not any(args.old_rev and str(old_src) in str(r["package"]) for r in rs):
                    same += " (old package NOT loaded!)"
                print(f"{case:18s} {s:10s} {statistics.median(t):9.2f} {min(t):8.2f} {max(t):8.2f} "
                      f"{base / statistics.median(t):8.1f} {c:8.2f} {cbase / c:6.1f} "
                      f"{max(float(r['peak_rss_mb']) for r in rs):8.0f}  {same}",
                      flush=True)
    threads = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(f"old = {args.old_rev}; repeats = {args.repeat} fresh processes each; BLAS threads {threads}; "
          f"CPU threads {os.cpu_count()}; vcc/rank inputs: {args.cells} cells/group, {args.controls} controls")


if __name__ == "__main__":
    main()
