"""Exception types. Every user-facing failure is a :class:`PerturbFMError`.

The CLI turns these into a short message (no traceback). Each carries, where it
applies, the file and the field at fault and how to fix it.
"""

from __future__ import annotations


class PerturbFMError(Exception):
    """Base class for errors the user can act on.

    Args:
        message: what went wrong.
        file: the file at fault, if any.
        field: the field (obs column, config key, metric key ...) at fault.
        fix: how the user can fix it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        """One readable block: message, then file / field / fix lines."""
        parts = [self.message]
        if self.file:
            parts.append(f"file: {self.file}")
        if self.field:
            parts.append(f"field: {self.field}")
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "\n".join(parts)


class DatasetValidationError(PerturbFMError):
    """An input AnnData file cannot be imported as it is."""


class ArtifactNotFoundError(PerturbFMError):
    """A dataset, split or run id is not in the store."""


class ArtifactIntegrityError(PerturbFMError):
    """An artifact's content does not match its hash, or an immutable artifact
    would be overwritten with different content."""


class SplitIntegrityError(ArtifactIntegrityError):
    """A split's content does not match its id, or a write would change it."""


class PluginError(PerturbFMError):
    """A plugin is missing, failed to load, or registered a bad name."""


class ConfigError(PerturbFMError):
    """A configuration value is missing, malformed or of the wrong type."""


class PanelIncompleteError(PerturbFMError):
    """A metric panel lacks keys or produced non-finite values.

    Attributes:
        problems: rows of (panel, key, problem).
    """

    def __init__(self, problems: list[tuple[str, str, str]], **kwargs: object) -> None:
        self.problems = problems
        lines = [f"  {p:<16} {k:<28} {why}" for p, k, why in problems]
        msg = (
            "metric panels are incomplete; metrics.json was not written\n"
            f"  {'panel':<16} {'key':<28} problem\n" + "\n".join(lines)
        )
        super().__init__(msg, **kwargs)  # type: ignore[arg-type]


class PredictionError(PerturbFMError):
    """Predictions are malformed (wrong shape, non-finite, missing groups ...)."""


class StoreWriteError(PerturbFMError, OSError):
    """Writing to the store (or another output) failed: disk full, file-size
    limit, read-only or unwritable folder, a path component that is a file ...

    Also an :class:`OSError`, so code that handles write failures generically
    keeps working; the message names the path and a fix for the cause.
    """


class InputFileError(PerturbFMError):
    """An input file cannot be read as given: missing, a directory, a FIFO or
    device, a symlink loop, unreadable, too large, or not valid text."""


class DatasetFileError(ArtifactIntegrityError):
    """A stored dataset's ``data.h5ad`` is missing, damaged or replaced; the fix
    gives the ``pfm-bench data repair`` command that restores it."""


class StoreLayoutError(ArtifactIntegrityError):
    """The store's folders are not as pfm-bench laid them out: a file where a
    folder belongs, or a symlink loop."""
