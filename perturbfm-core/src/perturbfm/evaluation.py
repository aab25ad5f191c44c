"""Evaluation: the inputs every metric panel sees, aggregation, and the
panel-completeness check that guards ``metrics.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np

from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, ControlStats, GroupInfo, ensure_group_column, grouped_moments
from perturbfm.errors import PanelIncompleteError, PluginError, PredictionError
from perturbfm.evaldata import DEFAULT_MAX_CELLS, EvalData, check_sampling
from perturbfm.interfaces import MetricPanel, MetricValue, NotApplicable, Prediction
from perturbfm.panel_values import compute_panel_values, merge_panel_values
from perturbfm.plain import plain_json

__all__ = ["CONVENTIONS", "DEFAULT_MAX_CELLS", "EvalData", "aggregate", "build_eval_data", "check_metric_value",
           "compute_panel_values", "evaluate_panels", "merge_panel_values", "select_panels", "validate_prediction"]

CONVENTIONS = {
    "expression_space": "X of the dataset artifact (log1p-normalised)",
    "control_reference": "deltas use the true control mean of the same context for both prediction and "
    "truth (cell-eval's default uses each side's own controls; PerturbFM does not)",
    "aggregation": "per group -> mean per context -> global mean weighted by true cells per group",
    "deg_test": "Welch t-test of the group's true cells vs the context's control cells, ranked by |t|; "
    "DEG sets come from the truth only",
}


def validate_prediction(pred: Prediction, queries: Sequence[GroupInfo], genes: Sequence[str]) -> None:
    """Refuse predictions of the wrong shape, for other groups, or non-finite."""
    want = [q.group_id for q in queries]
    if list(pred.group_ids) != want:
        missing = sorted(set(want) - set(pred.group_ids))
        extra = sorted(set(pred.group_ids) - set(want))
        raise PredictionError(
            "the model's predictions do not cover the queried groups"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unexpected: {', '.join(extra)}" if extra else "")
            + ("" if missing or extra else "; the order differs"),
            field="group_ids",
            fix="return one row per queried group, in the order given",
        )
    shape = (len(want), len(genes))
    for name, arr in (("mean_delta", pred.mean_delta), ("var_delta", pred.var_delta)):
        if arr is None:
            continue
        if np.shape(arr) != shape:
            raise PredictionError(f"{name} has shape {np.shape(arr)}, expected {shape}", field=name,
                                  fix="one row per group, one column per measured gene")
        bad = ~np.isfinite(arr)
        if bad.any():
            rows, cols = np.nonzero(bad)
            gs = sorted({want[r] for r in rows})
            gn = sorted({str(genes[int(c)]) for c in cols})
            raise PredictionError(
                f"{name} has {int(bad.sum())} non-finite values in groups {', '.join(gs[:10])}"
                f"{' ...' if len(gs) > 10 else ''} at genes {', '.join(gn[:10])}{' ...' if len(gn) > 10 else ''}",
                field=name,
                fix="the model must predict finite values everywhere",
            )
    if pred.var_delta is not None and (np.asarray(pred.var_delta) < 0).any():
        raise PredictionError("var_delta has negative variances", field="var_delta",
                              fix="predict non-negative variances")


def build_eval_data(
    adata: ad.AnnData,
    groups: Sequence[GroupInfo],
    control: ControlStats,
    prediction: Prediction,
    *,
    seed: int = 0,
    max_cells: int = DEFAULT_MAX_CELLS,
    ood: Mapping[str, bool] | None = None,
) -> EvalData:
    """Assemble :class:`EvalData` from a dataset, the evaluated groups and a prediction.

    ``max_cells`` < 1 or ``seed`` < 0 raise :class:`perturbfm.errors.ConfigError` naming the option."""
    check_sampling(max_cells, seed, prefix="")
    genes = [str(g) for g in adata.var_names]
    validate_prediction(prediction, groups, genes)
    ids = [g.group_id for g in groups]
    contexts = sorted({g.context for g in groups})
    stored = control.group_moments(ids)  # one scan of the dataset at load (see control_stats(with_groups=True))
    if stored is not None:
        true_mean, true_var, counts = stored
    else:
        labels = ensure_group_column(adata).astype(str).to_numpy()
        true_mean, true_var, counts = grouped_moments(adata, labels, ids)
    empty = [gid for gid, n in zip(ids, counts) if n == 0]
    if empty:
        raise PredictionError(
            f"{len(empty)} evaluated groups have no true cells: {', '.join(empty[:10])}",
            field="groups", fix="evaluate only groups that have cells in the truth",
        )
    missing_ctx = sorted({g.context for g in groups if not control.has(g.context)})
    if missing_ctx:
        raise PredictionError(
            f"contexts without control cells cannot be evaluated: {', '.join(missing_ctx)}",
            field="pfm_is_control", fix="every evaluated context needs control cells",
        )
    ctrl_mean = np.stack([control.mean(g.context) for g in groups])
    stored_vars = [control.var(c) for c in contexts]
    if all(v is not None for v in stored_vars):
        cvar = np.stack([v for v in stored_vars if v is not None]) if contexts else np.zeros((0, len(genes)))
        cn = np.array([control.counts[control.contexts.index(c)] for c in contexts], dtype=np.int64)
    else:
        obs = adata.obs
        is_ctrl = obs[CONTROL_COL].to_numpy(dtype=bool)
        ctx = obs[CONTEXT_COL].astype(str).to_numpy()
        _, cvar, cn = grouped_moments(adata, np.where(is_ctrl, ctx, "\x00"), contexts)
    groups = [g if g.n_cells == int(n) else _with_n(g, int(n)) for g, n in zip(groups, counts)]
    return EvalData(
        genes=genes,
        groups=list(groups),
        true_mean=true_mean,
        true_var=true_var,
        ctrl_mean=ctrl_mean,
        pred_delta=np.asarray(prediction.mean_delta, dtype=np.float64),
        pred_var=None if prediction.var_delta is None else np.asarray(prediction.var_delta, dtype=np.float64),
        control_var={c: cvar[i] for i, c in enumerate(contexts)},
        control_n={c: int(cn[i]) for i, c in enumerate(contexts)},
        seed=seed,
        max_cells=max_cells,
        ood=dict(ood) if ood is not None else None,
        adata=adata,
        pred_cells_given=prediction.cells,
    )


def _with_n(g: GroupInfo, n: int) -> GroupInfo:
    from dataclasses import replace

    return replace(g, n_cells=n)


def aggregate(value: MetricValue, groups: Sequence[GroupInfo]) -> dict[str, Any]:
    """Per group -> per-context mean -> global mean weighted by true cells."""
    by_id = {g.group_id: g for g in groups}
    if value.per_group is not None:
        per_group = {k: float(v) for k, v in sorted(value.per_group.items())}
        ctx_vals: dict[str, list[float]] = {}
        num = den = 0.0
        for gid, v in per_group.items():
            g = by_id[gid]
            ctx_vals.setdefault(g.context, []).append(v)
            num += g.n_cells * v
            den += g.n_cells
        per_context = {c: float(np.mean(v)) for c, v in sorted(ctx_vals.items())}
        glob = num / den if den else float("nan")
    else:
        per_group = None
        per_context = {k: float(v) for k, v in sorted((value.per_context or {}).items())}
        weights: dict[str, int] = {}
        for g in groups:
            weights[g.context] = weights.get(g.context, 0) + g.n_cells
        den = sum(weights.get(c, 0) for c in per_context)
        glob = sum(weights.get(c, 0) * v for c, v in per_context.items()) / den if den else float("nan")
    out: dict[str, Any] = {"global": glob, "per_context": per_context}
    if per_group is not None:
        out["per_group"] = per_group
    if value.extra:
        out["extra"] = value.extra
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _shape_problem(v: MetricValue) -> str:
    """Why the containers of ``v`` are malformed ("" when they are not)."""
    for name in ("per_group", "per_context"):
        level = getattr(v, name)
        if level is None:
            continue
        if not isinstance(level, Mapping):
            return f"{name} is a {type(level).__name__}, expected a dict of numbers"
        for k, x in level.items():
            if not isinstance(k, str):
                return f"{name} has a {type(k).__name__} key {k!r}, expected group/context id strings"
            if not _is_number(x):
                return f"{name}[{k!r}] is a {type(x).__name__} ({str(x)[:40]!r}), expected a number"
    if not isinstance(v.extra, Mapping):
        return f"extra is a {type(v.extra).__name__}, expected a dict"
    if not isinstance(v.not_applicable_groups, Mapping) or not all(
            isinstance(k, str) and isinstance(r, str) for k, r in v.not_applicable_groups.items()):
        return "not_applicable_groups must map group id strings to reason strings"
    return ""


def check_metric_value(v: Any, wanted: set[str]) -> str:
    """Why ``v`` is not a complete, finite metric value for the groups ``wanted`` ("" when it is)."""
    if not isinstance(v, MetricValue):
        return f"returned {type(v).__name__}, expected MetricValue or NotApplicable"
    shape = _shape_problem(v)
    if shape:
        return shape
    bad = v.non_finite()
    if bad:
        return f"non-finite for {', '.join(bad[:5])}"
    declared = v.not_applicable_groups or {}
    empty = sorted(k for k, r in declared.items() if not str(r).strip())
    if empty:
        return f"groups declared not applicable without a reason: {', '.join(empty[:5])}"
    if v.per_group is not None:
        both = sorted(set(v.per_group) & set(declared))
        if both:
            return f"groups both scored and declared not applicable: {', '.join(both[:5])}"
        if set(v.per_group) | set(declared) != wanted:
            lacking = sorted(wanted - set(v.per_group) - set(declared))
            unknown = sorted(set(v.per_group) | set(declared) - wanted)
            return (f"no value for groups {', '.join(lacking[:5])}" if lacking else
                    f"values for groups that were not evaluated: {', '.join(unknown[:5])}")
        return ""
    if declared:
        return "not_applicable_groups needs per_group values (a per-context metric declares contexts in NotApplicable)"
    if not v.per_context:
        return "no values"
    return ""


def evaluate_panels(panels: Sequence[MetricPanel], data: EvalData,
                    raw_out: dict[str, dict[str, Any]] | None = None,
                    values_by_panel: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run every panel and check completeness.

    Returns the ``panels`` section of ``metrics.json``. Raises
    :class:`PanelIncompleteError` (listing every problem) when any declared key
    is missing, not finite, or a panel raised. ``values_by_panel``: values already
    computed (e.g. merged shards, see :func:`compute_panel_values`) instead of running the panels.
    """
    problems: list[tuple[str, str, str]] = []
    out: dict[str, Any] = {}
    wanted = {g.group_id for g in data.groups}
    computed = dict(values_by_panel) if values_by_panel is not None else {}
    for panel in panels:
        if panel.name in computed:
            values = computed[panel.name]
        else:
            values = compute_panel_values([panel], data)[panel.name]
        if isinstance(values, BaseException):
            problems.append((panel.name, "*", f"panel raised {type(values).__name__}: {values}"))
            continue
        if not isinstance(values, dict):
            problems.append((panel.name, "*", f"compute returned {type(values).__name__}, expected a dict of "
                                              "metric values"))
            continue
        section: dict[str, Any] = {}
        for key, spec in panel.metrics.items():
            v = values.get(key)
            entry: dict[str, Any] = {
                "definition": spec.definition,
                "variant": spec.variant,
                "higher_is_better": spec.higher_is_better,
                **({"delta_based": True} if getattr(spec, "delta_based", False) else {}),
            }
            if v is None:
                problems.append((panel.name, key, "missing"))
                continue
            if isinstance(v, NotApplicable):
                if not isinstance(v.reason, str) or not v.reason.strip():
                    problems.append((panel.name, key, "not applicable without a reason"))
                    continue
                entry["not_applicable"] = v.reason
                section[key] = entry
                continue
            problem = check_metric_value(v, wanted)
            if problem:
                problems.append((panel.name, key, problem))
                continue
            declared = dict(sorted(v.not_applicable_groups.items()))
            if declared:
                entry["not_applicable_groups"] = declared
                entry["n_not_applicable_groups"] = len(declared)
            if v.per_group is not None and not v.per_group:
                entry["not_applicable"] = (f"declared not applicable for every group ({len(declared)}); "
                                           f"e.g. {next(iter(declared.values()))}")
                section[key] = entry
                continue
            agg = aggregate(v, data.groups)
            if not math.isfinite(agg["global"]):
                problems.append((panel.name, key, "global value is not finite"))
                continue
            if "extra" in agg:
                try:
                    agg["extra"] = plain_json(agg["extra"], "extra", f"panel {panel.name!r} key {key!r}")
                except PluginError as exc:
                    problems.append((panel.name, key, exc.message))
                    continue
            entry.update(agg)
            section[key] = entry
        extra = sorted(set(values) - set(panel.metrics))
        for key in extra:
            problems.append((panel.name, key, "undeclared key (add it to the panel's metrics)"))
        out[panel.name] = {"version": panel.version, "description": panel.description, "metrics": section}
        if raw_out is not None:
            raw_out[panel.name] = values
    if problems:
        raise PanelIncompleteError(problems)
    return out


def __getattr__(name: str) -> Any:
    if name == "STANDARD_ORDER":  # kept for callers of the old constant; the order lives in perturbfm.defaults
        from perturbfm.defaults import PANEL_ORDER

        return PANEL_ORDER
    raise AttributeError(name)


def select_panels(registry: Any, requested: Any, *, gives_variance: bool) -> list[MetricPanel]:
    """The panels a run or ``eval`` computes: every installed standard panel (and the
    variance panels when the model gives a variance) for ``"standard"``, else the
    named ones. Raises :class:`perturbfm.errors.PerturbFMError` naming the fix."""
    from perturbfm.defaults import panel_rank
    from perturbfm.errors import PerturbFMError

    if requested in (None, "standard"):
        names = []
        for n in registry.names("metric_panel"):
            cls = registry.get("metric_panel", n).cls
            if getattr(cls, "standard", False) or (gives_variance and getattr(cls, "needs_variance", False)):
                names.append(n)
        names.sort(key=lambda n: panel_rank(n, registry.get("metric_panel", n).cls))
        if not names:
            raise PerturbFMError("no standard metric panel is installed", field="run.panels",
                                 fix="pip install perturbfm-metrics, or name the panels with --set run.panels=[...]")
        return [registry.create("metric_panel", n) for n in names]
    if not isinstance(requested, (list, tuple)) or not requested or not all(isinstance(n, str) for n in requested):
        raise PerturbFMError(f"run.panels must be 'standard' or a list of panel names, got {requested!r}",
                             field="run.panels", fix="e.g. --set run.panels=[basic,vcc]")
    return [registry.create("metric_panel", n) for n in dict.fromkeys(requested)]

