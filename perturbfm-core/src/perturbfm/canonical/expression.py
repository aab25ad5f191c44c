"""Expression-matrix checks and normalisation, shared by the dataset adapters and ``eval``.

One reader (:func:`iter_row_blocks`) turns any matrix -- dense, sparse, an h5ad
backed dataset, in memory or not -- into float64 CSR row blocks, refusing what
cannot be expression (no matrix, complex or string values, unreadable chunks)
with a :class:`~perturbfm.errors.DatasetValidationError` naming the file. One
scanner (:func:`scan_matrix`) walks those blocks, so the backed and the in-memory
paths apply exactly the same checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from perturbfm.errors import DatasetValidationError

#: How many stored values are examined at a time.
CHUNK = 1 << 22
#: Rows read at a time from a matrix that is not in memory.
CHUNK_ROWS = 10_000
TARGET_SUM = 1e4
COUNTS_SPACE = "log1p_cp10k"
LOG1P_SPACE = "log1p (as provided)"
EXPRESSION_MODES = ("auto", "counts", "log1p")
#: No log1p-normalised value exceeds this (log1p of 1e6 per cell is 13.8; log2(CPM + 1) stays below 21).
LOG1P_MAX = 30.0


def _matrix_error(message: str, file: str | None, source_label: str, fix: str) -> DatasetValidationError:
    return DatasetValidationError(message, file=file, field=source_label, fix=fix)


def check_matrix_type(X: Any, *, file: str | None, source_label: str = "X") -> None:
    """Refuse what cannot hold expression values: no matrix, complex, string or object values."""
    if X is None:
        raise _matrix_error(
            f"the file holds no expression matrix {source_label} (it is empty / None)", file, source_label,
            "write the expression values into X (adata.X = ...), or name the layer that holds them "
            "(layer=NAME / --layer NAME)")
    dtype = getattr(X, "dtype", None)
    if dtype is None:
        return
    dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    if dtype.kind == "c":
        raise _matrix_error(
            f"{source_label} holds complex numbers ({dtype}); expression values are real", file, source_label,
            "store the real expression values (e.g. adata.X = adata.X.real only if the imaginary part is 0)")
    if dtype.kind in ("U", "S", "O", "T"):
        raise _matrix_error(
            f"{source_label} holds {'strings' if dtype.kind in ('U', 'S', 'T') else 'Python objects'} "
            f"(dtype {dtype}), not numbers", file, source_label,
            "store numeric expression values, e.g. adata.X = adata.X.astype('float32') after parsing them")
    if dtype.kind not in ("f", "i", "u", "b"):
        raise _matrix_error(f"{source_label} has dtype {dtype}, not a numeric type", file, source_label,
                            "store numeric (float or integer) expression values")


def matrix_of(adata: Any, layer: str | None, *, file: str | None) -> tuple[Any, str]:
    """``(matrix, label)``: ``adata.layers[layer]``, else ``adata.X`` (``None`` when the file has
    no X, also in backed mode where anndata raises instead). An unknown layer is refused."""
    if layer is not None and str(layer).strip():
        layer = str(layer).strip()
        if layer not in adata.layers:
            names = ", ".join(map(str, list(adata.layers)[:20])) or "none (leave the layer unset to use X)"
            raise _matrix_error(f"the file has no layer {layer!r} (given as layer / --layer)", file, "layer",
                                f"name one of the layers: {names}")
        return adata.layers[layer], f"layers[{layer!r}]"
    try:
        return adata.X, "X"
    except KeyError:  # backed file without X
        return None, "X"


def to_csr_float64(X: Any, *, file: str | None = None, source_label: str = "X") -> sp.csr_matrix:
    """A new float64 CSR copy of ``X`` (dense or sparse), duplicates summed; refuses non-numeric input."""
    check_matrix_type(X, file=file, source_label=source_label)
    try:
        if sp.issparse(X):
            out = sp.csr_matrix(X, dtype=np.float64, copy=True)
        else:
            arr = np.asarray(X)
            check_matrix_type(arr, file=file, source_label=source_label)
            if arr.ndim != 2:
                raise _matrix_error(f"{source_label} is not a 2-d matrix (shape {arr.shape})", file, source_label,
                                    "store a cells x genes matrix")
            out = sp.csr_matrix(arr.astype(np.float64, copy=False))
    except (TypeError, ValueError) as exc:
        raise _matrix_error(f"{source_label} cannot be read as numbers: {type(exc).__name__}: {exc}", file,
                            source_label, "store numeric expression values") from exc
    out.sum_duplicates()
    return out


def iter_row_blocks(X_src: Any, rows: np.ndarray | None = None, *, file: str | None, source_label: str = "X",
                    chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, sp.csr_matrix]]:
    """``(first row, float64 CSR block)`` of ``X_src`` (restricted to ``rows``), ``chunk_rows`` at a time.

    Reading errors of a stored matrix (corrupt compressed chunks, a truncated file)
    become a :class:`DatasetValidationError` naming the file and the rows.
    """
    check_matrix_type(X_src, file=file, source_label=source_label)
    n = X_src.shape[0] if rows is None else rows.size
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        idx = slice(start, stop) if rows is None else rows[start:stop]
        try:
            block = X_src[idx]
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:  # h5py: corrupt chunks
            raise _matrix_error(
                f"{source_label} rows {start}-{stop - 1} cannot be read: {type(exc).__name__}: {exc}", file,
                source_label, "the file is damaged (e.g. corrupt compressed chunks); write it again from its "
                "source (AnnData.write_h5ad)") from exc
        yield start, to_csr_float64(block, file=file, source_label=source_label)


def _chunks(data: np.ndarray) -> Any:
    for start in range(0, data.size, CHUNK):
        yield data[start : start + CHUNK]


def empty_stats() -> dict[str, Any]:
    return {"nonfinite": 0, "negative": 0, "integer": True, "max": 0.0, "nnz": 0}


def scan(X: sp.csr_matrix) -> dict[str, Any]:
    """Counts of non-finite and negative stored values, the largest finite value, the
    number of stored values, and whether every finite value is an integer."""
    stats = empty_stats()
    for block in _chunks(X.data):
        finite = np.isfinite(block)
        vals = block[finite]
        stats["nonfinite"] += int(block.size - finite.sum())
        stats["negative"] += int((vals < 0).sum())
        stats["nnz"] += int(block.size)
        if vals.size:
            stats["max"] = max(stats["max"], float(vals.max()))
        if stats["integer"] and not np.all(np.equal(np.mod(vals, 1.0), 0.0)):
            stats["integer"] = False
    return stats


def merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"nonfinite": a["nonfinite"] + b["nonfinite"], "negative": a["negative"] + b["negative"],
            "integer": bool(a["integer"]) and bool(b["integer"]), "max": max(a["max"], b["max"]),
            "nnz": a["nnz"] + b["nnz"]}


_merge = merge_stats


def scan_matrix(X_src: Any, rows: np.ndarray | None = None, *, file: str | None, source_label: str = "X",
                chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    """:func:`scan` over any matrix (in memory or backed), one row block at a time."""
    stats = empty_stats()
    for _, block in iter_row_blocks(X_src, rows, file=file, source_label=source_label, chunk_rows=chunk_rows):
        stats = merge_stats(stats, scan(block))
    return stats


def classify_space(stats: dict[str, Any]) -> str:
    """``"counts"`` (integers, some above 1), ``"log1p"`` (non-integers within log1p's range),
    ``"unknown"`` (non-integers beyond it: not log1p, maybe normalised or expected counts) or
    ``"empty"`` (nothing but zeros and ones)."""
    if stats["integer"]:
        return "counts" if stats["max"] > 1 else "empty"
    return "log1p" if stats["max"] <= LOG1P_MAX else "unknown"


def check_finite_nonnegative(stats: dict[str, Any], *, file: str | None, source_label: str, what: str) -> None:
    if stats["nonfinite"]:
        raise _matrix_error(f"{source_label} holds {stats['nonfinite']} NaN or infinite value(s)", file, source_label,
                            "remove or impute the non-finite values")
    if stats["negative"]:
        raise _matrix_error(f"{source_label} holds {stats['negative']} negative value(s), impossible for {what}",
                            file, source_label, "give raw counts or log1p-normalised values (not scaled / z-scored "
                            "data)")


def normalise_counts(X: sp.csr_matrix, *, file: str | None = None, source_label: str = "X",
                     cell_names: Sequence[str] | None = None, row_offset: int = 0) -> tuple[sp.csr_matrix, int]:
    """Scale each cell to 10,000 total counts, then log1p, in place.

    A cell whose total overflows (``inf``) or whose values cannot be scaled to finite
    numbers is refused, naming the cell, rather than left at zero.

    Returns the matrix and the number of cells with zero total counts (left at 0).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(totals))
    if bad.size:
        raise _cell_error(bad, totals, file, source_label, cell_names, row_offset)
    n_empty = int((totals == 0).sum())
    scale = np.where(totals > 0, TARGET_SUM / np.where(totals > 0, totals, 1.0), 0.0)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        X.data *= np.repeat(scale, np.diff(X.indptr))
    if not np.all(np.isfinite(X.data)):
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[~np.isfinite(X.data)]
        raise _cell_error(np.unique(rows), totals, file, source_label, cell_names, row_offset)
    np.log1p(X.data, out=X.data)
    return X, n_empty


def _cell_error(rows: np.ndarray, totals: np.ndarray, file: str | None, source_label: str,
                cell_names: Sequence[str] | None, offset: int) -> DatasetValidationError:
    names = [str(cell_names[offset + r]) if cell_names is not None else f"row {offset + r}" for r in rows[:5]]
    more = f" and {rows.size - 5} more" if rows.size > 5 else ""
    return _matrix_error(
        f"{rows.size} cell(s) cannot be normalised: their total counts overflow ({totals[rows[0]]:g}): "
        f"{', '.join(names)}{more}", file, source_label,
        "remove those cells or correct their counts (raw counts are far below 1e300 per cell)")


def _decide(stats: dict[str, Any], mode: str, file: str | None, source_label: str) -> tuple[str, list[str]]:
    """Refuse non-finite / negative input and resolve ``auto`` to counts or log1p."""
    if stats["nonfinite"]:
        raise _matrix_error(f"{source_label} holds {stats['nonfinite']} NaN or infinite value(s)", file,
                            source_label, "remove or impute the non-finite values before importing")
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
        raise _matrix_error(f"{source_label} holds {stats['negative']} negative value(s), impossible for {what}",
                            file, source_label,
                            "import raw counts or log1p-normalised values (not scaled / z-scored data)")
    if mode == "counts" and not stats["integer"]:
        processing.append("warning: expression='counts' but some values are not integers")
    return mode, processing


def prepare_expression(
    X_in: Any, mode: str, *, file: str | None, source_label: str, cell_names: Sequence[str] | None = None
) -> tuple[sp.csr_matrix, str, list[str]]:
    """Validate and (when counts) normalise the expression matrix.

    Args:
        X_in: the input matrix (never modified).
        mode: ``"auto"``, ``"counts"`` or ``"log1p"``.
        file: the input file, for error messages.
        source_label: where ``X_in`` came from (e.g. ``"X"``).
        cell_names: names of the rows, for error messages.

    Returns:
        ``(X as new CSR, expression_space, processing lines)``: float64, or float32
        when the input is float32 used as provided (see :func:`output_dtype`).
        Converted :data:`CHUNK_ROWS` rows at a time into a preallocated result, so
        memory is the input, the result and one block.
    """
    check_matrix_type(X_in, file=file, source_label=source_label)
    if not sp.issparse(X_in):
        arr = np.asarray(X_in)
        if arr.ndim != 2:
            raise _matrix_error(f"{source_label} is not a 2-d matrix (shape {arr.shape})", file, source_label,
                                "store a cells x genes matrix")
    return _convert(X_in, None, mode, file=file, source_label=source_label, chunk_rows=CHUNK_ROWS,
                    cell_names=cell_names)


def output_dtype(src_dtype: Any, mode: str) -> np.dtype:
    """The stored dtype of X: float32 when the input holds float32 (or float16) values that are
    used as provided (log1p): exact, and the dataset id (which hashes X as float64) is the
    same. Float64 otherwise: values normalised from counts (10,000 x count / total, then
    log1p) are not float32 numbers, and float64 input would lose digits."""
    try:
        kind = np.dtype(src_dtype)
    except TypeError:
        return np.dtype(np.float64)
    return np.dtype(np.float32) if mode != "counts" and kind in (np.float32, np.float16) else np.dtype(np.float64)


def _convert(X_src: Any, rows: np.ndarray | None, mode: str, *, file: str | None, source_label: str,
             chunk_rows: int, cell_names: Sequence[str] | None,
             note: str | None = None) -> tuple[sp.csr_matrix, str, list[str]]:
    """One pass to check and detect the expression space, one to convert each block into a
    preallocated CSR (data in :func:`output_dtype`, int32 indices where they fit)."""
    stats = scan_matrix(X_src, rows, file=file, source_label=source_label, chunk_rows=chunk_rows)
    mode, processing = _decide(stats, mode, file, source_label)
    dtype = output_dtype(getattr(X_src, "dtype", np.float64), mode)
    n_rows = X_src.shape[0] if rows is None else int(rows.size)
    n_cols = int(X_src.shape[1])
    nnz = int(stats["nnz"])
    index_dtype = np.int32 if max(nnz, n_cols) < np.iinfo(np.int32).max else np.int64
    data = np.empty(nnz, dtype=dtype)
    indices = np.empty(nnz, dtype=index_dtype)
    indptr = np.zeros(n_rows + 1, dtype=index_dtype)
    pos, n_empty = 0, 0
    for start, block in iter_row_blocks(X_src, rows, file=file, source_label=source_label, chunk_rows=chunk_rows):
        if mode == "counts":
            block, k = normalise_counts(block, file=file, source_label=source_label, cell_names=cell_names,
                                        row_offset=start)
            n_empty += k
        k = block.nnz
        if pos + k > nnz:  # the file changed between the passes
            raise _matrix_error(f"{source_label} changed while it was read", file, source_label,
                                "import it again when nothing writes the file")
        data[pos:pos + k] = block.data
        indices[pos:pos + k] = block.indices
        indptr[start + 1:start + 1 + block.shape[0]] = block.indptr[1:] + pos
        pos += k
    X = sp.csr_matrix((data[:pos], indices[:pos], indptr), shape=(n_rows, n_cols))
    if note:
        processing.append(note)
    if dtype == np.float32:
        processing.append("X kept as float32 (the input's own values: exact)")
    if mode == "counts":
        return X, COUNTS_SPACE, processing + _counts_lines(n_empty)
    processing.append("expression used as provided (log1p-normalised)")
    return X, LOG1P_SPACE, processing


def _counts_lines(n_empty: int) -> list[str]:
    lines = ["normalised to 10,000 counts per cell, then log1p"]
    if n_empty:
        lines.append(f"{n_empty} cell(s) with zero total counts left at 0")
    return lines


def prepare_expression_chunked(
    X_src: Any, rows: np.ndarray | None, mode: str, *, file: str | None, source_label: str, chunk_rows: int,
    cell_names: Sequence[str] | None = None,
) -> tuple[sp.csr_matrix, str, list[str]]:
    """Like :func:`prepare_expression`, reading ``X_src`` (e.g. a backed h5ad
    matrix) ``chunk_rows`` rows at a time: one pass to check and detect the
    expression space, one to convert. Per-cell normalisation is row-local, so the
    result equals the in-memory path's; peak memory is the sparse output plus one
    chunk (never a dense or float64 copy of the whole input).

    Args:
        rows: sorted row indices to keep (None: all rows).
        cell_names: names of the kept rows, for error messages.
    """
    if chunk_rows < 1:
        raise DatasetValidationError(f"chunk_size must be >= 1, got {chunk_rows}", file=file,
                                     field="chunk_size", fix="pass e.g. chunk_size=10000")
    return _convert(X_src, rows, mode, file=file, source_label=source_label, chunk_rows=chunk_rows,
                    cell_names=cell_names, note=f"X read and converted in chunks of {chunk_rows} rows (backed mode)")
