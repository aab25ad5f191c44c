"""Generated plugins install, register and pass their conformance suite.

The model kind goes through a fresh venv end to end (``pfm-bench plugins new``
there, ``pip install``, ``pfm-bench plugins --json``, the generated tests); the
other kinds are pip-installed ``--target`` a private directory put on
``PYTHONPATH`` (as tests/integration does), never into the development venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import FreshVenv
from perturbfm.plugin_kit import generate_plugin


def test_model_plugin_in_a_fresh_venv(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    fresh_venv.run(["pfm-bench", "plugins", "new", "pfm-kit-model", "--kind", "model", "--dest", str(tmp_path)])
    pkg = tmp_path / "pfm-kit-model"
    fresh_venv.pip_install(pkg)
    out = json.loads(fresh_venv.run(["pfm-bench", "plugins", "--json"]).stdout)
    by_dist = {p["distribution"]: p for p in out["plugins"]}
    assert by_dist["pfm-kit-model"]["registers"] == {"model": ["pfm-kit-model"]}
    assert by_dist["pfm-kit-model"]["error"] is None
    # the core in use is the fresh venv's own install, not the development checkout
    where = fresh_venv.run([str(fresh_venv.python), "-c", "import perturbfm; print(perturbfm.__file__)"]).stdout
    assert str(fresh_venv.root) in where
    res = fresh_venv.run([str(fresh_venv.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                         cwd=pkg, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert " passed" in res.stdout
    # invisible to the development environment
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("pfm-kit-model")


@pytest.mark.parametrize("kind", ["metric-panel", "adapter", "split"])
def test_other_kinds_via_target_dir(kind: str, tmp_path: Path) -> None:
    out = generate_plugin(f"pfm-kit-{kind}", kind, tmp_path / "src")
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--no-build-isolation", "--target", str(target), str(out.path)],
                   check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(target), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    listed = subprocess.run([str(Path(sys.executable).parent / "pfm-bench"), "plugins", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    by_dist = {p["distribution"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert by_dist[f"pfm-kit-{kind}"]["error"] is None
    assert list(by_dist[f"pfm-kit-{kind}"]["registers"].values()) == [[f"pfm-kit-{kind}"]]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(out.path / "tests")],
                         env=env, cwd=out.path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
