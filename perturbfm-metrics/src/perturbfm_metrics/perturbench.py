"""The ``perturbench`` panel (reference: altoslabs/perturbench, BSD-3; own implementation).

Group-level keys (``rmse_average``, ``cosine_logfc``), their rank versions within
each context (sensitive to mode collapse by design) and the context-level
variance ratio of predicted vs true group means. Everything is computed on ``X``
as stored (log1p values), from group means; the predicted mean of a group is the
true control mean of its context + the predicted delta.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable

from perturbfm_metrics.basic import BasicPanel
from perturbfm_metrics.distances import pairwise_sq_euclidean
from perturbfm_metrics.groupwise import blocked_diagonal_rank

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

PSEUDO = 0.1
COLLAPSE_THRESHOLD = 0.1
#: M[q,p] within TIE_RTOL x max_q |M[q,p]| of M[p,p] counts as a tie.
TIE_RTOL = 1e-9
#: a gene's true variance across groups is nonzero when above (VAR_RTOL * max(1, max|mean|))^2.
VAR_RTOL = 1e-12

_RANK = ("within a context of N groups, M[q,p] = {m}(pred_q, true_p); for each {outer}, the rank of "
         "{inner} among all {over} ({better}), ties (within a relative 1e-9) broken uniformly at random "
         "with the recorded seed, divided by N - 1; 0 perfect, 0.5 random")
_RANK_VARIANT = ("PerturBench rank metric{t}; a group alone in its context has no other group to be "
                 "ranked against: declared not applicable (not_applicable_groups; its context in "
                 "extra['single_group_contexts']), never given a chance-level 0.5; not applicable when no "
                 "context has >= 2 groups")


def logfc(mean: np.ndarray, ctrl_mean: np.ndarray) -> np.ndarray:
    """``log2(mean + 0.1) - log2(ctrl_mean + 0.1)`` on X as stored, means clipped at 0."""
    return np.log2(np.maximum(mean, 0.0) + PSEUDO) - np.log2(np.maximum(ctrl_mean, 0.0) + PSEUDO)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of matching rows; rows where either side is zero give 0.0.

    Returns:
        ``(cosine [n], undefined mask [n])``.
    """
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    undefined = (na <= 1e-12) | (nb <= 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.sum(a * b, axis=1) / (na * nb)
    return np.where(undefined, 0.0, np.clip(c, -1.0, 1.0)), undefined


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``M[q,p] = cos(a_q, b_p)``; pairs with a zero vector give 0.0."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    an = np.where(na[:, None] > 1e-12, a / np.where(na > 0, na, 1.0)[:, None], 0.0)
    bn = np.where(nb[:, None] > 1e-12, b / np.where(nb > 0, nb, 1.0)[:, None], 0.0)
    return np.clip(an @ bn.T, -1.0, 1.0)


def rmse_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``M[q,p] = sqrt(mean_g (pred_q - true_p)^2)`` through one GEMM."""
    return np.sqrt(pairwise_sq_euclidean(pred, true) / pred.shape[1])


def diagonal_rank(M: np.ndarray, *, higher_is_better: bool, rng: np.random.Generator,
                  tie_rtol: float = TIE_RTOL) -> np.ndarray:
    """For each column p, the rank of ``M[p,p]`` among ``M[:,p]`` divided by ``N - 1``.

    Rank 0 means no row scores better than the diagonal. Entries within
    ``tie_rtol * max_q |M[q,p]|`` of the diagonal are ties, broken uniformly at
    random: rank = #better + uniform integer in ``[0, #ties]``.

    Args:
        M: ``[N, N]`` with ``N >= 2``.
        higher_is_better: direction of the metric.
        rng: generator for tie-breaking.

    Returns:
        ``[N]`` normalised ranks in ``[0, 1]``.
    """
    n = M.shape[0]
    if n < 2 or M.shape != (n, n):
        raise ValueError(f"diagonal_rank needs a square matrix with N >= 2, got {M.shape}")
    diag = np.diag(M)
    tol = tie_rtol * np.max(np.abs(M), axis=0)
    diff = M - diag[None, :]
    if higher_is_better:
        diff = -diff
    off = ~np.eye(n, dtype=bool)
    better = np.sum((diff < -tol[None, :]) & off, axis=0)
    ties = np.sum((np.abs(diff) <= tol[None, :]) & off, axis=0)
    rank = better + rng.integers(0, ties + 1)
    return rank / (n - 1)


def _matrix_blocks(name: str, data: EvalData, idx: np.ndarray, lfc_p: np.ndarray, lfc_t: np.ndarray
                   ) -> tuple[Callable[[slice], np.ndarray], Callable[[slice], np.ndarray]]:
    """Column blocks of ``M`` and of ``M.T`` (``M[q, p]`` = metric(pred q, true p)) for one context,
    computed as :func:`rmse_matrix` / :func:`cosine_matrix` compute the whole matrix (same centring,
    same normalisation) a block at a time."""
    if name == "rmse_average":
        pd = np.asarray(data.pred_delta[idx], dtype=np.float64)
        td = np.asarray(data.true_delta[idx], dtype=np.float64)
        mu = np.concatenate([pd, td], axis=0).mean(axis=0, keepdims=True)  # pairwise_sq_euclidean's centring
        pd, td = pd - mu, td - mu
        g = pd.shape[1]

        def cols(c: slice) -> np.ndarray:
            return np.sqrt(pairwise_sq_euclidean(pd, td[c], center=False) / g)

        def rows(c: slice) -> np.ndarray:
            return np.sqrt(pairwise_sq_euclidean(pd[c], td, center=False) / g).T

        return cols, rows
    an, bn = _unit_rows(lfc_p[idx]), _unit_rows(lfc_t[idx])
    return (lambda c: np.clip(an @ bn[c].T, -1.0, 1.0)), (lambda c: np.clip(an[c] @ bn.T, -1.0, 1.0).T)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; a zero row (norm <= 1e-12) stays zero (as :func:`cosine_matrix`)."""
    na = np.linalg.norm(a, axis=1)
    return np.where(na[:, None] > 1e-12, a / np.where(na > 0, na, 1.0)[:, None], 0.0)


def _context_position(data: EvalData, ctx: str, c_i: int) -> int:
    """The context's position among all evaluated contexts: ``c_i`` here, the global one on
    a shard of the evaluation (``data.context_positions``, see perturbfm.shard)."""
    positions = getattr(data, "context_positions", None)
    return int(positions[ctx]) if positions and ctx in positions else c_i


class PerturBenchPanel(MetricPanel):
    """PerturBench's metrics: RMSE, cosine of log fold changes, their rank versions, variance ratio."""

    name: ClassVar[str] = "perturbench"
    standard: ClassVar[bool] = True
    version: ClassVar[str] = "2"
    description: ClassVar[str] = (
        "PerturBench metrics (altoslabs/perturbench, reimplemented): RMSE and cosine of log fold "
        "changes per group, their within-context rank versions (mode-collapse sensitive) and the "
        "variance of predicted vs true group means across groups"
    )
    metrics: ClassVar[Mapping[str, MetricSpec]] = {
        "rmse_average": BasicPanel.metrics["rmse_average"],
        "cosine_logfc": MetricSpec(
            definition="cosine(logfc_pred, logfc_true) over all genes, per group, logfc = "
            "log2(mean + 0.1) - log2(mean_ctrl + 0.1) on X as stored (log1p values, not expm1)",
            variant="PerturBench cosine_logfc; mean_ctrl = the true control mean of the context for "
            "both sides; means are clipped at 0 before the log (groups with clipped predicted means "
            "in extra['clipped_groups']). A zero vector (norm <= 1e-12) makes the cosine undefined: a zero "
            "true logfc (the group's truth equals its controls) is declared not applicable; a zero "
            "predicted logfc with a nonzero truth (e.g. the no-change baseline) gets 0.0 (no alignment, "
            "chance level; kept in the aggregates so that predicting no change cannot take a group out of "
            "the score), listed in extra['undefined_groups']",
            higher_is_better=True,
            delta_based=True,
        ),
        "rank_rmse_average": MetricSpec(
            definition=_RANK.format(m="rmse_average", outer="true p", inner="q = p", over="preds q",
                                    better="lower better"),
            variant=_RANK_VARIANT.format(t=""), higher_is_better=False, delta_based=True),
        "rank_cosine_logfc": MetricSpec(
            definition=_RANK.format(m="cosine_logfc", outer="true p", inner="q = p", over="preds q",
                                    better="higher better"),
            variant=_RANK_VARIANT.format(t=""), higher_is_better=False, delta_based=True),
        "rank_rmse_average_transpose": MetricSpec(
            definition=_RANK.format(m="rmse_average", outer="pred q", inner="p = q", over="truths p",
                                    better="lower better"),
            variant=_RANK_VARIANT.format(t=" (transposed)"), higher_is_better=False, delta_based=True),
        "rank_cosine_logfc_transpose": MetricSpec(
            definition=_RANK.format(m="cosine_logfc", outer="pred q", inner="p = q", over="truths p",
                                    better="higher better"),
            variant=_RANK_VARIANT.format(t=" (transposed)"), higher_is_better=False, delta_based=True),
        "pred_var_ratio": MetricSpec(
            definition="per context and gene, variance across the context's groups of predicted group "
            "means / the same for true group means; median over genes with nonzero true variance "
            "(above (1e-12 x max(1, max|mean|))^2)",
            variant="context-level value (per_context); 1 ideal, < 1 under-dispersed; contexts with "
            "one group or no such gene have none (extra['skipped_contexts']); not applicable when no "
            "context has one",
            higher_is_better=None),
        "collapsed_gene_frac": MetricSpec(
            definition="per context, share of genes (nonzero true variance across groups) whose "
            f"variance ratio (as pred_var_ratio) is < {COLLAPSE_THRESHOLD}",
            variant="context-level value (per_context); PerturBench-style mode-collapse indicator",
            higher_is_better=False),
    }

    def compute(self, data: EvalData) -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel for the evaluated groups."""
        ids = data.group_ids
        out: dict[str, MetricValue | NotApplicable] = {"rmse_average": BasicPanel().compute(data)["rmse_average"]}
        pred_mean = np.asarray(data.pred_mean, dtype=np.float64)
        true_mean = np.asarray(data.true_mean, dtype=np.float64)
        ctrl = np.asarray(data.ctrl_mean, dtype=np.float64)
        lfc_p, lfc_t = logfc(pred_mean, ctrl), logfc(true_mean, ctrl)
        clipped = {gid: int(n) for gid, n in zip(ids, np.sum(pred_mean < 0, axis=1)) if n}
        cos, undef = rowwise_cosine(lfc_p, lfc_t)
        zero_t = np.linalg.norm(lfc_t, axis=1) <= 1e-12
        declared = {ids[i]: "true logfc is the zero vector (the group's truth equals its controls): cosine "
                    "undefined, nothing to align with" for i in np.flatnonzero(zero_t)}
        out["cosine_logfc"] = MetricValue(
            per_group={gid: float(v) for gid, v in zip(ids, cos) if gid not in declared},
            extra={"undefined_groups": [ids[i] for i in np.flatnonzero(undef & ~zero_t)], "clipped_groups": clipped},
            not_applicable_groups=declared)

        ranks: dict[str, dict[str, float]] = {k: {} for k in (
            "rank_rmse_average", "rank_cosine_logfc", "rank_rmse_average_transpose",
            "rank_cosine_logfc_transpose")}
        single: list[str] = []
        single_declared: dict[str, str] = {}
        var_ratio: dict[str, float] = {}
        collapsed: dict[str, float] = {}
        skipped: dict[str, str] = {}
        n_genes_used: dict[str, int] = {}
        for c_i, (ctx, idx) in enumerate(data.context_indices().items()):
            if len(idx) < 2:
                single.append(ctx)
                single_declared[ids[idx[0]]] = (f"the only evaluated group of context {ctx}: no other group to "
                                                "rank it against")
                skipped[ctx] = "a single group: no variance across groups"
                continue
            # within a context the control mean is shared: pred_q - true_p = delta_q - delta_p;
            # M[q, p] is built a block of columns at a time (memory O(N x block), never N x N)
            n_ctx = len(idx)
            for s_i, (name, hib) in enumerate((("rmse_average", False), ("cosine_logfc", True))):
                cols_fn, rows_fn = _matrix_blocks(name, data, idx, lfc_p, lfc_t)
                for t_i, (suffix, fn) in enumerate((("", cols_fn), ("_transpose", rows_fn))):
                    rng = np.random.default_rng([data.seed, _context_position(data, ctx, c_i), s_i, t_i])
                    r = blocked_diagonal_rank(fn, n_ctx, higher_is_better=hib, rng=rng, tie_rtol=TIE_RTOL)
                    ranks[f"rank_{name}{suffix}"].update({ids[j]: float(v) for j, v in zip(idx, r)})
            vp = np.var(pred_mean[idx], axis=0)
            vt = np.var(true_mean[idx], axis=0)
            scale = VAR_RTOL * np.maximum(1.0, np.max(np.abs(true_mean[idx]), axis=0))
            ok = vt > scale**2
            if not ok.any():
                skipped[ctx] = "no gene with nonzero true variance across groups"
                continue
            ratio = vp[ok] / vt[ok]
            var_ratio[ctx] = float(np.median(ratio))
            collapsed[ctx] = float(np.mean(ratio < COLLAPSE_THRESHOLD))
            n_genes_used[ctx] = int(ok.sum())

        if len(single) == len(data.context_indices()):
            reason = "no context has >= 2 evaluated groups: within-context ranks are undefined"
            out.update({k: NotApplicable(reason) for k in ranks})
        else:
            rank_extra = {"single_group_contexts": single, "tie_seed": data.seed, "tie_rtol": TIE_RTOL}
            out.update({k: MetricValue(per_group=v, extra=rank_extra, not_applicable_groups=dict(single_declared))
                        for k, v in ranks.items()})
        if var_ratio:
            vextra = {"skipped_contexts": skipped, "n_genes": n_genes_used}
            out["pred_var_ratio"] = MetricValue(per_context=var_ratio, extra=vextra)
            out["collapsed_gene_frac"] = MetricValue(per_context=collapsed,
                                                     extra={**vextra, "threshold": COLLAPSE_THRESHOLD})
        else:
            reason = "no context has >= 2 evaluated groups with a gene varying in truth: " + "; ".join(
                f"{c}: {why}" for c, why in skipped.items())
            out["pred_var_ratio"] = NotApplicable(reason)
            out["collapsed_gene_frac"] = NotApplicable(reason)
        return out
