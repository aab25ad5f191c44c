"""What a reviewer needs to reproduce a run: versions, hashes, the code's git SHA."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def git_sha(cwd: str | Path | None = None) -> dict[str, Any]:
    """The git commit of ``cwd`` (or of the core's source tree), and whether the
    tree had uncommitted changes; ``None`` with a reason when unavailable."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"sha": None, "reason": "not a git checkout"}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"sha": None, "reason": f"git unavailable: {exc}"}


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
