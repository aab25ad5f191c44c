"""What a reviewer needs to reproduce a run: versions, hashes, the code's git commit.

The git commit recorded is the one of the *code* that ran: the directory the
``perturbfm`` package was imported from (:func:`code_git`) and, for every plugin
distribution, the directory its code was installed from (:func:`distribution_code`),
never the current working directory (a run started outside the checkout still
records its commit, and one started inside an unrelated repository does not record
that repository's). A directory counts as a git checkout only when the package's own
files are tracked there: a wheel installed into a virtual environment that lives
inside a checkout (``.venv/``) reports ``sha: None``, not the checkout's commit.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

_GIT_TIMEOUT_S = 5


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S)


def git_sha(cwd: str | Path | None = None, *, tracked: str | Path | None = None) -> dict[str, Any]:
    """The git commit of the checkout containing ``cwd`` (default: the core's source tree).

    Args:
        cwd: a directory inside the checkout.
        tracked: a file or directory that must be tracked by that checkout for the
            commit to describe it (e.g. the package's ``__init__.py``); default ``cwd``.

    Returns:
        ``{"sha": str, "dirty": bool}`` (``dirty``: tracked files under ``tracked``
        differ from the commit), or ``{"sha": None, "reason": str}`` when there is
        no checkout, the path is not tracked by it, or git is unavailable.
    """
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    path = Path(tracked) if tracked else where
    if not where.is_dir():
        return {"sha": None, "reason": f"{where} is not a directory"}
    try:
        sha = _git(["rev-parse", "HEAD"], where)
        if sha.returncode != 0:
            return {"sha": None, "reason": "not a git checkout"}
        files = _git(["ls-files", "--", str(path)], where)
        if files.returncode != 0 or not files.stdout.strip():
            return {"sha": None, "reason": f"{path} is not tracked by the git checkout around it (an installed copy)"}
        dirty = _git(["status", "--porcelain", "--untracked-files=no", "--", str(path)], where)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"sha": None, "reason": f"git unavailable: {exc}"}


def code_git() -> dict[str, Any]:
    """The git commit of the directory the ``perturbfm`` package was imported from."""
    here = Path(__file__).resolve().parent
    return git_sha(here, tracked=here)


def _distribution_dir(dist: metadata.Distribution) -> tuple[Path | None, bool]:
    """(directory of the distribution's code, installed editable?).

    Editable and local-directory installs name their source directory in
    ``direct_url.json`` (PEP 610); otherwise the directory of the first top-level
    module of the installed files is used."""
    raw = dist.read_text("direct_url.json")
    if raw:
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}
        url = urlparse(str(info.get("url", "")))
        editable = bool((info.get("dir_info") or {}).get("editable"))
        if url.scheme == "file" and editable:
            return Path(unquote(url.path)), True
    top = (dist.read_text("top_level.txt") or "").split()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and (not top or parts[0] in top) and str(f).endswith(".py") and ".." not in parts:
            return Path(str(dist.locate_file(parts[0]))).resolve(), False
    return None, False


def distribution_code(name: str) -> dict[str, Any]:
    """Version, code directory and git commit of one installed distribution.

    Returns:
        ``{"version", "location", "editable", "git"}``; ``git`` as :func:`git_sha`
        (``sha: None`` with the reason where the code is not a git checkout);
        ``{"version": None, "reason": ...}`` when ``name`` is not installed.
    """
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return {"version": None, "reason": "not installed"}
    where, editable = _distribution_dir(dist)
    out: dict[str, Any] = {"version": dist.version, "location": str(where) if where else None,
                           "editable": editable}
    if where is None or not where.exists():
        out["git"] = {"sha": None, "reason": "the distribution's files could not be located"}
    else:
        where = where.resolve()
        out["git"] = git_sha(where if where.is_dir() else where.parent, tracked=where)
    return out


def code_provenance(distributions: Iterable[str]) -> dict[str, dict[str, Any]]:
    """:func:`distribution_code` of ``perturbfm-core`` and every named distribution
    (sorted, each once): which code, at which version and commit, ran."""
    return {name: distribution_code(name) for name in sorted({"perturbfm-core", *distributions})}


def package_versions(names: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def environment() -> dict[str, Any]:
    """Python, platform and the versions of the numerical stack."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(["numpy", "scipy", "pandas", "anndata", "h5py", "pluggy", "torch"]),
    }
