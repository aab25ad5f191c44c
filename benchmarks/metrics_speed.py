"""Speed of PerturbFM's E-distance and Sinkhorn against the peers on the same inputs.

Peers: ``scperturb.edist`` (squared Euclidean, ``sample_correct=True``, as scperturb
computes it: one AnnData per pred/true pair) and POT ``ot.sinkhorn2`` (numpy
backend, cost from ``ot.dist``, same eps and tolerance). Prints one table with
``ours / peer`` time ratios (< 1: ours is faster) and the largest relative
difference of the values. Nothing is asserted: this is a report.

Usage::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/metrics_speed.py [--sizes 200x300x100,20x2000x100] [--repeat 3]

With ``--old-vs-new CASES`` (e.g. ``disc:1000x2000,vcc:1000x2000``) it runs
``benchmarks/metrics_old_vs_new.py`` instead: the group x group code (discrimination, the
``vcc`` panel, the PerturBench ranks) of an old git revision against the working tree, each
repeat a fresh process, with the median, range and peak RSS of each side (its other options,
e.g. ``--repeat``, pass through).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")  # POT's numpy backend only
os.environ.setdefault("POT_BACKEND_DISABLE_JAX", "1")
os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
os.environ.setdefault("POT_BACKEND_DISABLE_CUPY", "1")

from perturbfm_metrics.distances import edistance, edistance_batch, sinkhorn  # noqa: E402

DEFAULT_SIZES = "200x300x100,50x1000x100,10x2000x100"


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _data(groups: int, cells: int, genes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shift = rng.normal(0, 0.5, size=(groups, 1, genes))
    x = np.log1p(rng.gamma(2.0, 1.0, size=(groups, cells, genes)))
    y = np.log1p(rng.gamma(2.0, 1.0, size=(groups, cells, genes))) + shift
    return x, y


def _scperturb_edist(x: np.ndarray, y: np.ndarray) -> list[float]:
    import anndata as ad
    import pandas as pd
    import scperturb

    out = []
    for xi, yi in zip(x, y):
        obs = pd.DataFrame({"g": ["pred"] * len(xi) + ["true"] * len(yi)},
                           index=[str(i) for i in range(len(xi) + len(yi))])
        a = ad.AnnData(np.zeros((len(obs), 1)), obs=obs)
        a.obsm["cells"] = np.vstack([xi, yi])
        est = scperturb.edist(a, obs_key="g", obsm_key="cells", dist="sqeuclidean",
                              sample_correct=True, n_jobs=1, verbose=False)
        out.append(float(est.loc["pred", "true"]))
    return out


def _pot_sinkhorn(x: np.ndarray, y: np.ndarray, eps: list[float], tol: float) -> list[float]:
    import ot

    out = []
    for xi, yi, e in zip(x, y, eps):
        C = ot.dist(xi, yi)  # squared Euclidean
        a, b = np.full(len(xi), 1 / len(xi)), np.full(len(yi), 1 / len(yi))
        out.append(float(ot.sinkhorn2(a, b, C, e, numItermax=10_000, stopThr=tol)))
    return out


def _rel(a: list[float], b: list[float]) -> float:
    a_, b_ = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a_ - b_) / np.maximum(np.abs(b_), 1e-300)))


def main() -> None:
    """Run the benchmark and print the table."""
    if "--old-vs-new" in sys.argv:
        k = sys.argv.index("--old-vs-new")
        rest = sys.argv[1:k] + sys.argv[k + 2:]
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import metrics_old_vs_new

        sys.argv = [metrics_old_vs_new.__file__, "--cases", sys.argv[k + 1], *rest]
        metrics_old_vs_new.main()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="groups x cells x genes, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    ap.add_argument("--tol", type=float, default=1e-9, help="Sinkhorn stopping tolerance (both)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    xw, yw = _data(1, 5, 3)
    for warm in (lambda: _scperturb_edist(xw, yw), lambda: _pot_sinkhorn(xw, yw, [1.0], args.tol)):
        try:  # imports (scanpy, POT backends) and first-call costs stay out of the timings
            warm()
        except ImportError:
            pass
    rows = []
    for size in args.sizes.split(","):
        g, c, d = (int(v) for v in size.lower().split("x"))
        x, y = _data(g, c, d)
        t_loop, ours = _best(lambda: [edistance(a, b, squared=True) for a, b in zip(x, y)], args.repeat)
        t_batch, batch = _best(lambda: list(edistance_batch(x, y, squared=True)), args.repeat)
        try:
            t_peer, peer = _best(lambda: _scperturb_edist(x, y), 1 if g * c > 50_000 else args.repeat)
            rows.append((f"edistance sq {size}", t_loop, t_peer, _rel(ours, peer)))
            rows.append((f"edistance sq batched {size}", t_batch, t_peer, _rel(batch, peer)))
        except ImportError:
            rows.append((f"edistance sq {size} (scperturb missing)", t_loop, np.nan, np.nan))
        t_eu, _ = _best(lambda: [edistance(a, b) for a, b in zip(x, y)], args.repeat)
        rows.append((f"edistance euclid {size}", t_eu, np.nan, np.nan))
        t_ours, res = _best(lambda: [sinkhorn(a, b, tol=args.tol) for a, b in zip(x, y)], args.repeat)
        costs = [r.cost for r in res]
        iters = int(np.median([r.n_iter for r in res]))
        assert all(r.converged for r in res), "Sinkhorn did not converge"
        try:
            t_pot, pot = _best(lambda: _pot_sinkhorn(x, y, [r.eps for r in res], args.tol), args.repeat)
            rows.append((f"sinkhorn {size} (median {iters} it)", t_ours, t_pot, _rel(costs, pot)))
        except ImportError:
            rows.append((f"sinkhorn {size} (POT missing)", t_ours, np.nan, np.nan))
    print(f"{'case (groups x cells x genes)':44s} {'ours s':>9s} {'peer s':>9s} {'ours/peer':>9s} "
          f"{'max rel diff':>12s}")
    for name, t_o, t_p, rel in rows:
        print(f"{name:44s} {t_o:9.3f} {t_p:9.3f} {t_o / t_p:9.3f} {rel:12.2e}")
    threads = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print(f"BLAS threads: {threads} (on a shared, loaded machine set them to 1: oversubscribed BLAS "
          "threads slow the GEMM-based code down by an order of magnitude)")
    print(f"peers: scperturb.edist (sqeuclidean, sample_correct=True, n_jobs=1), POT sinkhorn2 "
          f"(numpy, stopThr={args.tol:g}); CPU threads: {os.cpu_count()}")


if __name__ == "__main__":
    main()
