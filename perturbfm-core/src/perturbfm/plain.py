"""Plain JSON values from what plugins return: numpy scalars and arrays are
converted; anything JSON cannot hold (objects, NaN, infinities, string arrays)
is a :class:`~perturbfm.errors.PluginError` naming the plugin and the field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from perturbfm.errors import PluginError


def plain_json(value: Any, where: str, plugin: str) -> Any:
    """``value`` as plain JSON: numpy scalars and arrays are converted; a non-finite
    number (JSON cannot hold it, and writing null would hide it) or anything else
    that is not JSON is a :class:`PluginError` naming the plugin and the field."""
    if isinstance(value, dict):
        return {_key(k, where, plugin): plain_json(v, f"{where}.{k}", plugin) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v, f"{where}[{i}]", plugin) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise PluginError(f"{plugin} returned an array of {value.dtype} in {where}", field=where,
                              fix="return numbers, strings, lists or dicts (JSON values)")
        return plain_json(value.tolist(), where, plugin)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise PluginError(f"{plugin} returned {value} in {where}", field=where,
                          fix="return finite numbers; use None (null) where a value is undefined")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise PluginError(f"{plugin} returned a {type(value).__name__} in {where}, which cannot be written as JSON",
                      field=where, fix="return numbers, strings, lists or dicts (JSON values)")


def _key(k: Any, where: str, plugin: str) -> str:
    if isinstance(k, np.generic):
        k = k.item()
    if isinstance(k, (str, int, float, bool)):
        return str(k)
    raise PluginError(f"{plugin} returned a {type(k).__name__} key in {where}", field=where,
                      fix="use strings as dict keys")
