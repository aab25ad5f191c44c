"""Env-side worker of the ``cpa`` model (runs in its own environment; never imports perturbfm).

CPA (Lotfollahi et al., Mol. Syst. Biol. 2023; PyPI ``cpa-tools`` 0.8.8): an autoencoder whose latent
space is the sum of a basal state, perturbation embeddings scaled by a learned dose response, and
covariate embeddings. Counterfactual: the target context's control cells, encoded, with the query's
perturbation atoms, doses and covariates. It predicts seen perturbation atoms in new combinations,
doses and contexts; a query with an atom, context or covariate value never seen in training is refused.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np

CTRL = "__pfm_control__"
#: cpa-tools 0.8.8's own defaults (CPAModule, CPA.train, the training plan) and the authors' tutorial
#: training budget (max_epochs 2000, batch 2048, early stopping 5 checks, a check every 5 epochs).
MODULE = {"n_latent": 128, "recon_loss": "gauss", "doser_type": "logsigm", "n_hidden_encoder": 256,
          "n_layers_encoder": 3, "n_hidden_decoder": 256, "n_layers_decoder": 3, "dropout_rate_encoder": 0.0,
          "dropout_rate_decoder": 0.0, "variational": False}
TRAIN = {"max_epochs": 2000, "batch_size": 2048, "early_stopping_patience": 5, "check_val_every_n_epoch": 5}
DEFAULTS = {**MODULE, **TRAIN, "seed": 0}


def block_network() -> None:
    """No downloads at run time: every IPv4/IPv6 connection raises."""
    for var, val in (("HF_HUB_OFFLINE", "1"), ("WANDB_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(var, val)
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"cpa worker: network access to {address!r} is blocked (offline run)")
        return real_connect(self, address)

    def create_connection(address, *a, **kw):
        raise RuntimeError(f"cpa worker: network access to {address!r} is blocked (offline run)")

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.create_connection = create_connection


def atoms(g: dict) -> list:
    """A group's perturbation atoms: its perturbed genes, else its perturbation label."""
    genes = [str(x) for x in (g.get("genes") or [])]
    return genes if genes else [str(g["perturbation"])]


def dose(g: dict) -> float:
    d = g.get("dose")
    return 1.0 if d is None else float(d)


def cov(g: dict) -> str:
    return str(g.get("covariates") or "none")


def check_queries(queries: list, seen_atoms: list, contexts: list, covariates: list, max_comb: int) -> None:
    bad = []
    for q in queries:
        miss = [a for a in atoms(q) if a not in seen_atoms]
        if q.get("is_control"):
            bad.append(f"{q['group_id']}: a control group")
        elif miss:
            bad.append(f"{q['group_id']}: perturbation(s) {', '.join(miss)} never seen in training")
        elif len(atoms(q)) > max_comb:
            bad.append(f"{q['group_id']}: {len(atoms(q))} perturbations (trained combinations have at most {max_comb})")
        elif q["context"] not in contexts:
            bad.append(f"{q['group_id']}: context {q['context']!r} has no training or control cells")
        elif cov(q) not in covariates:
            bad.append(f"{q['group_id']}: covariates {cov(q)!r} never seen in training")
    if bad:
        raise ValueError(
            "cpa refuses this split: CPA predicts perturbations seen in training in new combinations, doses and "
            "contexts (split kinds combo, covariate-transfer (dose), context-ood / loco); it cannot embed unseen "
            "perturbations. Unsupported queries (" + str(len(bad)) + "): " + "; ".join(bad[:10])
            + (" ..." if len(bad) > 10 else "") + ". Fix: use such a split or another model.")


def _adata(X, obs_rows, genes):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(obs_rows, index=[f"c{i}" for i in range(len(obs_rows))])
    return ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(genes)))


def _row(g: dict) -> dict:
    if g["is_control"]:
        return {"condition": CTRL, "dose": "1.0", "context": str(g["context"]), "covariates": cov(g)}
    a = atoms(g)
    return {"condition": "+".join(a), "dose": "+".join([repr(dose(g))] * len(a)), "context": str(g["context"]),
            "covariates": cov(g)}


def _setup(adata, max_comb):
    import cpa

    cpa.CPA.pert_encoder = None  # class-level state of cpa-tools: rebuilt (sorted) from this adata
    cpa.CPA.setup_anndata(adata, perturbation_key="condition", control_group=CTRL, dosage_key="dose",
                          categorical_covariate_keys=["context", "covariates"], is_count_data=False,
                          max_comb_len=max_comb)
    return cpa


def _seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(train: dict, config: dict, state_dir: str) -> dict:
    block_network()
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    t0 = time.time()
    groups = {g["group_id"]: g for g in train["groups"]}
    cell_group = np.asarray(train["cell_group"]).astype(str)
    use = np.array([groups[c]["is_control"] or groups[c]["split"] in ("train", "val") for c in cell_group])
    rows = [_row(groups[c]) for c in cell_group[use]]
    split = ["valid" if groups[c]["split"] == "val" else "train" for c in cell_group[use]]
    has_val = "valid" in split
    if not has_val:  # no harness validation groups: CPA's random 10% of cells (its own default)
        rng = np.random.default_rng(int(cfg["seed"]))
        split = list(np.where(rng.random(len(split)) < 0.1, "valid", "train"))
    for r, s in zip(rows, split):
        r["split"] = s
    max_comb = max(len(r["condition"].split("+")) for r in rows)
    X = np.asarray(train["X"], dtype=np.float32)[use]
    adata = _adata(X, rows, train["genes"])
    _seed(int(cfg["seed"]))
    cpa = _setup(adata, max_comb)
    module = {k: cfg[k] for k in MODULE}
    model = cpa.CPA(adata, split_key="split", train_split="train", valid_split="valid", test_split="ood",
                    seed=int(cfg["seed"]), **module)
    model.train(max_epochs=int(cfg["max_epochs"]), use_gpu=False, batch_size=int(cfg["batch_size"]),
                early_stopping_patience=int(cfg["early_stopping_patience"]),
                check_val_every_n_epoch=int(cfg["check_val_every_n_epoch"]), enable_progress_bar=False)
    import torch

    torch.save(model.module.state_dict(), os.path.join(state_dir, "cpa_module.pt"))
    np.save(os.path.join(state_dir, "cpa_X.npy"), X)
    seen_atoms = sorted({a for r in rows if r["condition"] != CTRL for a in r["condition"].split("+")})
    meta = {"rows": rows, "genes": list(train["genes"]), "max_comb": max_comb, "config": cfg,
            "seen_atoms": seen_atoms, "contexts": sorted({r["context"] for r in rows}),
            "covariates": sorted({r["covariates"] for r in rows})}
    with open(os.path.join(state_dir, "cpa_meta.json"), "w") as fh:
        json.dump(meta, fh)
    return {"notes": {"fit": f"CPA trained on {len(rows)} cells, {len(seen_atoms)} perturbation atoms; validation: "
                             + ("the harness's val groups" if has_val else "a random 10% of cells (no val groups)")},
            "diagnostics": {"fit_seconds": round(time.time() - t0, 2), "n_cells": len(rows),
                            "max_comb_len": max_comb, "config": cfg, "cpa_tools": getattr(cpa, "__version__", "")}}


def predict(queries: list, state_dir: str) -> dict:
    block_network()
    with open(os.path.join(state_dir, "cpa_meta.json")) as fh:
        meta = json.load(fh)
    check_queries(queries, meta["seen_atoms"], meta["contexts"], meta["covariates"], meta["max_comb"])
    cfg = meta["config"]
    X = np.load(os.path.join(state_dir, "cpa_X.npy"))
    rows = [dict(r) for r in meta["rows"]]
    ctrl_idx: dict = {}
    for i, r in enumerate(rows):
        if r["condition"] == CTRL:
            ctrl_idx.setdefault(r["context"], []).append(i)
    q_rows: list = []
    q_X: list = []
    spans: list = []
    for q in queries:
        idx = ctrl_idx.get(q["context"], [])
        if not idx:
            raise ValueError(f"cpa refuses {q['group_id']}: context {q['context']!r} has no control cells")
        start = len(rows) + len(q_rows)
        for i in idx:
            q_rows.append({**_row(q), "split": "ood"})
            q_X.append(X[i])
        spans.append((start, start + len(idx), idx))
    adata = _adata(np.vstack([X, np.asarray(q_X)]), rows + q_rows, meta["genes"])
    _seed(int(cfg["seed"]))
    cpa = _setup(adata, meta["max_comb"])
    import torch

    model = cpa.CPA(adata, split_key="split", train_split="train", valid_split="valid", test_split="ood",
                    seed=int(cfg["seed"]), **{k: cfg[k] for k in MODULE})
    model.module.load_state_dict(torch.load(os.path.join(state_dir, "cpa_module.pt")))
    model.module.eval()
    model.is_trained_ = True
    sub = adata[len(rows):].copy()
    model.predict(sub, batch_size=2048)
    pred = np.asarray(sub.obsm["CPA_pred"], dtype=np.float64)
    out = np.zeros((len(queries), len(meta["genes"])), dtype=np.float64)
    notes = {}
    for k, (q, (a, b, idx)) in enumerate(zip(queries, spans)):
        out[k] = pred[a - len(rows):b - len(rows)].mean(axis=0) - X[idx].astype(np.float64).mean(axis=0)
        notes[q["group_id"]] = (f"CPA counterfactual: {len(idx)} control cells of {q['context']!r} with "
                                f"{'+'.join(atoms(q))} at dose {dose(q)!r}, covariates {cov(q)!r}")
    return {"mean_delta": out, "notes": notes,
            "info": {"prediction": "mean CPA counterfactual of the context's control cells minus their mean"},
            "diagnostics": {"n_queries": len(queries)}}
