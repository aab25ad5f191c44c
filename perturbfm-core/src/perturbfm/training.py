"""What a model sees when it is fitted: the training groups of a split and the
control cells of every context, never a held-out group's cells.

Group level first: :meth:`TrainingData.group_means`, :meth:`~TrainingData.group_vars`,
:meth:`~TrainingData.group_n`, :meth:`~TrainingData.deltas`, :meth:`~TrainingData.control_vars`
are ``[groups, genes]`` arrays taken from the single streaming scan of the dataset made at load
(:func:`perturbfm.dataset.control_stats` with ``with_groups=True``), so a model that trains on
pseudobulks never reads a cell. Cells are read on request, one group (or one bounded,
seeded control sample, :meth:`~TrainingData.control_sample`) at a time."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import anndata as ad
import numpy as np

from perturbfm.dataset import (
    GROUP_COL,
    ControlStats,
    GroupInfo,
    dense_rows,
    ensure_group_column,
    gene_symbols,
    grouped_moments,
    kind_note,
    pert_mask,
    read_rows,
    unmapped_genes,
)


class TrainingData:
    """The groups of one role of a split, with access to their cells.

    Attributes:
        genes: measured genes (the dataset's var names, its gene ids), in order.
        gene_symbols: the symbol of each of ``genes`` (``var['pfm_gene_symbol']`` recorded
            at import with ``--gene-symbol-key``; the var name where none was recorded).
            Gene graphs and the GO table are keyed by symbol.
        kind_note: a note when the dataset records no perturbation kinds (read as genetic).
        groups: the perturbed groups of this role, sorted by id.
        control: control mean expression per context (all contexts).
        synthetic: True when the dataset is simulated.
    """

    def __init__(
        self,
        adata: ad.AnnData,
        groups: Sequence[GroupInfo],
        control: ControlStats,
        *,
        synthetic: bool = False,
        role: str = "train",
    ) -> None:
        self._adata = adata
        self.genes: list[str] = [str(g) for g in adata.var_names]
        self.gene_symbols: list[str] = gene_symbols(adata)
        self.kind_note: str | None = kind_note(adata)
        self.groups: list[GroupInfo] = sorted(groups, key=lambda g: g.group_id)
        self.control = control
        self.synthetic = synthetic
        self.role = role
        self._allowed = {g.group_id for g in self.groups}

    @property
    def group_ids(self) -> list[str]:
        return [g.group_id for g in self.groups]

    @property
    def contexts(self) -> list[str]:
        """Contexts of the groups in this role."""
        return sorted({g.context for g in self.groups})

    @cached_property
    def _moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stored = self.control.group_moments(self.group_ids)
        if stored is not None:
            return stored
        labels = ensure_group_column(self._adata).astype(str).to_numpy()
        return grouped_moments(self._adata, labels, self.group_ids)

    def group_n(self) -> np.ndarray:
        """Number of cells per group ``[n_groups]``."""
        return self._moments[2]

    def control_vars(self) -> np.ndarray:
        """Unbiased per-gene variance of the control cells of each group's context
        ``[n_groups, n_genes]`` (all control cells; no cap)."""
        if not self.groups:
            return np.zeros((0, len(self.genes)))
        per_ctx = self._control_moments
        return np.stack([per_ctx[g.context][1] for g in self.groups])

    def control_n(self, context: str) -> int:
        """How many control cells ``context`` has."""
        return int(self._control_moments[context][2]) if context in self._control_moments else 0

    @cached_property
    def _control_moments(self) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        ctl = self.control
        out: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        missing = [c for c in ctl.contexts if ctl.var(c) is None]
        extra: dict[str, np.ndarray] = {}
        if missing:
            obs = self._adata.obs
            is_ctrl = obs["pfm_is_control"].to_numpy(dtype=bool)
            ctx = obs["pfm_context"].astype(str).to_numpy()
            _, var, _n = grouped_moments(self._adata, np.where(is_ctrl, ctx, "\x00"), missing)
            extra = dict(zip(missing, var))
        for k, c in enumerate(ctl.contexts):
            v = ctl.var(c)
            out[c] = (ctl.means[k], extra[c] if v is None else v, int(ctl.counts[k]))
        return out

    def group_means(self) -> np.ndarray:
        """Mean expression per group ``[n_groups, n_genes]`` (pseudobulk)."""
        return self._moments[0]

    def group_vars(self) -> np.ndarray:
        """Unbiased per-gene variance of the cells of each group."""
        return self._moments[1]

    def control_means(self) -> np.ndarray:
        """The control mean of each group's context ``[n_groups, n_genes]``."""
        return np.stack([self.control.mean(g.context) for g in self.groups]) if self.groups else np.zeros(
            (0, len(self.genes))
        )

    def deltas(self) -> np.ndarray:
        """Group mean minus its context's control mean ``[n_groups, n_genes]``."""
        return self.group_means() - self.control_means()

    def mean_se2(self) -> np.ndarray:
        """Squared standard error of each group's mean expression per gene ``[n_groups,
        n_genes]``: unbiased cell variance / number of cells (0 for a group of one cell).

        This is the sampling noise of :meth:`deltas` that is particular to each group; the
        control mean each delta subtracts is shared by every group of a context (and by the
        held-out truth it is evaluated against), so its noise is a common offset, not part of
        this figure."""
        if not self.groups:
            return np.zeros((0, len(self.genes)))
        _, var, n = self._moments
        return np.where(n[:, None] >= 2, np.nan_to_num(var) / np.maximum(n, 1)[:, None], 0.0)

    def cells(self, group_id: str) -> np.ndarray:
        """The cells of one group of this role (dense ``[n, n_genes]``)."""
        if group_id not in self._allowed:
            raise KeyError(f"group {group_id!r} is not in the {self.role} set")
        gcol = self._adata.obs[GROUP_COL].astype(str).to_numpy()
        return dense_rows(self._adata, gcol == group_id)

    def control_cells(self, context: str) -> np.ndarray:
        """ALL control cells of ``context`` (visible for every context), dense: ``n_controls x
        n_genes`` float64 (60,000 controls x 8,000 genes = 3.6 GiB). A model that needs control
        cells at scale uses :meth:`control_sample` (bounded) or :meth:`control_vars` (none)."""
        obs = self._adata.obs
        mask = obs["pfm_is_control"].to_numpy(dtype=bool) & (obs["pfm_context"].astype(str).to_numpy() == context)
        return dense_rows(self._adata, mask)

    def control_sample(self, context: str, max_cells: int, seed: int = 0) -> np.ndarray:
        """At most ``max_cells`` control cells of ``context``: all of them when there are no
        more, else a seeded uniform subsample (rows in file order), dense float64. Memory:
        ``max_cells x n_genes``; the other rows are never read."""
        if int(max_cells) < 1:
            raise ValueError(f"max_cells must be >= 1, got {max_cells}")
        obs = self._adata.obs
        rows = np.flatnonzero(obs["pfm_is_control"].to_numpy(dtype=bool)
                              & (obs["pfm_context"].astype(str).to_numpy() == context))
        if rows.size > max_cells:
            rows = np.sort(np.random.default_rng([int(seed), 7]).choice(rows, int(max_cells), replace=False))
        X = read_rows(self._adata, rows)
        return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)

    def perturbation_kind(self, group: GroupInfo | str) -> str:
        """The kind of a group's perturbation (``genetic``, ``chemical`` or ``other``), by
        :class:`GroupInfo` or id (KeyError for a group outside this role)."""
        if isinstance(group, GroupInfo):
            return group.kind
        for g in self.groups:
            if g.group_id == group:
                return g.kind
        raise KeyError(f"group {group!r} is not in the {self.role} set")

    def sample_cells(self, max_cells: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
        """A seeded uniform sample of at most ``max_cells`` of the cells a model may read (the
        control cells of every context and the cells of this role's groups), each centred by
        its context's control mean; every cell when ``max_cells`` is None or not exceeded.

        Only the chosen rows are read (in order, a chunk at a time), so the memory is
        ``max_cells x n_genes`` whatever the dataset's size. Float64 while that is under
        2**26 values (512 MiB), float32 beyond.

        Returns ``(rows [n, n_genes], context of each row, number of cells sampled from)``.
        """
        obs = self._adata.obs
        is_ctrl = obs["pfm_is_control"].to_numpy(dtype=bool)
        gcol = ensure_group_column(self._adata).astype(str).to_numpy()
        ctx = obs["pfm_context"].astype(str).to_numpy()
        known = set(self.control.contexts)
        eligible = np.flatnonzero((is_ctrl & np.isin(ctx, list(known))) | np.isin(gcol, list(self._allowed)))
        total = int(eligible.size)
        if max_cells is not None and total > max_cells:
            rng = np.random.default_rng(seed)
            eligible = np.sort(rng.choice(eligible, size=int(max_cells), replace=False))
        n_genes = len(self.genes)
        dtype = np.float64 if eligible.size * n_genes <= 1 << 26 else np.float32
        out = np.empty((eligible.size, n_genes), dtype=dtype)
        step = max(1, min(10_000, 20_000_000 // max(n_genes, 1)))
        for start in range(0, eligible.size, step):
            idx = eligible[start:start + step]
            block = read_rows(self._adata, idx)
            block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
            out[start:start + idx.size] = block
        row_ctx = ctx[eligible]
        for c in sorted(set(row_ctx)):
            sel = row_ctx == c
            out[sel] -= self.control.mean(c).astype(dtype)
        return out, row_ctx, total

    def pert_mask(self, gene_index: Sequence[str] | None = None) -> np.ndarray:
        """``[n_groups, N]`` mask of the perturbed genes over ``gene_index`` (default: the
        measured genes, matched by var name or recorded symbol). Only genetic perturbations
        set bits: a drug or stimulus row is all zero."""
        targets = [g.target_genes for g in self.groups]
        if gene_index is not None:
            return pert_mask(targets, gene_index)
        return np.maximum(pert_mask(targets, self.genes), pert_mask(targets, self.gene_symbols))

    def unmapped_genes(self, gene_index: Sequence[str] | None = None) -> list[str]:
        """Perturbed genes of these groups' genetic perturbations that are not in ``gene_index``
        (default: the measured genes by var name or symbol). A drug is never an unmapped gene."""
        targets = [g.target_genes for g in self.groups]
        return unmapped_genes(targets, list(gene_index) if gene_index is not None
                              else [*self.genes, *self.gene_symbols])

    def training_mean(self, queries: Sequence[GroupInfo]) -> tuple[np.ndarray, dict[str, str]]:
        """The *training mean* reference: for each query, the mean delta of this role's
        groups of the query's context, or the mean over all of them (with a note) when
        that context has none; zeros (with a note) when there are no groups at all.

        Returns ``([n_queries, n_genes] float64, group id -> note)``."""
        n_genes = len(self.genes)
        deltas = np.asarray(self.deltas(), dtype=np.float64) if self.groups else np.zeros((0, n_genes))
        ctx = np.array([g.context for g in self.groups], dtype=object)
        per_ctx = {c: deltas[ctx == c].mean(axis=0) for c in sorted(set(ctx))}
        overall = deltas.mean(axis=0) if self.groups else np.zeros(n_genes)
        out = np.zeros((len(queries), n_genes), dtype=np.float64)
        notes: dict[str, str] = {}
        for i, q in enumerate(queries):
            if q.context in per_ctx:
                out[i] = per_ctx[q.context]
            elif not self.groups:
                out[i] = overall
                notes[q.group_id] = "no training groups at all: used a zero delta"
            else:
                out[i] = overall
                notes[q.group_id] = (f"context {q.context!r} has no training groups: used the mean delta over all "
                                     f"{len(self.groups)} training groups")
        return out, notes
