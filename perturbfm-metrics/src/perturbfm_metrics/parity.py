"""Parity of PerturbFM's metrics with peer implementations on one synthetic input.

The input is built so that the conventions coincide: one context, single-gene
perturbations named like measured genes, predicted cells given explicitly and
the prediction's control cells equal to the real control cells (so cell-eval's
"each side's own controls" equals PerturbFM's "true control mean" rule).

Peers: cell-eval (``pearson_delta``, ``mse``, ``mae``, ``discrimination_score_l1``,
``overlap_at_N``); scperturb (squared E-distance) and POT (entropic OT) for the
distribution metrics of :mod:`perturbfm_metrics.distances` (:func:`parity_rows`).
A peer that is not installed is listed as ``not installed``, never as a pass.
This module imports :mod:`perturbfm_metrics.distances`, never the other way round.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from perturbfm.dataset import CONTROL, control_stats, group_table
from perturbfm.evaluation import EvalData, build_eval_data
from perturbfm.interfaces import Prediction
from perturbfm.testing import make_canonical_adata

from perturbfm_metrics.basic import BasicPanel
from perturbfm_metrics.distances import EPS_REL, edistance, import_pot, sinkhorn
from perturbfm_metrics.vcc import VccPanel

REL_TOL = 1e-6
PASS, MISMATCH, NOT_INSTALLED, ERROR, NO_CHECK = "pass", "MISMATCH", "not installed", "error", "no check"
#: (our panel, our key) -> cell-eval metric name.
CELL_EVAL_KEYS = {
    ("basic", "pcc_delta"): "pearson_delta",
    ("basic", "mse"): "mse",
    ("vcc", "mae"): "mae",
    ("vcc", "discrimination_score_l1"): "discrimination_score_l1",
    ("vcc", "overlap_at_N"): "overlap_at_N",
}


@dataclass
class ParityRow:
    """One metric compared with one peer (values are means over groups; diffs are the
    maxima over groups)."""

    metric: str
    ours: float | None
    peer: float | None
    peer_package: str
    abs_diff: float | None
    rel_diff: float | None
    tolerance: float
    verdict: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParityInputs:
    """The synthetic truth, the predicted cells and our EvalData on them."""

    truth: ad.AnnData
    pred_cells: dict[str, np.ndarray]
    data: EvalData


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _peer_version(dist: str, module: str) -> str | None:
    """The installed version of a peer; ``"unknown version"`` when it imports without metadata."""
    ver = _version(dist)
    if ver is not None:
        return ver
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - not importable = not installed
        return None
    return "unknown version"


def make_inputs(seed: int = 0) -> ParityInputs:
    """Deterministic truth (1 context, 8 single-gene perturbations, 60 genes) and
    predicted cells (control cells + a mix of the group's and the next group's true
    delta + noise, clipped at 0)."""
    singles = tuple(f"G{i}" for i in range(8))
    truth = make_canonical_adata(n_genes=60, contexts=("ctxA",), singles=singles, doubles=(),
                                 cells_per_group=40, n_control=80, effect=1.2, seed=seed, sparse=False)
    groups = [g for g in group_table(truth).values() if not g.is_control]
    ctrl = control_stats(truth)
    X = np.asarray(truth.X, dtype=np.float64)
    gid = truth.obs["pfm_group"].astype(str).to_numpy()
    is_ctrl = truth.obs["pfm_is_control"].to_numpy(dtype=bool)
    rng = np.random.default_rng([seed, 7])
    ctrl_cells = X[is_ctrl]
    deltas = np.stack([X[gid == g.group_id].mean(axis=0) - ctrl.mean(g.context) for g in groups])
    cells: dict[str, np.ndarray] = {}
    for j, g in enumerate(groups):
        # a damped delta mixed with the next group's: some groups are confused with others
        mix = (j % 4) * 0.35
        shift = (1.0 - 0.5 * mix) * deltas[j] + mix * deltas[(j + 1) % len(groups)]
        idx = rng.choice(ctrl_cells.shape[0], 40, replace=False)
        cells[g.group_id] = np.clip(ctrl_cells[idx] + shift + 0.25 * rng.standard_normal((40, X.shape[1])),
                                    0.0, None)
    pred = Prediction(group_ids=[g.group_id for g in groups],
                      mean_delta=np.stack([cells[g.group_id].mean(axis=0) - ctrl.mean(g.context) for g in groups]),
                      cells=cells)
    return ParityInputs(truth=truth, pred_cells=cells, data=build_eval_data(truth, groups, ctrl, pred, seed=seed))


def ours(inputs: ParityInputs) -> dict[tuple[str, str], dict[str, float]]:
    """Our per-group values of the compared keys, by (panel, key)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for panel in (BasicPanel(), VccPanel()):
        for key, v in panel.compute(inputs.data).items():
            if (panel.name, key) in CELL_EVAL_KEYS and v.per_group is not None:  # type: ignore[union-attr]
                out[(panel.name, key)] = dict(v.per_group)  # type: ignore[union-attr]
    return out


def cell_eval_values(inputs: ParityInputs, control_label: str = "non-targeting") -> dict[str, dict[str, float]]:
    """cell-eval's per-perturbation values of the compared metrics (keys: our group ids)."""
    from cell_eval import MetricsEvaluator
    from cell_eval._pipeline import MetricPipeline

    truth = inputs.truth
    X = np.asarray(truth.X, dtype=np.float64)
    label = truth.obs["pfm_perturbation"].astype(str).replace({CONTROL: control_label}).to_numpy()
    genes = pd.DataFrame(index=list(truth.var_names))
    real = ad.AnnData(X=X.copy(), obs=pd.DataFrame({"target": label}, index=truth.obs_names), var=genes.copy())
    is_ctrl = label == control_label
    by_pert = {gid.split("@")[0]: gid for gid in inputs.pred_cells}
    rows = [X[is_ctrl]] + [inputs.pred_cells[by_pert[p]] for p in sorted(by_pert)]
    plab = [control_label] * int(is_ctrl.sum()) + [p for p in sorted(by_pert) for _ in range(len(inputs.pred_cells[by_pert[p]]))]
    pred = ad.AnnData(X=np.vstack(rows), obs=pd.DataFrame({"target": plab}, index=[f"p{i}" for i in range(len(plab))]),
                      var=genes.copy())
    logging.getLogger("cell_eval").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        ev = MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert=control_label, pert_col="target",
                              num_threads=1, outdir=tmp)
        pipe = MetricPipeline(profile="vcc", break_on_error=True)
        pipe.add_metrics(["pearson_delta", "mse"])
        pipe.compute_de_metrics(ev.de_comparison)
        pipe.compute_anndata_metrics(ev.anndata_pair)
        res = pipe.get_results()
    out: dict[str, dict[str, float]] = {}
    perts = [str(p) for p in res["perturbation"].to_list()]
    for name in CELL_EVAL_KEYS.values():
        out[name] = {by_pert[p]: float(v) for p, v in zip(perts, res[name].to_list())}
    return out


def _compare(metric: str, a: dict[str, float], b: dict[str, float], pkg: str, tol: float,
             note: str = "") -> ParityRow:
    if set(a) != set(b):
        return ParityRow(metric, None, None, pkg, None, None, tol, ERROR,
                         f"group sets differ: ours {sorted(a)} vs peer {sorted(b)}")
    ga = np.array([a[k] for k in sorted(a)])
    gb = np.array([b[k] for k in sorted(a)])
    diff = np.abs(ga - gb)
    scale = np.maximum(np.abs(ga), np.abs(gb))
    rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), 0.0)
    ok = bool(np.all(rel <= tol))
    return ParityRow(metric, float(ga.mean()), float(gb.mean()), pkg, float(diff.max()), float(rel.max()),
                     tol, PASS if ok else MISMATCH, f"{len(ga)} groups" + (f"; {note}" if note else ""))


def cell_eval_rows(inputs: ParityInputs, tol: float = REL_TOL) -> list[ParityRow]:
    """Parity rows against cell-eval (or one ``not installed`` row)."""
    ver = _version("cell-eval")
    if ver is None:
        return [ParityRow(f"{p}.{k}", None, None, "cell-eval", None, None, tol, NOT_INSTALLED)
                for p, k in CELL_EVAL_KEYS]
    pkg = f"cell-eval {ver} (pdex {_version('pdex')})"
    mine = ours(inputs)
    try:
        peer = cell_eval_values(inputs)
    except Exception as exc:  # the peer failing is a result to report, not to hide
        return [ParityRow(f"{p}.{k}", None, None, pkg, None, None, tol, ERROR, f"{type(exc).__name__}: {exc}")
                for p, k in CELL_EVAL_KEYS]
    return [_compare(f"{p}.{k}", mine[(p, k)], peer[name], pkg, tol) for (p, k), name in CELL_EVAL_KEYS.items()]


def _parity_sets(adata: Any, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(group id, group cells, control cells of its context) for every perturbation group,
    both sides seeded subsamples of at most 60 cells (keeps the peers' runtime small)."""
    import scipy.sparse as sp
    from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, ensure_group_column

    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    X = np.asarray(X, dtype=np.float64)
    gid = ensure_group_column(adata).astype(str).to_numpy()
    is_ctrl = adata.obs[CONTROL_COL].to_numpy(dtype=bool)
    ctx = adata.obs[CONTEXT_COL].astype(str).to_numpy()
    rng = np.random.default_rng([seed, 11])
    out = []
    for g in sorted(set(gid[~is_ctrl])):
        rows = np.flatnonzero(gid == g)
        crow = np.flatnonzero(is_ctrl & (ctx == ctx[rows[0]]))
        rows = np.sort(rng.choice(rows, min(60, rows.size), replace=False))
        crow = np.sort(rng.choice(crow, min(60, crow.size), replace=False))
        out.append((g, X[rows], X[crow]))
    return out


def _edistance_row(sets: list[tuple[str, np.ndarray, np.ndarray]], tol: float) -> ParityRow:
    """:func:`edistance` (``squared=True``, ``within="distinct"``) vs
    ``scperturb.edist(dist="sqeuclidean", sample_correct=True)``."""
    metric = "distances.edistance_squared"
    ver = _peer_version("scperturb", "scperturb")
    if ver is None:
        return ParityRow(metric, None, None, "scperturb", None, None, tol, NOT_INSTALLED)
    try:
        import scperturb

        mine, peer = {}, {}
        for g, x, y in sets:
            mine[g] = edistance(x, y, squared=True, within="distinct")
            obs = pd.DataFrame({"g": ["x"] * len(x) + ["y"] * len(y)}, index=[str(i) for i in range(len(x) + len(y))])
            a = ad.AnnData(np.zeros((len(obs), 1)), obs=obs)
            a.obsm["cells"] = np.vstack([x, y])
            est = scperturb.edist(a, obs_key="g", obsm_key="cells", dist="sqeuclidean", sample_correct=True,
                                  n_jobs=1, verbose=False)
            peer[g] = float(est.loc["x", "y"])
        return _compare(metric, mine, peer, f"scperturb {ver}", tol,
                        "vs control cells; sqeuclidean, sample_correct=True")
    except Exception as exc:  # noqa: BLE001 - the peer failing is reported, not hidden
        return ParityRow(metric, None, None, f"scperturb {ver}", None, None, tol, ERROR, f"{type(exc).__name__}: {exc}")


def _wasserstein_row(sets: list[tuple[str, np.ndarray, np.ndarray]], tol: float) -> ParityRow:
    """:func:`sinkhorn` (eps = EPS_REL x mean cost, tol 1e-12: epsilon scaling, warm starts and
    Newton steps around POT's iterations) vs plain POT ``ot.sinkhorn2(method="sinkhorn_log")``
    at the same eps on ``ot.dist`` (squared Euclidean)."""
    metric = "distances.wasserstein"
    ver = _peer_version("POT", "ot")
    if ver is None:
        return ParityRow(metric, None, None, "POT", None, None, tol, NOT_INSTALLED)
    try:
        ot = import_pot()
        mine, peer = {}, {}
        for g, x, y in sets:
            res = sinkhorn(x, y, tol=1e-12, max_iter=100_000).check()
            mine[g] = res.cost
            a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
            peer[g] = float(ot.sinkhorn2(a, b, ot.dist(x, y), res.eps, method="sinkhorn_log", numItermax=100_000,
                                         stopThr=1e-12))
        return _compare(metric, mine, peer, f"POT {ver}", tol,
                        f"vs control cells; eps = {EPS_REL} x mean cost, sinkhorn_log, stopThr 1e-12")
    except Exception as exc:  # noqa: BLE001 - the peer failing is reported, not hidden
        return ParityRow(metric, None, None, f"POT {ver}", None, None, tol, ERROR, f"{type(exc).__name__}: {exc}")


def parity_rows(adata: Any, seed: int = 0, tol: float | None = None) -> list[ParityRow]:
    """Parity of the distribution metrics with their peers on ``adata`` (group cells vs
    the context's control cells, every perturbation group): the squared E-distance
    against scperturb and the entropic OT cost against POT.

    Returns one :class:`ParityRow` per metric (``not installed`` where a peer is
    missing, ``error`` where it raised)."""
    tol = REL_TOL if tol is None else tol
    sets = _parity_sets(adata, seed)
    return [_edistance_row(sets, tol), _wasserstein_row(sets, tol)]


def distance_rows(inputs: ParityInputs, seed: int = 0) -> list[ParityRow]:
    """Rows of the distribution-metric peers on the parity input (:func:`parity_rows`)."""
    return parity_rows(inputs.truth, seed)


def run_parity(seed: int = 0, tol: float = REL_TOL) -> list[ParityRow]:
    """Every parity row on the synthetic input of ``seed``."""
    inputs = make_inputs(seed)
    return cell_eval_rows(inputs, tol) + distance_rows(inputs, seed)


def failed(rows: list[ParityRow], require_peers: bool = False) -> list[ParityRow]:
    """Rows that make validation fail: mismatches and errors (and missing peers if required)."""
    bad = {MISMATCH, ERROR} | ({NOT_INSTALLED} if require_peers else set())
    return [r for r in rows if r.verdict in bad]
