"""Where the store lives and how its folders are checked: the root
(``--store``, ``$PFM_HOME``, ``$XDG_DATA_HOME/perturbfm``), a folder that must
not be a file or a symlink loop, hash references, and small shared helpers
of :mod:`perturbfm.store` and :mod:`perturbfm.dataset_store`."""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from perturbfm.errors import ArtifactNotFoundError, StoreLayoutError
from perturbfm.hashing import sha256_json

HOME_ENV = "PFM_HOME"
_HEX = re.compile(r"^[0-9a-f]{4,64}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Largest manifest or split file read (a store file over this is damaged or hostile).
MAX_STORE_JSON_BYTES = 256 << 20


def resolve_store_root(store: str | os.PathLike[str] | None = None) -> Path:
    """``store``, else ``$PFM_HOME``, else ``$XDG_DATA_HOME/perturbfm``."""
    if store:
        raw, source = Path(store), "--store"
    elif os.environ.get(HOME_ENV):
        raw, source = Path(os.environ[HOME_ENV]), HOME_ENV
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        raw, source = Path(xdg) / "perturbfm", "XDG_DATA_HOME"
    try:
        root = raw.expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: symlink loop (Python < 3.13)
        raise StoreLayoutError(
            f"the store path {raw} cannot be resolved: {exc}", file=str(raw), field=source,
            fix=f"remove the looping symlink (rm {raw}) or choose another store with --store DIR or PFM_HOME=DIR",
        ) from None
    if root.exists() and not root.is_dir():
        raise StoreLayoutError(
            f"the store path {root} is a file, not a folder", file=str(root), field=source,
            fix=f"choose a folder with --store DIR or PFM_HOME=DIR, or move the file away (mv {root} {root}.bak)")
    return root


def store_subdir(path: Path) -> Path:
    """``path`` (a folder of the store); a file or a symlink loop in its place is a clean error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise StoreLayoutError(f"the store folder {path} cannot be read: {exc}", file=str(path), field="store",
                               fix=f"remove or fix {path} (pfm-bench recreates the folder), then rerun") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreLayoutError(
            f"{path} is a file, not the store's {path.name!r} folder", file=str(path), field="store",
            fix=f"move it away (mv {path} {path}.bak); pfm-bench recreates the folder, then rerun")
    return path


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_hex(ref: str, what: str) -> str:
    ref = ref.strip().lower()
    if not _HEX.match(ref):
        raise ArtifactNotFoundError(
            f"{what} reference {ref!r} is not a hash",
            field=what,
            fix="give the hex hash (at least 4 characters) printed when it was created",
        )
    return ref


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of a dataset manifest's canonical JSON without its ``manifest_sha256`` field."""
    return sha256_json({k: v for k, v in manifest.items() if k != "manifest_sha256"})
