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
    one-sided zeros give ``±inf`` (ranked first). ``k' = 0`` (no true DE gene)
    leaves nothing to overlap with: the group is declared not applicable (cell-eval
    scores it 0.0) and listed in ``extra["no_true_de_groups"]`` too.

A group alone in its context has nothing to be discriminated from: it is
declared not applicable for ``discrimination_score_l1`` (cell-eval gives 1.0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from perturbfm.dataset import dense_rows, ensure_group_column
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable
from scipy.special import ndtr
from scipy.stats import false_discovery_control

from perturbfm_metrics.groupwise import discrimination_ranks

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

FDR_THRESHOLD = 0.05
#: genes ranked per block in the Mann-Whitney test (bounds memory).
GENE_BLOCK = 2048
#: cells x genes values per batch of groups in the Mann-Whitney tests (bounds memory).
BATCH_VALUES = 8_000_000


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


class MWReference:
    """Reference (control) cells of a Mann-Whitney test, sorted once per gene.

    Every group of a context is tested against the same control cells: sorting them
    once makes each group's test a search of the group's distinct values in the
    sorted controls (no joint ranking per group). The searches of all genes run as
    one vectorised ``searchsorted``: every control value is coded by its position
    among the distinct control values (``codes``), and ``gene * stride + code`` is a
    single sorted key array over all genes; a query value is coded by its
    ``searchsorted`` positions among the distinct values, so the counts
    ``#(ref < v)`` and ``#(ref <= v)`` are exact integers (no arithmetic on the values).
    The controls' runs of equal values (value, count, gene) are kept too: a group of
    constructed cells (controls + a per-gene shift) is tested from them without
    materialising or sorting its cells (:func:`mannwhitney_shifted`).
    """

    def __init__(self, y: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.float64)
        self.n = y.shape[0]
        self.n_genes = y.shape[1]
        srt = np.sort(y, axis=0)
        self.tie = _tie_term(srt)  # sum(t^3 - t) over the controls' own tie groups
        self.mean = y.mean(axis=0) if self.n else np.full(self.n_genes, np.nan)
        flat = np.ascontiguousarray(srt.T).ravel()  # gene-major, sorted within each gene
        del srt
        self.uvals = np.unique(flat)
        self._stride = np.int64(self.uvals.size + 1)
        keys = np.searchsorted(self.uvals, flat).reshape(self.n_genes, self.n)
        keys += (np.arange(self.n_genes, dtype=np.int64) * self._stride)[:, None]
        self.keys = keys.ravel()
        del keys
        if flat.size:
            start = np.empty(flat.size, dtype=bool)
            start[0] = True
            np.not_equal(flat[1:], flat[:-1], out=start[1:])
            start[:: max(self.n, 1)] = True  # every gene starts a new run
            pos = np.flatnonzero(start)
            del start
        else:
            pos = np.zeros(0, dtype=np.int64)
        self.run_vals = flat[pos]
        del flat
        # counts and genes of the runs in 4 bytes each (the runs may number n x genes)
        self.run_counts = np.diff(np.append(pos, self.n * self.n_genes)).astype(np.int32)
        self.run_gene = (pos // max(self.n, 1)).astype(np.int32)

    def counts(self, vals: np.ndarray, gene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(#(ref_g < v), #(ref_g <= v))`` for every query value ``v`` of gene ``g``, as float64."""
        base = gene * self._stride
        off = gene * np.int64(self.n)
        lo = np.searchsorted(self.keys, base + np.searchsorted(self.uvals, vals, side="left")) - off
        hi = np.searchsorted(self.keys, base + np.searchsorted(self.uvals, vals, side="right")) - off
        return lo.astype(np.float64), hi.astype(np.float64)


def _mw_pvalues(u1: np.ndarray, tie: np.ndarray, n1: np.ndarray, n2: int) -> np.ndarray:
    """Two-sided asymptotic p-values from ``U1`` and the joint tie term (``[B, G]``; ``n1`` ``[B, 1]``)."""
    n = n1 + n2
    mu = n1 * n2 / 2.0
    u = np.maximum(u1, n1 * n2 - u1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = n1 * n2 / 12.0 * ((n + 1.0) - tie / (n * (n - 1.0)))
        zst = (u - mu - 0.5) / np.sqrt(s2)
        p = np.clip(2.0 * ndtr(-zst), 0.0, 1.0)
    return np.where((s2 > 0) & (n1 > 0), p, 1.0)


def mannwhitney_batch(blocks: list[np.ndarray], ref: MWReference) -> np.ndarray:
    """Two-sided Mann-Whitney U p-values of each block of cells vs the reference, per gene.

    Exactly the statistic of :func:`scipy.stats.mannwhitneyu` (``method="asymptotic"``,
    tie and continuity corrections): with the reference sorted per gene,
    ``U1 = sum_i #(ref < x_i) + #(ref == x_i) / 2`` and the joint tie term is the
    reference's own plus, for every distinct value ``v`` of the block,
    ``(c_x + c_y)^3 - (c_x + c_y) - (c_y^3 - c_y)``. Only the block's distinct values
    (per gene) are searched in the reference, so zero-inflated data costs little.

    Returns:
        ``[len(blocks), G]`` p-values (1 where all values are identical or a side is empty).
    """
    G, n2 = ref.n_genes, ref.n
    B = len(blocks)
    out = np.ones((B, G))
    sizes = np.array([b.shape[0] for b in blocks], dtype=np.int64)
    if B == 0 or n2 == 0 or G == 0:
        return out
    N = int(sizes.sum())
    if N == 0:
        return out
    offs = np.concatenate([[0], np.cumsum(sizes)])
    XT = np.empty((G, N))
    for k, b in enumerate(blocks):
        if sizes[k]:
            XT[:, offs[k]:offs[k + 1]] = np.asarray(b, dtype=np.float64).T
            XT[:, offs[k]:offs[k + 1]].sort(axis=1)
    flat = XT.ravel()
    start = np.empty(flat.size, dtype=bool)
    start[0] = True
    np.not_equal(flat[1:], flat[:-1], out=start[1:])
    blk_start = (np.arange(G)[:, None] * N + offs[:-1][sizes > 0][None, :]).ravel()
    start[blk_start] = True
    pos = np.flatnonzero(start)
    del start
    vals = flat[pos]
    cx = np.diff(np.append(pos, flat.size)).astype(np.float64)
    del XT, flat
    gene = pos // N
    block_of_cell = np.repeat(np.arange(B), sizes)
    owner = gene * B + block_of_cell[pos % N]
    del pos
    lo, hi = ref.counts(vals, gene)
    cy = hi - lo
    u1 = np.bincount(owner, weights=cx * (lo + 0.5 * cy), minlength=G * B).reshape(G, B).T
    t = cx + cy
    tie = np.bincount(owner, weights=(t**3 - t) - (cy**3 - cy), minlength=G * B).reshape(G, B).T + ref.tie[None, :]
    return _mw_pvalues(u1, tie, sizes[:, None].astype(np.float64), n2)


def mannwhitney_shifted(ref: MWReference, deltas: np.ndarray) -> np.ndarray:
    """:func:`mannwhitney_batch` of the blocks ``ref cells + deltas[b]`` (constructed cells: the
    reference cells shifted per gene), without forming or sorting them.

    Adding a per-gene constant keeps every gene's sorted order, so the block's runs of equal
    values are the reference's runs shifted (two runs that the shift's rounding makes equal are
    merged). Each value is the same float as in ``ref cells + delta``, and the per-gene sums
    run over the same values in the same order, so the p-values are those of
    :func:`mannwhitney_batch` on the formed cells, bit for bit.

    Args:
        ref: the reference (also the cells shifted).
        deltas: ``[B, G]`` per-gene shifts.

    Returns:
        ``[B, G]`` p-values.
    """
    deltas = np.atleast_2d(np.asarray(deltas, dtype=np.float64))
    G, n2 = ref.n_genes, ref.n
    B = deltas.shape[0]
    out = np.ones((B, G))
    if B == 0 or n2 == 0 or G == 0:
        return out
    rg = ref.run_gene.astype(np.int64)
    counts = ref.run_counts.astype(np.float64)
    new_gene = np.ones(rg.size, dtype=bool)
    new_gene[1:] = rg[1:] != rg[:-1]
    n1 = np.full((1, 1), float(n2))
    for b in range(B):
        sv = ref.run_vals + deltas[b, rg]
        start = new_gene.copy()
        start[1:] |= sv[1:] != sv[:-1]
        pos = np.flatnonzero(start)
        vals, gene = sv[pos], rg[pos]
        cx = np.add.reduceat(counts, pos) if pos.size < sv.size else counts
        lo, hi = ref.counts(vals, gene)
        cy = hi - lo
        u1 = np.bincount(gene, weights=cx * (lo + 0.5 * cy), minlength=G)
        t = cx + cy
        tie = np.bincount(gene, weights=(t**3 - t) - (cy**3 - cy), minlength=G) + ref.tie
        out[b] = _mw_pvalues(u1[None, :], tie[None, :], n1, n2)[0]
    return out


def mannwhitney_pvalues(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney U p-value of every column of ``x`` vs ``y``.

    Asymptotic normal approximation with tie correction and continuity
    correction (scipy's ``method="asymptotic"``, pdex's numba-mwu kernel);
    a column whose values are all identical gets p = 1.

    Args:
        x: ``[n1, G]`` cells of the group.
        y: ``[n2, G]`` reference (control) cells.
    """
    x = np.asarray(x, dtype=np.float64)
    return mannwhitney_batch([x], MWReference(y))[0]


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of every row: ``scipy.stats.false_discovery_control``
    (``method="bh"``) along the last axis; ``p`` of shape ``[G]`` or ``[B, G]`` gives ``[1, G]`` /
    ``[B, G]``. The p-values must lie in [0, 1] (the Mann-Whitney kernels here never give NaN: a
    gene without a test gets p = 1)."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    if p.shape[1] == 0:
        return p.copy()
    return np.asarray(false_discovery_control(p, axis=1, method="bh"), dtype=np.float64)


def log2_fold_change(mean_g: np.ndarray, mean_c: np.ndarray) -> np.ndarray:
    """pdex's log2FC from means of log1p values: ``log2(expm1(m_g) / expm1(m_c))``,
    ``0/0 -> 0``, one-sided zeros ``±inf``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2(np.expm1(mean_g) / np.expm1(mean_c))
    return np.where(np.isnan(lfc), 0.0, lfc)


def de_genes(cells: np.ndarray, ctrl: np.ndarray, fdr_threshold: float = FDR_THRESHOLD) -> np.ndarray:
    """Indices of the DE genes of ``cells`` vs ``ctrl`` (BH-FDR < threshold), sorted by
    ``|log2FC|`` descending, ties by gene index."""
    ref = MWReference(ctrl)
    return de_genes_batch([np.asarray(cells, dtype=np.float64)], ref, fdr_threshold)[0]


def de_genes_batch(blocks: list[np.ndarray], ref: MWReference,
                   fdr_threshold: float = FDR_THRESHOLD) -> list[np.ndarray]:
    """:func:`de_genes` of every block of cells against the same reference cells."""
    p = mannwhitney_batch(blocks, ref)
    fdr = bh_fdr(p)
    out = []
    for k, b in enumerate(blocks):
        mean_b = b.mean(axis=0) if b.shape[0] else np.full(ref.n_genes, np.nan)
        lfc = np.abs(log2_fold_change(mean_b, ref.mean))
        sig = np.flatnonzero(fdr[k] < fdr_threshold)
        order = np.argsort(-lfc[sig], kind="stable")
        out.append(sig[order])
    return out


def _shifted_mean(ctrl: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``(ctrl + delta).mean(axis=0)`` without forming the whole shifted matrix (column chunks;
    a column's mean does not depend on the other columns)."""
    out = np.empty(ctrl.shape[1])
    step = max(1, BATCH_VALUES // max(ctrl.shape[0], 1))
    for s in range(0, ctrl.shape[1], step):
        out[s:s + step] = (ctrl[:, s:s + step] + delta[s:s + step]).mean(axis=0)
    return out


def de_genes_shifted(ref: MWReference, ctrl: np.ndarray, deltas: np.ndarray,
                     fdr_threshold: float = FDR_THRESHOLD) -> list[np.ndarray]:
    """:func:`de_genes_batch` of the constructed blocks ``ctrl + deltas[b]`` against ``ref`` (built from
    ``ctrl``), without forming or sorting the blocks (:func:`mannwhitney_shifted`); same result."""
    deltas = np.atleast_2d(np.asarray(deltas, dtype=np.float64))
    fdr = bh_fdr(mannwhitney_shifted(ref, deltas))
    out = []
    for k in range(deltas.shape[0]):
        mean_b = _shifted_mean(ctrl, deltas[k]) if ctrl.shape[0] else np.full(ref.n_genes, np.nan)
        lfc = np.abs(log2_fold_change(mean_b, ref.mean))
        sig = np.flatnonzero(fdr[k] < fdr_threshold)
        out.append(sig[np.argsort(-lfc[sig], kind="stable")])
    return out


def overlap_at_n(true_de: np.ndarray, pred_de: np.ndarray) -> float | None:
    """``|top-k'(true) ∩ top-k'(pred)| / k'`` with ``k' = len(true_de)``; None when k' = 0."""
    k = len(true_de)
    if k == 0:
        return None
    return len(np.intersect1d(true_de[:k], pred_de[:k])) / k


# ----------------------------------------------------------------------------- discrimination
def discrimination_l1(pred_delta: np.ndarray, true_delta: np.ndarray,
                      drop: list[np.ndarray], *, backend: str | None = None,
                      device: str | None = None) -> np.ndarray:
    """Discrimination score (L1) of every group of one context.

    Args:
        pred_delta, true_delta: ``[N, G]`` deltas of the context's groups.
        drop: per group, gene indices left out of its distances (its perturbed genes).
        backend, device: ``numpy`` or ``torch`` (see :func:`perturbfm_metrics.groupwise.resolve_backend`;
            default from ``PFM_METRICS_BACKEND``, torch only on a CUDA machine).

    Returns:
        ``[N]`` scores ``1 - rank / N``; rank = number of other groups whose true delta
        is at L1 distance ``<=`` that of the group's own true delta. Computed a block of
        groups at a time (memory O(block x N)); the ranks are exactly those of the per-row
        formula (near-ties re-decided with it, see :mod:`perturbfm_metrics.groupwise`).
    """
    n = true_delta.shape[0]
    rank = discrimination_ranks(pred_delta, true_delta, drop, backend=backend, device=device)
    return 1.0 - rank / n


# ----------------------------------------------------------------------------- panel
class VccPanel(MetricPanel):
    """Virtual Cell Challenge metrics with the true control mean of the context as reference."""

    name: ClassVar[str] = "vcc"
    standard: ClassVar[bool] = True
    version: ClassVar[str] = "2"
    description: ClassVar[str] = (
        "Virtual Cell Challenge metrics (cell-eval 'vcc' profile: mae, discrimination_score_l1, "
        "overlap_at_N); predictions are compared against the true controls of the context"
    )
    metrics: ClassVar[Mapping[str, MetricSpec]] = {
        "mae": MetricSpec(
            definition="mean_g |mean(pred) - mean(true)| over all genes, per group",
            variant="cell-eval mae; mean(pred) = true control mean of the context + predicted delta",
            higher_is_better=False,
            delta_based=True,
        ),
        "discrimination_score_l1": MetricSpec(
            definition="within a context of N groups: rank (0 = best) of the group's own true delta "
            "among all N true deltas by L1 distance to its predicted delta, the group's measured "
            "perturbed genes dropped; score = 1 - rank / N",
            variant="cell-eval discrimination_score_l1 (normalised by N, not N - 1: perfect 1, worst "
            "1/N). A group alone in its context has nothing to be discriminated from: declared not "
            "applicable (cell-eval scores it 1.0, a free perfect score). Ties counted against the model (rank = other "
            "groups at distance <= own); cell-eval breaks ties by numpy argsort order. cell-eval drops "
            "the column whose name equals the perturbation label, so it drops nothing for combinations; "
            "PerturbFM drops every measured gene of the set. Deltas use the true controls on both sides "
            "(cell-eval: each side's own controls)",
            higher_is_better=True,
            delta_based=True,
        ),
        "overlap_at_N": MetricSpec(
            definition="|top-k'(true DE) ∩ top-k'(pred DE)| / k', k' = number of true DE genes; DE = "
            "BH-FDR < 0.05 of a two-sided Mann-Whitney U test of the group's cells (true, resp. "
            "predicted) vs the context's true control cells, sorted by |log2FC| descending",
            variant="cell-eval overlap_at_N via pdex: asymptotic MWU, tie- and continuity-corrected; "
            "log2FC = log2(expm1(mean log1p group) / expm1(mean log1p control)) (pdex geometric-mean "
            "pseudobulk, epsilon 0; 0/0 -> 0, one-sided zero -> ±inf); all cells used (no "
            "subsampling); k' = 0 (no true DE gene: nothing to overlap with) is declared not applicable "
            "(cell-eval scores it 0.0), also listed in extra['no_true_de_groups']. "
            "cell-eval rounds FDR and |log2FC| to float32 before filtering and sorting; PerturbFM "
            "keeps float64",
            higher_is_better=True,
            delta_based=True,
        ),
    }

    def compute(self, data: EvalData) -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel."""
        ids = data.group_ids
        pred_delta = np.asarray(data.pred_delta, dtype=np.float64)
        true_delta = np.asarray(data.true_delta, dtype=np.float64)
        mae = np.abs(pred_delta - true_delta).mean(axis=1)

        drop = data.target_positions()  # the perturbed genes (by var name or recorded symbol)
        disc = np.empty(len(ids))
        alone: dict[str, str] = {}
        for ctx, idx in data.context_indices().items():
            if len(idx) < 2:
                alone[ids[idx[0]]] = (f"the only evaluated group of context {ctx}: nothing to discriminate it "
                                      "from")
                continue
            disc[idx] = discrimination_l1(pred_delta[idx], true_delta[idx], [drop[i] for i in idx])

        overlap, no_true, n_true_de, n_pred_de = self._overlap(data)

        def per_group(v: np.ndarray, skip: Mapping[str, str] | None = None) -> dict[str, float]:
            return {gid: float(x) for gid, x in zip(ids, v) if not skip or gid not in skip}

        no_true_reasons = {g: "no true DE gene (BH-FDR < 0.05) vs the context's controls: nothing to overlap with"
                           for g in no_true}
        return {
            "mae": MetricValue(per_group=per_group(mae)),
            "discrimination_score_l1": MetricValue(
                per_group=per_group(disc, alone),
                extra={"n_per_context": {c: int(len(i)) for c, i in data.context_indices().items()},
                       "dropped_genes": {gid: [data.genes[j] for j in d] for gid, d in zip(ids, drop)}},
                not_applicable_groups=alone,
            ),
            "overlap_at_N": MetricValue(
                per_group=per_group(overlap, no_true_reasons),
                extra={"no_true_de_groups": no_true, "fdr_threshold": FDR_THRESHOLD,
                       "n_true_de": n_true_de, "n_pred_de": n_pred_de},
                not_applicable_groups=no_true_reasons,
            ),
        }

    @staticmethod
    def _overlap(data: EvalData) -> tuple[np.ndarray, list[str], dict[str, int], dict[str, int]]:
        if data.adata is None:
            raise ValueError("overlap_at_N needs the true cells (EvalData.adata is None)")
        out = np.empty(len(data.groups))
        no_true: list[str] = []
        n_true_de: dict[str, int] = {}
        n_pred_de: dict[str, int] = {}
        G = len(data.genes)
        for ctx, idx in data.context_indices().items():
            ctrl = data.control_cells(ctx)
            ref = MWReference(ctrl)
            # groups in batches of about BATCH_VALUES cell values per side (bounded memory, few numpy
            # calls); constructed predictions (controls + delta) are tested from the sorted controls
            # and never formed
            batch: list[int] = []
            size = 0
            for pos, i in enumerate(idx):
                batch.append(int(i))
                g = data.groups[i]
                n_pred = (np.shape(data.pred_cells_given[g.group_id])[0] if data.pred_cells_given is not None
                          else 0)
                size += max(g.n_cells, n_pred)
                if size * G < BATCH_VALUES and pos + 1 < len(idx):
                    continue
                trues = [data.all_true_cells(i) for i in batch] if hasattr(data, "all_true_cells") else [
                    _true_cells(data, i) for i in batch]
                t_de = de_genes_batch(trues, ref)
                del trues
                if data.pred_cells_given is not None:
                    preds = [np.asarray(data.pred_cells_given[data.groups[i].group_id], dtype=np.float64)
                             for i in batch]
                    p_de = de_genes_batch(preds, ref)
                    del preds
                else:
                    p_de = de_genes_shifted(ref, ctrl, np.asarray(data.pred_delta, dtype=np.float64)[batch])
                for i, t, p in zip(batch, t_de, p_de):
                    gid = data.groups[i].group_id
                    n_true_de[gid], n_pred_de[gid] = int(t.size), int(p.size)
                    v = overlap_at_n(t, p)
                    if v is None:  # declared by the caller, never scored
                        no_true.append(gid)
                        v = np.nan
                    out[i] = v
                batch, size = [], 0
        order = {gid: k for k, gid in enumerate(data.group_ids)}
        no_true.sort(key=order.__getitem__)
        ids = data.group_ids
        return out, no_true, {g: n_true_de[g] for g in ids}, {g: n_pred_de[g] for g in ids}


def _true_cells(data: EvalData, i: int) -> np.ndarray:
    """All true cells of group ``i`` (no subsampling)."""
    labels = ensure_group_column(data.adata).astype(str).to_numpy()
    return dense_rows(data.adata, labels == data.groups[i].group_id)
