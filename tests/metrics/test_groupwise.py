"""Parity of the blocked, vectorised group x group computations with the per-row reference
implementations they replaced (kept here, not in the package)."""

from __future__ import annotations

import numpy as np
import pytest
from perturbfm_metrics import groupwise
from perturbfm_metrics.groupwise import discrimination_ranks, resolve_backend
from perturbfm_metrics.vcc import discrimination_l1

torch = pytest.importorskip("torch")


def _reference_discrimination(pred: np.ndarray, true: np.ndarray, drop: list[np.ndarray]) -> np.ndarray:
    """The per-row loop the vcc panel used before (O(N^2 G), a copy of the kept genes per row)."""
    n, g = true.shape
    out = np.empty(n)
    for i in range(n):
        keep = np.ones(g, dtype=bool)
        keep[drop[i]] = False
        d = np.abs(true[:, keep] - pred[i, keep]).sum(axis=1)
        rank = int(np.sum(d <= d[i])) - 1
        out[i] = 1.0 - rank / n
    return out


def _cases(seed: int) -> list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """Randomised deltas with exact ties (duplicated rows, rows differing only on a dropped
    gene, integer-valued deltas), zero-variance genes and near-collapsed predictions."""
    rng = np.random.default_rng(seed)
    out = []
    for n, g in ((2, 3), (7, 40), (33, 257), (60, 90)):
        true = rng.standard_normal((n, g))
        true[:, : g // 5] = 0.25  # zero-variance genes across groups
        pred = 0.7 * true + 0.3 * rng.standard_normal((n, g))
        drop = [rng.choice(g, size=rng.integers(0, 3), replace=False) for _ in range(n)]
        out.append((pred, true, drop))
        # exact ties: duplicated true rows, a row differing from another only on its dropped gene,
        # a collapsed prediction (every group predicted the same)
        t2 = true.copy()
        t2[1::3] = t2[0]
        if n > 2:
            t2[2] = t2[1]
            t2[2, drop[1]] += 5.0 if drop[1].size else 0.0
        p2 = np.broadcast_to(t2.mean(axis=0), t2.shape).copy()
        out.append((p2, t2, drop))
        # integer-valued deltas (many exact equalities of distances) and a prediction equal to the truth
        t3 = rng.integers(-2, 3, size=(n, g)).astype(np.float64)
        p3 = np.where(rng.random((n, g)) < 0.5, t3, rng.integers(-2, 3, size=(n, g)))
        out.append((p3.astype(np.float64), t3, drop))
        out.append((t3.copy(), t3, [np.zeros(0, dtype=np.int64)] * n))
    return out


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_discrimination_matches_reference_exactly(backend):
    for seed in range(3):
        for pred, true, drop in _cases(seed):
            want = _reference_discrimination(pred, true, drop)
            got = discrimination_l1(pred, true, drop, backend=backend, device="cpu")
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
            assert np.array_equal(got, want)  # ranks are integers: equal, not just close


def test_discrimination_blocked_rows_equal_whole(monkeypatch):
    pred, true, drop = _cases(5)[3]
    whole = discrimination_ranks(pred, true, drop, backend="numpy")
    monkeypatch.setattr(groupwise, "BLOCK_VALUES", 1)  # one row per block
    monkeypatch.setattr(groupwise, "L1_VALUES", 3 * 257)  # 3 true rows per step
    assert np.array_equal(discrimination_ranks(pred, true, drop, backend="numpy"), whole)
    assert np.array_equal(discrimination_ranks(pred, true, drop, backend="torch", device="cpu"), whole)


def test_near_tie_recheck_decides_with_reference(monkeypatch):
    """Distances that differ by less than the rounding bound are re-decided by the reference sum:
    a tie that only rounding separates must not be broken by the fast path's summation order."""
    rng = np.random.default_rng(3)
    g = 1000
    true = rng.random((4, g)) * 1e-3
    true[1] = true[0][::-1]  # same multiset of terms vs pred 0 = 0: equal exact sums, different order
    pred = np.zeros((4, g))
    drop = [np.zeros(0, dtype=np.int64)] * 4
    want = _reference_discrimination(pred, true, drop)
    calls = []
    real = groupwise.l1_reference_rows

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(groupwise, "l1_reference_rows", spy)
    for backend in ("numpy", "torch"):
        assert np.array_equal(discrimination_l1(pred, true, drop, backend=backend, device="cpu"), want)
    assert calls  # the reversed row is a near tie of row 0 for pred 0


def test_resolve_backend(monkeypatch):
    monkeypatch.setenv(groupwise.BACKEND_ENV, "numpy")
    assert resolve_backend() == ("numpy", None)
    monkeypatch.setenv(groupwise.BACKEND_ENV, "torch")
    monkeypatch.setenv(groupwise.DEVICE_ENV, "cpu")
    assert resolve_backend() == ("torch", "cpu")
    monkeypatch.setenv(groupwise.BACKEND_ENV, "cupy")
    with pytest.raises(ValueError, match="PFM_METRICS_BACKEND"):
        resolve_backend()
    monkeypatch.delenv(groupwise.BACKEND_ENV)
    if not torch.cuda.is_available():
        assert resolve_backend()[0] == "numpy"  # auto: torch only with a CUDA device


def _reference_perturbench_ranks(data) -> dict[str, dict[str, float]]:
    """The rank keys as computed before: the whole [N, N] matrices, then diagonal_rank."""
    from perturbfm_metrics.perturbench import cosine_matrix, diagonal_rank, logfc, rmse_matrix

    ids = data.group_ids
    ctrl = np.asarray(data.ctrl_mean, dtype=np.float64)
    lfc_p = logfc(np.asarray(data.pred_mean, dtype=np.float64), ctrl)
    lfc_t = logfc(np.asarray(data.true_mean, dtype=np.float64), ctrl)
    out: dict[str, dict[str, float]] = {}
    for c_i, (_, idx) in enumerate(data.context_indices().items()):
        if len(idx) < 2:
            continue
        mats = {"rmse_average": (rmse_matrix(data.pred_delta[idx], data.true_delta[idx]), False),
                "cosine_logfc": (cosine_matrix(lfc_p[idx], lfc_t[idx]), True)}
        for s_i, (name, (M, hib)) in enumerate(mats.items()):
            for t_i, (suffix, mat) in enumerate((("", M), ("_transpose", M.T))):
                r = diagonal_rank(mat, higher_is_better=hib, rng=np.random.default_rng([data.seed, c_i, s_i, t_i]))
                out.setdefault(f"rank_{name}{suffix}", {}).update({ids[j]: float(v) for j, v in zip(idx, r)})
    return out


@pytest.mark.parametrize("block", [1, 7, groupwise.BLOCK_VALUES])
def test_perturbench_ranks_blocked_equal_whole_matrix(monkeypatch, adata, build_eval, block):
    from perturbfm_metrics.perturbench import PerturBenchPanel

    rng = np.random.default_rng(4)

    def collapse(true_delta):  # ties: half the groups predicted identically, the rest noisy
        p = 0.5 * true_delta + 0.2 * rng.standard_normal(true_delta.shape)
        p[::2] = p[0]
        return p

    data = build_eval(adata, collapse)
    monkeypatch.setattr(groupwise, "BLOCK_VALUES", block)
    got = PerturBenchPanel().compute(data)
    for key, want in _reference_perturbench_ranks(data).items():
        assert got[key].per_group == pytest.approx(want, rel=1e-9, abs=0), key


def test_pds_blocked_equal_whole(monkeypatch):
    from perturbfm_metrics import vcc2026

    rng = np.random.default_rng(8)
    real = rng.standard_normal((23, 15))
    real[5] = real[3]  # exact ties of distances
    pred = 0.5 * real + 0.3 * rng.standard_normal(real.shape)
    pred[7] = 0.0  # zero-norm operand: distance 1
    whole = vcc2026.midrank_pds(pred, real)
    monkeypatch.setattr(groupwise, "BLOCK_VALUES", 23 * 4)
    assert np.array_equal(vcc2026.midrank_pds(pred, real), whole)
    # the midrank written out
    def dist(i, j):
        den = np.linalg.norm(pred[i]) * np.linalg.norm(real[j])
        return float(np.clip(1 - (pred[i] @ real[j]) / den, 0, 2)) if den else 1.0

    for i in range(23):
        d = [dist(i, j) for j in range(23)]
        less = sum(x < d[i] - 1e-12 for x in d)
        eq = sum(abs(x - d[i]) <= 1e-12 for x in d)
        assert whole[i] == pytest.approx(1 - (less + (eq - 1) / 2) / 22, abs=1e-12)


def test_scperturbench_edistance_torch_matches_numpy():
    from perturbfm_metrics.scperturbench import _edist_both

    rng = np.random.default_rng(6)
    for n, m in ((1, 5), (2, 2), (17, 30)):
        p, t = rng.standard_normal((n, 12)), rng.standard_normal((m, 12)) + 0.3
        p[:, 0] = t[0, 0] = 0.0  # a zero-variance gene
        ref = _edist_both(p, t)
        got = _edist_both(p, t, device="cpu")  # the torch GEMM
        np.testing.assert_allclose(got, ref, rtol=1e-9)
