"""Computations quadratic in the number of groups, blocked and vectorised.

Within a context of ``N`` groups some metrics compare every group's prediction with
every group's truth (``discrimination_score_l1``, the PerturBench rank keys, ``pds_cosine``).
The ``[N, N]`` matrices of those comparisons are never held whole here: they are built a
block of rows at a time (memory O(block x N), plus the ``[N, genes]`` inputs).

Backends (:func:`resolve_backend`): ``numpy`` (default on a machine without a CUDA GPU) and
``torch`` (default when torch is importable and ``torch.cuda.is_available()``; may be forced
on CPU for testing). Choose with the ``PFM_METRICS_BACKEND`` environment variable
(``auto`` | ``numpy`` | ``torch``) and the torch device with ``PFM_METRICS_DEVICE``
(default ``cuda`` when available, else ``cpu``).

L1 distances have no GEMM form (``|a - b|`` does not factor), so the L1 matrix is computed
directly, O(N^2 x genes) either way: on numpy in cache-sized blocks of true rows (one pred row
x a cache-sized block of true rows x genes per ``subtract``/``abs``/``sum``, the buffer stays in cache
and no ``[N, genes]`` copy is made per row, which is what the per-row loop paid), on torch
with ``torch.cdist(p=1)`` a block of pred rows at a time. The ranks need only the comparisons
``d_j <= d_i`` of each row; a fast path sums in its own order, so every comparison closer
than a proven rounding bound (:func:`_near`) is re-decided with the reference summation
(:func:`l1_reference_rows`, the per-row formula the panel always used): ranks, and so
scores, are exactly those of the reference implementation, ties included.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np

Backend = Literal["numpy", "torch"]
BACKEND_ENV = "PFM_METRICS_BACKEND"
DEVICE_ENV = "PFM_METRICS_DEVICE"
#: values of an [rows, N] block of a group x group matrix (bounds memory: 8 MB at float64)
BLOCK_VALUES = 1_000_000
#: values per numpy L1 step (one pred row x rows x genes: a buffer that stays in cache)
L1_VALUES = 65_536
#: unit roundoff of float64
_U = 2.0**-53


def resolve_backend(backend: str | None = None, device: str | None = None) -> tuple[Backend, str | None]:
    """The backend and torch device to use.

    Args:
        backend: ``"auto"``, ``"numpy"`` or ``"torch"``; None reads ``PFM_METRICS_BACKEND``
            (default ``auto``: torch when torch is importable and a CUDA device is available).
        device: torch device; None reads ``PFM_METRICS_DEVICE`` (default ``cuda`` when
            available, else ``cpu``).

    Raises:
        ValueError: an unknown backend, or ``torch`` requested without torch installed.
    """
    name = (backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")).strip().lower()
    if name not in ("auto", "numpy", "torch"):
        raise ValueError(f"{BACKEND_ENV}={name!r} is not a metrics backend: set it to auto, numpy or torch")
    if name == "numpy":
        return "numpy", None
    if name == "auto" and not _cuda_likely():
        return "numpy", None  # torch is not even imported (seconds and hundreds of MB) on a CPU-only machine
    try:
        import torch
    except ImportError:
        if name == "torch":
            raise ValueError(f"{BACKEND_ENV}=torch but torch is not importable: install torch or set "
                             f"{BACKEND_ENV}=numpy") from None
        return "numpy", None
    cuda = bool(torch.cuda.is_available())
    if name == "auto" and not cuda:
        return "numpy", None
    dev = device if device is not None else os.environ.get(DEVICE_ENV) or ("cuda" if cuda else "cpu")
    return "torch", dev


def _cuda_likely() -> bool:
    """Whether a CUDA device may be present (checked without importing torch when it is not loaded)."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    if importlib.util.find_spec("torch") is None:
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def row_blocks(n_rows: int, n_cols: int, budget: int | None = None) -> Iterator[slice]:
    """Consecutive row slices of an ``[n_rows, n_cols]`` matrix, each at most ``budget`` values
    (default :data:`BLOCK_VALUES`; at least one row)."""
    step = max(1, (BLOCK_VALUES if budget is None else budget) // max(n_cols, 1))
    for s in range(0, n_rows, step):
        yield slice(s, min(s + step, n_rows))


def l1_reference_rows(true: np.ndarray, pred_row: np.ndarray, drop: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The reference L1 distances ``sum_{g not in drop} |true[j, g] - pred_row[g]|`` of the rows
    ``j`` in ``rows``: the per-row formula of the discrimination score, summed exactly as it
    always was (a row's value does not depend on which other rows are computed with it)."""
    keep = np.ones(true.shape[1], dtype=bool)
    keep[drop] = False
    return np.abs(true[rows][:, keep] - pred_row[keep]).sum(axis=1)


def _l1_block_numpy(pred: np.ndarray, true: np.ndarray, drop: list[np.ndarray], rows: slice,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``[len(rows), N]`` masked L1 distances (dropped genes' terms set to 0) and their term sums
    (the same: the terms are non-negative)."""
    n, g = true.shape
    out = np.empty((rows.stop - rows.start, n))
    step = max(1, L1_VALUES // max(g, 1))
    buf = np.empty((step, g))
    for r, i in enumerate(range(rows.start, rows.stop)):
        p = pred[i]
        d = drop[i]
        for s in range(0, n, step):
            b = buf[: min(step, n - s)]
            np.subtract(true[s:s + step], p, out=b)
            np.abs(b, out=b)
            if d.size:
                b[:, d] = 0.0
            np.add.reduce(b, axis=1, out=out[r, s:s + step])
    return out, out


def _l1_block_torch(tp: Any, tt: Any, pred: np.ndarray, true: np.ndarray, drop: list[np.ndarray],
                    rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """``[len(rows), N]`` L1 distances over all genes by ``torch.cdist(p=1)`` minus the dropped
    genes' terms; and the all-gene sums (the scale of the rounding bound)."""
    import torch

    full = torch.cdist(tp[rows], tt, p=1.0, compute_mode="donot_use_mm_for_euclid_dist").cpu().numpy()
    full = np.asarray(full, dtype=np.float64)
    out = full.copy()
    for r, i in enumerate(range(rows.start, rows.stop)):
        d = drop[i]
        if d.size:
            out[r] -= np.abs(true[:, d] - pred[i, d]).sum(axis=1)
    np.maximum(out, 0.0, out=out)
    return out, full


def _near(d: np.ndarray, scale: np.ndarray, own: np.ndarray, own_scale: np.ndarray, n_terms: int) -> np.ndarray:
    """Pairs whose comparison with the row's own distance is within rounding of both summations.

    A sum of ``k`` non-negative terms in any order is within ``(k - 1) u S`` of the exact sum
    (``S`` the exact sum of the terms, ``u`` the unit roundoff); the fast value and the
    reference value of a distance are therefore within ``2 k u S'`` of each other
    (``S'`` >= both, plus one rounding for a subtraction of dropped terms), and a comparison
    whose margin exceeds the sum of those bounds for both distances is decided the same by both.
    """
    tol = 4.0 * (n_terms + 2) * _U * (scale + own_scale[:, None]) * (1.0 + 1e-6)
    return np.abs(d - own[:, None]) <= tol


def discrimination_ranks(pred: np.ndarray, true: np.ndarray, drop: list[np.ndarray], *,
                         backend: str | None = None, device: str | None = None) -> np.ndarray:
    """``rank_i = #{j != i: d(i, j) <= d(i, i)}`` with ``d(i, j) = sum_{g not in drop_i}
    |true_j,g - pred_i,g|``: exactly the ranks of the per-row reference formula
    (:func:`l1_reference_rows`), computed a block of rows at a time.

    Args:
        pred, true: ``[N, G]`` float64.
        drop: per row, gene indices left out of its distances.
        backend, device: see :func:`resolve_backend`.

    Returns:
        ``[N]`` int64 ranks.
    """
    pred = np.ascontiguousarray(pred, dtype=np.float64)
    true = np.ascontiguousarray(true, dtype=np.float64)
    n, g = true.shape
    drop = [np.unique(np.asarray(d, dtype=np.int64)) for d in drop]
    which, dev = resolve_backend(backend, device)
    tp = tt = None
    if which == "torch":
        import torch

        tp = torch.as_tensor(pred, dtype=torch.float64, device=dev)
        tt = torch.as_tensor(true, dtype=torch.float64, device=dev)
    ranks = np.empty(n, dtype=np.int64)
    for rows in row_blocks(n, n):
        if which == "torch":
            d, scale = _l1_block_torch(tp, tt, pred, true, drop, rows)
        else:
            d, scale = _l1_block_numpy(pred, true, drop, rows)
        loc = np.arange(rows.stop - rows.start)
        own = d[loc, np.arange(rows.start, rows.stop)]
        own_scale = scale[loc, np.arange(rows.start, rows.stop)]
        near = _near(d, scale, own, own_scale, g)
        le = (d <= own[:, None]) & ~near
        for r in np.flatnonzero(near.sum(axis=1) > 1):  # the diagonal itself is always "near"
            i = rows.start + int(r)
            cols = np.flatnonzero(near[r])
            ref = l1_reference_rows(true, pred[i], drop[i], np.append(cols, i))
            le[r, cols] = ref[:-1] <= ref[-1]
        le[loc, np.arange(rows.start, rows.stop)] = False
        ranks[rows] = le.sum(axis=1)
    return ranks


def blocked_diagonal_rank(columns: Callable[[slice], np.ndarray], n: int, *, higher_is_better: bool,
                          rng: np.random.Generator, tie_rtol: float) -> np.ndarray:
    """:func:`perturbfm_metrics.perturbench.diagonal_rank` of an ``[n, n]`` matrix given a column
    block at a time (``columns(cols)`` returns ``M[:, cols]``): memory O(n x block), never the
    whole matrix. The tie-breaking draws are made once for all columns, as for the whole matrix.
    """
    if n < 2:
        raise ValueError(f"diagonal_rank needs N >= 2, got {n}")
    better = np.empty(n, dtype=np.int64)
    ties = np.empty(n, dtype=np.int64)
    for cols in row_blocks(n, n):
        block = columns(cols)
        k = np.arange(cols.stop - cols.start)
        diag = block[np.arange(cols.start, cols.stop), k]
        tol = tie_rtol * np.max(np.abs(block), axis=0)
        diff = block - diag[None, :]
        if higher_is_better:
            np.negative(diff, out=diff)
        diff[np.arange(cols.start, cols.stop), k] = np.nan  # the diagonal is neither better nor a tie
        better[cols] = np.sum(diff < -tol[None, :], axis=0)
        ties[cols] = np.sum(np.abs(diff) <= tol[None, :], axis=0)
    rank = better + rng.integers(0, ties + 1)
    return rank / (n - 1)
