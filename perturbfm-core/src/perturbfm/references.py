"""References every metric is calibrated against, computed by the harness from the
data alone, and the calibrated scores.

(Over 400 lines on purpose: the references, their definitions in ``DEFINITIONS``
and the calibrated score built from them are one contract; split apart, a
definition would drift from the code that computes it.)

For each evaluated group ``g`` and each metric, with ``u`` the model's raw value:

``baseline`` (``b``)
    The mean-response baseline: every group of a context is given the same
    prediction, the mean of the true mean profiles of the context's *evaluated*
    groups (as a delta against the context's control mean). No training data is
    used; it is what "predict the average response" scores.

``replicate`` (``r``)
    A technical-duplicate ceiling: the group's true cells are split at random into
    two disjoint halves (``floor(n/2)`` and ``ceil(n/2)`` cells); one half is the
    truth and the other is scored as the prediction (its mean delta and its cells).
    Repeated with :data:`REPLICATE_SEEDS` seeds; ``r`` is the mean over seeds and
    ``seed_sd`` their standard deviation (ddof = 1), the resolution limit for
    telling two predictions apart. A group with fewer than
    :data:`MIN_REPLICATE_CELLS` true cells cannot be split: it is declared
    (``unsplittable``), never dropped silently.

``calibrated``
    ``s = (u - b) / (r - b)``, not clipped: 0 is the mean-response baseline, 1 a
    replicate of the experiment; negative is worse than the baseline, above 1 is
    closer to the truth than a replicate half is (usually noise or leakage). The
    direction of the metric cancels out, so higher is always better. A group is
    *unresolvable* unless the replicate beats the baseline by more than ``seed_sd``
    in the metric's direction (``|r - b| > seed_sd`` for a metric without one): where
    the baseline is within the replicate's own seed spread, or a replicate half
    predicts the other half worse than the mean response does (an effect below the
    group's own noise), the scale has no meaning; unresolvable and unsplittable groups are listed,
    counted and left out of the calibrated aggregates. Aggregates follow the raw
    metric's rule (per group -> context mean -> global mean weighted by true
    cells) over the resolved groups, and the aggregate calibrated value is the
    ratio of aggregates ``(U - B) / (R - B)`` over those groups (stable where a
    per-group denominator is small); per-group calibrated values are given too.

``indep_ctrl`` (delta-based metrics only)
    The metric with prediction and truth referenced to two disjoint halves of the
    context's control cells: truth delta = true mean - mean(C1), predicted delta
    = (control mean + predicted delta) - mean(C2). A prediction that shares the
    control mean's sampling noise with the truth (any delta averaged over training
    groups measured against the same controls) scores much lower here: the gap
    is shared-control inflation.

``train_mean`` (runs whose split has training groups)
    The *training mean* (the mean training delta of the group's context, or of all
    training groups where the context has none; computed by the core from the
    split's training groups, :meth:`perturbfm.training.TrainingData.training_mean`)
    scored on the same groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np

from perturbfm.evaluation import EvalData, aggregate, check_metric_value, evaluate_panels
from perturbfm.interfaces import MetricPanel, MetricValue, NotApplicable

REPLICATE_SEEDS = 5
MIN_REPLICATE_CELLS = 4
CONTROL_SALT = 7_919
REPLICATE_SALT = 104_729

DEFINITIONS = {
    "baseline": "mean-response baseline: each group of a context predicted as the mean true delta of the "
    "context's evaluated groups",
    "replicate": f"split-half replicate: the group's true cells split at random into two halves, one scored as "
    f"the prediction of the other; mean over {REPLICATE_SEEDS} seeds, seed_sd = their standard deviation "
    f"(ddof=1); groups with < {MIN_REPLICATE_CELLS} cells are declared unsplittable",
    "calibrated": "(u - b) / (r - b), not clipped (0 = baseline, 1 = replicate; higher is better); a group is "
    "unresolvable (listed, excluded) unless the replicate beats the baseline by more than seed_sd in the metric's "
    "direction (|r - b| > seed_sd for a metric without one); aggregates are (U - B) / (R - B) of the resolved "
    "groups' aggregates",
    "indep_ctrl": "delta-based metrics with the truth referenced to one half of the context's control cells "
    "and the prediction to the other (shows shared-control inflation)",
    "train_mean": "the training mean (mean training delta of the group's context; of all training groups where "
    "the context has none) on the same groups",
}


# --------------------------------------------------------------------------- reference inputs
def _share_caches(new: EvalData, old: EvalData) -> EvalData:
    """Reuse the parent's cached control cells and group rows (same cells)."""
    for name in ("_control_cells", "_control_pool", "_group_cells", "_group_rows"):
        if name in old.__dict__:
            new.__dict__[name] = old.__dict__[name]
    return new


def baseline_data(data: EvalData) -> EvalData:
    """``data`` with every group predicted as its context's mean true delta."""
    pred = np.empty_like(data.true_mean)
    td = data.true_delta
    for _, idx in data.context_indices().items():
        pred[idx] = td[idx].mean(axis=0)
    return _share_caches(replace(data, pred_delta=pred, pred_var=None, pred_cells_given=None, extra={}), data)


def prediction_data(data: EvalData, pred_delta: np.ndarray) -> EvalData:
    """``data`` with another model's predicted deltas (no variance, constructed cells)."""
    return _share_caches(replace(data, pred_delta=np.asarray(pred_delta, dtype=np.float64), pred_var=None,
                                 pred_cells_given=None, extra={}), data)


class _LazyCells(Mapping[str, np.ndarray]):
    def __init__(self, fetch: Any, ids: Sequence[str]) -> None:
        self._fetch, self._ids = fetch, list(ids)

    def __getitem__(self, gid: str) -> np.ndarray:
        return self._fetch(gid)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class ReplicateData(EvalData):
    """Split-half replicate of the truth: the first half of each group's true
    cells is the truth, the second half the prediction (mean and cells)."""

    parent: EvalData
    halves: dict[str, tuple[np.ndarray, np.ndarray]]

    def all_true_cells(self, i: int) -> np.ndarray:
        gid = self.groups[i].group_id
        a, _ = self.halves[gid]
        return self.parent.all_true_cells(self._parent_index[gid])[a]

    def half_b_cells(self, gid: str) -> np.ndarray:
        _, b = self.halves[gid]
        return self.parent.all_true_cells(self._parent_index[gid])[b]

    @property
    def _parent_index(self) -> dict[str, int]:
        cache = self.__dict__.get("_pidx")
        if cache is None:
            cache = {gid: k for k, gid in enumerate(self.parent.group_ids)}
            self.__dict__["_pidx"] = cache
        return cache


def split_halves(n: int, seed: int, salt: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random halves of ``range(n)`` (sizes floor(n/2), ceil(n/2)), seeded."""
    perm = np.random.default_rng([seed, REPLICATE_SALT, salt, k]).permutation(n)
    h = n // 2
    return np.sort(perm[:h]), np.sort(perm[h:])


def replicate_data(data: EvalData, n_reps: int) -> tuple[list[EvalData], dict[str, str]]:
    """``n_reps`` split-half replicates of ``data`` (each group's true cells are read
    once for all of them) and the groups that cannot be split (id -> reason)."""
    if data.adata is None:
        return [], {g.group_id: "the evaluation inputs carry no true cells to split" for g in data.groups}
    keep: list[int] = []
    unsplit: dict[str, str] = {}
    halves: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(n_reps)]
    means_a: list[list[np.ndarray]] = [[] for _ in range(n_reps)]
    vars_a: list[list[np.ndarray]] = [[] for _ in range(n_reps)]
    means_b: list[list[np.ndarray]] = [[] for _ in range(n_reps)]
    ns: list[int] = []
    for i, g in enumerate(data.groups):
        X = data.all_true_cells(i)
        n = X.shape[0]
        if n < MIN_REPLICATE_CELLS:
            unsplit[g.group_id] = f"{n} true cells: fewer than {MIN_REPLICATE_CELLS} cannot be split into halves"
            continue
        keep.append(i)
        ns.append(n // 2)
        for rep in range(n_reps):
            a, b = split_halves(n, data.seed, i, rep)
            halves[rep][g.group_id] = (a, b)
            means_a[rep].append(X[a].mean(axis=0))
            vars_a[rep].append(X[a].var(axis=0, ddof=1))
            means_b[rep].append(X[b].mean(axis=0))
    if not keep:
        return [], unsplit
    idx = np.array(keep)
    groups = [replace(data.groups[i], n_cells=int(n)) for i, n in zip(keep, ns)]
    ctrl_mean = data.ctrl_mean[idx]
    ood = {g.group_id: data.ood[g.group_id] for g in groups if g.group_id in data.ood} if data.ood else None
    out: list[EvalData] = []
    for rep in range(n_reps):
        rd = ReplicateData(
            genes=data.genes, groups=groups, true_mean=np.stack(means_a[rep]), true_var=np.stack(vars_a[rep]),
            ctrl_mean=ctrl_mean, pred_delta=np.stack(means_b[rep]) - ctrl_mean, pred_var=None,
            control_var=data.control_var, control_n=data.control_n, seed=data.seed, max_cells=data.max_cells,
            ood=ood, adata=data.adata, pred_cells_given=None, extra={},
        )
        rd.parent = data
        rd.halves = halves[rep]
        rd.pred_cells_given = _LazyCells(rd.half_b_cells, [g.group_id for g in groups])  # type: ignore[assignment]
        _share_caches(rd, data)
        rd.__dict__.pop("_group_rows", None)  # rows of the parent's groups are reached through the parent
        out.append(rd)
    return out, unsplit


class IndepControlData(EvalData):
    """Truth referenced to control half C1, prediction to control half C2."""

    ctrl_half: dict[str, np.ndarray]

    def control_cells(self, context: str) -> np.ndarray:
        return self.ctrl_half[context]


def indep_control_data(data: EvalData) -> tuple[EvalData | None, str]:
    """``data`` re-referenced to disjoint control halves, or None and the reason."""
    if data.adata is None:
        return None, "the evaluation inputs carry no control cells to split"
    m1: dict[str, np.ndarray] = {}
    m2: dict[str, np.ndarray] = {}
    cells1: dict[str, np.ndarray] = {}
    for k, ctx in enumerate(data.contexts):
        C = data.control_cells(ctx)
        if C.shape[0] < MIN_REPLICATE_CELLS:
            return None, f"context {ctx} has {C.shape[0]} control cells; {MIN_REPLICATE_CELLS} are needed to split"
        a, b = split_halves(C.shape[0], data.seed, CONTROL_SALT, k)
        m1[ctx], m2[ctx], cells1[ctx] = C[a].mean(axis=0), C[b].mean(axis=0), C[a]
    ctx_of = [g.context for g in data.groups]
    c1 = np.stack([m1[c] for c in ctx_of])
    c2 = np.stack([m2[c] for c in ctx_of])
    pred_abs = data.ctrl_mean + data.pred_delta
    new = IndepControlData(
        genes=data.genes, groups=data.groups, true_mean=data.true_mean, true_var=data.true_var, ctrl_mean=c1,
        pred_delta=pred_abs - c2, pred_var=data.pred_var, control_var=data.control_var, control_n=data.control_n,
        seed=data.seed, max_cells=data.max_cells, ood=data.ood, adata=data.adata, pred_cells_given=None, extra={},
    )
    new.ctrl_half = cells1
    if "_group_rows" in data.__dict__:
        new.__dict__["_group_rows"] = data.__dict__["_group_rows"]
    return new, ""


# --------------------------------------------------------------------------- calibration
_Level = Literal["per_group", "per_context"]


def _levels(v: MetricValue) -> tuple[_Level, dict[str, float]]:
    if v.per_group is not None:
        return "per_group", {k: float(x) for k, x in v.per_group.items()}
    return "per_context", {k: float(x) for k, x in (v.per_context or {}).items()}


def _agg(level: _Level, values: Mapping[str, float], data: EvalData) -> dict[str, Any]:
    mv = MetricValue(per_group=dict(values)) if level == "per_group" else MetricValue(per_context=dict(values))
    out = aggregate(mv, data.groups)
    out.pop("extra", None)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))


def calibrate_metric(
    data: EvalData,
    raw: MetricValue,
    base: MetricValue | NotApplicable | None,
    reps: Sequence[MetricValue | NotApplicable | None],
    unsplittable: Mapping[str, str],
    higher_is_better: bool | None = None,
) -> dict[str, Any]:
    """The ``baseline``, ``replicate`` and ``calibrated`` objects of one metric.

    A group is resolvable when the replicate beats the baseline by more than the
    replicate's seed spread, in the metric's direction (for a metric without a
    direction: differs from it by more than the spread). Where the replicate does
    not beat the baseline the group's effect is below its own noise and no
    calibrated score of it would mean anything."""
    level, u = _levels(raw)
    out: dict[str, Any] = {}
    if not isinstance(base, MetricValue):
        reason = base.reason if isinstance(base, NotApplicable) else "the baseline could not be scored"
        na = {"not_applicable": f"baseline: {reason}"}
        return {"baseline": na, "replicate": na, "calibrated": na}
    _, b = _levels(base)
    out["baseline"] = _agg(level, {k: b[k] for k in u if k in b}, data)
    usable = [r for r in reps if isinstance(r, MetricValue)]
    if not usable:
        reasons = sorted({r.reason for r in reps if isinstance(r, NotApplicable)}) or [
            "no group could be split into halves"]
        na = {"not_applicable": "replicate: " + "; ".join(reasons)}
        out["replicate"] = na
        out["calibrated"] = na
        return out
    rep_vals = [_levels(r)[1] for r in usable]
    r_mean: dict[str, float] = {}
    r_sd: dict[str, float] = {}
    excluded: dict[str, str] = {}
    for k in u:
        xs = [rv[k] for rv in rep_vals if k in rv]
        if len(xs) < 2:
            excluded[k] = unsplittable.get(k, "the replicate is not defined for this group in enough seeds "
                                             f"({len(xs)} of {len(reps)})")
            continue
        r_mean[k] = float(np.mean(xs))
        r_sd[k] = float(np.std(xs, ddof=1))
    out["replicate"] = {
        **(_agg(level, r_mean, data) if r_mean else {"global": None, "per_context": {}}),
        "seed_sd": {level: r_sd},
        "n_seeds": len(usable),
        **({"not_defined": excluded} if excluded else {}),
    }
    cal: dict[str, float] = {}
    unresolvable: list[str] = []
    for k, uk in u.items():
        if k in excluded or k not in b:
            if k not in b:
                excluded[k] = "the baseline is not defined for this group"
            continue
        denom = r_mean[k] - b[k]
        margin = denom if higher_is_better is True else -denom if higher_is_better is False else abs(denom)
        if not margin > r_sd[k] or denom == 0.0:
            unresolvable.append(k)
            continue
        cal[k] = (uk - b[k]) / denom
    resolved = sorted(cal)
    cal_obj: dict[str, Any] = {
        "global": None,
        "per_context": {},
        level: cal,
        "unresolvable": unresolvable,
        "n_unresolvable": len(unresolvable),
        "not_calibrated": dict(excluded),
        "n_resolved": len(resolved),
    }
    if resolved:
        U = _agg(level, {k: u[k] for k in resolved}, data)
        B = _agg(level, {k: b[k] for k in resolved}, data)
        R = _agg(level, {k: r_mean[k] for k in resolved}, data)

        def ratio(uu: float, bb: float, rr: float) -> float | None:
            d = rr - bb
            return (uu - bb) / d if d != 0 and all(map(_finite, (uu, bb, rr))) else None

        cal_obj["global"] = ratio(U["global"], B["global"], R["global"])
        cal_obj["per_context"] = {c: ratio(U["per_context"][c], B["per_context"][c], R["per_context"][c])
                                  for c in U["per_context"]}
    else:
        cal_obj["reason"] = "no group is resolvable (the baseline is within the replicate's seed spread everywhere)"
    out["calibrated"] = cal_obj
    return out


# --------------------------------------------------------------------------- orchestration
def _safe_compute(panel: MetricPanel, data: EvalData | None, why_none: str) -> dict[str, MetricValue | NotApplicable]:
    """Every key of ``panel`` on a reference input; failures become declared reasons
    (a reference that cannot be scored never fails the run, it is reported)."""
    if data is None:
        return {k: NotApplicable(why_none) for k in panel.metrics}
    try:
        values = panel.compute(data)
        if not isinstance(values, dict):
            raise TypeError(f"compute returned {type(values).__name__}")
    except (Exception, SystemExit) as exc:  # reported per metric, never swallowed
        return {k: NotApplicable(f"the panel raised {type(exc).__name__}: {exc}") for k in panel.metrics}
    wanted = {g.group_id for g in data.groups}
    out: dict[str, MetricValue | NotApplicable] = {}
    for k in panel.metrics:
        v = values.get(k)
        if v is None:
            out[k] = NotApplicable("missing from the panel's output")
        elif isinstance(v, NotApplicable):
            out[k] = v
        else:
            problem = check_metric_value(v, wanted)
            out[k] = NotApplicable(problem) if problem else v
    return out


def _summary(v: MetricValue | NotApplicable | None, data: EvalData) -> dict[str, Any]:
    if not isinstance(v, MetricValue):
        return {"not_applicable": v.reason if isinstance(v, NotApplicable) else "not computed"}
    if v.per_group is not None and not v.per_group:
        return {"not_applicable": "declared not applicable for every group"}
    out = aggregate(v, data.groups)
    out.pop("extra", None)
    if v.not_applicable_groups:
        out["not_applicable_groups"] = dict(sorted(v.not_applicable_groups.items()))
    return out


def evaluate_with_references(
    panels: Sequence[MetricPanel],
    data: EvalData,
    *,
    train_mean: np.ndarray | None = None,
    train_mean_reason: str = "",
    replicate_seeds: int = REPLICATE_SEEDS,
    say: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``panels`` (completeness-checked, as :func:`evaluate_panels`) and add
    to every metric its ``baseline``, ``replicate``, ``calibrated`` and, where
    defined, ``indep_ctrl`` and ``train_mean`` objects.

    Returns ``(panels section, references section)`` of ``metrics.json``.
    """
    if replicate_seeds < 2:
        from perturbfm.errors import ConfigError

        raise ConfigError(f"run.replicate_seeds is {replicate_seeds}; the seed spread needs at least 2 replicates",
                          field="run.replicate_seeds", fix="set run.replicate_seeds to 2 or more (default 5)")
    raw: dict[str, dict[str, Any]] = {}
    out = evaluate_panels(panels, data, raw_out=raw)
    base = baseline_data(data)
    built, unsplittable = replicate_data(data, replicate_seeds)
    reps: list[EvalData | None] = list(built) if built else [None] * replicate_seeds
    any_delta = any(getattr(spec, "delta_based", False) for p in panels for spec in p.metrics.values())
    indep, indep_reason = indep_control_data(data) if any_delta else (None, "no delta-based metric requested")
    tm = prediction_data(data, train_mean) if train_mean is not None else None
    for panel in panels:
        if say:
            say(f"references: {panel.name}")
        b_vals = _safe_compute(panel, base, "")
        r_vals = [_safe_compute(panel, rd, "no group has enough true cells to split into halves") for rd in reps]
        delta_keys = [k for k, spec in panel.metrics.items() if getattr(spec, "delta_based", False)]
        i_vals = _safe_compute(panel, indep, indep_reason) if delta_keys else {}
        t_vals = _safe_compute(panel, tm, train_mean_reason) if tm is not None else {}
        for key, entry in out[panel.name]["metrics"].items():
            if "not_applicable" in entry:
                continue
            v = raw[panel.name][key]
            entry.update(calibrate_metric(data, v, b_vals.get(key), [r.get(key) for r in r_vals], unsplittable,
                                          higher_is_better=panel.metrics[key].higher_is_better))
            if key in delta_keys:
                entry["indep_ctrl"] = _summary(i_vals.get(key), data)
            if tm is not None:
                entry["train_mean"] = _summary(t_vals.get(key), data)
            elif train_mean_reason:
                entry["train_mean"] = {"not_applicable": train_mean_reason}
    info: dict[str, Any] = {
        "definitions": DEFINITIONS,
        "replicate_seeds": replicate_seeds,
        "min_replicate_cells": MIN_REPLICATE_CELLS,
        "unsplittable_groups": dict(sorted(unsplittable.items())),
        "n_unsplittable_groups": len(unsplittable),
        "indep_ctrl": "computed" if indep is not None else f"not computed: {indep_reason}",
        "train_mean": "computed" if tm is not None else f"not computed: {train_mean_reason or 'not requested'}",
    }
    return out, info


# --------------------------------------------------------------------------- reading back
def _g(obj: Any) -> float | None:
    if isinstance(obj, Mapping) and _finite(obj.get("global")):
        return float(obj["global"])
    return None


def metric_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric of a ``metrics.json``: raw and calibrated global values
    beside the references (None where undefined, with ``note`` saying why)."""
    rows = []
    for pname, panel in metrics.get("panels", {}).items():
        for key, e in panel.get("metrics", {}).items():
            cal = e.get("calibrated") or {}
            note = e.get("not_applicable") or cal.get("not_applicable") or cal.get("reason") or ""
            rows.append({
                "panel": pname, "metric": key, "higher_is_better": e.get("higher_is_better"),
                "raw": _g(e), "calibrated": _g(cal), "baseline": _g(e.get("baseline")),
                "replicate": _g(e.get("replicate")), "indep_ctrl": _g(e.get("indep_ctrl")),
                "train_mean": _g(e.get("train_mean")),
                "n_unresolvable": cal.get("n_unresolvable"), "n_resolved": cal.get("n_resolved"),
                "n_not_applicable_groups": e.get("n_not_applicable_groups", 0),
                "note": str(note),
            })
    return rows


def fmt(v: float | None, digits: int = 4) -> str:
    """A value for a table: undefined is shown as '–', never as 0."""
    return "–" if v is None else f"{v:.{digits}f}"
