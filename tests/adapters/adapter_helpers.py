"""Helpers for the bench-adapters tests: small AnnData objects and the real data files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """``$PFM_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("PFM_SHARED_DATA", REPO.parent / "shared" / "data"))


def require_shared(relpath: str) -> Path:
    """The real data file; fails under CI=true when missing, else skips."""
    path = shared_data_dir() / relpath
    if not path.is_file():
        msg = f"shared data file missing: {path} (set PFM_SHARED_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def make_adata(
    labels: list[str] | None = None,
    *,
    contexts: list[str] | None = None,
    X: Any = None,
    n_genes: int = 4,
    seed: int = 0,
    extra_obs: dict[str, list[Any]] | None = None,
) -> ad.AnnData:
    """A small raw-count AnnData with a ``perturbation`` column (and ``cell_type``)."""
    labels = labels or ["control"] * 3 + ["A"] * 3 + ["B+A"] * 2
    n = len(labels)
    if X is None:
        rng = np.random.default_rng(seed)
        X = sp.csr_matrix(rng.integers(1, 20, size=(n, n_genes)).astype(np.float32))
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n)])
    if contexts is not None:
        obs["cell_type"] = contexts
    for k, v in (extra_obs or {}).items():
        obs[k] = v
    n_var = X.shape[1]
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_var)]))


def run_cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    """Run ``pfm-bench`` in-process; returns (exit code, stdout, stderr)."""
    from perturbfm.cli import main

    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def combo_adata(contexts: tuple[str, ...] = ("K", "H"), *, seed: int = 0) -> ad.AnnData:
    """Raw counts, per context: control, singles A..F and combos A+B, C+D, A+E, E+F (4 cells each)."""
    labels, ctx = [], []
    for c in contexts:
        for p in ["control", "A", "B", "C", "D", "E", "F", "A+B", "C+D", "A+E", "E+F"]:
            labels += [p] * 4
            ctx += [c] * 4
    return make_adata(labels, contexts=ctx, n_genes=6, seed=seed)
