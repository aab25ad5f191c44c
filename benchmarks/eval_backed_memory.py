"""Peak memory of ``pfm-bench eval --backed`` on a dataset larger than is comfortable in memory.

Writes, in row chunks (CSR float32, never all dense, never all in memory), a truth
.h5ad of ``10,000 perturbations x 50 cells x 2,000 genes`` plus control cells and a
prediction .h5ad of ``--pred-cells`` cells per perturbation (the real controls
included), then runs :func:`perturbfm_metrics.commands.evaluate_files` with
``backed=True`` (exactly ``pfm-bench eval --backed``) in a fresh subprocess and prints
its wall time and peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss`` of that process).

In backed mode the truth and prediction stay in their files: group and control
moments come from chunked pseudobulks (:func:`perturbfm.dataset.grouped_moments`),
the mean-based panels (``basic``; ``perturbench``; ``vcc`` ``mae`` and
``discrimination_score_l1``) need nothing else, and the keys that need cells
(``vcc`` ``overlap_at_N``; ``scperturbench``'s distribution keys) read them from the
backed files one group (``scperturbench``) or one bounded batch of groups (``vcc``,
~8 M values) at a time.

The perturbations are spread over ``--contexts`` contexts (default 10 of 1,000):
the within-context rank metrics are ``O(N^2 G)`` per context.

Usage::

    .venv/bin/python benchmarks/eval_backed_memory.py [--scale 0.1] [--panels basic,perturbench,vcc]
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

N_PERT, N_CELLS, N_GENES, N_CTRL = 10_000, 50, 2000, 500


def write_sparse_h5ad(path: Path, n_genes: int, chunks, obs_cols: dict[str, list[str]]) -> int:  # noqa: ANN001
    """Write a CSR .h5ad from an iterator of CSR chunks (appended to resizable datasets)."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem
    n_rows = 0
    with h5py.File(path, "w") as f:
        g = f.create_group("X")
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 20,))
        idx = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 20,))
        indptr = [np.zeros(1, dtype=np.int64)]
        nnz = 0
        for M in chunks:
            k = M.nnz
            data.resize((nnz + k,))
            idx.resize((nnz + k,))
            data[nnz:] = M.data.astype(np.float32)
            idx[nnz:] = M.indices.astype(np.int32)
            indptr.append(M.indptr[1:].astype(np.int64) + nnz)
            nnz += k
            n_rows += M.shape[0]
        g.create_dataset("indptr", data=np.concatenate(indptr))
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = (n_rows, n_genes)
        obs = pd.DataFrame({k: pd.Categorical(v) for k, v in obs_cols.items()},
                           index=[f"c{i}" for i in range(n_rows)])
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
        for k in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(f, k, {})
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    ad.read_h5ad(path, backed="r").file.close()  # readable as AnnData
    return n_rows


def make_files(d: Path, *, n_pert: int, n_ctx: int, pred_cells: int, seed: int = 0) -> tuple[Path, Path]:
    """Zero-inflated log1p-like data: per gene a detection rate and a mean level; each
    perturbation shifts 40 random genes (and knocks down its target)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    G = N_GENES
    rate = np.clip(rng.beta(0.6, 4.0, G), 0.01, 0.9)  # detection rate (mean ~13%)
    level = rng.gamma(2.0, 0.6, G)
    per_ctx = n_pert // n_ctx
    effects = {}

    def block(n: int, shift: np.ndarray | None) -> sp.csr_matrix:
        r = rate if shift is None else np.clip(rate * np.exp(shift), 0.0, 0.95)
        lv = level if shift is None else level * np.exp(0.5 * shift)
        mask = rng.random((n, G)) < r[None, :]
        rows, cols = np.nonzero(mask)
        vals = np.log1p(lv[cols] * rng.gamma(3.0, 1 / 3.0, cols.size) + 1.0).astype(np.float32)
        return sp.csr_matrix((vals, (rows, cols)), shape=(n, G))

    def effect(p: int) -> np.ndarray:
        if p not in effects:
            e = np.zeros(G)
            e[rng.choice(G, 40, replace=False)] = rng.normal(0, 1.0, 40)
            e[p % G] = -2.0
            effects[p] = e
        return effects[p]

    def chunks(cells: int, pred: bool, labels: list[str], ctxs: list[str]):  # noqa: ANN202
        for c in range(n_ctx):
            yield block(N_CTRL, None)  # controls of the context (pred: its own draw; only real ones count)
            labels += ["control"] * N_CTRL
            ctxs += [f"ctx{c}"] * N_CTRL
            batch = []
            for q in range(per_ctx):
                p = c * per_ctx + q
                e = effect(p)
                if pred:
                    e = 0.8 * e + rng.normal(0, 0.1, G) * (e != 0)
                batch.append(block(cells, e))
                labels += [f"G{p % G}" if p < G else f"G{p % G}+G{(p // G) % G}"] * cells
                ctxs += [f"ctx{c}"] * cells
                if len(batch) == 50:
                    yield sp.vstack(batch, format="csr")
                    batch = []
            if batch:
                yield sp.vstack(batch, format="csr")

    paths = []
    for name, cells, pred in (("truth.h5ad", N_CELLS, False), ("pred.h5ad", pred_cells, True)):
        rng = np.random.default_rng([seed, pred])
        labels: list[str] = []
        ctxs: list[str] = []
        write_sparse_h5ad(d / name, G, chunks(cells, pred, labels, ctxs),
                          {"perturbation": labels, "cell_line": ctxs})
        paths.append(d / name)
    return paths[0], paths[1]


def child(truth: str, pred: str, panels: str) -> None:
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    from perturbfm_metrics.commands import evaluate_files

    m = evaluate_files(pred, truth, perturbation_key="perturbation", control="control",
                       context_keys=["cell_line"], panels=panels.split(","), backed=True)
    wall = time.perf_counter() - t0
    keys = {f"{p}.{k}": e.get("global", "n/a") for p, sec in m["panels"].items() for k, e in sec["metrics"].items()}
    print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "n_groups": m["n_groups"], "n_true_cells": m["n_true_cells"], "keys": keys}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 10,000 perturbations")
    ap.add_argument("--contexts", type=int, default=10)
    ap.add_argument("--pred-cells", type=int, default=20, help="predicted cells per perturbation")
    ap.add_argument("--panels", default="basic,perturbench,vcc")
    ap.add_argument("--keep", default=None, help="directory for the files (default: a temp dir)")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    n_pert = max(args.contexts * 2, round(N_PERT * args.scale))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.keep or tmp)
        d.mkdir(parents=True, exist_ok=True)
        truth, pred = d / "truth.h5ad", d / "pred.h5ad"
        t0 = time.perf_counter()
        if not (args.keep and truth.exists() and pred.exists()):
            truth, pred = make_files(d, n_pert=n_pert, n_ctx=args.contexts, pred_cells=args.pred_cells)
        gen = subprocess.run([sys.executable, __file__, "--child", str(truth), str(pred), args.panels],
                             capture_output=True, text=True)
        print(f"data: {n_pert} perturbations x {N_CELLS} cells x {N_GENES} genes in {args.contexts} contexts "
              f"(+{N_CTRL} controls each; truth {truth.stat().st_size / 2**20:.0f} MB, pred "
              f"{pred.stat().st_size / 2**20:.0f} MB on disk, {args.pred_cells} predicted cells per perturbation); "
              f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if gen.returncode != 0:
            raise SystemExit(gen.stderr[-4000:])
        rep = json.loads(gen.stdout.strip().splitlines()[-1])
        print(f"backed eval ({args.panels}): {rep['wall_s']:.1f} s, peak RSS {rep['peak_rss_mb']:.0f} MB "
              f"(goal < 4096 MB); {rep['n_groups']} groups, {rep['n_true_cells']} true cells; total "
              f"{time.perf_counter() - t0:.0f} s")
        for k, v in rep["keys"].items():
            print(f"    {k:<45} {v if isinstance(v, str) else f'{v:.4f}'}")


if __name__ == "__main__":
    main()
