"""Nox sessions. `python3 scripts/dev.py test` is the everyday command; nox runs
each package's tests in its own environment, plus lint, typecheck and the slow
benchmarks (not run by default)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "integration", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"
PACKAGES = {
    "core": ("perturbfm-core", "tests/core"),
    "metrics": ("perturbfm-metrics", "tests/metrics"),
    "adapters": ("perturbfm-bench-adapters", "tests/adapters"),
    "models": ("perturbfm-models", "tests/models"),
}
ALL = [p for p, _ in PACKAGES.values()]


def _install(session: nox.Session, *pkgs: str) -> None:
    session.install(TORCH, "pytest", "hypothesis", "setuptools>=68", "wheel")
    session.install(*[arg for p in pkgs for arg in ("-e", p)])


@nox.session(python="3.11")
@nox.parametrize("package", list(PACKAGES), ids=list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """One package's tests, with the core and the packages it needs."""
    dist, path = PACKAGES[package]
    # tests build canonical inputs with the bench adapters, so they come along
    _install(session, *dict.fromkeys(["perturbfm-core", "perturbfm-bench-adapters", dist]))
    if package == "models":
        _install(session, "perturbfm-metrics")
    session.run("pytest", "-q", path, *session.posargs, env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


@nox.session(python="3.11")
def integration(session: nox.Session) -> None:
    """All packages together, through the CLI, with the fixture plugins."""
    _install(session, *ALL)
    session.run("pytest", "-q", "tests/integration", *session.posargs, env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "perturbfm-core", "perturbfm-metrics", "perturbfm-bench-adapters",
                "perturbfm-models", "tests", "scripts", "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    _install(session, *ALL)
    session.install("mypy", "types-PyYAML")
    session.run("mypy", "--ignore-missing-imports", "perturbfm-core/src/perturbfm")


@nox.session(python="3.11", default=False)
def bench(session: nox.Session) -> None:
    """Slow benchmarks: speed ratios against peers, CGIO vs baselines."""
    _install(session, *ALL)
    session.install("pot", "scperturb")
    for script in sorted(__import__("pathlib").Path("benchmarks").glob("*.py")):
        session.run("python", str(script), *session.posargs)
