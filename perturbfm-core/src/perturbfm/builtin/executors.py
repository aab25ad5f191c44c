"""The in-process executor: runs jobs one after another in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from perturbfm.interfaces import Executor


class SerialExecutor(Executor):
    """Runs every job in the calling process, in order."""

    name = "serial"
    description = "run jobs one after another in this process"

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        return [fn(job) for job in jobs]
