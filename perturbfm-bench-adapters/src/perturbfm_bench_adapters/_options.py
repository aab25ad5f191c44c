"""Defensive parsing of adapter options (values often arrive as CLI strings).

Numbers, fractions and generator parameters are typed fields now
(:mod:`perturbfm.options`, :mod:`perturbfm_bench_adapters.generators`); these two
helpers remain for the adapters' list and flag options.
"""

from __future__ import annotations

from typing import Any

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
