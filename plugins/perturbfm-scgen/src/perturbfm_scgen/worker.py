"""Env-side worker of the ``scgen`` model (runs in its own environment; never imports perturbfm).

scGen (Lotfollahi, Wolf & Theis, Nature Methods 2019; PyPI ``scgen`` 2.1.0 on scvi-tools 0.20.3):
a VAE trained on all training cells; a perturbation's effect is the difference of the mean latent
vectors of its cells and of the control cells *in the contexts where it was seen*, added to the
latent codes of the target context's control cells and decoded (scGen's own ``SCGEN.predict`` with
``restrict_arithmetic_to``). It therefore predicts only a perturbation seen in other contexts,
applied to a new context; anything else is refused with a clear error.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np

CTRL = "__pfm_control__"
DEFAULTS = {  # the authors' defaults: SCGEN(...) and the scGen tutorial's train(...) call
    "n_hidden": 800, "n_latent": 100, "n_layers": 2, "dropout_rate": 0.2,
    "max_epochs": 100, "batch_size": 32, "early_stopping": True, "early_stopping_patience": 25,
    "seed": 0,
}


def block_network() -> None:
    """No downloads at run time: every IPv4/IPv6 connection raises; hub/telemetry env vars off."""
    for var, val in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("WANDB_MODE", "disabled"),
                     ("SCVI_DOWNLOAD_DISABLED", "1"), ("NO_PROXY", "*")):
        os.environ.setdefault(var, val)
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"scgen worker: network access to {address!r} is blocked (PerturbFM runs peer "
                               "models offline; anything a package would download must come from local files)")
        return real_connect(self, address)

    def create_connection(address, *a, **kw):
        raise RuntimeError(f"scgen worker: network access to {address!r} is blocked (offline run)")

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.create_connection = create_connection


def label(g: dict) -> str:
    """scGen's condition of a group: the perturbation, with its covariates when it has any."""
    cov = str(g.get("covariates") or "")
    return str(g["perturbation"]) + (f" | {cov}" if cov else "")


def check_queries(queries: list, seen: dict, control_contexts: list) -> None:
    """Refuse (ValueError) any query scGen cannot predict: a perturbation not seen in training in
    another context, or a context without control cells."""
    bad = []
    for q in queries:
        lab = label(q)
        others = [c for c in seen.get(lab, []) if c != q["context"]]
        if not others:
            bad.append(f"{q['group_id']}: perturbation {lab!r} was not seen in training in any other context")
        elif q["context"] not in control_contexts:
            bad.append(f"{q['group_id']}: context {q['context']!r} has no control cells to transfer onto")
    if bad:
        raise ValueError(
            "scgen refuses this split: scGen transfers a perturbation seen in other contexts to a new context "
            "(split kinds context-ood / loco / explicit context transfer); it cannot predict unseen perturbations "
            "or combinations. Unsupported queries (" + str(len(bad)) + "): " + "; ".join(bad[:10])
            + (" ..." if len(bad) > 10 else "") + ". Fix: use a context-transfer split or another model.")


def import_scgen():
    import scgen

    return scgen


def _build(X, cond: list, ctx: list, genes: list, cfg: dict):
    """The AnnData of the training cells, registered, and an (untrained) SCGEN over it."""
    import anndata as ad
    import pandas as pd

    scgen = import_scgen()
    obs = pd.DataFrame({"condition": pd.Categorical(cond), "context": pd.Categorical(ctx)},
                       index=[f"c{i}" for i in range(len(cond))])
    adata = ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(genes)))
    scgen.SCGEN.setup_anndata(adata, batch_key="condition", labels_key="context")
    return scgen.SCGEN(adata, n_hidden=int(cfg["n_hidden"]), n_latent=int(cfg["n_latent"]),
                       n_layers=int(cfg["n_layers"]), dropout_rate=float(cfg["dropout_rate"]))


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
    import scvi

    scgen = import_scgen()
    scvi.settings.seed = int(cfg["seed"])
    _seed(int(cfg["seed"]))
    groups = {g["group_id"]: g for g in train["groups"]}
    cell_group = np.asarray(train["cell_group"]).astype(str)
    use = np.array([groups[c]["is_control"] or groups[c]["split"] == "train" for c in cell_group], dtype=bool)
    cond = np.array([CTRL if groups[c]["is_control"] else label(groups[c]) for c in cell_group[use]], dtype=object)
    ctx = np.array([str(groups[c]["context"]) for c in cell_group[use]], dtype=object)
    X = np.asarray(train["X"], dtype=np.float32)[use]
    model = _build(X, list(cond), list(ctx), list(train["genes"]), cfg)
    model.train(max_epochs=int(cfg["max_epochs"]), batch_size=int(cfg["batch_size"]),
                early_stopping=bool(cfg["early_stopping"]),
                early_stopping_patience=int(cfg["early_stopping_patience"]),
                use_gpu=False)
    import torch

    # the weights alone (torch >= 2.6 refuses scvi 0.19's pickled save files under weights_only loading)
    torch.save(model.module.state_dict(), os.path.join(state_dir, "scgen_module.pt"))
    np.save(os.path.join(state_dir, "scgen_X.npy"), X)
    seen: dict = {}
    for g in groups.values():
        if not g["is_control"] and g["split"] == "train":
            seen.setdefault(label(g), set()).add(str(g["context"]))
    meta = {"seen": {k: sorted(v) for k, v in seen.items()}, "condition": list(cond), "context": list(ctx),
            "genes": list(train["genes"]), "control_contexts": list(train["control_contexts"]),
            "n_genes": len(train["genes"]), "seed": int(cfg["seed"]), "config": cfg}
    with open(os.path.join(state_dir, "scgen_meta.json"), "w") as fh:
        json.dump(meta, fh)
    hist = getattr(model, "history", None) or {}
    loss = hist.get("elbo_train") if isinstance(hist, dict) else None
    n_val = sum(1 for g in groups.values() if g["split"] == "val")
    return {"notes": {"fit": f"scGen VAE trained on {int(use.sum())} cells ({len(seen)} conditions + control); "
                             f"{n_val} validation groups not used (scGen early-stops on its own 10% cell split)"},
            "diagnostics": {"fit_seconds": round(time.time() - t0, 2), "n_cells": int(use.sum()),
                            "epochs_run": int(len(loss)) if loss is not None else None,
                            "final_elbo_train": float(np.asarray(loss).ravel()[-1]) if loss is not None else None,
                            "scgen": scgen.__version__, "scvi_tools": scvi.__version__, "config": cfg}}


def predict(queries: list, state_dir: str) -> dict:
    block_network()
    with open(os.path.join(state_dir, "scgen_meta.json")) as fh:
        meta = json.load(fh)
    check_queries(queries, meta["seen"], meta["control_contexts"])
    import torch

    X = np.load(os.path.join(state_dir, "scgen_X.npy"))
    model = _build(X, meta["condition"], meta["context"], meta["genes"], meta["config"])
    model.module.load_state_dict(torch.load(os.path.join(state_dir, "scgen_module.pt")))
    model.module.eval()
    model.is_trained_ = True
    obs = model.adata.obs
    out = np.zeros((len(queries), meta["n_genes"]), dtype=np.float64)
    notes = {}
    for i, q in enumerate(queries):
        lab = label(q)
        others = [c for c in meta["seen"][lab] if c != q["context"]]
        ctrl = model.adata[((obs["condition"] == CTRL) & (obs["context"] == q["context"])).values].copy()
        _seed(int(meta["seed"]))
        pred, _ = model.predict(ctrl_key=CTRL, stim_key=lab, adata_to_predict=ctrl,
                                restrict_arithmetic_to={"context": others})
        out[i] = np.asarray(pred.X, dtype=np.float64).mean(axis=0) - np.asarray(ctrl.X, dtype=np.float64).mean(axis=0)
        notes[q["group_id"]] = (f"scGen latent arithmetic: delta of {lab!r} vs control learned in context(s) "
                                f"{', '.join(others)}, applied to {ctrl.n_obs} control cells of {q['context']!r}")
    return {"mean_delta": out, "notes": notes,
            "info": {"prediction": "mean decoded (control latent + perturbation latent delta) minus the "
                                   "context's control mean (scGen SCGEN.predict, restrict_arithmetic_to)"},
            "diagnostics": {"n_queries": len(queries)}}
