"""Small synthetic canonical datasets for tests (labelled synthetic)."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbfm.dataset import (
    CONTEXT_COL,
    CONTROL,
    CONTROL_COL,
    COVARIATES_COL,
    PERT_COL,
    canonical_perturbation,
    control_stats,
    group_table,
)


def make_canonical_adata(
    *,
    n_genes: int = 40,
    contexts: Sequence[str] = ("ctxA", "ctxB"),
    singles: Sequence[str] = ("G0", "G1", "G2", "G3", "G4", "G5"),
    doubles: Sequence[tuple[str, str]] = (("G0", "G1"), ("G2", "G3")),
    cells_per_group: int = 30,
    n_control: int = 60,
    effect: float = 1.0,
    noise: float = 0.3,
    seed: int = 0,
    sparse: bool = True,
) -> ad.AnnData:
    """A canonical AnnData with additive effects plus Gaussian noise.

    Genes are named ``G0..G{n_genes-1}``; single ``Gk`` shifts a fixed random
    set of 5 genes by ``effect`` (scaled per context); a double is the sum of its
    singles' shifts. ``uns["perturbfm_test"]`` holds the true effects. Marked
    synthetic in ``uns``.
    """
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    base = {c: rng.uniform(0.5, 2.0, n_genes) for c in contexts}
    scale = {c: 1.0 + 0.5 * i for i, c in enumerate(contexts)}
    eff = {}
    for s in singles:
        v = np.zeros(n_genes)
        v[rng.choice(n_genes, 5, replace=False)] = effect * rng.choice([-1.0, 1.0], 5)
        eff[s] = v
    rows, obs = [], []
    for c in contexts:
        conds: list[tuple[str, np.ndarray]] = [(CONTROL, np.zeros(n_genes))]
        conds += [(s, eff[s]) for s in singles]
        conds += [(canonical_perturbation(d), eff[d[0]] + eff[d[1]]) for d in doubles]
        for label, shift in conds:
            n = n_control if label == CONTROL else cells_per_group
            x = base[c] + scale[c] * shift + noise * rng.standard_normal((n, n_genes))
            rows.append(np.clip(x, 0.0, None))
            obs += [(label, label == CONTROL, c)] * n
    X = np.vstack(rows)
    df = pd.DataFrame(obs, columns=[PERT_COL, CONTROL_COL, CONTEXT_COL])
    df[COVARIATES_COL] = ""
    df.index = [f"cell{i}" for i in range(len(df))]
    adata = ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=df, var=pd.DataFrame(index=genes))
    adata.uns["perturbfm_test"] = {"synthetic": True, "effects": {k: v.tolist() for k, v in eff.items()}}
    return adata


def training_and_queries(adata: ad.AnnData, test_groups: Sequence[str]):
    """Split a canonical AnnData into (TrainingData, held-out GroupInfo list).

    Every non-control group not in ``test_groups`` trains.
    """
    from perturbfm.training import TrainingData

    groups = group_table(adata)
    ctrl = control_stats(adata)
    test = [groups[g] for g in test_groups]
    train = [g for gid, g in groups.items() if not g.is_control and gid not in set(test_groups)]
    return TrainingData(adata, train, ctrl, synthetic=True), test
