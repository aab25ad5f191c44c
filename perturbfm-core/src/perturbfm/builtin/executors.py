"""The core's executors: ``serial`` (in this process), ``process`` (a local
process pool, spawn-safe; the default for studies) and ``ray`` (optional;
``pip install 'perturbfm-core[ray]'``).

Jobs must be picklable and ``fn`` a module-level function: both travel to
worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from perturbfm.errors import PluginError
from perturbfm.interfaces import Executor


def default_workers() -> int:
    """``os.cpu_count()`` capped at 8."""
    return max(1, min(8, os.cpu_count() or 1))


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
        self.workers = workers or default_workers()

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        jobs = list(jobs)
        if not jobs:
            return []
        n = max(1, min(self.workers, len(jobs)))
        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(fn, jobs))


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
