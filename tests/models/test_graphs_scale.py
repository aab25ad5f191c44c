"""CGIO's co-expression graph at scale: a bounded seeded cell sample, blocked top-k, and the
same graph as before budgets existed on small data."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm.dataset import control_stats, group_table
from perturbfm.errors import ConfigError
from perturbfm.testing.data import make_canonical_adata
from perturbfm.training import TrainingData
from perturbfm_models.cgio import graphs as G


def _train(**kw) -> TrainingData:
    adata = make_canonical_adata(**kw)
    groups = [g for g in group_table(adata).values() if not g.is_control][:-2]
    return TrainingData(adata, groups, control_stats(adata))


def _reference(train: TrainingData, k: int, min_abs_r: float) -> set[tuple[int, int]]:
    """The graph as built before the cell budget: every cell, one dense genes x genes matrix."""
    parts = [train.control_cells(c) - train.control.mean(c) for c in train.control.contexts]
    parts += [train.cells(g.group_id) - train.control.mean(g.context) for g in train.groups]
    rows = np.vstack(parts)
    x = rows - rows.mean(axis=0)
    sd = np.sqrt((x * x).sum(axis=0))
    r = np.nan_to_num((x.T @ x) / np.outer(sd, sd)).astype(np.float32)
    np.fill_diagonal(r, 0.0)
    s, d, _ = G._topk_edges(np.abs(r), k, min_abs_r)
    return set(zip(s.tolist(), d.tolist()))


def _edges(g: G.GeneGraph) -> set[tuple[int, int]]:
    return set(zip(g.src.tolist(), g.dst.tolist()))


def test_small_data_without_a_binding_budget_gives_the_same_graph_as_before() -> None:
    train = _train(n_genes=30)
    g = G.coexpr_graph(train, k=5, min_abs_r=0.1, source="cells")  # default budget 20,000 cells: not binding
    assert _edges(g) == _reference(train, 5, 0.1)
    budget = g.provenance["cell_budget"]
    assert budget["subsampled"] is False and budget["cells_used"] == budget["cells_available"]
    assert g.provenance["block_genes"] == 30


def test_a_binding_budget_samples_that_many_cells_seeded_and_records_it() -> None:
    train = _train(n_genes=30)
    a = G.coexpr_graph(train, k=5, min_abs_r=0.1, source="cells", max_cells=100, seed=3)
    b = G.coexpr_graph(train, k=5, min_abs_r=0.1, source="cells", max_cells=100, seed=3)
    c = G.coexpr_graph(train, k=5, min_abs_r=0.1, source="cells", max_cells=100, seed=4)
    budget = a.provenance["cell_budget"]
    assert budget == {"max_cells": 100, "cells_available": budget["cells_available"], "cells_used": 100,
                      "subsampled": True, "seed": 3}
    assert budget["cells_available"] > 100 and "100 of" in a.provenance["source"]
    assert _edges(a) == _edges(b) and np.array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, c.weight)
    with pytest.raises(ConfigError) as err:
        G.coexpr_graph(train, k=5, min_abs_r=0.1, source="cells", max_cells=2)
    assert err.value.field == "coexpr_max_cells"


@pytest.mark.parametrize("source", ["cells", "groups"])
def test_blocked_top_k_equals_the_single_block(source: str) -> None:
    train = _train(n_genes=40)
    whole = G.coexpr_graph(train, k=4, min_abs_r=0.05, source=source)
    blocked = G.coexpr_graph(train, k=4, min_abs_r=0.05, source=source, block=7)
    assert blocked.provenance["block_genes"] == 7
    assert _edges(whole) == _edges(blocked)
    order_w = np.lexsort((whole.dst, whole.src))
    order_b = np.lexsort((blocked.dst, blocked.src))
    np.testing.assert_allclose(whole.weight[order_w], blocked.weight[order_b], rtol=1e-5)
    assert blocked.src.size <= 4 * 40  # sparse: at most k edges per gene


def test_many_genes_are_blocked_and_no_dense_genes_by_genes_matrix_is_needed() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((50, G.DENSE_MAX_GENES + 10))
    s, d, w = G._corr_topk(rows, 3, 0.0, 512)
    assert s.size == 3 * rows.shape[1] and (s != d).all() and (w <= 1.0 + 1e-6).all()


def test_coexpr_graph_blocks_when_genes_exceed_the_dense_limit() -> None:
    train = _train(n_genes=G.DENSE_MAX_GENES + 52, cells_per_group=4, n_control=6)
    g = G.coexpr_graph(train, k=3, min_abs_r=0.0, source="cells", max_cells=40)
    assert g.provenance["block_genes"] == 512 and g.provenance["cell_budget"]["cells_used"] == 40
    assert g.src.size <= 3 * (G.DENSE_MAX_GENES + 52)


def test_the_work_cap_bounds_cells_times_genes_squared(monkeypatch) -> None:
    train = _train(n_genes=30)
    monkeypatch.setattr(G, "COEXPR_MAX_WORK", 30 * 30 * 120)  # 120 cells at 30 genes
    monkeypatch.setattr(G, "COEXPR_MIN_CELLS", 10)
    g = G.coexpr_graph(train, k=5, min_abs_r=0.1, source="cells", max_cells=1000)
    assert g.provenance["cell_budget"]["cells_used"] == 120 and g.provenance["cell_budget"]["work_cap_cells"] == 120
