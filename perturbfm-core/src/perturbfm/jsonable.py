"""JSON canonicalisation of parameter dictionaries shared by every package.

Options, parameters and notes recorded in manifests must be plain JSON: keys
become strings, tuples become lists, and anything else that is not a JSON scalar
is recorded by its ``str``.
"""

from __future__ import annotations

from typing import Any


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (dict keys as strings, tuples as lists,
    unknown objects by their ``str``)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


__all__ = ["jsonable"]
