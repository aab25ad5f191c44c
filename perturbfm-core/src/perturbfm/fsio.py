"""Atomic file writes: write to a temporary file beside the target, flush,
fsync, then rename over it. A reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from perturbfm.hashing import canonical_json


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed over
    ``target``; on error it is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; stored artifacts are readable like any file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | Path, obj: Any, *, canonical: bool = False) -> None:
    """Write JSON atomically (pretty-printed unless ``canonical``)."""
    if canonical:
        data = canonical_json(obj)
    else:
        data = (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n").encode()
    atomic_write_bytes(target, data)


def atomic_write_yaml(target: str | Path, obj: Any) -> None:
    atomic_write_text(target, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def atomic_write_with(target: str | Path, writer: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``writer(tmp_path)`` and move the result over ``target`` atomically."""
    with atomic_path(target, suffix=suffix) as tmp:
        writer(tmp)


def publish_directory(tmp_dir: Path, final_dir: Path) -> bool:
    """Rename a fully written ``tmp_dir`` to ``final_dir``.

    Returns False (and removes ``tmp_dir``) when ``final_dir`` already exists,
    e.g. written by a concurrent process; the caller then verifies that copy.
    """
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if final_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
            return False
        raise
    _fsync_dir(final_dir.parent)
    return True
