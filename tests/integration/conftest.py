"""Integration fixtures: third-party fixture plugins installed into a private
--target directory (put on PYTHONPATH for subprocesses), never into the venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def plugin_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the fixture plugins, pip-installed with --target."""
    target = tmp_path_factory.mktemp("plugins")
    for pkg in ("pfm-example-model", "pfm-incomplete-panel", "pfm-broken-plugin"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--no-build-isolation", "--target", str(target), str(FIXTURES / pkg)],
            check=True, capture_output=True, text=True,
        )
    return target


