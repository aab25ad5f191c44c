"""``vcc.bh_fdr`` is scipy's ``false_discovery_control`` and gives the numbers of the
hand-written Benjamini-Hochberg it replaced (kept here as the reference), exactly."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm_metrics.vcc import bh_fdr, de_genes


def _previous_bh_fdr(p: np.ndarray) -> np.ndarray:
    """The former hand-written implementation, verbatim."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    m = p.shape[1]
    if m == 0:
        return p.copy()
    order = np.argsort(p, axis=1)
    ps = np.take_along_axis(p, order, axis=1) * (m / np.arange(1, m + 1))[None, :]
    ps = np.minimum.accumulate(ps[:, ::-1], axis=1)[:, ::-1]
    out = np.empty_like(ps)
    np.put_along_axis(out, order, np.clip(ps, 0.0, 1.0), axis=1)
    return out


def _bh_loop(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg of one row, written out: step-up from the largest p-value."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    prev = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        prev = min(prev, p[i] * m / rank)
        adj[i] = prev
    return adj


def _cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    ties = rng.uniform(size=(4, 60))
    ties[:, ::4] = ties[:, :1]
    edges = np.array([[0.0, 0.0, 1.0, 1.0, 0.5, 1e-300, 0.05, 0.05]])
    skewed = rng.uniform(size=(3, 500)) ** 6  # many small p-values: adjustments cross the 0.05 threshold
    return [("uniform", rng.uniform(size=(5, 200))), ("ties", ties), ("edges", edges), ("skewed", skewed),
            ("one-gene", np.array([[0.2], [1.0]])), ("vector", rng.uniform(size=17)),
            ("all-ones", np.ones((2, 9)))]


@pytest.mark.parametrize("name,p", _cases(), ids=[c[0] for c in _cases()])
def test_bh_fdr_equals_the_previous_implementation_and_the_loop(name: str, p: np.ndarray) -> None:
    got = bh_fdr(p)
    assert got.shape == np.atleast_2d(p).shape and got.dtype == np.float64
    np.testing.assert_allclose(got, _previous_bh_fdr(p), rtol=1e-15, atol=0)
    for row, adj in zip(np.atleast_2d(p), got):
        np.testing.assert_allclose(adj, _bh_loop(row), rtol=1e-15, atol=0)
    assert ((got >= np.atleast_2d(p)) & (got <= 1.0)).all()


def test_bh_fdr_without_genes_and_out_of_range() -> None:
    assert bh_fdr(np.zeros((3, 0))).shape == (3, 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        bh_fdr(np.array([0.2, 1.5]))


def test_de_genes_selection_unchanged() -> None:
    """The DE set built on the adjusted p-values is the one the loop gives."""
    rng = np.random.default_rng(5)
    ctrl = np.log1p(rng.poisson(2.0, (80, 40)).astype(float))
    cells = np.log1p(rng.poisson(2.0, (50, 40)).astype(float))
    cells[:, :8] += 0.8
    got = de_genes(cells, ctrl)
    assert 0 < len(got) < 40 and set(got.tolist()) >= set(range(6))
