"""Packaging matches the packages, and the checks cover the code.

* every distribution: SPDX licence expression (PEP 639), the repository's LICENSE in the
  sdist/wheel, one version source (``__version__`` in the package, read statically),
  ``py.typed``, no exact pin of torch (or of anything but the wrapped cell-gears) in its
  metadata; ``pip wheel`` prints no deprecation warning;
* ``constraints.txt`` pins the set-up, and both scripts/dev.py and the noxfile use it;
  ``dev.py demo`` installs the packages and torch only, ``dev.py test`` adds the rest;
* every test directory has a nox session, lint covers plugins/ and benchmarks/, mypy.ini
  names every package.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DISTS = {  # project directory -> import package
    "perturbfm-core": "perturbfm",
    "perturbfm-metrics": "perturbfm_metrics",
    "perturbfm-bench-adapters": "perturbfm_bench_adapters",
    "perturbfm-models": "perturbfm_models",
    "plugins/perturbfm-gears": "perturbfm_gears",
    "plugins/perturbfm-mlflow": "perturbfm_mlflow",
    "plugins/perturbfm-scgen": "perturbfm_scgen",
    "plugins/perturbfm-cpa": "perturbfm_cpa",
    "plugins/perturbfm-biolord": "perturbfm_biolord",
}
#: the only exact pins allowed in library metadata, with the reason
EXACT_PINS_ALLOWED = {"cell-gears": "perturbfm-gears drives cell-gears 0.1.2's internals"}


def _pyproject(project: str) -> dict[str, Any]:
    return tomllib.loads((REPO / project / "pyproject.toml").read_text())


def _req_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_every_distribution_is_listed() -> None:
    found = {str(p.parent.relative_to(REPO)) for p in REPO.glob("*/pyproject.toml")}
    found |= {str(p.parent.relative_to(REPO)) for p in REPO.glob("plugins/*/pyproject.toml")}
    assert found == set(DISTS)


@pytest.mark.parametrize("project", list(DISTS))
def test_licence_is_spdx_and_shipped(project: str) -> None:
    meta = _pyproject(project)
    proj = meta["project"]
    assert proj["license"] == "BSD-3-Clause", "PEP 639: an SPDX expression, not a table"
    assert proj["license-files"] == ["LICENSE"]
    assert (REPO / project / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert "BSD 3-Clause" in (REPO / "LICENSE").read_text()
    requires = meta["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+).*", r) and int(re.findall(r"\d+", r)[0]) >= 77 for r in requires)


@pytest.mark.parametrize("project", list(DISTS))
def test_one_version_source(project: str) -> None:
    meta = _pyproject(project)
    pkg = DISTS[project]
    assert "version" not in meta["project"] and meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": f"{pkg}.__version__"}
    init = next((REPO / project / "src").glob(f"{pkg}/__init__.py"))
    tree = ast.parse(init.read_text())
    versions = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__version__" for t in n.targets)
                and isinstance(n.value, ast.Constant)]
    assert len(versions) == 1, "__version__ must be one string literal (setuptools reads it without importing)"
    # nowhere else in the distribution's sources is the version written
    others = [p for p in (REPO / project / "src").rglob("*.py")
              if p != init and re.search(r"__version__\s*=", p.read_text())]
    assert others == []
    if importlib.util.find_spec(pkg) is not None:
        assert importlib.import_module(pkg).__version__ == versions[0]


@pytest.mark.parametrize("project", list(DISTS))
def test_py_typed_shipped(project: str) -> None:
    pkg = DISTS[project]
    assert (REPO / project / "src" / pkg / "py.typed").exists()
    assert "py.typed" in _pyproject(project)["tool"]["setuptools"]["package-data"][pkg]


@pytest.mark.parametrize("project", list(DISTS))
def test_no_exact_pins_in_library_metadata(project: str) -> None:
    proj = _pyproject(project)["project"]
    reqs = list(proj.get("dependencies", []))
    for extra in proj.get("optional-dependencies", {}).values():
        reqs += extra
    for req in reqs:
        if "==" in req or "===" in req:
            assert _req_name(req) in EXACT_PINS_ALLOWED, f"{project}: exact pin {req!r} belongs in constraints.txt"
        assert not (_req_name(req) == "torch" and "==" in req)


def test_constraints_pin_the_setup_and_are_used() -> None:
    lines = [ln.strip() for ln in (REPO / "constraints.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    pins = {_req_name(ln): ln for ln in lines}
    assert all("==" in ln for ln in lines), lines
    assert {"torch", "pot", "cell-eval", "scperturb", "ray", "mlflow-skinny"} <= set(pins)
    dev = (REPO / "scripts" / "dev.py").read_text()
    assert 'CONSTRAINTS = REPO / "constraints.txt"' in dev and '"-c", str(CONSTRAINTS)' in dev
    nox_src = (REPO / "noxfile.py").read_text()
    assert 'CONSTRAINTS = str(REPO / "constraints.txt")' in nox_src and nox_src.count('"-c", CONSTRAINTS') >= 2
    pinned = re.findall(r'"[A-Za-z0-9_.\-\[\]]+==[^"]*"', dev)
    assert pinned == [], f"dev.py names no exact version (constraints.txt does): {pinned}"


# ------------------------------------------------------------------ dev.py set-up levels
def _load_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[list[str]]]:
    monkeypatch.setenv("PFM_VENV", str(tmp_path / "venv"))
    spec = importlib.util.spec_from_file_location("pfm_dev_script", REPO / "scripts" / "dev.py")
    assert spec is not None and spec.loader is not None
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> None:
        calls.append(list(cmd))
        if cmd[1:3] == ["-m", "venv"]:
            Path(cmd[3]).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(dev, "run", fake_run)
    return dev, calls


def _requirements(calls: list[list[str]]) -> str:
    """The requirement arguments of the pip installs (project directories by their name)."""
    out = []
    for c in calls:
        if "install" in c:
            for arg in c[c.index("install") + 1:]:
                if arg.startswith(str(REPO)):
                    out.append(arg[len(str(REPO)) + 1:])
                elif not arg.startswith(("-", "/")):
                    out.append(arg)
    return " ".join(out)


def test_demo_installs_the_packages_and_torch_only_and_test_adds_the_rest(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    dev, calls = _load_dev(tmp_path, monkeypatch)
    dev.ensure_venv("demo")
    flat = _requirements(calls)
    installs = [c for c in calls if "install" in c]
    assert installs and all("-c" in c for c in installs if "--upgrade" not in c)
    for pkg in ("perturbfm-core", "perturbfm-metrics", "perturbfm-bench-adapters", "perturbfm-models[cgio]"):
        assert pkg in flat, pkg
    for peer in ("cell-eval", "scperturb", "ray", "mlflow", "pytest", "nox", "mypy", "perturbfm-gears"):
        assert peer not in flat, f"the demo set-up installs {peer}"
    assert dev.installed_level() == "demo"
    calls.clear()
    dev.ensure_venv("demo")  # up to date: nothing to do
    assert calls == []
    dev.ensure_venv("test")
    flat = _requirements(calls)
    for extra in ("cell-eval", "scperturb", "ray", "mlflow-skinny", "pytest>=8", "mypy", "perturbfm-gears",
                  "setuptools>=77"):
        assert extra in flat, extra
    assert dev.installed_level() == "test"
    calls.clear()
    dev.ensure_venv("demo")  # the test set-up includes the demo's
    assert calls == []


def test_dev_test_runs_mypy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev, _ = _load_dev(tmp_path, monkeypatch)
    seen: list[list[str]] = []
    monkeypatch.setattr(dev, "ensure_venv", lambda level: None)
    monkeypatch.setattr(dev, "ensure_system_packages", lambda: None)
    monkeypatch.setattr(dev, "smoke", lambda: None)
    monkeypatch.setattr(dev.subprocess, "call", lambda args, **kw: seen.append(list(args)) or 0)
    assert dev.main(["test"]) == 0
    assert any("pytest" in a for a in seen[0]) and seen[1][1:5] == ["-m", "mypy", "--config-file",
                                                                      str(REPO / "mypy.ini")]
    seen.clear()
    monkeypatch.setattr(dev.subprocess, "call", lambda args, **kw: seen.append(list(args)) or (1 if "mypy" in args
                                                                                                 else 0))
    assert dev.main(["test"]) == 1, "type errors fail the test command"


# ------------------------------------------------------------------ checks cover the code
def _nox_suites() -> set[str]:
    tree = ast.parse((REPO / "noxfile.py").read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                       else None)
        if isinstance(target, ast.Name) and target.id == "SUITES":
            assert isinstance(node.value, ast.Dict)
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError("noxfile.py defines no SUITES")


def test_every_test_directory_has_a_nox_session() -> None:
    dirs = {p.parent.relative_to(REPO / "tests").parts[0] for p in (REPO / "tests").rglob("test_*.py")}
    dirs.discard("fixtures")  # fixture plugins: their tests are run by the directories that install them
    missing = dirs - _nox_suites()
    assert not missing, f"tests/{sorted(missing)} have no nox session: add them to SUITES in noxfile.py"


def test_lint_and_typecheck_cover_every_package() -> None:
    tree = ast.parse((REPO / "noxfile.py").read_text())
    lint = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "lint")
    args = {a.value for n in ast.walk(lint) if isinstance(n, ast.Call) for a in n.args if isinstance(a, ast.Constant)}
    assert {"plugins", "benchmarks", "tests", "scripts"} <= args
    ini = configparser.ConfigParser()
    ini.read(REPO / "mypy.ini")
    packages = {p.strip() for p in ini["mypy"]["packages"].split(",")}
    paths = set(ini["mypy"]["mypy_path"].split(":"))
    assert packages == set(DISTS.values())
    assert paths == {f"{project}/src" for project in DISTS}


# ------------------------------------------------------------------ wheels
@pytest.mark.parametrize("project", list(DISTS))
def test_wheel_builds_without_deprecation_warnings(project: str, tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 in this environment (PEP 639 licence metadata)")
    src = tmp_path / "src" / Path(project).name
    shutil.copytree(REPO / project, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    out = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert not re.search(r"deprecat", log, re.I), log[-3000:]
    (wheel,) = out.glob("*.whl")
    pkg = DISTS[project]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"{pkg}/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: BSD-3-Clause" in meta
    init = (REPO / project / "src" / pkg / "__init__.py").read_text()
    version = re.search(r'__version__ = "([^"]+)"', init)
    assert version and f"Version: {version.group(1)}" in meta
    installed = None
    try:
        installed = metadata.version(re.search(r"^Name: (.+)$", meta, re.M).group(1))  # type: ignore[union-attr]
    except metadata.PackageNotFoundError:
        pass
    assert installed in (None, version.group(1))
