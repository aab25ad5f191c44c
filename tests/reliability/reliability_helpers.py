"""Shared checks of the reliability suite: store invariants and counters."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from perturbfm.hashing import sha256_bytes, sha256_file
from perturbfm.store import manifest_digest

#: Counts printed in the session summary (see conftest.py).
COUNTS: Counter[str] = Counter()

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def temp_leftovers(root: Path, *, allowed_dirs: tuple[Path, ...] = ()) -> list[Path]:
    """Temporary files or directories (hidden names or ``.tmp`` suffix) under
    ``root``, except inside ``allowed_dirs``."""
    out = []
    if not root.exists():
        return out
    allowed = [a.resolve() for a in allowed_dirs]
    for p in root.rglob("*"):
        if not (p.name.startswith(".") or p.name.endswith(".tmp")):
            continue
        rp = p.resolve()
        if any(rp == a or a in rp.parents for a in allowed):
            continue
        out.append(p)
    return out


def dataset_problems(root: Path, *, verify_files: bool = True) -> list[str]:
    """Every visible dataset directory must be complete and match its manifest."""
    problems = []
    ds_root = root / "datasets"
    if not ds_root.exists():
        return problems
    for d in ds_root.iterdir():
        if d.name.startswith("."):
            continue  # a writer's private temp dir, never visible under a hash
        if not _HEX64.match(d.name) or not d.is_dir():
            problems.append(f"unexpected entry {d}")
            continue
        mpath, data = d / "manifest.json", d / "data.h5ad"
        if not mpath.exists() or not data.exists():
            problems.append(f"half-written dataset dir {d}: {sorted(p.name for p in d.iterdir())}")
            continue
        try:
            m = json.loads(mpath.read_text())
        except ValueError as exc:
            problems.append(f"unreadable manifest {mpath}: {exc}")
            continue
        if m.get("hash") != d.name:
            problems.append(f"manifest hash {m.get('hash')} != dir {d.name}")
        if "manifest_sha256" in m and m["manifest_sha256"] != manifest_digest(m):
            problems.append(f"manifest self-hash mismatch {mpath}")
        if verify_files and sha256_file(data) != m.get("file_sha256"):
            problems.append(f"data.h5ad of {d.name[:12]} does not match its manifest")
        extra = sorted(p.name for p in d.iterdir() if p.name not in ("manifest.json", "data.h5ad"))
        if extra:
            problems.append(f"dataset dir {d.name[:12]} holds stray files {extra}")
    return problems


def split_problems(root: Path) -> list[str]:
    """Every visible split file must hash to its name."""
    problems = []
    sp_root = root / "splits"
    if not sp_root.exists():
        return problems
    for p in sp_root.iterdir():
        if p.name.startswith(".") or p.name.endswith(".tmp"):
            continue
        if p.suffix != ".json" or not _HEX64.match(p.stem):
            problems.append(f"unexpected entry {p}")
        elif sha256_bytes(p.read_bytes()) != p.stem:
            problems.append(f"split {p.name} does not match its hash")
    return problems


def store_problems(root: Path, *, allowed_temp_dirs: tuple[Path, ...] = ()) -> list[str]:
    """All invariants of an intact store: no temp leftovers, complete datasets and splits."""
    return ([f"temp leftover {p}" for p in temp_leftovers(root, allowed_dirs=allowed_temp_dirs)]
            + dataset_problems(root) + split_problems(root))
