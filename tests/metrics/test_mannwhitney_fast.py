"""Parity of the vectorised Mann-Whitney tests (one search over all genes; constructed cells
tested from the sorted controls) with the per-gene reference they replaced and with scipy."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm_metrics.vcc import (
    MWReference,
    _tie_term,
    de_genes_batch,
    de_genes_shifted,
    mannwhitney_batch,
    mannwhitney_shifted,
)
from scipy import stats
from scipy.special import ndtr


def _reference_mw(blocks: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """The per-gene implementation used before: a ``searchsorted`` per gene in the sorted controls."""
    y = np.asarray(y, dtype=np.float64)
    srt = np.sort(y, axis=0)
    ref_sorted, ref_tie, n2, G = np.ascontiguousarray(srt.T), _tie_term(srt), y.shape[0], y.shape[1]
    B = len(blocks)
    out = np.ones((B, G))
    sizes = np.array([b.shape[0] for b in blocks], dtype=np.int64)
    N = int(sizes.sum())
    if B == 0 or n2 == 0 or G == 0 or N == 0:
        return out
    offs = np.concatenate([[0], np.cumsum(sizes)])
    XT = np.empty((G, N))
    for k, b in enumerate(blocks):
        if sizes[k]:
            XT[:, offs[k]:offs[k + 1]] = np.asarray(b, dtype=np.float64).T
            XT[:, offs[k]:offs[k + 1]].sort(axis=1)
    flat = XT.ravel()
    start = np.empty(flat.size, dtype=bool)
    start[0] = True
    np.not_equal(flat[1:], flat[:-1], out=start[1:])
    start[(np.arange(G)[:, None] * N + offs[:-1][sizes > 0][None, :]).ravel()] = True
    pos = np.flatnonzero(start)
    vals = flat[pos]
    cx = np.diff(np.append(pos, flat.size)).astype(np.float64)
    gene = pos // N
    owner = gene * B + np.repeat(np.arange(B), sizes)[pos % N]
    lo = np.empty(vals.size)
    hi = np.empty(vals.size)
    bounds = np.searchsorted(gene, np.arange(G + 1))
    for g in range(G):
        a, e = bounds[g], bounds[g + 1]
        lo[a:e] = np.searchsorted(ref_sorted[g], vals[a:e], side="left")
        hi[a:e] = np.searchsorted(ref_sorted[g], vals[a:e], side="right")
    cy = hi - lo
    u1 = np.bincount(owner, weights=cx * (lo + 0.5 * cy), minlength=G * B).reshape(G, B).T
    t = cx + cy
    tie = np.bincount(owner, weights=(t**3 - t) - (cy**3 - cy), minlength=G * B).reshape(G, B).T + ref_tie[None, :]
    n1 = sizes[:, None].astype(np.float64)
    n = n1 + n2
    u = np.maximum(u1, n1 * n2 - u1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = n1 * n2 / 12.0 * ((n + 1.0) - tie / (n * (n - 1.0)))
        p = np.clip(2.0 * ndtr(-((u - n1 * n2 / 2.0 - 0.5) / np.sqrt(s2))), 0.0, 1.0)
    return np.where((s2 > 0) & (n1 > 0), p, 1.0)


def _data(rng: np.random.Generator, n: int, g: int) -> np.ndarray:
    """Zero-inflated, rounded (many ties) values with a constant (zero-variance) gene and a gene
    constant at a non-zero value."""
    x = np.where(rng.random((n, g)) < 0.6, 0.0, np.round(rng.gamma(2.0, 0.5, (n, g)), 1))
    x[:, 0] = 0.0
    if g > 1:
        x[:, 1] = 1.5
    return x


@pytest.mark.parametrize("seed", range(4))
def test_batch_equals_reference_and_scipy(seed):
    rng = np.random.default_rng(seed)
    g = 37
    ctrl = _data(rng, 45, g)
    blocks = [_data(rng, n, g) + (rng.random() < 0.5) * np.round(rng.normal(0, 0.3, g), 1) for n in
              (1, 2, 0, 7, 30)]
    ref = MWReference(ctrl)
    got = mannwhitney_batch(blocks, ref)
    assert np.array_equal(got, _reference_mw(blocks, ctrl))  # bit for bit
    for k, b in enumerate(blocks):
        if b.shape[0] == 0:
            assert np.all(got[k] == 1.0)
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            sp = stats.mannwhitneyu(b, ctrl, axis=0, method="asymptotic", use_continuity=True).pvalue
        ok = np.isfinite(sp)
        np.testing.assert_allclose(got[k][ok], sp[ok], rtol=1e-9, atol=0)
        assert np.all(got[k][~ok] == 1.0)  # every value identical: no test


@pytest.mark.filterwarnings("ignore:overflow encountered in expm1")  # the 1e17 shifts
@pytest.mark.parametrize("seed", range(4))
def test_shifted_equals_formed_cells(seed):
    rng = np.random.default_rng(10 + seed)
    g = 29
    ctrl = _data(rng, 40, g)
    deltas = np.round(rng.normal(0, 0.4, (5, g)), 1)  # shifts onto other control values: joint ties
    deltas[0] = 0.0  # the controls against themselves
    deltas[1, :5] = 1e17  # rounding merges every run of these genes into one
    deltas[2] = rng.normal(0, 1e-17, g)  # below the resolution of most values: runs merge or stay
    ref = MWReference(ctrl)
    got = mannwhitney_shifted(ref, deltas)
    formed = [ctrl + d for d in deltas]
    assert np.array_equal(got, mannwhitney_batch(formed, ref))
    assert np.array_equal(got, _reference_mw(formed, ctrl))
    for k, b in enumerate(formed):
        with np.errstate(divide="ignore", invalid="ignore"):
            sp = stats.mannwhitneyu(b, ctrl, axis=0, method="asymptotic", use_continuity=True).pvalue
        ok = np.isfinite(sp)
        np.testing.assert_allclose(got[k][ok], sp[ok], rtol=1e-9, atol=0)
    assert np.all(got[0] == 1.0)  # the controls against themselves: U = n^2 / 2, p = 1
    sh = de_genes_shifted(ref, ctrl, deltas)
    for a, b in zip(sh, de_genes_batch(formed, ref)):
        assert np.array_equal(a, b)


def test_small_and_empty_references():
    rng = np.random.default_rng(7)
    for n2 in (1, 2):
        ctrl = _data(rng, n2, 6)
        blocks = [_data(rng, n, 6) for n in (1, 2, 5)]
        assert np.array_equal(mannwhitney_batch(blocks, MWReference(ctrl)), _reference_mw(blocks, ctrl))
        d = rng.normal(0, 1, (2, 6))
        assert np.array_equal(mannwhitney_shifted(MWReference(ctrl), d),
                              _reference_mw([ctrl + x for x in d], ctrl))
    empty = MWReference(np.zeros((0, 4)))
    assert np.all(mannwhitney_batch([np.ones((3, 4))], empty) == 1.0)
    assert np.all(mannwhitney_shifted(empty, np.ones((2, 4))) == 1.0)
