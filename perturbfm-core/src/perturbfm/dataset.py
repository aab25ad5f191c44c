"""The canonical dataset: an AnnData with PerturbFM's obs columns, and helpers.

Canonical ``.obs`` columns (written by every dataset adapter):

``pfm_perturbation``
    the perturbation as a gene *set*: sorted unique gene names joined by ``+``
    (``"KLF1+MAP2K6"``); ``"control"`` for control cells.
``pfm_is_control``
    bool.
``pfm_context``
    cell line / cell type (several context keys joined by ``/``).
``pfm_covariates``
    canonical ``key=value;key=value`` string of the group-defining covariates
    (dose, time ...), ``""`` where there are none.
``pfm_dose`` / ``pfm_time``
    optional float covariates (chemical dose, time point).
``pfm_perturbation_kind``
    the kind of each cell's perturbation: ``"genetic"`` (a gene set: knock-out,
    knock-down, activation), ``"chemical"`` (a drug or compound) or ``"other"``
    (a stimulus, cytokine ...); ``"control"`` for control cells. Set at import
    (``--perturbation-kind`` / ``--perturbation-kind-key``) and hashed into the
    dataset's id; a dataset stored before it existed has no such column and reads
    as genetic (:func:`kind_note` says so).

Canonical ``.var`` column (optional): ``pfm_gene_symbol``, each gene's symbol when
the ``var_names`` are other ids (``--gene-symbol-key``; hashed into the id). Gene
graphs and the GO table are keyed by symbol; see :func:`gene_symbols`.

A *group* is one (perturbation, context, covariates) triple; its id is
``"<perturbation>@<context>"`` plus ``"@<covariates>"`` when covariates are set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbfm.backed import read_rows

CONTROL = "control"
COMBO_DELIMITER = "+"
PERT_COL = "pfm_perturbation"
CONTROL_COL = "pfm_is_control"
CONTEXT_COL = "pfm_context"
COVARIATES_COL = "pfm_covariates"
GROUP_COL = "pfm_group"
OPTIONAL_NUMERIC_COLS = ("pfm_dose", "pfm_time")
REQUIRED_COLS = (PERT_COL, CONTROL_COL, CONTEXT_COL, COVARIATES_COL)
KIND_COL = "pfm_perturbation_kind"
#: The kinds of perturbation a dataset records (control cells carry :data:`CONTROL`).
PERTURBATION_KINDS = ("genetic", "chemical", "other")
GENETIC = "genetic"
#: Optional obs columns hashed into a dataset's id when present.
OPTIONAL_COLS = (KIND_COL,)
#: Optional var column: the gene symbol of each var name.
SYMBOL_COL = "pfm_gene_symbol"


def canonical_perturbation(genes: Iterable[str]) -> str:
    """The canonical label of a gene set: sorted unique names joined by ``+``."""
    uniq = sorted({g.strip() for g in genes if g and g.strip()})
    return COMBO_DELIMITER.join(uniq) if uniq else CONTROL


def pert_genes(perturbation: str) -> tuple[str, ...]:
    """The gene set of a canonical perturbation label (empty for control)."""
    if perturbation == CONTROL:
        return ()
    from perturbfm.canonical.labels import split_combo  # bracket-aware: 'Drug(+)' is one name

    return tuple(split_combo(perturbation, COMBO_DELIMITER))


def group_id(perturbation: str, context: str, covariates: str = "") -> str:
    """The id of a (perturbation, context, covariates) group."""
    gid = f"{perturbation}@{context}"
    return f"{gid}@{covariates}" if covariates else gid


def pert_mask(perts: Sequence[Sequence[str]], gene_index: Sequence[str]) -> np.ndarray:
    """Binary ``[B, N]`` mask of which genes of ``gene_index`` each gene set hits.

    Genes absent from ``gene_index`` are ignored here; use :func:`unmapped_genes`
    to report them.
    """
    pos = {g: i for i, g in enumerate(gene_index)}
    mask = np.zeros((len(perts), len(gene_index)), dtype=np.float32)
    for b, genes in enumerate(perts):
        for g in genes:
            j = pos.get(g)
            if j is not None:
                mask[b, j] = 1.0
    return mask


def unmapped_genes(perts: Sequence[Sequence[str]], gene_index: Sequence[str]) -> list[str]:
    """Perturbed genes that have no position in ``gene_index``."""
    known = set(gene_index)
    return sorted({g for genes in perts for g in genes if g not in known})


@dataclass(frozen=True)
class GroupInfo:
    """One (perturbation, context, covariates) group of a dataset."""

    group_id: str
    perturbation: str
    context: str
    covariates: str
    n_cells: int
    dose: float | None = None
    time: float | None = None
    kind: str = GENETIC

    @property
    def genes(self) -> tuple[str, ...]:
        """The names of the perturbation's components (for a genetic perturbation its
        gene set; for a drug or stimulus the compound / stimulus names). Use
        :attr:`target_genes` where only genes may be meant."""
        return pert_genes(self.perturbation)

    @property
    def is_genetic(self) -> bool:
        """True when the perturbation is a gene set (its kind is ``"genetic"``)."""
        return self.kind == GENETIC

    @property
    def target_genes(self) -> tuple[str, ...]:
        """The genes this perturbation targets: its gene set when genetic, ``()`` for a
        chemical or other perturbation (a drug is never a gene, whatever its name)."""
        return self.genes if self.is_genetic else ()

    @property
    def is_control(self) -> bool:
        return self.perturbation == CONTROL

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "perturbation": self.perturbation,
            "genes": list(self.genes),
            "context": self.context,
            "covariates": self.covariates,
            "n_cells": self.n_cells,
            "dose": self.dose,
            "time": self.time,
            "kind": self.kind,
        }


def ensure_group_column(adata: ad.AnnData) -> pd.Series:
    """Return (and cache in ``.obs``) the group id of every cell."""
    if GROUP_COL not in adata.obs:
        obs = adata.obs
        ids = [
            group_id(p, c, v)
            for p, c, v in zip(
                obs[PERT_COL].astype(str), obs[CONTEXT_COL].astype(str), obs[COVARIATES_COL].astype(str)
            )
        ]
        adata.obs[GROUP_COL] = pd.Categorical(ids)
    return adata.obs[GROUP_COL]


def group_table(adata: ad.AnnData) -> dict[str, GroupInfo]:
    """All groups of a canonical dataset (control groups included), by id."""
    gcol = ensure_group_column(adata)
    obs = adata.obs
    out: dict[str, GroupInfo] = {}
    first = obs.groupby(gcol, observed=True).head(1)
    counts = gcol.value_counts()
    for _, row in first.iterrows():
        gid = str(row[GROUP_COL])
        dose = float(row["pfm_dose"]) if "pfm_dose" in obs else None
        time = float(row["pfm_time"]) if "pfm_time" in obs else None
        kind = str(row[KIND_COL]) if KIND_COL in obs else (CONTROL if row[CONTROL_COL] else GENETIC)
        out[gid] = GroupInfo(
            group_id=gid,
            perturbation=str(row[PERT_COL]),
            context=str(row[CONTEXT_COL]),
            covariates=str(row[COVARIATES_COL]),
            n_cells=int(counts[gid]),
            dose=dose,
            time=time,
            kind=kind,
        )
    return dict(sorted(out.items()))


def kind_note(adata: ad.AnnData) -> str | None:
    """A note when ``adata`` records no perturbation kinds (stored before they existed):
    its perturbations read as genetic. None when the kinds are recorded."""
    if KIND_COL in adata.obs:
        return None
    return (f"the dataset records no perturbation kinds (no obs column {KIND_COL!r}; stored before kinds "
            "existed): every perturbation is read as genetic; import it again with --perturbation-kind "
            "chemical|other if its perturbations are drugs or stimuli")


def gene_symbols(adata: ad.AnnData) -> list[str]:
    """The gene symbol of every var name: ``var['pfm_gene_symbol']`` where it was
    recorded at import (an empty entry keeps the var name), else the var names."""
    names = [str(g) for g in adata.var_names]
    if SYMBOL_COL not in adata.var:
        return names
    syms = adata.var[SYMBOL_COL].astype(str).tolist()
    return [s if s and s.strip() and s != "nan" else n for s, n in zip(syms, names)]


def _row_chunks(n: int, chunk: int) -> Iterable[slice]:
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


def _indicator(codes: np.ndarray, n_lab: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_lab, codes.size))


def _labelled_chunks(adata: ad.AnnData, codes: np.ndarray, chunk: int) -> Iterable[tuple[slice, np.ndarray, np.ndarray, Any]]:
    """Row chunks holding at least one labelled cell: (slice, codes, kept rows, X rows as float64)."""
    for sl in _row_chunks(adata.n_obs, chunk):
        c = codes[sl]
        keep = np.flatnonzero(c >= 0)
        if keep.size == 0:
            continue
        X = adata.X[sl][keep]
        X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        yield sl, c, keep, X


def moments_by_codes(adata: ad.AnnData, codes: np.ndarray, n_lab: int, *,
                     chunk_size: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label mean and (unbiased) variance of every gene, and counts, for integer
    labels ``codes`` (``-1``: skipped) in ``0 .. n_lab-1``.

    Streaming: rows are read ``chunk_size`` at a time (backed AnnData stays in its file),
    so memory is ``O(n_lab x n_genes)`` plus one chunk of cells. Two passes over the rows:
    sums, then squared deviations from the mean (exact for constant genes, no
    cancellation). A label's figures depend only on its own cells, in file order, so they
    are the same (to the bit) whatever other labels share the pass.
    """
    n_genes = adata.n_vars
    counts = np.bincount(codes[codes >= 0], minlength=n_lab).astype(np.int64)
    sums = np.zeros((n_lab, n_genes))
    for _sl, c, keep, X in _labelled_chunks(adata, codes, chunk_size):
        ind = _indicator(c[keep], n_lab)
        sums += np.asarray((ind @ X).todense()) if sp.issparse(X) else ind @ X
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    del sums
    sq = np.zeros((n_lab, n_genes))
    dense_rows_per_chunk = max(1, min(chunk_size, 20_000_000 // max(n_genes, 1)))
    for _sl, c, keep, X in _labelled_chunks(adata, codes, dense_rows_per_chunk):
        dense = X.toarray() if sp.issparse(X) else X
        dev = dense - means[c[keep]]
        sq += _indicator(c[keep], n_lab) @ (dev * dev)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = sq / (counts[:, None] - 1)
    var = np.where(counts[:, None] > 1, var, np.nan)
    return means, var, counts


def grouped_moments(
    adata: ad.AnnData,
    labels: Sequence[str] | np.ndarray,
    order: Sequence[str],
    *,
    chunk_size: int = 20_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label mean and (unbiased) variance of every gene, and counts.

    Cells whose label is not in ``order`` are skipped. Rows are read in chunks,
    so this works on backed AnnData in bounded memory (see :func:`moments_by_codes`).

    Returns:
        ``(means [L, G], variances [L, G], counts [L])`` in the order of ``order``.
    """
    pos = {lab: i for i, lab in enumerate(order)}
    codes = np.array([pos.get(str(x), -1) for x in labels], dtype=np.int64)
    return moments_by_codes(adata, codes, len(order), chunk_size=chunk_size)


@dataclass
class Moments:
    """Pseudobulk figures of labelled cell sets (groups, or a context's control cells):
    mean and unbiased variance per gene and the number of cells, ``[n_labels, n_genes]``."""

    labels: list[str]
    means: np.ndarray
    vars: np.ndarray
    counts: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {lab: i for i, lab in enumerate(self.labels)}

    def has(self, labels: Iterable[str]) -> bool:
        return all(lab in self._index for lab in labels)

    def take(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(means, vars, counts)`` of ``labels``, in that order (KeyError if one is missing)."""
        idx = np.array([self._index[lab] for lab in labels], dtype=np.int64)
        n = self.means.shape[1]
        if idx.size == 0:
            return np.zeros((0, n)), np.zeros((0, n)), np.zeros(0, dtype=np.int64)
        return self.means[idx], self.vars[idx], self.counts[idx]


#: label prefix of a context's control cells in a :class:`Moments` table (no group id starts with it)
CONTROL_LABEL = "\x00control@"


def dataset_moments(adata: ad.AnnData, group_ids: Sequence[str] | None = None, *,
                    chunk_size: int = 20_000) -> Moments:
    """The pseudobulks of ``group_ids`` (default: every perturbed group) and of every
    context's control cells (label ``CONTROL_LABEL + context``), in ONE streaming scan of
    the rows (two passes, see :func:`moments_by_codes`). Memory: ``(groups + contexts) x
    genes`` float64, plus one chunk of cells."""
    gcol = ensure_group_column(adata)
    obs = adata.obs
    is_ctrl = obs[CONTROL_COL].to_numpy(dtype=bool)
    ctx = obs[CONTEXT_COL].astype(str).to_numpy()
    codes_g, uniq_g = pd.factorize(gcol.astype(str).to_numpy())
    if group_ids is None:
        group_ids = sorted({str(u) for u in np.unique(uniq_g[codes_g[~is_ctrl]])})
    contexts = sorted(set(ctx[is_ctrl]))
    labels = list(group_ids) + [CONTROL_LABEL + c for c in contexts]
    pos = {lab: i for i, lab in enumerate(group_ids)}
    map_g = np.array([pos.get(str(u), -1) for u in uniq_g], dtype=np.int64)
    codes = map_g[codes_g] if codes_g.size else np.zeros(0, dtype=np.int64)
    cpos = {c: len(group_ids) + k for k, c in enumerate(contexts)}
    codes_c, uniq_c = pd.factorize(ctx)
    map_c = np.array([cpos.get(str(u), -1) for u in uniq_c], dtype=np.int64)
    codes = np.where(is_ctrl, map_c[codes_c] if codes_c.size else -1, codes)
    means, var, counts = moments_by_codes(adata, codes, len(labels), chunk_size=chunk_size)
    return Moments(labels=labels, means=means, vars=var, counts=counts)


def dense_rows(adata: ad.AnnData, mask: np.ndarray) -> np.ndarray:
    """The expression rows selected by boolean ``mask`` as a dense float64 array."""
    X = read_rows(adata, np.flatnonzero(mask))
    if sp.issparse(X):
        X = X.toarray()
    return np.asarray(X, dtype=np.float64)


@dataclass
class ControlStats:
    """Control mean per context, computed once per dataset; with ``moments`` (see
    :func:`control_stats`) also every group's and every context's pseudobulk, so that
    training data and evaluation take them without reading cells again."""

    contexts: list[str]
    means: np.ndarray
    counts: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    #: the pseudobulks of one scan of the dataset (groups and controls), or None
    moments: Moments | None = None

    def __post_init__(self) -> None:
        self._index = {c: i for i, c in enumerate(self.contexts)}

    def mean(self, context: str) -> np.ndarray:
        """Control mean expression of ``context`` (KeyError if it has none)."""
        return self.means[self._index[context]]

    def has(self, context: str) -> bool:
        return context in self._index and self.counts[self._index[context]] > 0

    def var(self, context: str) -> np.ndarray | None:
        """Unbiased per-gene variance of the control cells of ``context`` (None when not computed)."""
        if self.moments is None or not self.moments.has([CONTROL_LABEL + context]):
            return None
        return self.moments.take([CONTROL_LABEL + context])[1][0]

    def group_moments(self, group_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(means, vars, counts)`` of ``group_ids`` from the stored scan (None when not all are there)."""
        if self.moments is None or not self.moments.has(group_ids):
            return None
        return self.moments.take(group_ids)


def control_stats(adata: ad.AnnData, *, with_groups: bool = False) -> ControlStats:
    """Mean control expression per context; ``with_groups``: the pseudobulk of every
    group and context as well, in the same single streaming scan (:func:`dataset_moments`)."""
    if with_groups:
        m = dataset_moments(adata)
        ctx_labels = [lab for lab in m.labels if lab.startswith(CONTROL_LABEL)]
        means, _, counts = m.take(ctx_labels)
        return ControlStats(contexts=[lab[len(CONTROL_LABEL):] for lab in ctx_labels], means=means, counts=counts,
                            moments=m)
    obs = adata.obs
    is_ctrl = obs[CONTROL_COL].to_numpy(dtype=bool)
    ctx = obs[CONTEXT_COL].astype(str).to_numpy()
    contexts = sorted(set(ctx[is_ctrl]))
    labels = np.where(is_ctrl, ctx, "\x00not-control")
    means, _, counts = grouped_moments(adata, labels, contexts)
    return ControlStats(contexts=contexts, means=means, counts=counts)
