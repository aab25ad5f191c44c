"""Console output and exit codes shared by the CLI and by plugins' commands.

Plugins that add ``pfm-bench`` sub-commands import from here (never from
``perturbfm.cli``). Text that comes from users or data goes through
:func:`escape` before it is printed with Rich markup, so ``[red]`` in a value is
shown as typed rather than swallowed as a style.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

#: A usage or input error the user can fix (bad option, missing file, ...).
EXIT_USER_ERROR = 2
#: The requested work ran and failed (model crash, incomplete panel, ...).
EXIT_RUN_FAILED = 1

__all__ = ["EXIT_RUN_FAILED", "EXIT_USER_ERROR", "byte_progress", "console", "err_console", "escape",
           "progress_reporter"]


@contextmanager
def progress_reporter(title: str, *, enabled: bool | None = None) -> Iterator[Callable[[str], None]]:
    """A Rich progress line on stderr (spinner, current step, elapsed time) for long
    work; yields ``say(message)``. Shown only when stderr is a terminal (or ``enabled``)."""
    show = err_console.is_terminal if enabled is None else enabled
    if not show:
        yield lambda _msg: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                  transient=True) as bar:
        task = bar.add_task(escape(f"{title}: starting"), total=None)
        yield lambda msg: bar.update(task, description=escape(f"{title}: {msg}"))


@contextmanager
def byte_progress(title: str, total: int | None, *, completed: int = 0,
                  enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar of bytes on stderr (size, speed, time left) for downloads;
    yields ``advance(n_bytes)``. ``completed`` is where a resumed download starts.
    Shown only when stderr is a terminal (or ``enabled``)."""
    show = err_console.is_terminal if enabled is None else enabled
    if not show:
        yield lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(escape(title), total=total, completed=completed)
        yield lambda n: bar.advance(task, n)
