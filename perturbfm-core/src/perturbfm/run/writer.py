"""The one writer of a run directory.

* The directory is created exclusively (``mkdir(exist_ok=False)``, retried with a
  new suffix), so two runs started in the same second never collide.
* ``run_status.json`` is written as soon as the directory exists and after every
  stage; if even that write fails, the status goes to stderr.
* Every document is written atomically and at most once; a write that fails
  (disk full, ``ulimit -f``, read-only store) becomes a :class:`RunWriteError`
  naming the path and a fix.
* Before the large write (``predictions.h5ad``) the free space and the file-size
  limit are checked against an estimate of its size, so HDF5 never starts a file
  it cannot finish (a failed HDF5 close is where h5py used to crash).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perturbfm.errors import PerturbFMError
from perturbfm.fsio import atomic_write_json, atomic_write_text, atomic_write_with, atomic_write_yaml
from perturbfm.store import utc_now

#: headroom over the estimated size of a large write
SPACE_MARGIN = 1.2
#: bytes always added to an estimate (HDF5 metadata, obs tables)
SPACE_OVERHEAD = 1 << 20


class RunWriteError(PerturbFMError):
    """A file of a run (or the run directory) could not be written."""


def _fix_for(exc: OSError, path: Path) -> str:
    where = path.parent if path.suffix else path
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on the device holding {where} (see `df -h {where}`) and rerun"
    if exc.errno == errno.EFBIG:
        return "raise the file-size limit of the shell (`ulimit -f unlimited`) and rerun"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"make {where} writable (e.g. `chmod u+w {where}`), or use a writable store "
                "(--store DIR or PFM_HOME=DIR)")
    return f"check that {where} is a writable directory on a healthy disk and rerun"


def write_error(exc: OSError, path: Path, what: str) -> RunWriteError:
    """A clean error for an ``OSError`` while writing ``path``."""
    reason = exc.strerror or type(exc).__name__
    return RunWriteError(f"could not write {what}: {reason}", file=str(path), fix=_fix_for(exc, path))


def create_run_dir(runs_dir: Path, run_id: str) -> Path:
    """Create ``runs_dir/run_id`` (or ``run_id_2``, ``_3`` ...) exclusively and return it."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, runs_dir, "the runs directory") from exc
    for n in range(1, 10_000):
        path = runs_dir / (run_id if n == 1 else f"{run_id}_{n}")
        try:
            path.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(exc, path, "the run directory") from exc
        return path
    raise RunWriteError(f"10,000 runs named {run_id}* already exist", file=str(runs_dir),
                        fix="remove old runs from the store")


class RunWriter:
    """Writes the files of one run directory, atomically, once each, and its status."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.dir = run_dir
        self.run_id = run_id
        self.written: list[str] = []
        self.status: dict[str, Any] = {"run_id": run_id, "status": "running", "stages": {}, "started_at": utc_now()}
        self.status_ok = True
        self.save_status()

    # ------------------------------------------------------------------ status
    def save_status(self) -> None:
        """Write ``run_status.json``; when that fails, print the status to stderr."""
        try:
            atomic_write_json(self.dir / "run_status.json", self.status)
            self.status_ok = True
        except (OSError, TypeError, ValueError) as exc:
            self.status_ok = False
            try:
                text = json.dumps(self.status, default=str)[:4000]
            except (TypeError, ValueError):
                text = repr(self.status)[:4000]
            print(f"perturbfm: could not write {self.dir / 'run_status.json'} ({exc}); the run's status is: {text}",
                  file=sys.stderr)

    def stage(self, name: str, state: str, **info: Any) -> None:
        self.status["stages"][name] = {"state": state, "at": utc_now(), **info}
        self.status["current_stage"] = name
        self.save_status()

    def note(self, key: str, value: Any) -> None:
        """Append ``value`` to the list ``key`` of the status (e.g. observer errors)."""
        self.status.setdefault(key, []).append(value)
        self.save_status()

    def finish(self, status: str, **info: Any) -> None:
        self.status.update(status=status, finished_at=utc_now(), **info)
        if status != "succeeded":
            self.withdraw_metrics(save=False)
        self.save_status()

    def withdraw_metrics(self, save: bool = True) -> None:
        """A failed run never keeps a ``metrics.json`` (written by a later-failing stage or by an observer)."""
        path = self.dir / "metrics.json"
        try:
            if not path.exists():
                return
            path.unlink()
            self.status["metrics_withdrawn"] = "metrics.json was removed because the run failed"
        except OSError as exc:
            self.status["metrics_withdrawn"] = f"metrics.json could not be removed: {exc}"
        if save:
            self.save_status()

    # ------------------------------------------------------------------ documents
    def _write(self, name: str, fn: Callable[[Path], None], what: str) -> Path:
        if name in self.written:
            raise RuntimeError(f"{name} written twice in run {self.run_id}")  # a bug of the pipeline
        path = self.dir / name
        try:
            fn(path)
        except OSError as exc:
            raise write_error(exc, path, what) from exc
        self.written.append(name)
        return path

    def json(self, name: str, obj: Any, what: str = "") -> Path:
        return self._write(name, lambda p: atomic_write_json(p, obj), what or name)

    def yaml(self, name: str, obj: Any, what: str = "") -> Path:
        return self._write(name, lambda p: atomic_write_yaml(p, obj), what or name)

    def text(self, name: str, text: str, what: str = "") -> Path:
        return self._write(name, lambda p: atomic_write_text(p, text), what or name)

    def large(self, name: str, writer: Callable[[Path], None], est_bytes: int, what: str = "",
              suffix: str = "") -> Path:
        """Write a large file after checking free space and the file-size limit."""
        path = self.dir / name
        check_space(path, est_bytes, what or name)
        return self._write(name, lambda p: atomic_write_with(p, writer, suffix=suffix), what or name)


def check_space(path: Path, est_bytes: int, what: str) -> None:
    """Refuse a write of about ``est_bytes`` that the disk or ``ulimit -f`` cannot take."""
    need = int(est_bytes * SPACE_MARGIN) + SPACE_OVERHEAD
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < need:
        raise RunWriteError(f"not enough free space to write {what}: needs about {need / 2**20:.1f} MiB, "
                            f"{free / 2**20:.1f} MiB free", file=str(path), fix=_fix_for(
                                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and soft < need:
        raise RunWriteError(f"the file-size limit ({soft / 2**20:.2f} MiB, `ulimit -f`) is below the size of {what} "
                            f"(about {need / 2**20:.1f} MiB)", file=str(path),
                            fix=_fix_for(OSError(errno.EFBIG, os.strerror(errno.EFBIG)), path))
