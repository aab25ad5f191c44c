"""Raw panel values of a shard of the evaluation, and their merge.

A distributed evaluation computes :func:`compute_panel_values` on
:meth:`perturbfm.evaldata.EvalData.subset` shards (whole contexts each), merges them
with :func:`merge_panel_values` and hands the result to
:func:`perturbfm.evaluation.evaluate_panels` (``values_by_panel=``), which aggregates
and checks them exactly as in a single process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from perturbfm.evaldata import EvalData
from perturbfm.interfaces import MetricPanel, MetricValue

__all__ = ["compute_panel_values", "merge_panel_values"]


def compute_panel_values(panels: Sequence[MetricPanel], data: EvalData) -> dict[str, Any]:
    """Each panel's raw values for ``data`` (panel name -> ``{key: MetricValue | NotApplicable}``,
    or the exception the panel raised). Run it on :meth:`EvalData.subset` shards holding whole
    contexts, merge the shards with :func:`merge_panel_values` and pass the result to
    :func:`evaluate_panels` (``values=``): the ``panels`` section equals the single-process one."""
    out: dict[str, Any] = {}
    for panel in panels:
        try:
            out[panel.name] = panel.compute(data)
        except (Exception, SystemExit) as exc:  # recorded as a problem of this panel, never swallowed
            out[panel.name] = exc
    return out


def _merge_extra(extras: Sequence[Any]) -> Any:
    """Equal values stay; mappings are united key by key (per-group and per-context details
    of disjoint shards); anything else is listed per shard."""
    if all(_same(e, extras[0]) for e in extras):
        return extras[0]
    if all(isinstance(e, Mapping) for e in extras):
        keys = list(dict.fromkeys(k for e in extras for k in e))
        return {k: _merge_extra([e[k] for e in extras if k in e]) for k in keys}
    return {"shards": list(extras)}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else np.array_equal(a, b)
    except (ValueError, TypeError):
        return False


def merge_panel_values(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge :func:`compute_panel_values` results of disjoint shards (whole contexts each):
    per-group, per-context and not-applicable-group entries are united; ``extra`` too (equal
    values kept, mappings united key by key, anything else listed per shard as ``{"shards": [...]}``). A panel
    that raised in any shard, or is not applicable in one shard only, merges to that shard's value."""
    merged: dict[str, Any] = {}
    names = list(dict.fromkeys(n for part in parts for n in part))
    for name in names:
        vals = [part[name] for part in parts if name in part]
        bad = next((v for v in vals if not isinstance(v, dict)), None)
        if bad is not None:
            merged[name] = bad
            continue
        keys = list(dict.fromkeys(k for v in vals for k in v))
        section: dict[str, Any] = {}
        for key in keys:
            items = [v[key] for v in vals if key in v]
            if not any(isinstance(x, MetricValue) for x in items):
                section[key] = items[0]
                continue
            if len(items) != len(vals) or not all(isinstance(x, MetricValue) for x in items):
                raise ValueError(  # silently dropping the shards that did score it would mislead
                    f"panel {name!r}, metric {key!r}: some shards cannot score it and others can, so "
                    "the single-process value cannot be rebuilt from the shards; evaluate these "
                    "contexts in one process, or leave the panel out")
            per_group = None if all(x.per_group is None for x in items) else {
                k: val for x in items for k, val in (x.per_group or {}).items()}
            per_context = None if all(x.per_context is None for x in items) else {
                k: val for x in items for k, val in (x.per_context or {}).items()}
            nag = {k: r for x in items for k, r in (x.not_applicable_groups or {}).items()}
            extra = _merge_extra([x.extra for x in items])
            section[key] = MetricValue(per_group=per_group, per_context=per_context, extra=extra,
                                       not_applicable_groups=nag)
        merged[name] = section
    return merged
