"""Shared builders for the metric tests: real EvalData from a synthetic canonical dataset."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from perturbfm.dataset import control_stats, group_table
from perturbfm.evaluation import EvalData, build_eval_data
from perturbfm.interfaces import Prediction
from perturbfm.testing import make_canonical_adata


def build(adata, delta_fn: Callable[[np.ndarray], np.ndarray] | None = None,
          pred_delta: np.ndarray | None = None) -> EvalData:
    """EvalData for every non-control group of ``adata``.

    The prediction is ``pred_delta`` if given, else ``delta_fn(true_delta)`` with
    ``true_delta`` computed here directly from the cells.
    """
    groups = [g for g in group_table(adata).values() if not g.is_control]
    ctrl = control_stats(adata)
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    gid = adata.obs["pfm_group"].astype(str).to_numpy()
    true_delta = np.stack([X[gid == g.group_id].mean(axis=0) - ctrl.mean(g.context) for g in groups])
    if pred_delta is None:
        pred_delta = delta_fn(true_delta) if delta_fn is not None else true_delta
    pred = Prediction(group_ids=[g.group_id for g in groups], mean_delta=np.asarray(pred_delta, float))
    return build_eval_data(adata, groups, ctrl, pred)


def cells(adata, mask: np.ndarray) -> np.ndarray:
    """Dense rows of ``adata`` selected by ``mask``."""
    X = adata.X[np.flatnonzero(mask)]
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X, dtype=float)


@pytest.fixture
def adata():
    """Small synthetic dataset: 2 contexts, 8 perturbations, 150 genes."""
    return make_canonical_adata(n_genes=150, cells_per_group=25, n_control=40, seed=3)


@pytest.fixture
def build_eval() -> Callable[..., EvalData]:
    """The :func:`build` helper, as a fixture."""
    return build


@pytest.fixture
def dense_cells() -> Callable[..., np.ndarray]:
    """The :func:`cells` helper, as a fixture."""
    return cells
