"""Nox sessions. `python3 scripts/dev.py test` is the everyday command; nox runs each
test directory in its own environment with only the packages it needs (each optional
plugin in a venv of its own), plus lint, typecheck and the slow benchmarks (not run by
default). Every environment installs with ``-c constraints.txt`` (exact torch and peer
versions; the packages' metadata states ranges).

``tests/packaging/test_packaging.py`` fails when a test directory has no
session here, so a new directory cannot be left out silently.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

REPO = Path(__file__).resolve().parent
CONSTRAINTS = str(REPO / "constraints.txt")
CORE, METRICS, ADAPTERS, MODELS = "perturbfm-core", "perturbfm-metrics", "perturbfm-bench-adapters", "perturbfm-models"
# every package; CGIO's torch comes with the models' cgio extra
ALL = (CORE, METRICS, ADAPTERS, f"{MODELS}[cgio]")
TOOLS = ("pytest>=8", "hypothesis>=6", "setuptools>=77")
# the peers the parity tests compare against
PEERS = ("cell-eval", "cell-eval2", "scperturb")

#: test directory -> (editable packages, other requirements). Tests build canonical inputs with the
#: bench adapters, so those come along everywhere; the plugins get an environment each.
SUITES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "core": (ALL, ()),
    "metrics": ((CORE, ADAPTERS, METRICS), PEERS + ("torch",)),
    "adapters": ((CORE, ADAPTERS), ()),
    "models": ((CORE, ADAPTERS, METRICS, f"{MODELS}[cgio]"), ()),
    "study": (ALL, ("ray",)),
    "plugin_kit": (ALL, ()),
    "reliability": (ALL, ()),
    "integration": (ALL, ()),
    "conformance": (ALL, ()),
    # licence files, versions, py.typed, pins, wheels: reads the sources, builds the wheels
    "packaging": ((), ()),
    "gears": (ALL + ("plugins/perturbfm-gears",), ()),
    # the peer wrappers' host sides (their models run in uv environments; PFM_PEER_ENVS=1 builds them)
    "peers": (ALL + ("plugins/perturbfm-scgen", "plugins/perturbfm-cpa", "plugins/perturbfm-biolord"), ()),
    # the observer's tests pip-install the plugin privately (--target), so only mlflow comes here
    "mlflow": (ALL, ("mlflow-skinny",)),
}


def _install(session: nox.Session, packages: tuple[str, ...], extra: tuple[str, ...] = ()) -> None:
    session.install("-c", CONSTRAINTS, *TOOLS, *extra)
    if packages:
        session.install("-c", CONSTRAINTS, *[arg for p in packages for arg in ("-e", p)])


@nox.session(python="3.11")
@nox.parametrize("suite", list(SUITES), ids=list(SUITES))
def tests(session: nox.Session, suite: str) -> None:
    """One test directory, with the packages it needs."""
    path = REPO / "tests" / suite
    if not path.is_dir():
        session.skip(f"tests/{suite} does not exist in this checkout")
    packages, extra = SUITES[suite]
    _install(session, packages, extra)
    session.run("pytest", "-q", str(path), *session.posargs, env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over every package, the plugins, the tests, the benchmarks and the scripts."""
    session.install("ruff")
    session.run("ruff", "check", CORE, METRICS, ADAPTERS, MODELS, "plugins", "tests", "benchmarks", "scripts",
                "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy over every package and plugin (configuration: mypy.ini)."""
    _install(session, ALL + ("plugins/perturbfm-gears", "plugins/perturbfm-mlflow", "plugins/perturbfm-scgen",
                            "plugins/perturbfm-cpa", "plugins/perturbfm-biolord"), ("mypy>=1.10", "types-PyYAML"))
    session.run("mypy", "--config-file", "mypy.ini")


@nox.session(python="3.11", default=False)
def bench(session: nox.Session) -> None:
    """Slow benchmarks (never part of the test suite): speed ratios against peers, CGIO vs
    baselines, the scale benchmark. ``nox -s bench -- scale --quick`` runs one script (by name,
    without .py) with the arguments after it; without a name every script runs with the
    arguments given (helper modules, named ``_*.py``, are not scripts)."""
    _install(session, ALL, ("scperturb", "ray") + PEERS)
    scripts = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    args = list(session.posargs)
    if args and not args[0].startswith("-"):
        chosen = [p for p in scripts if p.stem == args[0]]
        if not chosen:
            session.error(f"no benchmark named {args[0]!r}; choose from {', '.join(p.stem for p in scripts)}")
        scripts, args = chosen, args[1:]
    for script in scripts:
        session.run("python", str(script), *args)
