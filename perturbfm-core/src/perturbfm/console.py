"""Console output and exit codes shared by the CLI and by plugins' commands.

Plugins that add ``pfm-bench`` sub-commands import from here (never from
``perturbfm.cli``). Text that comes from users or data goes through
:func:`escape` before it is printed with Rich markup, so ``[red]`` in a value is
shown as typed rather than swallowed as a style.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

#: A usage or input error the user can fix (bad option, missing file, ...).
EXIT_USER_ERROR = 2
#: The requested work ran and failed (model crash, incomplete panel, ...).
EXIT_RUN_FAILED = 1

__all__ = ["EXIT_RUN_FAILED", "EXIT_USER_ERROR", "console", "err_console", "escape"]
