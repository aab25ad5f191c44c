"""CGIO v3: contexts from their control cells, do-no-harm validation, non-gene perturbations.

Small synthetic data (labelled synthetic): a context's response depends on its baseline state by
construction (a perturbation multiplies expression in linear space, so on log1p data its delta
depends on the context's control level and a gene that is not expressed cannot go down).
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("torch")

from perturbfm.dataset import (  # noqa: E402
    CONTEXT_COL,
    CONTROL_COL,
    COVARIATES_COL,
    PERT_COL,
    GroupInfo,
    control_stats,
    group_table,
)
from perturbfm.training import TrainingData  # noqa: E402
from perturbfm_models.cgio import CGIOModel  # noqa: E402
from perturbfm_models.cgio.wrapper import CHEM_PREFIX  # noqa: E402

FAST = {"graphs": ["coexpr"], "epochs": 10, "hidden": 8, "rank": 4, "patience": 4, "cv_folds": 3}
CONTEXTS = ("c0", "c1", "c2", "c3", "c4")
PERTS = ("D0", "D1", "D2")


def baseline_dependent_adata(seed: int = 0, n_genes: int = 30, held_ctrl_shift: float = 0.0) -> ad.AnnData:
    """Synthetic: per context a baseline ``b`` (some genes ~0), per perturbation a fold ``f`` per
    gene; a perturbed cell is ``log1p(f · expm1(b))`` + noise, clipped at 0."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    shared = rng.uniform(0.0, 2.5, n_genes)
    folds = {p: np.exp(rng.normal(0.0, 1.0, n_genes) * (rng.random(n_genes) < 0.5)) for p in PERTS}
    rows, obs = [], []
    for c in CONTEXTS:
        b = np.clip(shared + rng.normal(0.0, 0.8, n_genes), 0.0, None)
        b[rng.random(n_genes) < 0.2] = 0.0  # not expressed in this context
        for label in ("control", *PERTS):
            n = 60 if label == "control" else 40
            mu = b if label == "control" else np.log1p(folds[label] * np.expm1(b))
            if label == "control" and c == CONTEXTS[-1]:
                mu = mu + held_ctrl_shift
            rows.append(np.clip(mu + 0.1 * rng.standard_normal((n, n_genes)), 0.0, None))
            obs += [(label, label == "control", c)] * n
    df = pd.DataFrame(obs, columns=[PERT_COL, CONTROL_COL, CONTEXT_COL])
    df[COVARIATES_COL] = ""
    df.index = [f"cell{i}" for i in range(len(df))]
    adata = ad.AnnData(X=sp.csr_matrix(np.vstack(rows)), obs=df, var=pd.DataFrame(index=genes))
    adata.uns["perturbfm_test"] = {"synthetic": True}
    return adata


def split(adata: ad.AnnData, held: str = CONTEXTS[-1], kind: str | None = None,
          drop: tuple[str, ...] = ()) -> tuple[TrainingData, list[GroupInfo]]:
    groups = [g for g in group_table(adata).values() if not g.is_control and g.context not in drop]
    if kind is not None:
        groups = [KindGroup(g.group_id, g.perturbation, g.context, g.covariates, g.n_cells, kind=kind)
                  for g in groups]
    train = [g for g in groups if g.context != held]
    test = [g for g in groups if g.context == held]
    return TrainingData(adata, train, control_stats(adata), synthetic=True), test


@dataclass(frozen=True)
class KindGroup(GroupInfo):
    """A group recording its perturbation kind (as the dataset's kinds do)."""

    kind: str = "genetic"


def _truth(adata: ad.AnnData, queries: list[GroupInfo]) -> np.ndarray:
    X = adata.X.toarray()
    g = adata.obs
    ctrl = control_stats(adata)
    out = []
    for q in queries:
        sel = (g[PERT_COL] == q.perturbation).to_numpy() & (g[CONTEXT_COL] == q.context).to_numpy()
        out.append(X[sel].mean(axis=0) - ctrl.mean(q.context))
    return np.asarray(out)


def _fit(train: TrainingData, **cfg: object) -> CGIOModel:
    m = CGIOModel()
    m.fit(train, None, {**m.default_config(), **FAST, **cfg})
    return m


def test_unseen_context_prediction_follows_its_control_cells_and_only_them() -> None:
    adata = baseline_dependent_adata()
    train, queries = split(adata)
    model = _fit(train, network=False)
    report = model.diagnostics()["context_transfer"]
    assert report["applied"] and report["choice"] == "baseline", report
    pred = model.predict(queries).mean_delta
    # its control cells changed: a different prediction
    shifted = baseline_dependent_adata(held_ctrl_shift=0.3)
    pred_shift = _fit(split(shifted)[0], network=False).predict(queries).mean_delta
    assert not np.allclose(pred_shift, pred)
    # its perturbed (held-out) cells changed: the same prediction
    tampered = adata.copy()
    rows = np.flatnonzero(((tampered.obs[CONTEXT_COL] == CONTEXTS[-1]) & ~tampered.obs[CONTROL_COL]).to_numpy())
    X = tampered.X.toarray()
    X[rows] = 7.0
    tampered.X = sp.csr_matrix(X)
    np.testing.assert_allclose(_fit(split(tampered)[0], network=False).predict(queries).mean_delta, pred)
    # and the transfer beats the plain mean of the other contexts on the held-out context
    truth = _truth(adata, queries)
    plain = _fit(train, network=False, context_transfer=False, floor=False).predict(queries).mean_delta
    assert np.linalg.norm(pred - truth) < np.linalg.norm(plain - truth)


def test_predicted_expression_never_below_zero() -> None:
    adata = baseline_dependent_adata()
    train, queries = split(adata)
    pred = _fit(train, network=False, context_transfer=False).predict(queries)
    ctrl = control_stats(adata)
    for i, q in enumerate(queries):
        assert (pred.mean_delta[i] + ctrl.mean(q.context) >= -1e-12).all()


def test_four_training_groups_get_no_unvalidated_correction() -> None:
    adata = baseline_dependent_adata()
    # one perturbation in four training contexts (plus the held-out fifth): leave-one-group-out
    train, queries = split(adata, drop=())
    train = TrainingData(adata, [g for g in train.groups if g.perturbation == "D0"], train.control, synthetic=True)
    assert len(train.groups) == 4
    model = _fit(train)
    d = model.diagnostics()
    assert "leave-one-group-out" in d["early_stopping"]
    for kind, sh in d["shrinkage"].items():
        assert sh["applied"] or (sh["s"] == 0 and sh["lambda"] == 1), (kind, sh)
        if sh["applied"]:
            assert sh["n"] >= 3 and "<" in sh["reason"]
    q = [x for x in queries if x.perturbation == "D0"]
    pred = model.predict(q)
    base = _fit(train, network=False).predict(q)
    kind = pred.info["residual_base"]
    if not any(d["shrinkage"][k]["applied"] for k, n in kind.items() if n):
        np.testing.assert_allclose(pred.mean_delta, base.mean_delta)
        assert "network correction off" in pred.notes[q[0].group_id]
    # no folds at all: the correction is never applied, and each group says so
    none = _fit(train, cv_folds=0)
    assert all(sh["s"] == 0 for sh in none.diagnostics()["shrinkage"].values())
    p0 = none.predict(q)
    np.testing.assert_allclose(p0.mean_delta, base.mean_delta)
    assert "cv_folds is 0" in p0.notes[q[0].group_id]
    # two groups: too few to cross-fit
    two = TrainingData(adata, train.groups[:2], train.control, synthetic=True)
    assert "too few to cross-fit" in _fit(two).predict(q).notes[q[0].group_id]


def test_drug_never_touches_the_gene_graph() -> None:
    adata = baseline_dependent_adata()
    # perturbations named like measured genes, but declared chemical: they must not enter at G-nodes
    renamed = adata.copy()
    renamed.obs[PERT_COL] = renamed.obs[PERT_COL].astype(str).replace({"D0": "G3", "D1": "G4", "D2": "G5"})
    train, queries = split(renamed, kind="chemical")
    model = _fit(train, graphs=["coexpr"])
    b = model._batch(queries, None)
    pos = {g: i for i, g in enumerate(model._universe)}
    x = b.x.numpy()
    for i, q in enumerate(queries):
        assert x[i, pos[q.perturbation]] == 0  # the gene node of the same name is untouched
        assert x[i, pos[CHEM_PREFIX + q.perturbation]] == 1  # its own identity node
    for adj in model._adjs:  # identity nodes have no edge in any graph
        for gene in ("G3", "G4", "G5"):
            j = pos[CHEM_PREFIX + gene]
            assert adj[j].nnz <= 1 and adj[:, j].nnz <= 1 and adj[j, np.arange(adj.shape[0]) != j].nnz == 0
    notes = model.predict(queries).notes
    assert not any("no path" in n or "perturbed gene" in n for n in notes.values())
    # an unseen drug gets a note about its identity, never about genes
    new = KindGroup("X9@c4", "X9", CONTEXTS[-1], "", 10, kind="chemical")
    note = model.predict([new]).notes["X9@c4"]
    assert "chemical perturbation X9 was not in the training groups" in note and "gene X9" not in note
