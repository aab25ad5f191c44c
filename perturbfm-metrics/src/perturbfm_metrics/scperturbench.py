"""The ``scperturbench`` panel (reference: bm2-lab/scPerturBench; own implementation).

Mean-based keys (``mse``, ``mse_top100_deg``, ``pcc_delta``) are the ``basic``
panel's, reused as they are. Distribution keys compare the group's predicted
cells with its true cells (each at most ``max_cells``, seeded subsample) on the
group's top-100 DEGs (truth only, :func:`perturbfm_metrics.deg.deg_ranking`).

When the model gives no cells, the harness builds the predicted cells as the
context's control cells + the predicted delta: they then carry the control
cells' variance, not a predicted one. The panel records this in every
distribution key's ``extra["pred_cells"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable

from perturbfm_metrics.basic import BasicPanel
from perturbfm_metrics.deg import DEG_TEST_DESCRIPTION, deg_ranking, rank_by_score, welch_t
from perturbfm_metrics.distances import (
    EPS_REL,
    KL_STD_FLOOR,
    edistance,
    floored_genes,
    gaussian_sym_kl,
    pairwise_euclidean,
    pairwise_sq_euclidean,
    sinkhorn,
    warn_not_converged,
)
from perturbfm_metrics.groupwise import resolve_backend

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

TOP_K = 100
SINKHORN_TOL = 1e-9
SINKHORN_MAX_ITER = 10_000

_FEW = ("groups with < 2 true or < 2 predicted cells: the within-set term of that side has no "
        "distinct pairs and is taken as 0 (a single cell is at distance 0 from itself); the groups "
        "are listed in extra['few_cells_groups']")
_CELLS = ("pred cells vs true cells of the group (each at most max_cells, seeded subsample) on the "
          "group's top-100 DEGs from the truth only; DEG test: " + DEG_TEST_DESCRIPTION + "; only genes with a "
          "DE score > 0 count as DEGs (fewer than 100 when fewer genes differ from the controls at all, "
          "extra['n_deg']; a group with none is declared not applicable)")
_NO_DEG = ("no DEG: every gene has DE score 0 (the group's true cells equal the controls gene by gene with "
           "zero variances)")


def welch_t_cells(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Welch's t of the cells ``a`` ``[n, G]`` against the cells ``b`` ``[m, G]``, per gene.

    Uses unbiased moments and :func:`perturbfm_metrics.deg.welch_t` (same
    zero-denominator rules as the truth's DEG test). Returns NaN where a side has
    fewer than 2 cells.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = a.shape[0], b.shape[0]
    va = a.var(axis=0, ddof=1) if na >= 2 else np.full(a.shape[1], np.nan)
    vb = b.var(axis=0, ddof=1) if nb >= 2 else np.full(b.shape[1], np.nan)
    return welch_t(a.mean(axis=0)[None], va[None], np.array([na]), b.mean(axis=0)[None], vb[None], np.array([nb]))[0]


def de_scores_cells(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, str | None]:
    """DE ranking score of ``a`` vs ``b``: ``|t|``, or ``|mean_a - mean_b|`` when a
    side has fewer than 2 cells (the fallback of :mod:`perturbfm_metrics.deg`).

    Returns:
        ``(score [G], reason or None)``.
    """
    if a.shape[0] < 2 or b.shape[0] < 2:
        reason = (f"{a.shape[0]} predicted / {b.shape[0]} control cell(s): variance undefined, "
                  "genes ranked by |mean_pred - mean_ctrl|")
        return np.abs(a.mean(axis=0) - b.mean(axis=0)), reason
    return np.abs(welch_t_cells(a, b)), None


class ScPerturBenchPanel(MetricPanel):
    """scPerturBench's metrics: mean errors, Pearson delta, distribution distances, common DEGs."""

    name: ClassVar[str] = "scperturbench"
    standard: ClassVar[bool] = True
    version: ClassVar[str] = "2"
    description: ClassVar[str] = (
        "scPerturBench metrics (bm2-lab/scPerturBench, reimplemented): mean errors and Pearson r of "
        "deltas (shared with the basic panel), E-distance, entropic Wasserstein, Gaussian KL and "
        "common DEGs between predicted and true cells"
    )
    metrics: ClassVar[Mapping[str, MetricSpec]] = {
        "mse": BasicPanel.metrics["mse"],
        "mse_top100_deg": BasicPanel.metrics["mse_top100_deg"],
        "pcc_delta": BasicPanel.metrics["pcc_delta"],
        "edistance": MetricSpec(
            definition="2 E||X-Y|| - E||X-X'|| - E||Y-Y'||, Euclidean distance, X = pred cells, "
            "Y = true cells; within-set means over the n(n-1) distinct pairs; " + _CELLS,
            variant="pertpy >= 1.0.4 default (Euclidean, n(n-1)); scperturb uses squared distances "
            "(extra['edistance_squared'] per group, same pairs). " + _FEW,
            higher_is_better=False,
        ),
        "wasserstein": MetricSpec(
            definition="entropic OT cost <P, C> between pred and true cells, C = squared Euclidean, "
            f"uniform weights, eps = {EPS_REL} x mean(C); " + _CELLS,
            variant="ott-jax PointCloud relative epsilon as scPerturBench calls it; solved in the log domain: "
            "epsilon scaling (mean(C) x 0.5^k down to eps), log-stabilised Sinkhorn, then damped Newton steps "
            "on the dual where Sinkhorn's linear rate is too slow (pred cells close to the true cells), "
            f"until the L1 row-marginal error after a column update is < {SINKHORN_TOL:g} (at most "
            f"{SINKHORN_MAX_ITER} Sinkhorn iterations and 30 Newton steps); equals POT sinkhorn2 at the same "
            "eps where that converges. Iterations, Newton steps and the final marginal error of every group "
            "are in extra['solver']; a group that did not reach the tolerance is declared not applicable "
            "with its marginal error (never reported as if converged)",
            higher_is_better=False,
        ),
        "kl": MetricSpec(
            definition="per gene Gaussian fits (mean, sigma = max(std, 0.1), std with ddof=0, log1p units), "
            "KL(pred||true) + KL(true||pred), mean over genes; " + _CELLS,
            variant="symmetric Gaussian KL as scPerturBench, except the sigma floor: scPerturBench's "
            "sigma = std + 1e-8 turns a gene that is constant on one side (common among top DEGs: all zeros "
            "in a group's true cells) into d^2 / 1e-16 (values ~1e13 on real data). PerturbFM pins "
            f"sigma = max(std, {KL_STD_FLOOR:g}): {KL_STD_FLOOR:g} log1p units is about the quantisation s.d. "
            "(step / sqrt(12)) of a one-UMI step (0.35 log1p units: 1 UMI in a cell of ~25,000 UMIs at "
            "CP10k), below which a Gaussian fit measures counting resolution, not biology; equal to "
            "scPerturBench's value (up to its + 1e-8) wherever both stds are >= the floor. "
            "extra['floored_genes'] counts per group the DEGs where a side's std was floored; a group with a "
            "single cell on a side has std 0 there (floored; listed in extra['few_cells_groups'])",
            higher_is_better=False,
        ),
        "common_degs": MetricSpec(
            definition="|topk'_DE(pred vs ctrl) & topk'_DE(true vs ctrl)| / k', k' = the group's number of "
            "true DEGs (top-100 genes with a DE score > 0, capped at the gene count); pred DE: Welch t of the "
            "group's pred cells vs all control cells of its context, ranked by |t|, genes with |t| = 0 "
            "excluded; true DE: " + DEG_TEST_DESCRIPTION,
            variant="with constructed pred cells (control cells + delta) the pred t-statistic is "
            "delta / (control sd x sqrt(1/n_pred + 1/n_ctrl)); groups with < 2 pred cells are ranked "
            "by |mean difference| (extra['pred_deg_fallback_groups']); k' = 100 except for a group whose "
            "truth has fewer genes differing from the controls (extra['n_deg']); k' = 0 is declared not "
            "applicable, never scored 0",
            higher_is_better=True,
            delta_based=True,
        ),
    }

    def compute(self, data: EvalData) -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel for the evaluated groups."""
        basic = BasicPanel().compute(data)
        out: dict[str, MetricValue | NotApplicable] = {k: basic[k] for k in ("mse", "mse_top100_deg",
                                                                            "pcc_delta")}
        ids = data.group_ids
        degs = deg_ranking(data, TOP_K)
        k = degs.k
        ed: dict[str, float] = {}
        ed_sq: dict[str, float] = {}
        ws: dict[str, float] = {}
        kl: dict[str, float] = {}
        common: dict[str, float] = {}
        few: dict[str, str] = {}
        not_conv: dict[str, str] = {}
        pred_fallback: dict[str, str] = {}
        n_cells: dict[str, list[int]] = {}
        ctrl_mom: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        solver: dict[str, dict[str, Any]] = {}
        floored: dict[str, int] = {}
        no_deg: dict[str, str] = {}
        with _one_blas_thread():  # small GEMMs: threads only add contention
            self._loop(data, degs, ids, k, ed, ed_sq, ws, kl, common, few, not_conv, pred_fallback, n_cells,
                       ctrl_mom, solver, floored, no_deg)
        self._finish(data, out, degs, k, ed, ed_sq, ws, kl, common, few, not_conv, pred_fallback, n_cells,
                     solver, floored, no_deg)
        return out

    @staticmethod
    def _loop(data, degs, ids, k, ed, ed_sq, ws, kl, common, few, not_conv, pred_fallback, n_cells,
              ctrl_mom, solver, floored, no_deg) -> None:  # noqa: ANN001 - internal
        device = resolve_backend()[1]  # the distance GEMMs on torch (a CUDA device) when selected
        for i, gid in enumerate(ids):
            genes = degs.genes(i)
            if genes.size == 0:
                no_deg[gid] = _NO_DEG
                continue
            true = data.true_cells(i)
            pred = data.pred_cells(i)
            if pred.shape[0] == 0:
                raise ValueError(f"the model gave 0 predicted cells for group {gid}")
            n_cells[gid] = [int(pred.shape[0]), int(true.shape[0])]
            p, t = pred[:, genes], true[:, genes]
            if pred.shape[0] < 2 or true.shape[0] < 2:
                few[gid] = f"{pred.shape[0]} predicted / {true.shape[0]} true cell(s)"
            ed[gid], ed_sq[gid] = _edist_both(p, t, device=device)
            res = sinkhorn(p, t, tol=SINKHORN_TOL, max_iter=SINKHORN_MAX_ITER)
            solver[gid] = res.describe()
            if res.converged:
                ws[gid] = res.cost
            else:
                not_conv[gid] = (f"entropic OT did not converge: L1 marginal error {res.marginal_error:.3g} "
                                 f"> tol {SINKHORN_TOL:g} after {res.n_iter} Sinkhorn iterations and "
                                 f"{res.n_newton} Newton steps (eps {res.eps:.3g})")
            kl[gid] = float(np.mean(gaussian_sym_kl(p, t, std_floor=KL_STD_FLOOR)))
            n_floor = int(floored_genes(p, t, std_floor=KL_STD_FLOOR).sum())
            if n_floor:
                floored[gid] = n_floor
            ctx = data.groups[i].context
            if ctx not in ctrl_mom:
                cc = data.control_cells(ctx)
                ctrl_mom[ctx] = (cc.mean(axis=0), cc.var(axis=0, ddof=1) if cc.shape[0] >= 2
                                 else np.full(cc.shape[1], np.nan), cc.shape[0])
            score, why = _de_scores_moments(pred, *ctrl_mom[ctx])
            if why:
                pred_fallback[gid] = why
            kk = int(genes.size)
            top_pred = rank_by_score(score[None], kk)[0]
            top_pred = top_pred[score[top_pred] > 0]  # a gene with |t| = 0 is not DE in the prediction
            common[gid] = len(set(top_pred.tolist()) & set(genes.tolist())) / kk

    @staticmethod
    def _finish(data, out, degs, k, ed, ed_sq, ws, kl, common, few, not_conv, pred_fallback,
                n_cells, solver, floored, no_deg) -> None:  # noqa: ANN001 - internal
        if not_conv:
            warn_not_converged(len(not_conv))
        n_deg = {g: int(degs.genes(i).size) for i, g in enumerate(data.group_ids)}
        shared: dict[str, Any] = {
            "pred_cells": "constructed: control cells of the context (seeded subsample) + predicted "
            "delta; they carry the control variance" if data.pred_cells_constructed else "given by the model",
            "n_cells_pred_true": n_cells, "max_cells": data.max_cells, "subsample_seed": data.seed,
            "k": k, "deg_fallback_groups": dict(degs.fallback_groups),
            "n_deg": {g: n for g, n in n_deg.items() if n < k},
        }
        out["edistance"] = MetricValue(per_group=ed, extra={**shared, "few_cells_groups": few,
                                                            "edistance_squared": ed_sq},
                                       not_applicable_groups=dict(no_deg))
        out["wasserstein"] = MetricValue(per_group=ws, extra={**shared, "eps_rel": EPS_REL, "tol": SINKHORN_TOL,
                                                              "solver": solver,
                                                              "not_converged": {g: solver[g] for g in not_conv}},
                                         not_applicable_groups={**no_deg, **not_conv})
        out["kl"] = MetricValue(per_group=kl, extra={**shared, "few_cells_groups": few, "std_floor": KL_STD_FLOOR,
                                                     "floored_genes": floored},
                                not_applicable_groups=dict(no_deg))
        out["common_degs"] = MetricValue(per_group=common, extra={**shared,
                                                                  "pred_deg_fallback_groups": pred_fallback},
                                         not_applicable_groups=dict(no_deg))


def _one_blas_thread() -> Any:
    """Context limiting BLAS to one thread (when threadpoolctl is importable)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn/scanpy
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _de_scores_moments(a: np.ndarray, mean_c: np.ndarray, var_c: np.ndarray, n_c: int
                       ) -> tuple[np.ndarray, str | None]:
    """:func:`de_scores_cells` with the reference given by its (cached) moments."""
    if a.shape[0] < 2 or n_c < 2:
        reason = (f"{a.shape[0]} predicted / {n_c} control cell(s): variance undefined, "
                  "genes ranked by |mean_pred - mean_ctrl|")
        return np.abs(a.mean(axis=0) - mean_c), reason
    t = welch_t(a.mean(axis=0)[None], a.var(axis=0, ddof=1)[None], np.array([a.shape[0]]), mean_c[None],
                var_c[None], np.array([n_c]))[0]
    return np.abs(t), None


def _edist_both(p: np.ndarray, t: np.ndarray, device: str | None = None) -> tuple[float, float]:
    """(Euclidean, squared) E-distances of :func:`_edist` from one set of distance GEMMs (on the
    torch ``device`` when given, see :func:`perturbfm_metrics.groupwise.resolve_backend`)."""
    cross = pairwise_sq_euclidean(p, t, device=device)
    wp = pairwise_sq_euclidean(p, p, device=device)
    wt = pairwise_sq_euclidean(t, t, device=device)
    out = []
    for f in (np.sqrt, None):
        c, a, b = (cross, wp, wt) if f is None else (f(cross), f(wp), f(wt))

        def within(d: np.ndarray) -> float:
            n = d.shape[0]
            if n < 2:
                return 0.0
            d = d.copy()
            np.fill_diagonal(d, 0.0)
            return float(d.sum() / (n * (n - 1)))

        out.append(2.0 * float(c.mean()) - within(a) - within(b))
    return out[0], out[1]


def _edist(p: np.ndarray, t: np.ndarray, *, squared: bool) -> float:
    """E-distance over distinct pairs; a side with one cell has within-term 0 (declared)."""
    if p.shape[0] >= 2 and t.shape[0] >= 2:
        return edistance(p, t, squared=squared, within="distinct")
    # a single cell's only pair is itself (distance 0); the other side keeps n(n-1)
    dist = pairwise_sq_euclidean if squared else pairwise_euclidean
    cross = float(dist(p, t).mean())

    def within(z: np.ndarray) -> float:
        if z.shape[0] < 2:
            return 0.0
        d = dist(z, z)
        np.fill_diagonal(d, 0.0)
        return float(d.sum() / (z.shape[0] * (z.shape[0] - 1)))

    return 2.0 * cross - within(p) - within(t)
