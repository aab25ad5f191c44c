"""The inputs every metric panel sees (:class:`EvalData`).

Kept apart from :mod:`perturbfm.evaluation` so that :mod:`perturbfm.interfaces`
(which names ``EvalData`` in the panel signature) and the evaluation code do not
import each other: this module imports neither.

Memory: cells are read lazily and bounded. A panel asking for control cells gets
at most ``max_cells`` of them per context (a deterministic, seeded subsample of the
context's control rows, read from the AnnData, which may be backed), so 60,000
control cells x 8,000 genes are never densified at once (3.6 GiB): the control rows
of the context in use are held *sparse* (as stored; ~10 % non-zero) and at most
``max_cells`` of them are densified at a time. A group's cells are read when asked
for (the last two groups are kept, sparse). Everything group-level (:meth:`EvalData.group_means`,
:meth:`EvalData.control_means` ...) is held as ``[groups, genes]`` arrays and never touches cells.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, GroupInfo, ensure_group_column, gene_symbols, read_rows
from perturbfm.errors import ConfigError, PredictionError

DEFAULT_MAX_CELLS = 2000
#: salt of the seeded control subsample a panel gets from :meth:`EvalData.control_cells`
CONTROL_SAMPLE_SALT = 3


def check_sampling(max_cells: Any, seed: Any, *, prefix: str = "run.") -> None:
    """Refuse a cell cap or seed that cannot work, naming the option (not a panel)."""
    if isinstance(max_cells, bool) or not isinstance(max_cells, (int, np.integer)) or max_cells < 1:
        raise ConfigError(f"{prefix}max_cells must be a positive integer, got {max_cells!r}",
                          field=f"{prefix}max_cells",
                          fix=f"set {prefix}max_cells to the most cells per group to score, e.g. {DEFAULT_MAX_CELLS}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{prefix}seed must be a non-negative integer, got {seed!r}", field=f"{prefix}seed",
                          fix=f"set {prefix}seed to 0 or another non-negative integer")


def _dense(X: Any) -> np.ndarray:
    if sp.issparse(X) or hasattr(X, "toarray"):
        X = X.toarray()
    return np.asarray(X, dtype=np.float64)


def _read_rows(adata: ad.AnnData, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (ascending) of ``adata.X`` as dense float64, read without touching other rows."""
    return _dense(read_rows(adata, idx))


class LRU(OrderedDict[Any, Any]):
    """A dict that keeps only its ``maxlen`` most recently set or read entries."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxlen:
            self.popitem(last=False)


@dataclass
class CoreCalibration:
    """The ``uncertainty`` panel's values as computed once by the core for one
    prediction (see :mod:`perturbfm.calibration_metrics`). They apply only to the
    exact arrays they were computed from (checked by identity), so derived
    inputs (baseline, replicates) never pick them up."""

    pred_delta: np.ndarray
    pred_var: np.ndarray | None
    values: dict[str, Any]

    def applies_to(self, data: EvalData) -> bool:
        return self.pred_delta is data.pred_delta and self.pred_var is data.pred_var


@dataclass
class EvalData:
    """Everything a metric panel needs, for the evaluated groups.

    Arrays are ``[n_groups, n_genes]`` in the order of :attr:`groups`.
    """

    genes: list[str]
    groups: list[GroupInfo]
    true_mean: np.ndarray
    true_var: np.ndarray
    ctrl_mean: np.ndarray
    pred_delta: np.ndarray
    pred_var: np.ndarray | None
    control_var: dict[str, np.ndarray]
    control_n: dict[str, int]
    seed: int = 0
    max_cells: int = DEFAULT_MAX_CELLS
    ood: dict[str, bool] | None = None
    adata: ad.AnnData | None = None
    pred_cells_given: dict[str, np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the core's calibration result for this prediction (set by the run; see CoreCalibration)
    calibration: CoreCalibration | None = None
    #: per group, the index that seeds its cell subsamples (None: its position); a
    #: :meth:`subset` keeps the full set's, so its samples are the full evaluation's
    sample_index: np.ndarray | None = None

    @property
    def n_true(self) -> np.ndarray:
        return np.array([g.n_cells for g in self.groups], dtype=np.int64)

    @property
    def group_ids(self) -> list[str]:
        return [g.group_id for g in self.groups]

    @property
    def contexts(self) -> list[str]:
        return sorted({g.context for g in self.groups})

    @property
    def true_delta(self) -> np.ndarray:
        return self.true_mean - self.ctrl_mean

    def target_positions(self) -> list[np.ndarray]:
        """Per group, the sorted positions of its perturbed genes among the measured genes,
        matched by var name or by the gene symbol recorded at import (``--gene-symbol-key``);
        empty for a drug, stimulus or other non-gene perturbation, whose names are never genes."""
        pos = {g: j for j, g in enumerate(self.genes)}
        if self.adata is not None:
            for j, sym in enumerate(gene_symbols(self.adata)):
                pos.setdefault(sym, j)
        return [np.array(sorted({pos[x] for x in getattr(g, "target_genes", g.genes) if x in pos}), dtype=np.int64)
                for g in self.groups]

    @property
    def pred_mean(self) -> np.ndarray:
        """Predicted mean expression: the context's true control mean + delta."""
        return self.ctrl_mean + self.pred_delta

    @property
    def pred_cells_constructed(self) -> bool:
        return self.pred_cells_given is None

    def context_indices(self) -> dict[str, np.ndarray]:
        """Context -> indices of its groups."""
        out: dict[str, list[int]] = {}
        for i, g in enumerate(self.groups):
            out.setdefault(g.context, []).append(i)
        return {c: np.array(v) for c, v in sorted(out.items())}

    # -------------------------------------------------------------- group level (never reads cells)
    def group_means(self) -> np.ndarray:
        """True mean expression per group ``[n_groups, n_genes]`` (pseudobulk; = ``true_mean``)."""
        return self.true_mean

    def group_vars(self) -> np.ndarray:
        """Unbiased per-gene variance of each group's true cells (NaN for a group of one cell)."""
        return self.true_var

    def group_n(self) -> np.ndarray:
        """Number of true cells per group (= :attr:`n_true`)."""
        return self.n_true

    def control_means(self) -> dict[str, np.ndarray]:
        """Context -> mean expression of all its control cells (no cap)."""
        out: dict[str, np.ndarray] = {}
        for i, g in enumerate(self.groups):
            out.setdefault(g.context, self.ctrl_mean[i])
        return dict(sorted(out.items()))

    def control_vars(self) -> dict[str, np.ndarray]:
        """Context -> unbiased per-gene variance of all its control cells (no cap)."""
        return dict(self.control_var)

    def control_counts(self) -> dict[str, int]:
        """Context -> number of its control cells (all of them, not the capped sample)."""
        return dict(self.control_n)

    def subset(self, contexts: Any = None, group_ids: Any = None) -> EvalData:
        """These inputs restricted to the groups of ``contexts`` and/or ``group_ids`` (in
        this order). Everything a group's figures depend on (its seeded subsamples, its
        context's control sample) is unchanged, so per-group and per-context values of
        a subset holding whole contexts equal those of the full evaluation: the shard a
        distributed evaluation computes (see :func:`perturbfm.evaluation.compute_panel_values`)."""
        keep_ctx = None if contexts is None else {str(c) for c in contexts}
        keep_ids = None if group_ids is None else {str(g) for g in group_ids}
        idx = [i for i, g in enumerate(self.groups)
               if (keep_ctx is None or g.context in keep_ctx) and (keep_ids is None or g.group_id in keep_ids)]
        ia = np.array(idx, dtype=np.int64)
        cells = None if self.pred_cells_given is None else {
            self.groups[i].group_id: self.pred_cells_given[self.groups[i].group_id] for i in idx}
        ctxs = {self.groups[i].context for i in idx}
        new = replace(
            self, groups=[self.groups[i] for i in idx], true_mean=self.true_mean[ia], true_var=self.true_var[ia],
            ctrl_mean=self.ctrl_mean[ia], pred_delta=self.pred_delta[ia],
            pred_var=None if self.pred_var is None else self.pred_var[ia],
            control_var={c: v for c, v in self.control_var.items() if c in ctxs},
            control_n={c: v for c, v in self.control_n.items() if c in ctxs},
            ood=None if self.ood is None else {self.groups[i].group_id: self.ood[self.groups[i].group_id]
                                               for i in idx if self.groups[i].group_id in self.ood},
            pred_cells_given=cells, calibration=None, extra=dict(self.extra),
            sample_index=ia if self.sample_index is None else self.sample_index[ia])
        if "_group_rows" in self.__dict__:
            new.__dict__["_group_rows"] = self.__dict__["_group_rows"]
        # seeds that panels take from a context's position (e.g. PerturBench's rank tie-breaks)
        # use its position in the full evaluation, so a subset's values equal the full one's
        parent = getattr(self, "context_positions", None)
        new.__dict__["context_positions"] = (dict(parent) if parent else
                                             {c: k for k, c in enumerate(self.contexts)})
        return new

    # -------------------------------------------------------------- cells (lazy)
    def _rng(self, i: int, salt: int) -> np.random.Generator:
        if self.sample_index is not None and salt in (1, 2):  # a group's subsample: its index in the full set
            i = int(self.sample_index[i])
        return np.random.default_rng([self.seed, salt, i])

    def _sample_index(self, n: int, i: int, salt: int) -> np.ndarray | None:
        """Sorted positions of a seeded subsample of ``max_cells`` out of ``n`` (None: keep all)."""
        if n <= self.max_cells:
            return None
        return np.sort(self._rng(i, salt).choice(n, self.max_cells, replace=False))

    def _subsample(self, X: np.ndarray, i: int, salt: int) -> np.ndarray:
        idx = self._sample_index(X.shape[0], i, salt)
        return X if idx is None else X[idx]

    @cached_property
    def _group_rows(self) -> dict[str, np.ndarray]:
        """Group id -> its row indices in ``adata`` (ascending), computed once."""
        assert self.adata is not None
        codes, uniq = pd.factorize(ensure_group_column(self.adata).astype(str).to_numpy())
        order = np.argsort(codes, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(codes[codes >= 0], minlength=len(uniq)))])
        order = order[np.sum(codes < 0):]
        return {str(u): order[bounds[k]:bounds[k + 1]] for k, u in enumerate(uniq)}

    @cached_property
    def _group_cells(self) -> LRU:
        """Group id -> its rows as read (sparse as stored); the last two groups only."""
        return LRU(2)

    def all_true_cells(self, i: int) -> np.ndarray:
        """All true cells of group ``i`` (no subsampling), dense float64 (a new array)."""
        if self.adata is None:
            raise PredictionError("these evaluation inputs carry no cells")
        gid = self.groups[i].group_id
        cache = self._group_cells
        if gid not in cache:
            cache[gid] = read_rows(self.adata, self._group_rows.get(gid, np.zeros(0, dtype=np.int64)))
        return _dense(cache[gid])

    def true_cells(self, i: int) -> np.ndarray:
        """True cells of group ``i`` (at most ``max_cells``, seeded subsample)."""
        return self._subsample(self.all_true_cells(i), i, 1)

    @cached_property
    def _control_rows(self) -> dict[str, np.ndarray]:
        """Context -> row indices of its control cells (ascending); no expression is read."""
        assert self.adata is not None
        obs = self.adata.obs
        is_ctrl = obs[CONTROL_COL].to_numpy(dtype=bool)
        ctx = obs[CONTEXT_COL].astype(str).to_numpy()
        return {c: np.flatnonzero(is_ctrl & (ctx == c)) for c in self.contexts}

    @cached_property
    def _control_cells(self) -> LRU:
        """Context -> its bounded control sample (dense), for the last two contexts used."""
        return LRU(2)

    @cached_property
    def _control_pool(self) -> LRU:
        """Context -> all its control rows, sparse as stored (never densified), last context used."""
        return LRU(1)

    def _control_rows_of(self, context: str, idx: np.ndarray | None) -> np.ndarray:
        """Dense float64 control cells of ``context`` at positions ``idx`` of its control rows (None: all)."""
        assert self.adata is not None
        rows = self._control_rows[context]
        pool = self._control_pool
        if context not in pool:
            if not sp.issparse(self.adata.X) and not getattr(self.adata, "isbacked", False):
                return _read_rows(self.adata, rows if idx is None else rows[idx])  # dense in memory already
            pool[context] = read_rows(self.adata, rows)
        X = pool[context]
        return _dense(X if idx is None else X[idx])

    def n_control_cells(self, context: str) -> int:
        """How many control cells ``context`` has in all (the sample may hold fewer)."""
        if self.adata is None:
            return int(self.control_n.get(context, 0))
        return int(self._control_rows[context].size)

    def control_cells(self, context: str) -> np.ndarray:
        """Control cells of ``context``: all of them up to ``max_cells``, else a seeded
        subsample of ``max_cells`` (deterministic for ``(seed, context)``)."""
        if self.adata is None:
            raise PredictionError("these evaluation inputs carry no cells")
        cache = self._control_cells
        if context not in cache:
            rows = self._control_rows[context]
            idx = self._sample_index(rows.size, zlib.crc32(context.encode("utf-8")), CONTROL_SAMPLE_SALT)
            cache[context] = self._control_rows_of(context, idx)
        return cache[context]

    def pred_cells(self, i: int) -> np.ndarray:
        """Predicted cells of group ``i``: the model's, else the context's control
        cells (seeded subsample) + the predicted delta."""
        g = self.groups[i]
        if self.pred_cells_given is not None:
            return self._subsample(np.asarray(self.pred_cells_given[g.group_id], dtype=np.float64), i, 2)
        if self.adata is None or type(self).control_cells is not EvalData.control_cells:
            # a subclass that supplies its own control cells (e.g. a control half)
            return self._subsample(self.control_cells(g.context), i, 2) + self.pred_delta[i]
        rows = self._control_rows[g.context]
        idx = self._sample_index(rows.size, i, 2)
        if idx is None:
            return self.control_cells(g.context) + self.pred_delta[i]
        return self._control_rows_of(g.context, idx) + self.pred_delta[i]
