"""Shared fixtures: the real data beside the project and an isolated store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$PFM_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("PFM_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder; fails (not skips) under CI when it is missing."""
    path = shared_data_dir()
    if not (path / "README.md").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data missing at {path} (set PFM_SHARED_DATA)")
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own store via PFM_HOME."""
    store = tmp_path / "pfm-home"
    monkeypatch.setenv("PFM_HOME", str(store))
    return store


@pytest.fixture
def chromium() -> str:
    """Headless Chromium for rendering reports: skipped locally when absent, a failure under CI=true."""
    path = "/usr/bin/chromium"
    if not Path(path).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is required under CI=true (apt-get install chromium; scripts/dev.py does it as root)")
        pytest.skip(f"{path} not installed")
    return path
