"""Whole-path check of the ``additive`` baseline on the real devel subset.

Holds out the K562 doubles of Norman 2019 whose two singles are measured as K562
singles, fits ``additive`` on every other perturbed group and compares with the
figures of ``shared/data/README.md`` (Pearson delta 0.870, L2 0.446).
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from perturbfm.testing.data import training_and_queries
from perturbfm_models.baselines import AdditiveModel

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVEL = "perturbench_devel/norman19_mcfaline23_devel.h5ad"


def shared_data_dir() -> Path:
    """``$PFM_SHARED_DATA`` (relative paths resolved against the repo root), default ``../shared/data``."""
    raw = Path(os.environ.get("PFM_SHARED_DATA", "../shared/data"))
    return (raw if raw.is_absolute() else REPO_ROOT / raw).resolve()


def devel_path() -> Path:
    path = shared_data_dir() / DEVEL
    if not path.is_file():
        msg = f"real data file missing: {path} (set PFM_SHARED_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def canonical_devel(path: Path) -> ad.AnnData:
    """The devel file with PerturbFM's canonical obs columns, built by hand."""
    raw = ad.read_h5ad(path)
    cond = raw.obs["condition"].astype(str)
    pert = [c if c == "control" else "+".join(sorted(c.split("+"))) for c in cond]
    obs = pd.DataFrame(
        {
            "pfm_perturbation": pert,
            "pfm_is_control": (cond == "control").to_numpy(),
            "pfm_context": raw.obs["cell_type"].astype(str).to_numpy(),
            "pfm_covariates": "",
        },
        index=raw.obs_names,
    )
    return ad.AnnData(X=raw.X, obs=obs, var=pd.DataFrame(index=raw.var_names))


def test_additive_on_devel_k562_doubles() -> None:
    adata = canonical_devel(devel_path())
    obs = adata.obs
    k562 = obs[(obs["pfm_context"] == "k562") & ~obs["pfm_is_control"]]
    perts = set(k562["pfm_perturbation"])
    singles = {p for p in perts if "+" not in p}
    doubles = sorted(p for p in perts if "+" in p and all(g in singles for g in p.split("+")))
    assert len(doubles) == 5, doubles
    held = [f"{d}@k562" for d in doubles]

    train, queries = training_and_queries(adata, held)
    model = AdditiveModel()
    model.fit(train, None, model.default_config())
    pred = model.predict(queries)
    assert pred.group_ids == held
    assert pred.notes == {}

    def mean_rows(mask: np.ndarray) -> np.ndarray:
        X = adata.X[np.flatnonzero(mask)]
        return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64).mean(axis=0)

    ctx = (obs["pfm_context"] == "k562").to_numpy()
    ctrl = mean_rows(ctx & obs["pfm_is_control"].to_numpy(dtype=bool))
    rs, l2s = [], []
    for i, d in enumerate(doubles):
        truth = mean_rows(ctx & (obs["pfm_perturbation"] == d).to_numpy()) - ctrl
        rs.append(np.corrcoef(pred.mean_delta[i], truth)[0, 1])
        l2s.append(np.linalg.norm(pred.mean_delta[i] - truth))
    pearson, l2 = float(np.mean(rs)), float(np.mean(l2s))
    print(f"devel additive: Pearson delta {pearson:.4f}, L2 {l2:.4f} over {doubles}")
    assert pearson == pytest.approx(0.870, abs=0.01)
    assert l2 == pytest.approx(0.446, abs=0.01)
