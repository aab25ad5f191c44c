#!/usr/bin/env python3
"""PerturbFM developer entry point. Needs only Python 3.11 to start.

    python3 scripts/dev.py demo    # set up .venv (the packages and torch), then run the benchmark on the embedded synthetic dataset
    python3 scripts/dev.py test    # set up .venv (+ test tools, peers, plugins), then import smoke, CLI smoke, tests, mypy
    python3 scripts/dev.py setup   # the test set-up only

The virtual environment is created in ``.venv`` (or ``$PFM_VENV``). ``demo`` installs
what the main job needs: the four packages editable and torch (CGIO). ``test`` adds the
test tools, the optional plugins, the extras the tests drive (Ray, MLflow) and the peers
the parity tests compare against. Every install is constrained by ``constraints.txt``
(exact versions of torch and the peers; the packages' own metadata states ranges).
A level is re-installed only when a ``pyproject.toml``, ``constraints.txt`` or this file
changes.
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
CONSTRAINTS = REPO / "constraints.txt"
# what the main job needs; models[cgio] brings torch (its exact build comes from constraints.txt)
PACKAGES = ["perturbfm-core", "perturbfm-metrics", "perturbfm-bench-adapters", "perturbfm-models[cgio]"]
# optional plugins installed editable for their tests (the MLflow observer's tests install it privately)
PLUGINS = ["plugins/perturbfm-gears", "plugins/perturbfm-scgen", "plugins/perturbfm-cpa", "plugins/perturbfm-biolord"]
# setuptools >= 77 (PEP 639 licence metadata) for the tests that build plugins without build isolation
TOOLS = ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "nox>=2024.3", "mypy>=1.10", "types-PyYAML",
         "setuptools>=77"]
# peers the parity tests compare against (never vendored; MIT-licensed) and the optional extras the
# tests exercise (the Ray executor against a real local Ray instance, the MLflow observer); versions in
# constraints.txt
PEERS = ["cell-eval", "cell-eval2", "scperturb"]
EXTRAS = ["ray", "mlflow-skinny"]
# Debian packages the tests use: headless Chromium renders the HTML reports
SYSTEM = {"chromium": "/usr/bin/chromium"}
LEVELS = ("demo", "test")


def _bin(name: str) -> str:
    return str(VENV / ("Scripts" if os.name == "nt" else "bin") / name)


def _dir(pkg: str) -> Path:
    """The directory of a package argument (``perturbfm-models[cgio]`` -> ``perturbfm-models``)."""
    return REPO / pkg.split("[", 1)[0]


def _stamp(level: str) -> str:
    """Hash of everything that decides what ``level`` installs."""
    h = hashlib.sha256(level.encode())
    for p in [Path(__file__), CONSTRAINTS, *(_dir(pkg) / "pyproject.toml" for pkg in PACKAGES + PLUGINS)]:
        h.update(p.read_bytes())
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


def installed_level() -> str | None:
    """The highest level whose stamp matches the current sources, or None."""
    stamp_file = VENV / ".pfm-stamp"
    if not stamp_file.exists():
        return None
    text = stamp_file.read_text()
    for level in reversed(LEVELS):
        if text == f"{level} {_stamp(level)}":
            return level
    return None


def ensure_venv(level: str) -> None:
    """Create the venv and install what ``level`` needs ("demo" or "test"), when needed.

    The test level includes the demo level, so a venv set up for the tests also runs the demo."""
    have = installed_level()
    if have is not None and LEVELS.index(have) >= LEVELS.index(level):
        return
    if not Path(_bin("python")).exists():
        run([sys.executable, "-m", "venv", str(VENV)])
    pip = [_bin("python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(pip + ["--upgrade", "pip"])
    pinned = pip + ["-c", str(CONSTRAINTS)]
    pkgs = PACKAGES + (PLUGINS if level == "test" else [])
    editable: list[str] = []
    for pkg in pkgs:
        editable += ["-e", str(_dir(pkg)) + (pkg[pkg.index("["):] if "[" in pkg else "")]
    run(pinned + editable)
    if level == "test":
        run(pinned + TOOLS + PEERS + EXTRAS)
    (VENV / ".pfm-stamp").write_text(f"{level} {_stamp(level)}")


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


def typecheck() -> int:
    """mypy over every package (configuration: mypy.ini at the repository root)."""
    args = [_bin("python"), "-m", "mypy", "--config-file", str(REPO / "mypy.ini")]
    print("+", " ".join(args), flush=True)
    return subprocess.call(args, cwd=REPO)


def env_find_links(env: dict[str, str]) -> None:
    """Model environments (perturbfm.envs, built with uv, which ignores pip's configuration) get
    this machine's wheel folders too: ``$PFM_ENV_FIND_LINKS`` from ``$PIP_FIND_LINKS`` or pip's
    ``global.find-links`` (so e.g. torch comes from a local CPU wheel, never a CUDA download)."""
    if env.get("PFM_ENV_FIND_LINKS", "").strip():
        return
    links = env.get("PIP_FIND_LINKS", "").strip()
    if not links:
        res = subprocess.run([_bin("python"), "-m", "pip", "config", "get", "global.find-links"],
                             capture_output=True, text=True)
        links = res.stdout.strip() if res.returncode == 0 else ""
    if links:
        env["PFM_ENV_FIND_LINKS"] = links
        print(f"+ PFM_ENV_FIND_LINKS={links}", flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    ensure_venv("demo" if cmd == "demo" else "test")
    env = {**os.environ}
    if cmd == "setup":
        return 0
    if cmd == "demo":
        return subprocess.call([_bin("pfm-bench"), "demo", *rest], env=env)
    ensure_system_packages()
    smoke()
    env_find_links(env)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    args = [_bin("python"), "-m", "pytest", "-p", "xdist.plugin", "-n", os.environ.get("PFM_TEST_WORKERS", "2"),
            "-q", str(REPO / "tests"), *rest]
    print("+", " ".join(args), flush=True)
    tests = subprocess.call(args, env=env, cwd=REPO)
    types = typecheck()
    if types:
        print(f"mypy: type errors (exit {types}); see the lines above", flush=True)
    return tests or types


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
