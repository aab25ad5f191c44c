"""The ``vcc`` panel: the Virtual Cell Challenge metrics (cell-eval's ``vcc`` profile).

Keys (definitions pinned in METRICS.md; cell-eval 0.8.2 / pdex 0.3.0 checked):

``mae``
    ``mean_g |mean(pred) - mean(true)|`` per group.
``discrimination_score_l1``
    within a context of ``N`` evaluated groups, for group ``p``: L1 distance of
    its predicted delta to every true delta of the context, with the measured
    perturbed genes of ``p`` dropped; ``rank`` = how many *other* groups' true
    deltas are at a distance ``<=`` that of ``p``'s own (0 = best);
    ``score = 1 - rank / N`` (cell-eval normalises by ``N``, the number of
    perturbations, not ``N - 1``: perfect = 1, worst = 1/N).
``overlap_at_N``
    DE genes of a group = genes with BH-FDR < 0.05 under a two-sided
    Mann-Whitney U test (asymptotic, tie-corrected normal approximation with
    continuity correction, as pdex/numba-mwu) of the group's cells vs the
    context's true control cells, sorted by ``|log2FC|`` descending (ties by
    gene order); ``|top-k'(true) ∩ top-k'(pred)| / k'`` with ``k'`` = the number
    of true DE genes. ``log2FC = log2(expm1(mean_g) / expm1(mean_c))`` where the
    means are of the log1p values (pdex's default geometric-mean pseudobulk with
    ``is_log1p=True`` and cell-eval's pinned ``epsilon = 0``); ``0/0 -> 0``,
    one-sided zeros give ``±inf`` (ranked first). ``k' = 0`` gives 0.0 (as
    cell-eval) and the group is listed in ``extra["no_true_de_groups"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from perturbfm.dataset import dense_rows, ensure_group_column
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable
from scipy.special import ndtr
from scipy.stats import false_discovery_control, rankdata

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

FDR_THRESHOLD = 0.05
#: genes ranked per block in the Mann-Whitney test (bounds memory).
GENE_BLOCK = 2048


# ----------------------------------------------------------------------------- DE
def _tie_term(sorted_cols: np.ndarray) -> np.ndarray:
    """``sum(t^3 - t)`` over tie groups of every column of a column-sorted array."""
    n, g = sorted_cols.shape
    if n == 0 or g == 0:
        return np.zeros(g)
    flat = sorted_cols.T.ravel()
    start = np.ones(flat.size, dtype=bool)
    start[1:] = flat[1:] != flat[:-1]
    start[::n] = True  # every column starts a new run
    run = np.cumsum(start) - 1
    t = np.bincount(run).astype(np.float64)
    col_of_run = np.flatnonzero(start) // n
    return np.bincount(col_of_run, weights=t**3 - t, minlength=g)


def mannwhitney_pvalues(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney U p-value of every column of ``x`` vs ``y``.

    Asymptotic normal approximation with tie correction and continuity
    correction (scipy's ``method="asymptotic"``, pdex's numba-mwu kernel);
    a column whose values are all identical gets p = 1.

    Args:
        x: ``[n1, G]`` cells of the group.
        y: ``[n2, G]`` reference (control) cells.
    """
    n1, n2 = x.shape[0], y.shape[0]
    G = x.shape[1]
    out = np.ones(G)
    if n1 == 0 or n2 == 0:
        return out
    n = n1 + n2
    mu = n1 * n2 / 2.0
    for s in range(0, G, GENE_BLOCK):
        z_all = np.vstack([x[:, s:s + GENE_BLOCK], y[:, s:s + GENE_BLOCK]])
        ranks = rankdata(z_all, axis=0, method="average")
        r1 = ranks[:n1].sum(axis=0)
        u1 = r1 - n1 * (n1 + 1) / 2.0
        u = np.maximum(u1, n1 * n2 - u1)
        tie = _tie_term(np.sort(z_all, axis=0))
        s2 = n1 * n2 / 12.0 * ((n + 1.0) - tie / (n * (n - 1.0)))
        with np.errstate(divide="ignore", invalid="ignore"):
            zst = (u - mu - 0.5) / np.sqrt(s2)
            p = np.clip(2.0 * ndtr(-zst), 0.0, 1.0)
        out[s:s + GENE_BLOCK] = np.where(s2 > 0, p, 1.0)
    return out


def log2_fold_change(mean_g: np.ndarray, mean_c: np.ndarray) -> np.ndarray:
    """pdex's log2FC from means of log1p values: ``log2(expm1(m_g) / expm1(m_c))``,
    ``0/0 -> 0``, one-sided zeros ``±inf``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2(np.expm1(mean_g) / np.expm1(mean_c))
    return np.where(np.isnan(lfc), 0.0, lfc)


def de_genes(cells: np.ndarray, ctrl: np.ndarray, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
    """Indices of the DE genes of ``cells`` vs ``ctrl`` (BH-FDR < threshold), sorted by
    ``|log2FC|`` descending, ties by gene index."""
    p = mannwhitney_pvalues(cells, ctrl)
    fdr = false_discovery_control(p, method="bh") if p.size else p
    lfc = np.abs(log2_fold_change(cells.mean(axis=0), ctrl.mean(axis=0)))
    sig = np.flatnonzero(fdr < fdr_threshold)
    order = np.argsort(-lfc[sig], kind="stable")
    return sig[order]


def overlap_at_n(true_de: np.ndarray, pred_de: np.ndarray) -> float | None:
    """``|top-k'(true) ∩ top-k'(pred)| / k'`` with ``k' = len(true_de)``; None when k' = 0."""
    k = len(true_de)
    if k == 0:
        return None
    return len(np.intersect1d(true_de[:k], pred_de[:k])) / k


# ----------------------------------------------------------------------------- discrimination
def discrimination_l1(pred_delta: np.ndarray, true_delta: np.ndarray,
                      drop: list[np.ndarray]) -> np.ndarray:
    """Discrimination score (L1) of every group of one context.

    Args:
        pred_delta, true_delta: ``[N, G]`` deltas of the context's groups.
        drop: per group, gene indices left out of its distances (its perturbed genes).

    Returns:
        ``[N]`` scores ``1 - rank / N``; rank = number of other groups whose true delta
        is at L1 distance ``<=`` that of the group's own true delta.
    """
    n, g = true_delta.shape
    out = np.empty(n)
    for i in range(n):
        keep = np.ones(g, dtype=bool)
        keep[drop[i]] = False
        d = np.abs(true_delta[:, keep] - pred_delta[i, keep]).sum(axis=1)
        rank = int(np.sum(d <= d[i])) - 1
        out[i] = 1.0 - rank / n
    return out


# ----------------------------------------------------------------------------- panel
class VccPanel(MetricPanel):
    """Virtual Cell Challenge metrics with the true control mean of the context as reference."""

    name: ClassVar[str] = "vcc"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = (
        "Virtual Cell Challenge metrics (cell-eval 'vcc' profile: mae, discrimination_score_l1, "
        "overlap_at_N); predictions are compared against the true controls of the context"
    )
    metrics: ClassVar[Mapping[str, MetricSpec]] = {
        "mae": MetricSpec(
            definition="mean_g |mean(pred) - mean(true)| over all genes, per group",
            variant="cell-eval mae; mean(pred) = true control mean of the context + predicted delta",
            higher_is_better=False,
        ),
        "discrimination_score_l1": MetricSpec(
            definition="within a context of N groups: rank (0 = best) of the group's own true delta "
            "among all N true deltas by L1 distance to its predicted delta, the group's measured "
            "perturbed genes dropped; score = 1 - rank / N",
            variant="cell-eval discrimination_score_l1 (normalised by N, not N - 1: perfect 1, worst "
            "1/N; a context with one group scores 1). Ties counted against the model (rank = other "
            "groups at distance <= own); cell-eval breaks ties by numpy argsort order. cell-eval drops "
            "the column whose name equals the perturbation label, so it drops nothing for combinations; "
            "PerturbFM drops every measured gene of the set. Deltas use the true controls on both sides "
            "(cell-eval: each side's own controls)",
            higher_is_better=True,
        ),
        "overlap_at_N": MetricSpec(
            definition="|top-k'(true DE) ∩ top-k'(pred DE)| / k', k' = number of true DE genes; DE = "
            "BH-FDR < 0.05 of a two-sided Mann-Whitney U test of the group's cells (true, resp. "
            "predicted) vs the context's true control cells, sorted by |log2FC| descending",
            variant="cell-eval overlap_at_N via pdex: asymptotic MWU, tie- and continuity-corrected; "
            "log2FC = log2(expm1(mean log1p group) / expm1(mean log1p control)) (pdex geometric-mean "
            "pseudobulk, epsilon 0; 0/0 -> 0, one-sided zero -> ±inf); all cells used (no "
            "subsampling); k' = 0 -> 0.0 (as cell-eval), listed in extra['no_true_de_groups']. "
            "cell-eval rounds FDR and |log2FC| to float32 before filtering and sorting; PerturbFM "
            "keeps float64",
            higher_is_better=True,
        ),
    }

    def compute(self, data: "EvalData") -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel."""
        ids = data.group_ids
        pred_delta = np.asarray(data.pred_delta, dtype=np.float64)
        true_delta = np.asarray(data.true_delta, dtype=np.float64)
        mae = np.abs(pred_delta - true_delta).mean(axis=1)

        gene_pos = {g: j for j, g in enumerate(data.genes)}
        drop = [np.array([gene_pos[x] for x in g.genes if x in gene_pos], dtype=np.int64) for g in data.groups]
        disc = np.empty(len(ids))
        for _, idx in data.context_indices().items():
            disc[idx] = discrimination_l1(pred_delta[idx], true_delta[idx], [drop[i] for i in idx])

        overlap, no_true, n_true_de, n_pred_de = self._overlap(data)

        def per_group(v: np.ndarray) -> dict[str, float]:
            return {gid: float(x) for gid, x in zip(ids, v)}

        return {
            "mae": MetricValue(per_group=per_group(mae)),
            "discrimination_score_l1": MetricValue(
                per_group=per_group(disc),
                extra={"n_per_context": {c: int(len(i)) for c, i in data.context_indices().items()},
                       "dropped_genes": {gid: [data.genes[j] for j in d] for gid, d in zip(ids, drop)}},
            ),
            "overlap_at_N": MetricValue(
                per_group=per_group(overlap),
                extra={"no_true_de_groups": no_true, "fdr_threshold": FDR_THRESHOLD,
                       "n_true_de": n_true_de, "n_pred_de": n_pred_de},
            ),
        }

    @staticmethod
    def _overlap(data: "EvalData") -> tuple[np.ndarray, list[str], dict[str, int], dict[str, int]]:
        if data.adata is None:
            raise ValueError("overlap_at_N needs the true cells (EvalData.adata is None)")
        labels = ensure_group_column(data.adata).astype(str).to_numpy()
        out = np.empty(len(data.groups))
        no_true: list[str] = []
        n_true_de: dict[str, int] = {}
        n_pred_de: dict[str, int] = {}
        for i, g in enumerate(data.groups):
            ctrl = data.control_cells(g.context)
            true_cells = dense_rows(data.adata, labels == g.group_id)
            if data.pred_cells_given is not None:
                pred_cells = np.asarray(data.pred_cells_given[g.group_id], dtype=np.float64)
            else:
                pred_cells = ctrl + data.pred_delta[i]
            t = de_genes(true_cells, ctrl)
            p = de_genes(pred_cells, ctrl)
            n_true_de[g.group_id], n_pred_de[g.group_id] = int(t.size), int(p.size)
            v = overlap_at_n(t, p)
            if v is None:
                no_true.append(g.group_id)
                v = 0.0
            out[i] = v
        return out, no_true, n_true_de, n_pred_de
