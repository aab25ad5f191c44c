"""Plugin-kit fixtures: a fresh virtual environment, isolated from the
development venv, holding a real (non-editable) install of the PerturbFM packages.

The fresh venv is created ``--without-pip``; third-party dependencies (numpy,
anndata, pytest, pip, setuptools ...) come from a *deps-only* view of the
development venv's site-packages (symlinks to everything except PerturbFM's own
distributions, editable hooks and ``.pth`` files) added by a ``.pth`` file. The
PerturbFM packages and every generated plugin are pip-installed into the fresh
venv itself, offline (``--no-index --no-build-isolation --no-deps``), so the
development venv never sees them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_OWN = ("perturbfm", "__editable__", "pfm_", "pfm-", "_pfm")


@dataclass
class FreshVenv:
    """A fresh venv: its root, bin directory and the environment to use it with."""

    root: Path
    bin: Path
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def run(self, args: list[str], *, cwd: Path | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def pip_install(self, *targets: str | Path, editable: bool = False) -> None:
        args = [str(self.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                "--no-build-isolation", "--no-deps"]
        for t in targets:
            args += ["-e", str(t)] if editable else [str(t)]
        self.run(args)


def _deps_view(dest: Path) -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir(parents=True)
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(_OWN) or entry.suffix == ".pth" or low == "__pycache__":
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """A fresh venv with perturbfm-core, -metrics and -bench-adapters installed into it."""
    base = tmp_path_factory.mktemp("freshvenv")
    root = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    deps = _deps_view(base / "deps")
    site = next((root / "lib").glob("python3*/site-packages"))
    (site / "zz_deps_view.pth").write_text(str(deps) + "\n")
    bin_dir = root / "bin"
    pip = bin_dir / "pip"  # `pip` in the guide resolves to the fresh venv's pip, offline
    pip.write_text(f'#!/bin/sh\nexec "{bin_dir / "python"}" -m pip "$@"\n')
    pip.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(root), PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", COLUMNS="200",
               PFM_HOME=str(base / "store"))
    # pip reads "no-build-isolation" inverted from the environment: "0" switches build isolation off
    env["PIP_NO_BUILD_ISOLATION"] = "0"
    venv = FreshVenv(root, bin_dir, env)
    venv.pip_install(REPO / "perturbfm-core", REPO / "perturbfm-metrics", REPO / "perturbfm-bench-adapters")
    return venv
