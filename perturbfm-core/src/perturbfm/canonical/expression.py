"""Expression-matrix checks and normalisation for the AnnData adapter.

Every check walks the stored non-zero values of a CSR matrix in chunks, so a
large matrix is never copied in full more than once (the float64 conversion).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from perturbfm.errors import DatasetValidationError

#: How many stored values are examined at a time.
CHUNK = 1 << 22
TARGET_SUM = 1e4
COUNTS_SPACE = "log1p_cp10k"
LOG1P_SPACE = "log1p (as provided)"
EXPRESSION_MODES = ("auto", "counts", "log1p")


def to_csr_float64(X: Any) -> sp.csr_matrix:
    """A new float64 CSR copy of ``X`` (dense or sparse), duplicates summed."""
    if sp.issparse(X):
        out = sp.csr_matrix(X, dtype=np.float64, copy=True)
    else:
        out = sp.csr_matrix(np.asarray(X, dtype=np.float64))
    out.sum_duplicates()
    return out


def _chunks(data: np.ndarray) -> Any:
    for start in range(0, data.size, CHUNK):
        yield data[start : start + CHUNK]


def scan(X: sp.csr_matrix) -> dict[str, int | bool]:
    """Counts of non-finite and negative stored values, and whether every
    stored value is an integer (checked chunk by chunk)."""
    n_nonfinite = n_negative = 0
    all_int = True
    for block in _chunks(X.data):
        finite = np.isfinite(block)
        n_nonfinite += int(block.size - finite.sum())
        n_negative += int((block[finite] < 0).sum())
        if all_int and not np.all(np.equal(np.mod(block[finite], 1.0), 0.0)):
            all_int = False
    return {"nonfinite": n_nonfinite, "negative": n_negative, "integer": all_int}


def normalise_counts(X: sp.csr_matrix) -> tuple[sp.csr_matrix, int]:
    """Scale each cell to 10,000 total counts, then log1p, in place.

    Returns the matrix and the number of cells with zero total counts (left at 0).
    """
    totals = np.asarray(X.sum(axis=1)).ravel()
    n_empty = int((totals == 0).sum())
    with np.errstate(divide="ignore"):
        scale = np.where(totals > 0, TARGET_SUM / np.where(totals > 0, totals, 1.0), 0.0)
    X.data *= np.repeat(scale, np.diff(X.indptr))
    np.log1p(X.data, out=X.data)
    return X, n_empty


def _merge(a: dict[str, int | bool], b: dict[str, int | bool]) -> dict[str, int | bool]:
    return {"nonfinite": int(a["nonfinite"]) + int(b["nonfinite"]),
            "negative": int(a["negative"]) + int(b["negative"]),
            "integer": bool(a["integer"]) and bool(b["integer"])}


def _decide(stats: dict[str, int | bool], mode: str, file: str, source_label: str) -> tuple[str, list[str]]:
    """Refuse non-finite / negative input and resolve ``auto`` to counts or log1p."""
    if stats["nonfinite"]:
        raise DatasetValidationError(
            f"{source_label} holds {stats['nonfinite']} NaN or infinite value(s)",
            file=file,
            field=source_label,
            fix="remove or impute the non-finite values before importing",
        )
    processing: list[str] = []
    if mode == "auto":
        if stats["negative"] == 0 and stats["integer"]:
            mode = "counts"
            processing.append("expression auto-detected as raw counts (all values non-negative integers)")
        else:
            mode = "log1p"
            why = "negative values present" if stats["negative"] else "non-integer values present"
            processing.append(f"expression auto-detected as log1p-normalised ({why})")
    if stats["negative"]:
        what = "raw counts" if mode == "counts" else "log1p-normalised expression"
        raise DatasetValidationError(
            f"{source_label} holds {stats['negative']} negative value(s), impossible for {what}",
            file=file,
            field=source_label,
            fix="import raw counts or log1p-normalised values (not scaled / z-scored data)",
        )
    if mode == "counts" and not stats["integer"]:
        processing.append("warning: expression='counts' but some values are not integers")
    return mode, processing


def prepare_expression(
    X_in: Any, mode: str, *, file: str, source_label: str
) -> tuple[sp.csr_matrix, str, list[str]]:
    """Validate and (when counts) normalise the expression matrix.

    Args:
        X_in: the input matrix (never modified).
        mode: ``"auto"``, ``"counts"`` or ``"log1p"``.
        file: the input file, for error messages.
        source_label: where ``X_in`` came from (e.g. ``"X"``).

    Returns:
        ``(X as new float64 CSR, expression_space, processing lines)``.
    """
    X = to_csr_float64(X_in)
    mode, processing = _decide(scan(X), mode, file, source_label)
    if mode == "counts":
        X, n_empty = normalise_counts(X)
        return X, COUNTS_SPACE, processing + _counts_lines(n_empty)
    processing.append("expression used as provided (log1p-normalised)")
    return X, LOG1P_SPACE, processing


def _counts_lines(n_empty: int) -> list[str]:
    lines = ["normalised to 10,000 counts per cell, then log1p"]
    if n_empty:
        lines.append(f"{n_empty} cell(s) with zero total counts left at 0")
    return lines


def _row_blocks(X_src: Any, rows: np.ndarray | None, chunk_rows: int) -> Iterator[sp.csr_matrix]:
    n = X_src.shape[0] if rows is None else rows.size
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        idx = slice(start, stop) if rows is None else rows[start:stop]
        yield to_csr_float64(X_src[idx])


def prepare_expression_chunked(
    X_src: Any, rows: np.ndarray | None, mode: str, *, file: str, source_label: str, chunk_rows: int
) -> tuple[sp.csr_matrix, str, list[str]]:
    """Like :func:`prepare_expression`, reading ``X_src`` (e.g. a backed h5ad
    matrix) ``chunk_rows`` rows at a time: one pass to check and detect the
    expression space, one to convert. Per-cell normalisation is row-local, so the
    result equals the in-memory path's; peak memory is the sparse output plus one
    chunk (never a dense or float64 copy of the whole input).

    Args:
        rows: sorted row indices to keep (None: all rows).
    """
    if chunk_rows < 1:
        raise DatasetValidationError(f"chunk_size must be >= 1, got {chunk_rows}", file=file,
                                     field="chunk_size", fix="pass e.g. chunk_size=10000")
    stats: dict[str, int | bool] = {"nonfinite": 0, "negative": 0, "integer": True}
    for block in _row_blocks(X_src, rows, chunk_rows):
        stats = _merge(stats, scan(block))
    mode, processing = _decide(stats, mode, file, source_label)
    out, n_empty = [], 0
    for block in _row_blocks(X_src, rows, chunk_rows):
        if mode == "counts":
            block, k = normalise_counts(block)
            n_empty += k
        out.append(block)
    n_cols = X_src.shape[1]
    X = sp.vstack(out, format="csr") if out else sp.csr_matrix((0, n_cols), dtype=np.float64)
    X = sp.csr_matrix(X, dtype=np.float64)
    processing.append(f"X read and converted in chunks of {chunk_rows} rows (backed mode)")
    if mode == "counts":
        return X, COUNTS_SPACE, processing + _counts_lines(n_empty)
    processing.append("expression used as provided (log1p-normalised)")
    return X, LOG1P_SPACE, processing
