"""Reading rows of a cells x genes matrix that may stay in its file (anndata ``backed="r"``).

:func:`read_rows` returns the rows asked for, sparse kept sparse, without reading
the others; a backed CSR file is read with one HDF5 read per run of nearby rows.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["read_rows"]

#: Stored values between two rows below which they are read together (one HDF5 read costs ~ reading 10^4 values).
_MERGE_GAP = 1 << 12
_INDPTR_CACHE: dict[tuple[Any, ...], np.ndarray] = {}


def _backed_indptr(group: Any) -> np.ndarray:
    """The row pointer of a backed CSR matrix, read once per file state."""
    fn = group.file.filename
    st = os.stat(fn)
    key = (fn, group.name, st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _INDPTR_CACHE.get(key)
    if hit is None:
        if len(_INDPTR_CACHE) >= 8:
            _INDPTR_CACHE.pop(next(iter(_INDPTR_CACHE)))
        hit = _INDPTR_CACHE[key] = np.asarray(group["indptr"][...], dtype=np.int64)
    return hit


def _backed_csr_rows(X: Any, idx: np.ndarray) -> sp.csr_matrix:
    """Rows ``idx`` (ascending) of a backed CSR matrix: one HDF5 read per run of nearby rows
    (anndata's own indexing reads every row on its own)."""
    group = X.group
    indptr = _backed_indptr(group)
    n_cols = int(X.shape[1])
    starts, stops = indptr[idx], indptr[idx + 1]
    lens = stops - starts
    out_ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    data_ds, ind_ds = group["data"], group["indices"]
    data = np.empty(int(out_ptr[-1]), dtype=data_ds.dtype)
    ind = np.empty(int(out_ptr[-1]), dtype=np.int64)
    if idx.size:
        brk = np.flatnonzero(starts[1:] - stops[:-1] > _MERGE_GAP) + 1
        for run in np.split(np.arange(idx.size), brk):
            lo, hi = int(starts[run[0]]), int(stops[run[-1]])
            if hi <= lo:
                continue
            d, i = data_ds[lo:hi], ind_ds[lo:hi]
            if run.size == 1 or hi - lo == int(lens[run].sum()):
                data[out_ptr[run[0]]:out_ptr[run[-1] + 1]] = d
                ind[out_ptr[run[0]]:out_ptr[run[-1] + 1]] = i
                continue
            for r in run:
                a, b = int(starts[r]) - lo, int(stops[r]) - lo
                data[out_ptr[r]:out_ptr[r + 1]] = d[a:b]
                ind[out_ptr[r]:out_ptr[r + 1]] = i[a:b]
    return sp.csr_matrix((data, ind, out_ptr), shape=(idx.size, n_cols))


def read_rows(adata: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` (ascending integer positions) of ``adata.X``, sparse X kept sparse
    (CSR, stored dtype), without reading other rows. A backed CSR file is read with one
    HDF5 read per run of nearby rows."""
    idx = np.asarray(idx, dtype=np.int64)
    X = adata.X
    if getattr(adata, "isbacked", False) and getattr(X, "format", None) == "csr" and hasattr(X, "group"):
        return _backed_csr_rows(X, idx)
    return X[idx] if idx.size else X[:0]
