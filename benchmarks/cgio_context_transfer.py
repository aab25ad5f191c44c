"""CGIO context transfer on real data, in process (no store): each context held out in turn.

Tasks: ``glio`` — panobinostat in one held-out glioblastoma patient (counts -> log1p CP10k,
all 300 genes, 5 folds); ``devel-glioma`` — 9 CRISPRi knock-downs, one glioma line held out
(3 folds). Prints per task L2 and Pearson-delta of CGIO, its own base (network and context
terms off) and train-mean, with paired bootstrap 95 % intervals over held-out groups.

    python benchmarks/cgio_context_transfer.py [--tasks glio,devel-glioma] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]


def shared() -> Path:
    raw = Path(os.environ.get("PFM_SHARED_DATA", "../shared/data"))
    return (raw if raw.is_absolute() else REPO / raw).resolve()


def canonical(X: sp.csr_matrix, pert: np.ndarray, ctx: np.ndarray, genes: list[str], control: str) -> ad.AnnData:
    from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, COVARIATES_COL, PERT_COL

    lab = np.where(pert == control, "control", pert)
    df = pd.DataFrame({PERT_COL: lab, CONTROL_COL: lab == "control", CONTEXT_COL: ctx})
    df[COVARIATES_COL] = ""
    df.index = [f"c{i}" for i in range(len(df))]
    return ad.AnnData(X=sp.csr_matrix(X), obs=df, var=pd.DataFrame(index=genes))


def glio() -> tuple[ad.AnnData, list[list[str]]]:
    a = ad.read_h5ad(shared() / "lemur_glioblastoma/zhao2021_glioblastoma_panobinostat.h5ad")
    X = sp.csr_matrix(a.X, dtype=np.float64)
    tot = np.asarray(X.sum(axis=1)).ravel()
    X = sp.diags(1e4 / np.maximum(tot, 1)) @ X
    X.data = np.log1p(X.data)
    genes = [str(s) for s in a.var["symbol"]]
    genes = [g if genes.count(g) == 1 else f"{g}_{i}" for i, g in enumerate(genes)]
    c = canonical(X, a.obs["condition"].astype(str).to_numpy(), a.obs["patient_id"].astype(str).to_numpy(),
                  genes, "ctrl")
    ctxs = sorted(set(c.obs["pfm_context"]))
    return c, [[f"panobinostat@{p}"] for p in ctxs]


def devel_glioma() -> tuple[ad.AnnData, list[list[str]]]:
    a = ad.read_h5ad(shared() / "perturbench_devel/norman19_mcfaline23_devel.h5ad")
    c = canonical(sp.csr_matrix(a.X, dtype=np.float64), a.obs["condition"].astype(str).to_numpy(),
                  a.obs["cell_type"].astype(str).to_numpy(), [str(g) for g in a.var_names], "control")
    from perturbfm.dataset import group_table

    gt = group_table(c)
    folds = []
    for line in ("A172", "T98G", "U87MG"):
        folds.append([gid for gid, g in gt.items() if not g.is_control and g.context == line])
    return c, folds


def boot(d: np.ndarray, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    m = d[rng.integers(0, len(d), (n, len(d)))].mean(axis=1)
    return float(np.quantile(m, 0.025)), float(np.quantile(m, 0.975))


def evaluate(adata: ad.AnnData, folds: list[list[str]], cfg: dict, verbose: bool) -> dict:
    from perturbfm.dataset import group_table
    from perturbfm.testing.data import training_and_queries
    from perturbfm_models.cgio import CGIOModel

    gt = group_table(adata)
    from perturbfm.dataset import control_stats, ensure_group_column, grouped_moments

    labels = ensure_group_column(adata).astype(str).to_numpy()
    ids = [g for g, x in gt.items() if not x.is_control]
    means, _, _ = grouped_moments(adata, labels, ids)
    truth_mean = dict(zip(ids, means))
    ctrl = control_stats(adata)
    res: dict[str, list] = {"cgio": [], "base": [], "train_mean": [], "pc_cgio": [], "pc_base": [], "pc_tm": []}
    fit_s = []
    for test in folds:
        train, queries = training_and_queries(adata, test)
        tm, _ = train.training_mean(queries)
        out = {}
        for name, extra in (("cgio", {}), ("base", {"network": False, "context_transfer": False, "floor": False})):
            m = CGIOModel()
            t0 = time.perf_counter()
            m.fit(train, None, {**m.default_config(), **cfg, **extra})
            fit_s.append(time.perf_counter() - t0) if name == "cgio" else None
            p = m.predict(queries)
            out[name] = p.mean_delta
            if verbose and name == "cgio":
                print(json.dumps({q.group_id: p.notes.get(q.group_id, "") for q in queries})[:600], file=sys.stderr)
                print(json.dumps(m.diagnostics().get("context_transfer", {}), default=str)[:1500], file=sys.stderr)
        for i, q in enumerate(queries):
            t = truth_mean[q.group_id] - ctrl.mean(q.context)
            for name, pred, pk in (("cgio", out["cgio"][i], "pc_cgio"), ("base", out["base"][i], "pc_base"),
                                   ("train_mean", tm[i], "pc_tm")):
                res[name].append(float(np.linalg.norm(pred - t)))
                res[pk].append(float(np.corrcoef(pred, t)[0, 1]) if np.std(pred) > 0 else np.nan)
    r = {k: np.asarray(v) for k, v in res.items()}
    summ = {"n": len(r["cgio"]), "fit_s_median": float(np.median(fit_s)), "fit_s_max": float(np.max(fit_s))}
    for k in ("cgio", "base", "train_mean"):
        summ[f"L2_{k}"] = float(r[k].mean())
    for k in ("pc_cgio", "pc_base", "pc_tm"):
        summ[k] = float(np.nanmean(r[k]))
    for other in ("train_mean", "base"):
        d = r["cgio"] - r[other]
        summ[f"cgio-{other}"] = (float(d.mean()), *boot(d))
    return summ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="glio,devel-glioma")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args()
    cfg: dict = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        cfg[k] = json.loads(v)
    for task in a.tasks.split(","):
        adata, folds = {"glio": glio, "devel-glioma": devel_glioma}[task]()
        print(task, json.dumps(evaluate(adata, folds, cfg, a.v)))


if __name__ == "__main__":
    main()
