"""Sharded evaluation: the metric panels (and their references) computed in shards
on an executor (``serial``, ``process``, ``ray``), merged into the same
``metrics.json`` sections as the single-process path.

Shards. ``shard_by="context"``: one shard per context, every panel. ``shard_by="group"``:
panels whose values depend on each group alone (:data:`GROUP_LOCAL_PANELS`, or a panel
class with ``shard_scope = "group"``) run on chunks of ``group_chunk`` groups within a
context; every other panel (discrimination, ranks, per-context ratios: they need all groups
of a context) runs on whole-context shards.

What travels. The driver computes the per-group summaries once (``[groups, genes]``
moments, as the single-process path does) and sends each shard only its rows of them,
the canonical labels of the truth's cells and the *paths* of the truth and prediction
files: every worker opens the same ``.h5ad`` with ``backed='r'`` and reads the cells of
its groups (no copy of the data per worker). The values of the files' X must be what the
single-process path scores (log1p, no layer); anything else is refused with the fix.

Exactness. Every seed the single-process path derives from a group's or context's
*position* (cell subsamples, replicate halves, control halves) is derived here from the
global position, so shards draw the same cells. Values are merged per key (``per_group``
and ``per_context`` are unions, in evaluation order or, for :data:`CONTEXT_ORDER_PANELS`, context by
context, as the panel lists them; ``extra`` is merged field by field: dicts joined, group
lists put back in the global order, counts summed) and then checked and aggregated by
:func:`perturbfm.evaluation.evaluate_panels` and
:func:`perturbfm.references.calibrate_metric` over all groups, so the result equals the
single-process one. Known exception: a panel that seeds by the position of a context
among the evaluated contexts (perturbench's rank tie-breaks) draws other tie-breaks on a
context shard; this changes a value only where two candidates tie within 1e-9.
A panel can take over its merge with ``merge_shards(list_of_value_dicts) -> value dict``.

(Over 400 lines on purpose: the shard plan, the position-keyed inputs a worker builds, and the
merge that must reproduce the single-process result are one contract; split apart, a worker's
seeding would drift from the merge that assumes it.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, COVARIATES_COL, GROUP_COL, PERT_COL, GroupInfo
from perturbfm.errors import ConfigError, PerturbFMError
from perturbfm.evaldata import CONTROL_SAMPLE_SALT, EvalData
from perturbfm.interfaces import MetricPanel, MetricValue, NotApplicable

__all__ = ["CONTEXT_ORDER_PANELS", "GROUP_LOCAL_PANELS", "SHARD_BY", "ShardSource", "evaluate_sharded", "plan_shards",
           "run_shard"]

SHARD_BY = ("context", "group")
#: panels whose every value depends on one group (and its context's controls) only
GROUP_LOCAL_PANELS = frozenset({"basic", "deg_weighted", "scperturbench", "uncertainty"})
DEFAULT_GROUP_CHUNK = 256
#: panels that list their groups context by context (``shard_order = "context"`` on a panel class says
#: the same); every other panel lists them in evaluation order, and the merge restores that order
CONTEXT_ORDER_PANELS = frozenset({"perturbench", "vcc2026"})


@dataclass(frozen=True)
class ShardSource:
    """Where a worker finds the cells: file paths and the truth's canonical labels."""

    truth_path: str
    pred_path: str
    truth_obs: Any  # pandas DataFrame: the canonical columns of the truth's cells
    pred_rows: dict[str, np.ndarray]  # group id -> rows of its predicted cells in the prediction file
    pred_cols: list[int] | None  # prediction columns in the truth's gene order (None: same order)


@dataclass
class ShardJob:
    """One shard: its groups (with their global positions), their summaries and what to compute."""

    source: ShardSource
    panels: list[str]
    positions: np.ndarray  # global positions of the shard's groups
    rep_positions: np.ndarray  # global positions among the splittable groups (-1: unsplittable)
    context_positions: dict[str, int]  # context -> position among all evaluated contexts
    rep_context_positions: dict[str, int]  # context -> position among the contexts with a splittable group
    groups: list[GroupInfo]
    genes: list[str]
    true_mean: np.ndarray
    true_var: np.ndarray
    ctrl_mean: np.ndarray
    pred_delta: np.ndarray
    base_delta: np.ndarray
    control_var: dict[str, np.ndarray]
    control_n: dict[str, int]
    seed: int
    max_cells: int
    replicate_seeds: int
    indep: bool
    label: str = ""


@dataclass
class ShardResult:
    label: str
    main: dict[str, Any] = field(default_factory=dict)  # panel -> values | ("raised", type name, message)
    base: dict[str, Any] = field(default_factory=dict)
    reps: list[dict[str, Any]] = field(default_factory=list)  # per replicate seed: panel -> values (absent: none)
    indep: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0  # time of this shard in its worker
    cpu_s: float = 0.0  # CPU time (all threads of the worker) of this shard
    peak_rss_mb: float = 0.0  # the worker's peak RSS so far (a pooled worker's includes earlier shards)
    n_groups: int = 0


# ----------------------------------------------------------------------------- position-keyed inputs
class _Positioned:
    """Mixin: seeds keyed by a group's position use the global position."""

    positions: np.ndarray

    def _rng(self, i: int, salt: int) -> np.random.Generator:
        if salt != CONTROL_SAMPLE_SALT:  # control samples are keyed by the context's name, not a position
            i = int(self.positions[i])
        return super()._rng(i, salt)  # type: ignore[misc]


@dataclass
class ShardEvalData(_Positioned, EvalData):
    """:class:`EvalData` of a shard: a subset of groups drawing the cells the full input would."""

    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: context -> its position among all evaluated contexts (seeds of context-level tie-breaks)
    context_positions: dict[str, int] = field(default_factory=dict)


def _shard_replicates(data: ShardEvalData, n_reps: int, rep_positions: np.ndarray,
                      rep_context_positions: Mapping[str, int]) -> list[EvalData] | None:
    """The split-half replicates of the shard's groups, halves seeded by global position
    (as :func:`perturbfm.references.replicate_data` draws them for the full input)."""
    from perturbfm.references import MIN_REPLICATE_CELLS, _LazyCells, _share_caches, split_halves

    keep: list[int] = []
    halves: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(n_reps)]
    ma: list[list[np.ndarray]] = [[] for _ in range(n_reps)]
    va: list[list[np.ndarray]] = [[] for _ in range(n_reps)]
    mb: list[list[np.ndarray]] = [[] for _ in range(n_reps)]
    ns: list[int] = []
    for i, g in enumerate(data.groups):
        X = data.all_true_cells(i)
        n = X.shape[0]
        if n < MIN_REPLICATE_CELLS:
            continue
        keep.append(i)
        ns.append(n // 2)
        for rep in range(n_reps):
            a, b = split_halves(n, data.seed, int(data.positions[i]), rep)
            halves[rep][g.group_id] = (a, b)
            ma[rep].append(X[a].mean(axis=0))
            va[rep].append(X[a].var(axis=0, ddof=1))
            mb[rep].append(X[b].mean(axis=0))
    if not keep:
        return None
    idx = np.array(keep)
    groups = [replace(data.groups[i], n_cells=int(n)) for i, n in zip(keep, ns)]
    ctrl_mean = data.ctrl_mean[idx]
    out: list[EvalData] = []
    for rep in range(n_reps):
        rd = _reference_cls("_ShardReplicate")(
            genes=data.genes, groups=groups, true_mean=np.stack(ma[rep]), true_var=np.stack(va[rep]),
            ctrl_mean=ctrl_mean, pred_delta=np.stack(mb[rep]) - ctrl_mean, pred_var=None,
            control_var=data.control_var, control_n=data.control_n, seed=data.seed, max_cells=data.max_cells,
            ood=None, adata=data.adata, pred_cells_given=None, extra={},
        )
        rd.positions = rep_positions[idx]
        rd.context_positions = dict(rep_context_positions)
        rd.parent = data
        rd.halves = halves[rep]
        rd.pred_cells_given = _LazyCells(rd.half_b_cells, [g.group_id for g in groups])
        _share_caches(rd, data)
        rd.__dict__.pop("_group_rows", None)
        out.append(rd)
    return out


_REFERENCE_CLASSES: dict[str, type] = {}


def _reference_cls(name: str) -> Any:
    """Position-keyed subclasses of the reference inputs, built on first use (references imports
    the evaluation module, which must not import this one at load time)."""
    if name not in _REFERENCE_CLASSES:
        from perturbfm.references import IndepControlData, ReplicateData

        base = ReplicateData if name == "_ShardReplicate" else IndepControlData
        _REFERENCE_CLASSES[name] = type(name, (_Positioned, base), {"__module__": __name__})
    return _REFERENCE_CLASSES[name]


def _shard_indep(data: ShardEvalData, context_positions: Mapping[str, int]) -> EvalData:
    """The shard re-referenced to control halves seeded by the contexts' global positions
    (as :func:`perturbfm.references.indep_control_data`)."""
    from perturbfm.references import CONTROL_SALT, split_halves

    m1: dict[str, np.ndarray] = {}
    m2: dict[str, np.ndarray] = {}
    cells1: dict[str, np.ndarray] = {}
    for ctx in data.contexts:
        C = data.control_cells(ctx)
        a, b = split_halves(C.shape[0], data.seed, CONTROL_SALT, int(context_positions[ctx]))
        m1[ctx], m2[ctx], cells1[ctx] = C[a].mean(axis=0), C[b].mean(axis=0), C[a]
    ctx_of = [g.context for g in data.groups]
    c1 = np.stack([m1[c] for c in ctx_of])
    c2 = np.stack([m2[c] for c in ctx_of])
    new = _reference_cls("_ShardIndep")(genes=data.genes, groups=data.groups, true_mean=data.true_mean, true_var=data.true_var, ctrl_mean=c1,
              pred_delta=data.ctrl_mean + data.pred_delta - c2, pred_var=data.pred_var, control_var=data.control_var,
              control_n=data.control_n, seed=data.seed, max_cells=data.max_cells, ood=None, adata=data.adata,
              pred_cells_given=None, extra={})
    new.positions = data.positions
    new.context_positions = data.context_positions
    new.ctrl_half = cells1
    if "_group_rows" in data.__dict__:
        new.__dict__["_group_rows"] = data.__dict__["_group_rows"]
    return new


class _PredCells(Mapping[str, np.ndarray]):
    """Group id -> its predicted cells (dense float64, truth's gene order), read from the backed file."""

    def __init__(self, X: Any, rows: Mapping[str, np.ndarray], cols: list[int] | None) -> None:
        self._X, self._rows, self._cols = X, rows, cols

    def __getitem__(self, gid: str) -> np.ndarray:
        M = self._X[self._rows[gid]]
        M = np.asarray(M.toarray() if hasattr(M, "toarray") else M, dtype=np.float64)
        return M if self._cols is None else M[:, self._cols]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


# ----------------------------------------------------------------------------- the worker
def run_shard(job: ShardJob) -> ShardResult:
    """Compute one shard (module-level: it travels to worker processes and Ray tasks)."""
    import resource
    import time

    import anndata as ad

    from perturbfm.plugins import get_registry
    from perturbfm.references import _safe_compute, baseline_data

    t0, c0 = time.perf_counter(), time.process_time()

    truth = ad.read_h5ad(job.source.truth_path, backed="r")
    pred = ad.read_h5ad(job.source.pred_path, backed="r")
    try:
        truth.obs = job.source.truth_obs
        ids = [g.group_id for g in job.groups]
        cells = _PredCells(pred.X, {g: job.source.pred_rows[g] for g in ids}, job.source.pred_cols)
        data = ShardEvalData(genes=job.genes, groups=list(job.groups), true_mean=job.true_mean,
                             true_var=job.true_var, ctrl_mean=job.ctrl_mean, pred_delta=job.pred_delta, pred_var=None,
                             control_var=job.control_var, control_n=job.control_n, seed=job.seed,
                             max_cells=job.max_cells, ood=None, adata=truth,
                             pred_cells_given=cells,  # type: ignore[arg-type]
                             positions=job.positions, context_positions=job.context_positions)
        registry = get_registry()
        panels = [registry.create("metric_panel", n) for n in job.panels]
        res = ShardResult(label=job.label)
        for panel in panels:
            try:
                values = panel.compute(data)
            except (Exception, SystemExit) as exc:  # re-raised at the merge as the same problem
                values = ("raised", type(exc).__name__, str(exc))
            res.main[panel.name] = values
        base = baseline_data(data)
        base.pred_delta = job.base_delta  # the context means over *all* its evaluated groups
        for panel in panels:
            res.base[panel.name] = _safe_compute(panel, base, "")
        reps = _shard_replicates(data, job.replicate_seeds, job.rep_positions, job.rep_context_positions)
        res.reps = [{p.name: _safe_compute(p, rd, "") for p in panels} for rd in reps] if reps else []
        if job.indep:
            ind = _shard_indep(data, job.context_positions)
            for panel in panels:
                if any(getattr(s, "delta_based", False) for s in panel.metrics.values()):
                    res.indep[panel.name] = _safe_compute(panel, ind, "")
        res.wall_s = time.perf_counter() - t0
        res.cpu_s = time.process_time() - c0
        res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res.n_groups = len(job.groups)
        return res
    finally:
        for a in (truth, pred):
            if getattr(a, "file", None) is not None:
                a.file.close()


# ----------------------------------------------------------------------------- planning
def _group_local(panel: MetricPanel) -> bool:
    scope = getattr(type(panel), "shard_scope", None)
    return scope == "group" if scope is not None else panel.name in GROUP_LOCAL_PANELS


def plan_shards(groups: Sequence[GroupInfo], panels: Sequence[MetricPanel], shard_by: str = "context",
                group_chunk: int = DEFAULT_GROUP_CHUNK) -> list[tuple[list[str], np.ndarray]]:
    """``(panel names, global group positions)`` of every shard, contexts in sorted order."""
    if shard_by not in SHARD_BY:
        raise ConfigError(f"--shard-by {shard_by!r} is not one of {', '.join(SHARD_BY)}", field="--shard-by",
                          fix="use --shard-by context (one shard per context) or group (chunks of groups)")
    if isinstance(group_chunk, bool) or not isinstance(group_chunk, int) or group_chunk < 1:
        raise ConfigError(f"--group-chunk must be a positive integer, got {group_chunk!r}", field="--group-chunk",
                          fix=f"e.g. --group-chunk {DEFAULT_GROUP_CHUNK}")
    by_ctx: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_ctx.setdefault(g.context, []).append(i)
    names = [p.name for p in panels]
    local = [p.name for p in panels if _group_local(p)] if shard_by == "group" else []
    whole = [n for n in names if n not in local]
    out: list[tuple[list[str], np.ndarray]] = []
    for ctx in sorted(by_ctx):
        idx = np.array(by_ctx[ctx], dtype=np.int64)
        if whole:
            out.append((whole, idx))
        for s in range(0, idx.size, group_chunk) if local else ():
            out.append((local, idx[s:s + group_chunk]))
    return out


# ----------------------------------------------------------------------------- merging
class ShardMergeError(PerturbFMError):
    """Shard values that cannot be merged exactly."""


def _order_key(order: Mapping[str, int]) -> Any:
    return lambda x: (order.get(x, len(order)), str(x))


def _merge_extra(parts: list[Any], where: str, order: Mapping[str, int]) -> Any:
    first = parts[0]
    if all(p == first for p in parts[1:]):
        return first
    if all(isinstance(p, Mapping) for p in parts):
        keys: dict[str, None] = {}
        for p in parts:
            keys.update(dict.fromkeys(p))
        return {k: _merge_extra([p[k] for p in parts if k in p], f"{where}.{k}", order) for k in keys}
    if all(isinstance(p, list) for p in parts):
        items: list[Any] = []
        for p in parts:
            items.extend(x for x in p if x not in items)
        if all(p == sorted(p, key=str) for p in parts) and not all(isinstance(x, str) and x in order for x in items):
            return sorted(items, key=str)
        if all(isinstance(x, str) for x in items):
            return sorted(items, key=_order_key(order))
        return items
    if all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in parts):
        return int(sum(parts))
    raise ShardMergeError(f"shards disagree on {where} ({parts[:3]!r}) and no merge rule applies",
                          field=where, fix="give the panel a merge_shards(values) method, or evaluate with "
                                           "--shard-by context / without --executor")


def _merge_values(parts: list[Any], where: str, order: Mapping[str, int], sort: bool) -> Any:
    """One key of one panel: the shards' MetricValue / NotApplicable merged. ``sort``: put the
    groups in evaluation order (a panel scored group by group lists them so); else keep the
    shards' order (whole contexts in sorted order: a panel that works context by context lists
    its groups so)."""
    if not parts:
        return None
    nas = [p for p in parts if isinstance(p, NotApplicable)]
    mvs = [p for p in parts if isinstance(p, MetricValue)]
    if nas and not mvs:
        reasons = list(dict.fromkeys(p.reason for p in nas))
        return NotApplicable("; ".join(reasons))
    if nas:  # some shards cannot score it, others can: the single-process value cannot be rebuilt
        raise ShardMergeError(
            f"{where}: {len(nas)} of {len(parts)} shards cannot score it "
            f"({'; '.join(dict.fromkeys(p.reason for p in nas))}) while the others can, and the "
            "single-process value cannot be rebuilt from the shards", field=where,
            fix="evaluate without --executor, or leave this panel out (--panels)")
    if len(mvs) == 1:
        return mvs[0]
    key = _order_key(order)  # the single-process order: groups (and contexts) in evaluation order

    def joined(level: str) -> dict[str, Any] | None:
        if all(getattr(m, level) is None for m in mvs):
            return None
        items = [kv for m in mvs for kv in (getattr(m, level) or {}).items()]
        return dict(sorted(items, key=lambda kv: key(kv[0])) if sort else items)

    pg, pc, na = joined("per_group"), joined("per_context"), joined("not_applicable_groups") or {}
    extras = [m.extra for m in mvs]
    extra = _merge_extra(extras, where + ".extra", order) if any(extras) else {}
    return MetricValue(per_group=pg, per_context=pc, extra=extra, not_applicable_groups=na)


def _merge_panel(panel: MetricPanel, parts: list[Any], order: Mapping[str, int]) -> Any:
    raised = [p for p in parts if isinstance(p, tuple)]
    if raised:
        return raised[0]
    bad = [p for p in parts if not isinstance(p, dict)]
    if bad:
        return bad[0]
    hook = getattr(panel, "merge_shards", None)
    if callable(hook):
        return hook(parts)
    keys: dict[str, None] = {}
    for p in parts:
        keys.update(dict.fromkeys(p))
    declared = getattr(type(panel), "shard_order", None)
    sort = declared != "context" if declared is not None else panel.name not in CONTEXT_ORDER_PANELS
    return {k: _merge_values([p[k] for p in parts if k in p], f"{panel.name}.{k}", order, sort) for k in keys}


class _Merged(MetricPanel):
    """A panel whose compute returns already merged values (for the completeness checks)."""

    def __init__(self, panel: MetricPanel, values: Any) -> None:
        self.__dict__.update(name=panel.name, version=panel.version, description=panel.description,
                             metrics=panel.metrics)
        self._values = values

    def compute(self, data: EvalData) -> Any:
        v = self._values
        if isinstance(v, tuple) and v and v[0] == "raised":
            raise type(v[1], (Exception,), {})(v[2])
        return v


# ----------------------------------------------------------------------------- the driver
def _executor(executor: Any, workers: int | None) -> Any:
    if not isinstance(executor, str):
        return executor
    from perturbfm.plugins import get_registry

    ex = get_registry().create("executor", executor)
    if workers is not None and hasattr(ex, "workers"):
        ex.workers = workers
    return ex


def evaluate_sharded(panels: Sequence[MetricPanel], data: EvalData, source: ShardSource, *,
                     executor: Any = "serial", workers: int | None = None, shard_by: str = "context",
                     group_chunk: int = DEFAULT_GROUP_CHUNK, replicate_seeds: int | None = None,
                     say: Any = None, stats: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What :func:`perturbfm.references.evaluate_with_references` returns, computed in shards.

    ``data`` is the full evaluation input (its per-group summaries); the cells are read by
    the workers from ``source``'s files. ``executor`` is a registered executor name or an
    :class:`perturbfm.interfaces.Executor`. ``stats``, when given, receives the executor, the plan
    and each shard's wall time and its worker's peak RSS."""
    from perturbfm.evaluation import evaluate_panels
    from perturbfm.references import (
        DEFINITIONS,
        MIN_REPLICATE_CELLS,
        REPLICATE_SEEDS,
        _safe_compute,
        _summary,
        baseline_data,
        calibrate_metric,
    )

    n_reps = REPLICATE_SEEDS if replicate_seeds is None else replicate_seeds
    if n_reps < 2:
        raise ConfigError(f"run.replicate_seeds is {n_reps}; the seed spread needs at least 2 replicates",
                          field="run.replicate_seeds", fix="set run.replicate_seeds to 2 or more (default 5)")
    if data.adata is None:
        raise ConfigError("sharded evaluation needs the truth's cells", field="--executor",
                          fix="evaluate without --executor")
    plan = plan_shards(data.groups, panels, shard_by, group_chunk)
    ex = _executor(executor, workers)
    ids = data.group_ids
    order = {g: i for i, g in enumerate(ids)}
    order.update({c: len(ids) + k for k, c in enumerate(data.contexts)})
    # global facts every shard needs: positions, splittable groups, control halves
    n = data.n_true
    unsplittable = {g.group_id: f"{int(k)} true cells: fewer than {MIN_REPLICATE_CELLS} cannot be split into halves"
                    for g, k in zip(data.groups, n) if k < MIN_REPLICATE_CELLS}
    splittable = n >= MIN_REPLICATE_CELLS
    rep_pos = np.where(splittable, np.cumsum(splittable) - 1, -1)
    ctx_pos = {c: k for k, c in enumerate(data.contexts)}
    rep_ctx_pos = {c: k for k, c in enumerate(sorted({g.context for g, ok in zip(data.groups, splittable) if ok}))}
    any_delta = any(getattr(spec, "delta_based", False) for p in panels for spec in p.metrics.values())
    indep_reason = "" if any_delta else "no delta-based metric requested"
    if any_delta:
        for ctx in data.contexts:
            nc = min(data.n_control_cells(ctx), data.max_cells)
            if nc < MIN_REPLICATE_CELLS:
                indep_reason = (f"context {ctx} has {nc} control cells; {MIN_REPLICATE_CELLS} are needed to split")
                break
    base_delta = baseline_data(data).pred_delta
    obs = data.adata.obs
    truth_obs = obs[[c for c in (PERT_COL, CONTROL_COL, CONTEXT_COL, COVARIATES_COL, GROUP_COL) if c in obs]].copy()
    source = replace(source, truth_obs=truth_obs)
    jobs = []
    for s, (names, idx) in enumerate(plan):
        groups = [data.groups[int(i)] for i in idx]
        ctxs = sorted({g.context for g in groups})
        own = replace(source, pred_rows={g.group_id: source.pred_rows[g.group_id] for g in groups})
        jobs.append(ShardJob(
            source=own, panels=names, positions=idx, rep_positions=rep_pos[idx], context_positions=ctx_pos,
            rep_context_positions=rep_ctx_pos,
            groups=groups, genes=data.genes, true_mean=data.true_mean[idx], true_var=data.true_var[idx],
            ctrl_mean=data.ctrl_mean[idx], pred_delta=data.pred_delta[idx], base_delta=base_delta[idx],
            control_var={c: data.control_var[c] for c in ctxs}, control_n={c: data.control_n[c] for c in ctxs},
            seed=data.seed, max_cells=data.max_cells, replicate_seeds=n_reps, indep=not indep_reason,
            label=f"shard {s + 1}/{len(plan)}: {', '.join(ctxs)} ({len(groups)} groups; {', '.join(names)})"))
    if say:
        say(f"evaluating {len(jobs)} shards on the {getattr(ex, 'name', 'given')} executor")
    t0 = time.perf_counter()
    results: list[ShardResult] = ex.map(run_shard, jobs)
    if stats is not None:
        stats.update({"executor": getattr(ex, "name", type(ex).__name__), "workers": getattr(ex, "workers", None),
                      "shard_by": shard_by, "group_chunk": group_chunk if shard_by == "group" else None,
                      "n_shards": len(jobs), "map_wall_s": round(time.perf_counter() - t0, 3),
                      "shards": [{"label": r.label, "n_groups": r.n_groups, "wall_s": round(r.wall_s, 3),
                                  "cpu_s": round(r.cpu_s, 3),
                                  "worker_peak_rss_mb": round(r.peak_rss_mb, 1)} for r in results]})

    def parts(pick: Any, name: str) -> list[Any]:
        return [v for r in results if (v := pick(r).get(name)) is not None]

    merged_main = {p.name: _merge_panel(p, parts(lambda r: r.main, p.name), order) for p in panels}
    raw: dict[str, dict[str, Any]] = {}
    out = evaluate_panels([_Merged(p, merged_main[p.name]) for p in panels], data, raw_out=raw)
    any_rep = any(r.reps for r in results)
    for panel in panels:
        b_vals = _merge_panel(panel, parts(lambda r: r.base, panel.name), order)
        if any_rep:
            r_vals = [_merge_panel(panel, [r.reps[k][panel.name] for r in results if r.reps and panel.name in
                                           r.reps[k]], order) for k in range(n_reps)]
        else:
            r_vals = [_safe_compute(panel, None, "no group has enough true cells to split into halves")] * n_reps
        delta_keys = [k for k, spec in panel.metrics.items() if getattr(spec, "delta_based", False)]
        if delta_keys:
            i_vals = (_merge_panel(panel, parts(lambda r: r.indep, panel.name), order) if not indep_reason
                      else _safe_compute(panel, None, indep_reason))
        else:
            i_vals = {}
        for key, entry in out[panel.name]["metrics"].items():
            if "not_applicable" in entry:
                continue
            v = raw[panel.name][key]
            entry.update(calibrate_metric(data, v, b_vals.get(key), [r.get(key) for r in r_vals], unsplittable,
                                          higher_is_better=panel.metrics[key].higher_is_better))
            if key in delta_keys:
                entry["indep_ctrl"] = _summary(i_vals.get(key), data)
    info: dict[str, Any] = {
        "definitions": DEFINITIONS,
        "replicate_seeds": n_reps,
        "min_replicate_cells": MIN_REPLICATE_CELLS,
        "unsplittable_groups": dict(sorted(unsplittable.items())),
        "n_unsplittable_groups": len(unsplittable),
        "indep_ctrl": "computed" if not indep_reason else f"not computed: {indep_reason}",
        "train_mean": "not computed: not requested",
    }
    return out, info
