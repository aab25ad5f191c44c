"""The core's executors: ``serial`` (in this process), ``process`` (a local
process pool, spawn-safe; the default for studies) and ``ray`` (optional;
``pip install 'perturbfm-core[ray]'``).

Jobs must be picklable and ``fn`` a module-level function: both travel to
worker processes.

Workers of the ``process`` executor die with their parent: on Linux each asks the
kernel for ``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and on
every platform a watchdog thread in the worker exits when its parent pid changes.
Workers ignore ``SIGINT`` (a Ctrl-C in the terminal reaches the whole process
group): the parent turns it, or any other exception while it waits, into killing
the pool, so that no worker outlives an interrupted study holding its output open.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from perturbfm.errors import PluginError
from perturbfm.interfaces import Executor


def default_workers() -> int:
    """``os.cpu_count()`` capped at 8."""
    return max(1, min(8, os.cpu_count() or 1))


#: How often a worker checks that its parent is alive (seconds).
WATCHDOG_PERIOD = 0.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """In a worker: arrange to die as soon as ``parent_pid`` does."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still holds
            pass
    if os.getppid() != parent_pid:  # the parent died before the worker got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_PERIOD)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="pfm-parent-watchdog", daemon=True).start()


def _worker_init(parent_pid: int) -> None:
    """Initializer of every process-executor worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    _die_with_parent(parent_pid)


@contextmanager
def _sigint_ignored_while_spawning() -> Iterator[None]:
    """Workers are spawned by ``submit``; an ignored signal stays ignored across exec,
    so a Ctrl-C reaching the process group never prints a traceback from a worker
    that is still importing (the parent alone handles it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.SIG_DFL)


def _kill_pool(pool: Any, grace: float = 5.0) -> None:
    """Kill every worker process of a ``ProcessPoolExecutor`` and reap them."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        try:
            p.kill()
        except (OSError, ValueError):  # already gone / already closed
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.join(max(0.0, deadline - time.monotonic()))
        except (OSError, ValueError, AssertionError):
            pass


class SerialExecutor(Executor):
    """Runs every job in the calling process, in order."""

    name = "serial"
    description = "run jobs one after another in this process"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = 1

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        return [fn(job) for job in jobs]


class ProcessExecutor(Executor):
    """A local :class:`concurrent.futures.ProcessPoolExecutor` with the
    ``spawn`` start method (safe with threads, torch and HDF5)."""

    name = "process"
    description = "run jobs in a local pool of spawned worker processes"

    def __init__(self, workers: int | None = None) -> None:
        self.workers: int = workers or default_workers()

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        jobs = list(jobs)
        if not jobs:
            return []
        n = max(1, min(self.workers, len(jobs)))
        pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                   initargs=(os.getpid(),))
        try:
            with _sigint_ignored_while_spawning():  # workers start with SIGINT ignored, before any import
                futures = [pool.submit(fn, job) for job in jobs]
            out = [f.result() for f in futures]
        except BaseException:  # Ctrl-C, SIGTERM turned into an exception, a broken pool: no worker survives
            _kill_pool(pool)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return out


class RayExecutor(Executor):
    """Ray tasks: a local Ray instance (started on demand with ``workers`` CPUs)
    or the cluster named by ``RAY_ADDRESS``."""

    name = "ray"
    description = "run jobs as Ray tasks (local instance, or the cluster in RAY_ADDRESS); needs perturbfm-core[ray]"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        try:
            import ray
        except ImportError as exc:
            raise PluginError(
                "the ray executor needs Ray, which is not installed",
                field="executor", fix="pip install 'perturbfm-core[ray]' (or choose --executor process)",
            ) from exc
        jobs = list(jobs)
        if not jobs:
            return []
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if not os.environ.get("RAY_ADDRESS"):
                kwargs["num_cpus"] = self.workers
            ray.init(**kwargs)
            started = True
        try:
            remote = ray.remote(num_cpus=1, max_retries=0)(fn)
            return list(ray.get([remote.remote(job) for job in jobs]))
        finally:
            if started:
                ray.shutdown()
