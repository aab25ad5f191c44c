"""Safe file I/O for the store.

* Atomic writes: write to a temporary file beside the target, flush, fsync,
  then rename over it. A reader never sees a half-written file.
* Write failures (disk full, ``ulimit -f``, read-only or unwritable folder, a
  path component that is a file) become :class:`StoreWriteError` naming the
  path and a fix for the cause (:func:`write_error`, used by every writer here).
* Free-space and file-size-limit checks before large writes
  (:func:`ensure_space`).
* Reading input files without trusting them: regular files only (a FIFO never
  blocks, a directory or device is refused), bounded size
  (:func:`read_regular_file`, :func:`check_regular_file`).
* Exclusive creation of directories (:func:`make_exclusive_dir`) and
  inter-process locks for read-modify-write of shared files (:func:`file_lock`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from perturbfm.errors import InputFileError, PerturbFMError, StoreWriteError
from perturbfm.hashing import canonical_json

_STORE_FIX = "or point the store elsewhere (--store DIR or PFM_HOME=DIR)"
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")


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


def _errno_of(exc: BaseException) -> int | None:
    """The errno of ``exc`` or of its causes (HDF5 reports it only in its message)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno:
            return int(cur.errno)
        m = _ERRNO_IN_TEXT.search(str(cur))
        if m:
            return int(m.group(1))
        cur = cur.__cause__ or cur.__context__
    return None


def _blocking_file(path: Path) -> Path | None:
    """The first component of ``path`` that exists but is not a directory."""
    for p in [*reversed(path.parents), path]:
        try:
            st = os.stat(p)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return p
    return None


def write_error(exc: BaseException, path: str | Path, action: str = "write") -> PerturbFMError:
    """A :class:`StoreWriteError` for ``exc`` raised while writing ``path``
    (``exc`` itself when it already is a :class:`PerturbFMError`)."""
    if isinstance(exc, PerturbFMError):
        return exc
    path = Path(path)
    code = _errno_of(exc)
    blocking = _blocking_file(path.parent)
    if code in (errno.ENOSPC, errno.EDQUOT):
        why, fix = "the disk is full", f"free disk space on that file system {_STORE_FIX}, then rerun"
    elif code == errno.EFBIG:
        why, fix = ("the file exceeds the file-size limit", "raise the limit (`ulimit -f unlimited`) "
                    f"{_STORE_FIX}, then rerun")
    elif code == errno.EROFS:
        why, fix = "the file system is read-only", "use a writable store: --store DIR or PFM_HOME=DIR"
    elif code in (errno.EACCES, errno.EPERM):
        why, fix = ("permission denied", f"make {path.parent} writable (chmod u+w) {_STORE_FIX}, then rerun")
    elif code == errno.ELOOP:
        why, fix = "the path contains a symlink loop", "fix or remove the looping symlink, then rerun"
    elif blocking is not None or code in (errno.ENOTDIR, errno.EEXIST):
        where = blocking or path.parent
        why, fix = (f"{where} is a file, not a folder",
                    f"move it away (mv {where} {where}.bak) so that a folder can be created there, then rerun")
    else:
        why, fix = "an I/O error occurred", f"check the disk and the permissions of {path.parent}, then rerun"
    detail = f"{type(exc).__name__}: {exc}".strip()
    return StoreWriteError(f"could not {action} {path}: {why} ({detail})", file=str(path), field="path", fix=fix)


@contextmanager
def guard_write(path: str | Path, action: str = "write") -> Iterator[None]:
    """Turn an :class:`OSError` raised inside the block into a :class:`StoreWriteError` for ``path``."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, PerturbFMError):
            raise
        raise write_error(exc, path, action) from exc


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed over
    ``target``; on error it is removed and ``target`` is untouched. OS errors
    become :class:`StoreWriteError` naming ``target``."""
    target = Path(target)
    with guard_write(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; stored artifacts are readable like any file
    tmp_path = Path(tmp)
    try:
        with guard_write(target):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        try:
            tmp_path.unlink(missing_ok=True)
        except OSError:
            pass


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


def ensure_space(folder: str | Path, need_bytes: int, what: str) -> None:
    """Refuse before writing ``need_bytes`` (an estimate) under ``folder`` when the
    file system lacks the space or the file-size limit (``ulimit -f``) is lower."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    margin = 16 << 20
    if free is not None and free < need_bytes + margin:
        raise StoreWriteError(
            f"not enough free space to write {what}: about {_mib(need_bytes + margin)} needed, "
            f"{_mib(free)} free on the file system of {probe}", file=str(folder), field="path",
            fix=f"free disk space {_STORE_FIX}, then rerun")
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and soft < need_bytes:
        raise StoreWriteError(
            f"the file-size limit (ulimit -f: {_mib(soft)}) is below the size of {what} (about {_mib(need_bytes)})",
            file=str(folder), field="path", fix="raise the limit (`ulimit -f unlimited`), then rerun")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _open_regular(path: Path, what: str, error: type[PerturbFMError], fix: str) -> tuple[int, os.stat_result]:
    """Open ``path`` read-only without blocking (a FIFO never hangs) and check it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} does not exist", file=str(path), field="path", fix=fix) from None
    except PermissionError:
        raise error(f"{what} is not readable (permission denied)", file=str(path), field="path",
                    fix=f"make it readable (chmod u+r {path}) or {fix}") from None
    except OSError as exc:
        why = "the path contains a symlink loop" if exc.errno == errno.ELOOP else f"cannot open it ({exc})"
        raise error(f"{what}: {why}", file=str(path), field="path", fix=fix) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{what} is {kind}, not a regular file", file=str(path), field="path", fix=fix)
    return fd, st


def check_regular_file(path: str | Path, *, what: str = "the file", error: type[PerturbFMError] = InputFileError,
                       fix: str = "pass the path of a regular file") -> None:
    """Raise ``error`` unless ``path`` is an existing, readable regular file (no FIFO, directory or device)."""
    fd, _ = _open_regular(Path(path), what, error, fix)
    os.close(fd)


def read_regular_file(path: str | Path, *, what: str = "the file", max_bytes: int | None = None,
                      error: type[PerturbFMError] = InputFileError,
                      fix: str = "pass the path of a regular file") -> bytes:
    """The bytes of regular file ``path``; a missing file, a directory, a FIFO (never
    waited on), a device, a symlink loop or a file over ``max_bytes`` raise ``error``."""
    path = Path(path)
    fd, st = _open_regular(path, what, error, fix)
    try:
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{what} is {_mib(st.st_size)}, more than the {_mib(max_bytes)} accepted", file=str(path),
                        field="path", fix=fix)
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while block := os.read(fd, 1 << 20):
            chunks.append(block)
            total += len(block)
            if max_bytes is not None and total > max_bytes:
                raise error(f"{what} grew past the {_mib(max_bytes)} accepted while it was read", file=str(path),
                            field="path", fix=fix)
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"{what} could not be read: {exc}", file=str(path), field="path", fix=fix) from None
    finally:
        os.close(fd)


def make_exclusive_dir(parent: str | Path, name: str, *, attempts: int = 1000) -> Path:
    """Create and return a new directory ``parent/name`` (or ``name_1``, ``name_2`` ...)
    that no other process created: ``os.mkdir`` is the only check, so two
    processes starting at once never share or crash on one directory."""
    parent = Path(parent)
    with guard_write(parent / name, "create"):
        parent.mkdir(parents=True, exist_ok=True)
        for i in range(attempts):
            candidate = parent / (name if i == 0 else f"{name}_{i}")
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            return candidate
    raise StoreWriteError(f"could not create a new directory for {name}: {attempts} names are taken",
                          file=str(parent), field="path", fix=f"remove stale entries from {parent}, then rerun")


LOCK_TIMEOUT_S = 600.0


@contextmanager
def file_lock(path: str | Path, *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an inter-process lock (``filelock``) on ``path`` for the block. Every
    read-modify-write of a file other processes may change runs under one."""
    from filelock import FileLock, Timeout

    path = Path(path)
    with guard_write(path, "create the lock file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            raise StoreWriteError(
                f"another pfm-bench process has held the lock {path} for over {timeout:.0f} s", file=str(path),
                field="lock", fix="wait for the other process to finish; if none is running, delete the lock file",
            ) from None
    try:
        yield
    finally:
        lock.release()
