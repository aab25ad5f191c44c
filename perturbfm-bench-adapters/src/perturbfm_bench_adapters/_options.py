"""Defensive parsing of plugin options (values often arrive as CLI strings)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from perturbfm.errors import PerturbFMError

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def as_str_list(value: Any) -> list[str]:
    """``None`` -> ``[]``; ``"a, b"`` -> ``["a", "b"]``; a sequence -> its items as str."""
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        return [str(v).strip() for v in items if str(v).strip()]
    return [str(value).strip()] if str(value).strip() else []


def as_bool(value: Any) -> bool | None:
    """Parse a bool from bool/int/str; None when it does not parse."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    return None


def as_fraction(
    value: Any, name: str, error: Callable[..., PerturbFMError], *, allow_zero: bool = True
) -> float:
    """Parse a fraction in ``[0, 1)`` (``(0, 1)`` if not ``allow_zero``)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise error(
            f"{name} must be a number, got {value!r}", field=name, fix=f"pass e.g. {name}=0.2"
        ) from None
    lo_ok = f >= 0 if allow_zero else f > 0
    if not (lo_ok and f < 1):
        rng = "[0, 1)" if allow_zero else "(0, 1)"
        raise error(f"{name} must lie in {rng}, got {f}", field=name, fix=f"pass e.g. {name}=0.2")
    return f
