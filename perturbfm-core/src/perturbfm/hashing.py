"""Canonical serialisation and content hashes.

Hashes must be stable across processes, machines and Python versions, so they
are taken over canonical JSON (sorted keys, no whitespace, UTF-8, no NaN) and
over arrays in a fixed dtype and byte order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

HASH_CHUNK_ROWS = 8192


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes of ``obj`` (sorted keys, compact, UTF-8, NaN refused)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj``."""
    return sha256_bytes(canonical_json(obj))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _update_matrix(h: hashlib._Hash, X: Any, n_rows: int) -> None:
    for start in range(0, n_rows, HASH_CHUNK_ROWS):
        block = X[start : min(start + HASH_CHUNK_ROWS, n_rows)]
        block = sp.csr_matrix(block, dtype=np.float64)
        block.sum_duplicates()
        block.eliminate_zeros()
        block.sort_indices()
        h.update(np.ascontiguousarray(block.indptr, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(block.indices, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(block.data, dtype="<f8").tobytes())


def dataset_content_hash(adata: Any, obs_columns: list[str], meta: dict[str, Any]) -> str:
    """Hash of a canonical dataset's content: ``X`` (values, as float64 CSR), the
    obs and var names, the canonical obs columns and ``meta`` (expression space
    ...). Independent of the h5ad file's bytes and of storage format."""
    h = hashlib.sha256()
    obs = adata.obs
    header = {
        "shape": [int(adata.n_obs), int(adata.n_vars)],
        "obs_names": [str(x) for x in adata.obs_names],
        "var_names": [str(x) for x in adata.var_names],
        "obs": {c: [_jsonable(v) for v in obs[c].tolist()] for c in sorted(obs_columns) if c in obs},
        "meta": meta,
    }
    h.update(canonical_json(header))
    _update_matrix(h, adata.X, adata.n_obs)
    return h.hexdigest()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return repr(f)
    return str(v)
