"""Top-k differentially expressed genes of each evaluated group, from the truth only.

The test is Welch's t-test of a group's true cells against the control cells of
the same context, computed from the moments already held in
:class:`perturbfm.evaluation.EvalData` (no cells are read)::

    t = (mean_g - mean_c) / sqrt(var_g / n_g + var_c / n_c)

with unbiased (ddof = 1) variances — the convention of scanpy's
``rank_genes_groups(method="t-test")`` with the context's controls as the
reference. Genes are ranked by ``|t|`` descending, ties broken by gene index
(lower first).

Declared edge cases:

* a gene whose denominator is 0 (both variances 0; a standard error below
  1e-12 x max(1, |mean|) counts as 0, absorbing the rounding of the moments of a
  constant gene) has ``t = 0`` when the two means are equal (up to a relative
  1e-12) and ``t = +/-inf`` (ranked first) when they differ;
* a group with fewer than 2 true cells, or whose context has fewer than 2
  control cells, has no defined variance: its genes are ranked by
  ``|mean_g - mean_c|`` instead, and the group is reported in
  :attr:`DegResult.fallback_groups` with the reason;
* a gene with score exactly 0 (equal means, zero variances: e.g. zero in the
  group's cells and in every control cell) is not differentially expressed at
  any rank: :meth:`DegResult.genes` keeps only the top-k genes with a score > 0
  (fewer than k, or none, for a group whose truth does not differ from its
  controls); :attr:`DegResult.n_nonzero` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

DEFAULT_K = 100
#: with a zero denominator, means closer than this (relative to max(1, |mean|)) count as equal.
MEAN_RTOL = 1e-12

DEG_TEST_DESCRIPTION = (
    "Welch t-test of the group's true cells vs the same context's control cells, from unbiased "
    "moments, t = (mean_g - mean_c) / sqrt(var_g/n_g + var_c/n_c) (scanpy rank_genes_groups "
    "method='t-test' convention); ranked by |t| descending, ties by gene index; 0/0 -> t = 0 "
    "(standard error and mean difference both within a relative 1e-12, i.e. rounding), "
    "x/0 with x != 0 -> |t| = inf (ranked first); groups with < 2 true cells or contexts with "
    "< 2 control cells are ranked by |mean_g - mean_c| instead (listed as fallback groups)"
)


@dataclass
class DegResult:
    """Outcome of the DEG ranking of every evaluated group.

    Attributes:
        indices: ``[n_groups, k]`` gene indices, most differential first.
        k: the number of genes kept (the requested k capped at the gene count).
        fallback_groups: group id -> why its genes were ranked by the absolute
            mean difference instead of ``|t|``.
        n_nonzero: ``[n_groups]`` how many of the top-k have a ranking score > 0.
            A gene whose score is exactly 0 (equal means with zero variances, e.g.
            zero in both the group's cells and the controls) is not differentially
            expressed at any rank; the genes with score > 0 are a prefix of each row.
            None means "all k".
    """

    indices: np.ndarray
    k: int
    fallback_groups: dict[str, str] = field(default_factory=dict)
    n_nonzero: np.ndarray | None = None

    def genes(self, i: int) -> np.ndarray:
        """The DEGs of group ``i``: its top-k genes with a score > 0 (possibly fewer than k, possibly none)."""
        if self.n_nonzero is None:
            return self.indices[i]
        return self.indices[i, : int(self.n_nonzero[i])]


def welch_t(
    mean_g: np.ndarray,
    var_g: np.ndarray,
    n_g: np.ndarray,
    mean_c: np.ndarray,
    var_c: np.ndarray,
    n_c: np.ndarray,
) -> np.ndarray:
    """Welch's t statistic, row by row, from moments.

    Args:
        mean_g, var_g: ``[n_groups, n_genes]`` mean and unbiased variance of the
            group's cells.
        n_g: ``[n_groups]`` cell counts of the groups.
        mean_c, var_c: ``[n_groups, n_genes]`` mean and unbiased variance of the
            reference (control) cells matched to each group.
        n_c: ``[n_groups]`` reference cell counts.

    Returns:
        ``[n_groups, n_genes]`` t statistics; where the denominator is 0 the value
        is 0 if the means are equal (within :data:`MEAN_RTOL`), else ``+/-inf`` with the
        sign of the difference.
        Rows with undefined variances (NaN) give NaN.
    """
    n_g = np.asarray(n_g, dtype=np.float64)[:, None]
    n_c = np.asarray(n_c, dtype=np.float64)[:, None]
    diff = np.asarray(mean_g, dtype=np.float64) - np.asarray(mean_c, dtype=np.float64)
    se2 = np.asarray(var_g, dtype=np.float64) / n_g + np.asarray(var_c, dtype=np.float64) / n_c
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(se2)
    # means from sums carry rounding (a constant gene's mean may be off by an ulp, and so its
    # deviations and variance), so a standard error below MEAN_RTOL x scale is 0 (else t would be
    # rounding noise / rounding noise), and "equal" allows MEAN_RTOL of relative difference
    scale = np.maximum(1.0, np.maximum(np.abs(mean_g), np.abs(mean_c)))
    zero = se2 <= (MEAN_RTOL * scale) ** 2
    same = np.abs(diff) <= MEAN_RTOL * scale
    t = np.where(zero, np.where(same, 0.0, np.copysign(np.inf, diff)), t)
    return t


def rank_by_score(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores of each row, largest first, ties by index.

    NaN scores rank last.
    """
    score = np.asarray(score, dtype=np.float64)
    key = np.where(np.isnan(score), np.inf, -score)
    order = np.argsort(key, axis=1, kind="stable")
    return order[:, :k]


def deg_scores(data: EvalData) -> tuple[np.ndarray, dict[str, str]]:
    """Ranking score of every (group, gene): ``|t|``, or ``|mean_g - mean_c|`` for
    fallback groups.

    Returns:
        ``(score [n_groups, n_genes], fallback group id -> reason)``.
    """
    groups = data.groups
    n_g = np.array([g.n_cells for g in groups], dtype=np.int64)
    n_c = np.array([data.control_n[g.context] for g in groups], dtype=np.int64)
    if groups:
        var_c = np.stack([np.asarray(data.control_var[g.context], dtype=np.float64) for g in groups])
    else:
        var_c = np.zeros_like(data.true_mean, dtype=np.float64)
    t = welch_t(data.true_mean, data.true_var, n_g, data.ctrl_mean, var_c, n_c)
    score = np.abs(t)
    fallback: dict[str, str] = {}
    few_g = n_g < 2
    few_c = n_c < 2
    for i in np.flatnonzero(few_g | few_c):
        g = groups[i]
        reasons = []
        if few_g[i]:
            reasons.append(f"{int(n_g[i])} true cell(s)")
        if few_c[i]:
            reasons.append(f"{int(n_c[i])} control cell(s) in context {g.context}")
        fallback[g.group_id] = (
            " and ".join(reasons) + ": variance undefined, genes ranked by |mean_g - mean_c|"
        )
    if fallback:
        rows = few_g | few_c
        score[rows] = np.abs(np.asarray(data.true_mean, dtype=np.float64)[rows] - data.ctrl_mean[rows])
    return score, fallback


def deg_ranking(data: EvalData, k: int = DEFAULT_K) -> DegResult:
    """Top-``k`` DEGs of every evaluated group (truth only) with the fallback report.

    Args:
        data: evaluation inputs.
        k: genes per group; capped at the number of genes.

    Returns:
        :class:`DegResult` with ``indices [n_groups, min(k, n_genes)]``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), len(data.genes))
    score, fallback = deg_scores(data)
    idx = rank_by_score(score, k)
    top = np.take_along_axis(score, idx, axis=1)
    n_nonzero = np.sum(top > 0, axis=1).astype(np.int64)  # NaN and 0 rank last: a prefix
    return DegResult(indices=idx, k=k, fallback_groups=fallback, n_nonzero=n_nonzero)


def top_k_degs(data: EvalData, k: int = DEFAULT_K) -> np.ndarray:
    """Gene indices ``[n_groups, min(k, n_genes)]`` of each group's top-k DEGs.

    See :func:`deg_ranking` for the groups that used the mean-difference fallback.
    """
    return deg_ranking(data, k).indices
