#!/usr/bin/env python3
"""PerturbFM developer entry point. Needs only Python 3.11 to start.

    python3 scripts/dev.py demo   # set up .venv, then run the benchmark on the embedded synthetic dataset
    python3 scripts/dev.py test   # set up .venv, then import smoke, CLI smoke and the test suite

The virtual environment is created in ``.venv`` (or ``$PFM_VENV``) and
re-installed only when a ``pyproject.toml`` or this file changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("PFM_VENV", REPO / ".venv"))
PACKAGES = ["perturbfm-core", "perturbfm-metrics", "perturbfm-bench-adapters", "perturbfm-models"]
# optional plugins installed editable too, so their tests run (they pin their own deps, torch==2.13.0 included)
PLUGINS = ["plugins/perturbfm-gears"]
# torch is pinned: on these machines 2.13.0 resolves to a local CPU wheel.
TOOLS = ["torch==2.13.0", "pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "nox>=2024.3", "setuptools>=68", "wheel"]
# peers the parity tests compare against (never vendored; MIT-licensed packages)
PEERS = ["cell-eval==0.8.2", "cell-eval2==0.20.0", "scperturb==0.1.0", "pot==0.9.7.post1"]
# optional extras exercised by the tests (the Ray executor against a real local Ray instance)
EXTRAS = ["ray==2.60.0", "mlflow-skinny==3.17.2"]
# Debian packages the tests use: headless Chromium renders the HTML reports
SYSTEM = {"chromium": "/usr/bin/chromium"}


def _bin(name: str) -> str:
    return str(VENV / ("Scripts" if os.name == "nt" else "bin") / name)


def _stamp() -> str:
    h = hashlib.sha256()
    for p in [Path(__file__), *(REPO / pkg / "pyproject.toml" for pkg in PACKAGES + PLUGINS)]:
        h.update(p.read_bytes())
    h.update(" ".join(TOOLS + PEERS + EXTRAS).encode())
    return h.hexdigest()


def run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def ensure_system_packages() -> None:
    """Install the Debian packages the tests need, when missing and when we may."""
    import shutil

    missing = [pkg for pkg, path in SYSTEM.items() if not Path(path).exists()]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print(f"note: {', '.join(missing)} not installed and cannot be installed here (needs root + apt-get); "
              "the tests that need it skip locally and fail under CI=true", flush=True)
        return
    run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_venv() -> None:
    """Create the venv and install every package editable, when needed."""
    stamp_file = VENV / ".pfm-stamp"
    if stamp_file.exists() and stamp_file.read_text() == _stamp():
        return
    if not (VENV / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(VENV)])
    pip = [_bin("python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(pip + ["--upgrade", "pip"])
    run(pip + TOOLS)
    run(pip + PEERS + EXTRAS)
    editable: list[str] = []
    for pkg in PACKAGES + PLUGINS:
        editable += ["-e", str(REPO / pkg)]
    run(pip + editable)
    stamp_file.write_text(_stamp())


def smoke() -> None:
    """Import every package and drive the CLI once, in a throwaway store."""
    run([_bin("python"), "-c",
         "import perturbfm, perturbfm_metrics, perturbfm_models, perturbfm_bench_adapters; "
         "from perturbfm.plugins import get_registry; r = get_registry(); "
         "bad = [p.distribution + ': ' + p.error for p in r.plugins if p.error]; "
         "assert not bad, bad; print('import smoke: ok', sorted(p.distribution for p in r.plugins))"])
    with tempfile.TemporaryDirectory() as store:
        run([_bin("pfm-bench"), "--store", store, "plugins"], stdout=subprocess.DEVNULL)
        run([_bin("pfm-bench"), "--store", store, "data", "import", "--adapter", "synthetic",
             "--opt", "n_genes=50", "--opt", "n_singles=6", "--opt", "n_doubles=3"], stdout=subprocess.DEVNULL)
    print("CLI smoke: ok", flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    env = {**os.environ}
    if cmd == "setup":
        return 0
    if cmd == "demo":
        return subprocess.call([_bin("pfm-bench"), "demo", *rest], env=env)
    ensure_system_packages()
    smoke()
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    args = [_bin("python"), "-m", "pytest", "-p", "xdist.plugin", "-n", os.environ.get("PFM_TEST_WORKERS", "2"),
            "-q", str(REPO / "tests"), *rest]
    print("+", " ".join(args), flush=True)
    return subprocess.call(args, env=env, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
