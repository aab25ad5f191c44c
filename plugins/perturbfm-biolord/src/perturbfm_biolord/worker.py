"""Env-side worker of the ``biolord`` model (runs in its own environment; never imports perturbfm).

biolord (Piran et al., Nature Biotechnology 2024; PyPI ``biolord`` 0.0.3): disentangles known attributes
(here the categorical attributes perturbation, context and covariates) from a free latent per cell by
generative modelling. Counterfactual: the target context's control cells with the perturbation attribute
set to the query's. Supported: a perturbation seen in training (in any context) predicted in another
context or with other covariates (the paper's cell-type / attribute transfer setting). biolord's setting
for unseen genetic perturbations needs per-gene ordered attributes (e.g. GO-based embeddings) that this
wrapper does not build: such queries are refused.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np

CTRL = "__pfm_control__"
#: biolord 0.0.3's own defaults (Biolord(n_latent=128, module_params={}), train(batch_size=128,
#: early_stopping=False)); max_epochs None = scvi-tools' rule min(round(20000 / n_cells * 400), 400)
DEFAULTS = {"n_latent": 128, "max_epochs": None, "batch_size": 128, "early_stopping": False, "seed": 0}
ATTRS = ["perturbation", "context", "covariates"]


def block_network() -> None:
    """No downloads at run time: every IPv4/IPv6 connection raises."""
    for var, val in (("HF_HUB_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
        os.environ.setdefault(var, val)
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"biolord worker: network access to {address!r} is blocked (offline run)")
        return real_connect(self, address)

    def create_connection(address, *a, **kw):
        raise RuntimeError(f"biolord worker: network access to {address!r} is blocked (offline run)")

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.create_connection = create_connection


def cov(g: dict) -> str:
    return str(g.get("covariates") or "none")


def _row(g: dict) -> dict:
    return {"perturbation": CTRL if g["is_control"] else str(g["perturbation"]), "context": str(g["context"]),
            "covariates": cov(g)}


def check_queries(queries: list, seen: dict, control_contexts: list, covariates: list) -> None:
    bad = []
    for q in queries:
        p = str(q["perturbation"])
        if q.get("is_control"):
            bad.append(f"{q['group_id']}: a control group")
        elif p not in seen:
            bad.append(f"{q['group_id']}: perturbation {p!r} never seen in training (unseen perturbations "
                       "need biolord's ordered gene attributes, not built by this wrapper)")
        elif q["context"] not in control_contexts:
            bad.append(f"{q['group_id']}: context {q['context']!r} has no control cells")
        elif cov(q) not in covariates:
            bad.append(f"{q['group_id']}: covariates {cov(q)!r} never seen in training")
    if bad:
        raise ValueError(
            "biolord refuses this split: this wrapper predicts perturbations seen in training in a new context or "
            "with other seen covariates (split kinds context-ood / loco / covariate-transfer); unseen "
            "perturbations are not supported. Unsupported queries (" + str(len(bad)) + "): "
            + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else "") + ". Fix: use such a split or another model.")


def _adata(X, rows, genes):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(rows, index=[f"c{i}" for i in range(len(rows))])
    for a in ATTRS:
        obs[a] = pd.Categorical(obs[a])
    return ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(genes)))


def _model(adata, cfg):
    import biolord

    biolord.Biolord.setup_anndata(adata, categorical_attributes_keys=ATTRS)
    return biolord.Biolord(adata, n_latent=int(cfg["n_latent"]), model_name="pfm", module_params={},
                           train_classifiers=False, split_key="split", train_split="train", valid_split="valid",
                           test_split="ood")


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
    if "valid" not in split:
        rng = np.random.default_rng(int(cfg["seed"]))
        split = list(np.where(rng.random(len(split)) < 0.1, "valid", "train"))
    for r, s in zip(rows, split):
        r["split"] = s
    X = np.asarray(train["X"], dtype=np.float32)[use]
    adata = _adata(X, rows, train["genes"])
    _seed(int(cfg["seed"]))
    model = _model(adata, cfg)
    model.train(max_epochs=cfg["max_epochs"], batch_size=int(cfg["batch_size"]),
                early_stopping=bool(cfg["early_stopping"]), accelerator="cpu", enable_progress_bar=False,
                # biolord 0.0.3 adds a checkpoint callback that scvi-tools 1.4's SaveCheckpoint breaks on (its
                # NaN check reads a loss biolord's manual optimisation does not return); it only writes
                # checkpoint files (never restored), so it is left out
                enable_checkpointing=False)
    import torch

    torch.save(model.module.state_dict(), os.path.join(state_dir, "biolord_module.pt"))
    np.save(os.path.join(state_dir, "biolord_X.npy"), X)
    seen: dict = {}
    for r in rows:
        if r["perturbation"] != CTRL:
            seen.setdefault(r["perturbation"], set()).add(r["context"])
    meta = {"rows": rows, "genes": list(train["genes"]), "config": cfg,
            "seen": {k: sorted(v) for k, v in seen.items()},
            "control_contexts": sorted({r["context"] for r in rows if r["perturbation"] == CTRL}),
            "covariates": sorted({r["covariates"] for r in rows})}
    with open(os.path.join(state_dir, "biolord_meta.json"), "w") as fh:
        json.dump(meta, fh)
    return {"notes": {"fit": f"biolord trained on {len(rows)} cells, {len(seen)} perturbations"},
            "diagnostics": {"fit_seconds": round(time.time() - t0, 2), "n_cells": len(rows), "config": cfg}}


def predict(queries: list, state_dir: str) -> dict:
    block_network()
    with open(os.path.join(state_dir, "biolord_meta.json")) as fh:
        meta = json.load(fh)
    check_queries(queries, meta["seen"], meta["control_contexts"], meta["covariates"])
    cfg = meta["config"]
    X = np.load(os.path.join(state_dir, "biolord_X.npy"))
    rows = [dict(r) for r in meta["rows"]]
    ctrl_idx: dict = {}
    for i, r in enumerate(rows):
        if r["perturbation"] == CTRL:
            ctrl_idx.setdefault(r["context"], []).append(i)
    adata = _adata(X, rows, meta["genes"])  # the training cells in their training order (biolord keeps a
    _seed(int(cfg["seed"]))                  # learned latent per training cell, looked up by its index)
    model = _model(adata, cfg)
    import pandas as pd
    import torch

    model.module.load_state_dict(torch.load(os.path.join(state_dir, "biolord_module.pt")))
    model.module.eval()
    model.is_trained_ = True
    out = np.zeros((len(queries), len(meta["genes"])), dtype=np.float64)
    notes = {}
    for k, q in enumerate(queries):
        idx = np.asarray(ctrl_idx[q["context"]])
        cf = adata.copy()
        for attr, value in (("perturbation", str(q["perturbation"])), ("covariates", cov(q))):
            col = cf.obs[attr].astype(str).to_numpy(copy=True)
            col[idx] = value
            cf.obs[attr] = pd.Categorical(col, categories=adata.obs[attr].cat.categories)
        # only these cells (biolord 0.0.3's predict(indices=...) mislabels its output); their obs keep the
        # training "_indices" column, so each cell's learned latent is looked up as in training
        pred_mean, _ = model.predict(cf[idx].copy())
        out[k] = np.asarray(pred_mean.X, dtype=np.float64).mean(axis=0) - X[idx].astype(np.float64).mean(axis=0)
        notes[q["group_id"]] = (f"biolord counterfactual: {len(idx)} control cells of {q['context']!r} with "
                                f"perturbation {q['perturbation']!r} (seen in "
                                f"{', '.join(meta['seen'][str(q['perturbation'])])})")
    return {"mean_delta": out, "notes": notes,
            "info": {"prediction": "mean biolord counterfactual of the context's control cells minus their mean"},
            "diagnostics": {"n_queries": len(queries)}}
