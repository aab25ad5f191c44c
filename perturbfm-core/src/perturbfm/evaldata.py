"""The inputs every metric panel sees (:class:`EvalData`).

Kept apart from :mod:`perturbfm.evaluation` so that :mod:`perturbfm.interfaces`
(which names ``EvalData`` in the panel signature) and the evaluation code do not
import each other: this module imports neither.

Memory: cells are read lazily and bounded. A panel asking for control cells gets
at most ``max_cells`` of them per context (a deterministic, seeded subsample of the
context's control rows, read row by row from the AnnData, which may be backed), so
60,000 control cells x 8,000 genes are never densified at once.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, GroupInfo, ensure_group_column
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


def _read_rows(adata: ad.AnnData, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (ascending) of ``adata.X`` as dense float64, read without touching other rows."""
    X = adata.X[idx] if idx.size else adata.X[:0]
    if sp.issparse(X) or hasattr(X, "toarray"):
        X = X.toarray()
    return np.asarray(X, dtype=np.float64)


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

    # -------------------------------------------------------------- cells (lazy)
    def _rng(self, i: int, salt: int) -> np.random.Generator:
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

    def all_true_cells(self, i: int) -> np.ndarray:
        """All true cells of group ``i`` (no subsampling), dense float64."""
        if self.adata is None:
            raise PredictionError("these evaluation inputs carry no cells")
        idx = self._group_rows.get(self.groups[i].group_id, np.zeros(0, dtype=np.int64))
        return _read_rows(self.adata, idx)

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
    def _control_cells(self) -> dict[str, np.ndarray]:
        """Context -> its bounded control sample, filled on first use of each context."""
        return {}

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
            cache[context] = _read_rows(self.adata, rows if idx is None else rows[idx])
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
        return _read_rows(self.adata, rows[idx]) + self.pred_delta[i]
