"""Shared by the model-environment tests: the fake isolated model (tests/fixtures/isolated_model)
and a session-scoped environment built once with uv for real."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "isolated_model"


def load_fake() -> Any:
    """The fake model's module (imported once, by path, under a fixed name)."""
    name = "pfm_fake_isolated_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURE / "fake_model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def build_or_skip(spec: Any, root: Path) -> Any:
    """Build (or reuse) ``spec`` under ``root``; skip only when uv cannot reach any package index."""
    from perturbfm.envs import EnvBuildError, ensure_env

    try:
        return ensure_env(spec, root)
    except EnvBuildError as exc:
        if exc.unreachable:
            pytest.skip(f"uv cannot reach a package index to build the test environment: {exc.message[:300]}")
        raise


@pytest.fixture(scope="session")
def shared_envs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One environments folder for the session (shared by xdist workers, who wait on its lock),
    exported as $PFM_ENVS_DIR so every store uses it."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "pfm-envs"
    old = os.environ.get("PFM_ENVS_DIR")
    os.environ["PFM_ENVS_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("PFM_ENVS_DIR", None)
    else:
        os.environ["PFM_ENVS_DIR"] = old


@pytest.fixture(scope="session")
def fake_env(shared_envs_dir: Path) -> Any:
    """The fake model's environment, built once per session (numpy only)."""
    return build_or_skip(load_fake().FakeIsolatedModel.environment, shared_envs_dir)
