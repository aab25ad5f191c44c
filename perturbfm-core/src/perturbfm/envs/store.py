"""Model environments on disk: ``<store>/envs/<spec hash>/``, built with ``uv``.

Layout under the environments root (``<store>/envs``, or ``$PFM_ENVS_DIR``)::

    <hash>/venv/              the virtual environment (uv venv --relocatable)
    <hash>/env.json           spec, resolved packages (uv pip freeze), build seconds,
                              uv version, machine-level sources; written last
    <hash>/requirements.txt   what was installed (and constraints.txt)
    .build-<hash>-<pid>-*     a build in progress (or killed): never used
    .locks/<hash>.lock        one builder per hash; concurrent runs wait for it

A build happens in a ``.build-*`` folder that is renamed to ``<hash>`` only once
``env.json`` is written inside it, so a killed build leaves nothing that looks
usable; the next build of that hash (under the lock) deletes the leftovers. An
environment counts as built only when ``<hash>/env.json`` names that hash and its
Python exists.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from perturbfm.envs.spec import LAYOUT_VERSION, EnvSpec, machine_sources
from perturbfm.errors import ArtifactNotFoundError, PerturbFMError

ENVS_DIR_ENV = "PFM_ENVS_DIR"
_HASH = re.compile(r"^[0-9a-f]{64}$")
_STDERR_TAIL = 25
_UNREACHABLE = ("failed to fetch", "dns error", "connection refused", "could not connect", "network is unreachable",
                "client error (connect)", "tcp connect error", "error sending request", "timed out",
                "network connectivity is disabled", "the network was disabled")


class EnvBuildError(PerturbFMError):
    """A model environment could not be created (which requirement, and uv's reason)."""

    def __init__(self, message: str, *, unreachable: bool = False, **kwargs: Any) -> None:
        self.unreachable = unreachable
        super().__init__(message, **kwargs)


@dataclass
class BuiltEnv:
    """A usable environment: where it is and what ``env.json`` says about it."""

    spec_hash: str
    path: Path
    info: dict[str, Any]
    reused: bool = True

    @property
    def python(self) -> Path:
        return venv_python(self.path / "venv")

    def record(self) -> dict[str, Any]:
        """What a run's provenance records about the environment."""
        return {"name": self.info.get("name"), "spec_hash": self.spec_hash, "python": self.info.get("python_version"),
                "packages": list(self.info.get("packages", [])), "build_seconds": self.info.get("build_seconds"),
                "built_at": self.info.get("built_at"), "reused": self.reused, "path": str(self.path),
                "uv_version": self.info.get("uv_version"), "machine_sources": self.info.get("machine_sources"),
                "spec": self.info.get("spec")}


def envs_root(store: str | os.PathLike[str] | None = None) -> Path:
    """``$PFM_ENVS_DIR`` when set (one folder shared by every store, e.g. in CI), else ``<store>/envs``."""
    if os.environ.get(ENVS_DIR_ENV, "").strip():
        return Path(os.environ[ENVS_DIR_ENV]).expanduser().resolve()
    from perturbfm.store_layout import resolve_store_root  # imported here: it pulls in the numerical stack

    return resolve_store_root(store) / "envs"


def venv_python(venv: Path) -> Path:
    win = venv / "Scripts" / "python.exe"
    return win if win.exists() else venv / "bin" / "python"


def uv_bin() -> str:
    """The ``uv`` executable of the ``uv`` package (a dependency of perturbfm-core), else ``uv`` on PATH."""
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise EnvBuildError("uv is not installed, so model environments cannot be created", field="uv",
                        fix="pip install uv (a dependency of perturbfm-core; reinstall perturbfm-core)")


def _read_info(path: Path, spec_hash: str) -> dict[str, Any] | None:
    try:
        info = json.loads((path / "env.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("spec_hash") != spec_hash:
        return None
    if not venv_python(path / "venv").exists():
        return None
    return info


def find_env(spec: EnvSpec, root: Path) -> BuiltEnv | None:
    """The built environment of ``spec`` under ``root``, or None (never a partial one)."""
    h = spec.spec_hash()
    info = _read_info(root / h, h)
    return None if info is None else BuiltEnv(h, root / h, info, reused=True)


def _lock(root: Path, spec_hash: str) -> FileLock:
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{spec_hash}.lock"))


def _discard(path: Path) -> None:
    """Rename ``path`` out of the way first (it stops looking usable at once), then delete it."""
    if not os.path.lexists(path):
        return
    trash = path.parent / f".trash-{path.name[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def ensure_env(spec: EnvSpec, root: Path, *, say: Callable[[str], None] | None = None) -> BuiltEnv:
    """The environment of ``spec``: reused when built, else built now (one builder per hash)."""
    found = find_env(spec, root)
    if found is not None:
        return found
    return build_env(spec, root, say=say)


def build_env(spec: EnvSpec, root: Path, *, say: Callable[[str], None] | None = None,
              force: bool = False) -> BuiltEnv:
    """Create the environment of ``spec`` under ``root`` (``force``: replace a built one).

    Raises :class:`EnvBuildError` naming the requirement uv could not install and why."""
    say = say or (lambda _m: None)
    h = spec.spec_hash()
    root.mkdir(parents=True, exist_ok=True)
    lock = _lock(root, h)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"waiting for another process building environment {spec.name!r} ({h[:12]})")
        lock.acquire()
    try:
        final = root / h
        if not force:
            info = _read_info(final, h)
            if info is not None:
                return BuiltEnv(h, final, info, reused=True)
        for stale in root.glob(f".build-{h}-*"):  # leftovers of killed builds of this hash
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".build-{h}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            info = _build_into(spec, tmp, say)
            _discard(final)  # a damaged folder of this hash, or the one being replaced (force)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return BuiltEnv(h, final, info, reused=False)
    finally:
        lock.release()


def _python_arg(spec: EnvSpec) -> tuple[str, dict[str, str]]:
    """The interpreter uv should use, and env vars that keep uv from downloading one."""
    running = ".".join(str(v) for v in sys.version_info[:3])
    extra: dict[str, str] = {}
    if os.environ.get("PFM_ENV_PYTHON_DOWNLOADS") != "1":
        extra["UV_PYTHON_DOWNLOADS"] = "never"
    if running == spec.python or running.startswith(spec.python + "."):
        return sys.executable, extra
    return spec.python, extra


def _uv(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([uv_bin(), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def _tail(text: str, n: int = _STDERR_TAIL) -> str:
    lines = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("Using Python ")]
    return "\n".join(lines[-n:])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _failed_requirements(spec: EnvSpec, stderr: str) -> list[str]:
    from packaging.requirements import Requirement

    text = _norm(stderr)
    return [r for r in spec.requirements if re.search(r"(?<![a-z0-9-])" + re.escape(_norm(Requirement(r).name))
                                                      + r"(?![a-z0-9]|-[a-z0-9])", text)]


def _build_into(spec: EnvSpec, tmp: Path, say: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    machine = machine_sources()
    py_arg, extra_env = _python_arg(spec)
    env = {**os.environ, **extra_env, "UV_NO_PROGRESS": "1", "NO_COLOR": "1"}
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX"):
        env.pop(var, None)
    where = f"environment {spec.name!r} ({spec.spec_hash()[:12]})"
    say(f"creating {where} with uv (Python {spec.python}); first use only")
    venv = tmp / "venv"
    res = _uv(["venv", "--no-config", "--relocatable", "--python", py_arg, str(venv)], env, tmp)
    if res.returncode != 0:
        raise EnvBuildError(f"{where}: uv could not create a Python {spec.python} virtual environment:\n"
                            f"{_tail(res.stderr)}", field="EnvSpec.python",
                            fix=f"install Python {spec.python} on this machine (uv looks on PATH), set "
                            "PFM_ENV_PYTHON_DOWNLOADS=1 to let uv download it, or change EnvSpec.python")
    (tmp / "requirements.txt").write_text("\n".join(spec.requirements) + "\n")
    args = ["pip", "install", "--no-config", "--python", str(venv_python(venv)), "-r", "requirements.txt"]
    if spec.constraints:
        (tmp / "constraints.txt").write_text("\n".join(spec.constraints) + "\n")
        args += ["-c", "constraints.txt"]
    if spec.overrides:
        (tmp / "overrides.txt").write_text("\n".join(spec.overrides) + "\n")
        args += ["--override", "overrides.txt"]
    for link in [*spec.find_links, *machine["find_links"]]:
        args += ["--find-links", link]
    for url in [*spec.extra_index_urls, *machine["extra_index_urls"]]:
        args += ["--extra-index-url", url]
    say(f"installing {len(spec.requirements)} requirement(s) into {where}: {', '.join(spec.requirements)}")
    res = _uv(args, env, tmp)
    if res.returncode != 0:
        failed = _failed_requirements(spec, res.stderr)
        unreachable = any(m in res.stderr.lower() for m in _UNREACHABLE)
        which = ", ".join(failed) if failed else "the requirements (uv names no single one)"
        raise EnvBuildError(
            f"{where} could not be built: uv could not install {which}.\nuv said:\n{_tail(res.stderr)}",
            unreachable=unreachable, field=f"EnvSpec.requirements: {which}",
            fix=("check the network / package index (uv could not reach it); machine-level wheel folders go in "
                 "PFM_ENV_FIND_LINKS" if unreachable else
                 "pin a version that exists for this Python and platform (see uv's message), or add a constraint "
                 "or a find-links folder that provides it"))
    freeze = _uv(["pip", "freeze", "--no-config", "--python", str(venv_python(venv))], env, tmp)
    if freeze.returncode != 0:
        raise EnvBuildError(f"{where}: `uv pip freeze` failed after installing:\n{_tail(freeze.stderr)}",
                            field="uv pip freeze", fix="rerun; if it persists, remove the uv cache (uv cache clean)")
    packages = sorted((ln.strip() for ln in freeze.stdout.splitlines() if ln.strip()), key=str.lower)
    probe = subprocess.run([str(venv_python(venv)), "-I", "-c", "import sys; print(sys.version.split()[0])"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    version = _uv(["--version"], env, tmp).stdout.strip()
    info = {
        "layout": LAYOUT_VERSION,
        "spec_hash": spec.spec_hash(),
        "name": spec.name,
        "spec": {"name": spec.name, **spec.content()},
        "python_version": probe.stdout.strip() or None,
        "interpreter_requested": py_arg,
        "packages": packages,
        "build_seconds": round(time.perf_counter() - t0, 3),
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "uv_version": version,
        "machine_sources": machine,
    }
    (tmp / "env.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")  # inside the build folder
    say(f"{where} built in {info['build_seconds']:.1f} s ({len(packages)} packages)")
    return info


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def list_envs(root: Path, *, sizes: bool = False) -> list[dict[str, Any]]:
    """Every folder under ``root``: built environments and incomplete builds (``status``)."""
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        if path.name.startswith(".locks") or path.name.startswith(".trash-"):
            continue
        row: dict[str, Any] = {"path": str(path)}
        if path.name.startswith(".build-"):
            row.update(spec_hash=path.name.split("-")[1], status="incomplete build (killed or in progress)")
        elif _HASH.match(path.name):
            info = _read_info(path, path.name)
            row.update(spec_hash=path.name, status="built" if info else "damaged (no valid env.json or Python)")
            if info:
                row.update(name=info.get("name"), python=info.get("python_version"),
                           packages=len(info.get("packages", [])), built_at=info.get("built_at"),
                           build_seconds=info.get("build_seconds"))
        else:
            continue
        if sizes:
            row["bytes"] = _size(path)
        out.append(row)
    return out


def remove_env(root: Path, ref: str) -> list[str]:
    """Remove the environment(s) whose hash starts with ``ref`` (at least 4 hex digits),
    or every incomplete build when ``ref == "incomplete"``. Returns the removed hashes."""
    if ref == "incomplete":
        removed = []
        for path in sorted(root.glob(".build-*")) if root.is_dir() else []:
            h = path.name.split("-")[1]
            lock = _lock(root, h)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a build in progress, not a killed one
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                lock.release()
            removed.append(h)
        return removed
    if not re.match(r"^[0-9a-f]{4,64}$", ref):
        raise ArtifactNotFoundError(f"{ref!r} is not an environment hash (prefix)", field="env",
                                    fix="pfm-bench envs list shows the hashes")
    matches = [p for p in (root.iterdir() if root.is_dir() else []) if _HASH.match(p.name) and p.name.startswith(ref)]
    if not matches:
        raise ArtifactNotFoundError(f"no environment {ref!r} under {root}", field="env",
                                    fix="pfm-bench envs list shows the hashes")
    if len(matches) > 1:
        raise ArtifactNotFoundError(f"{ref!r} matches {len(matches)} environments", field="env",
                                    fix="give more digits of the hash")
    path = matches[0]
    with _lock(root, path.name):
        _discard(path)
    return [path.name]
