"""Fixtures for the bench-adapters tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anndata as ad
import pytest


@pytest.fixture
def write_h5ad(tmp_path: Path) -> Callable[..., Path]:
    """Write an AnnData to ``tmp_path/<name>.h5ad`` and return the path."""

    def _write(adata: ad.AnnData, name: str = "data") -> Path:
        path = tmp_path / f"{name}.h5ad"
        adata.write_h5ad(path)
        return path

    return _write
