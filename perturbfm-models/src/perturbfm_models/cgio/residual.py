"""CGIO's residual-over-baseline design: the closed-form base each prediction starts from,
and the shrinkage fitted on out-of-fold predictions of the training groups.

The network only learns a *correction* to a base that needs no training:

* ``additive``: a combination whose singles were all measured in the query's context
  and covariates: the sum of those single deltas (exactly the ``additive`` baseline);
  with ``transfer_interaction``, plus the combination's mean measured interaction
  (delta − Σ its singles) in other contexts where it was measured with its singles
  (off by default: on the embedded simulator, whose groups carry different doses and
  times, it made held-out doubles worse than the plain sum);
* ``transfer``: a perturbation measured in other contexts: the mean of its deltas there;
* ``context_mean``: otherwise, the mean training delta of the query's context;
* ``global_mean``: the context has no training groups: the mean of all training deltas.

A query's own group is never part of its base (leave-self-out), so the bases of the
training groups are the ones the same rules give a held-out group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo

KINDS = ("additive", "transfer", "context_mean", "global_mean")


class BaseIndex:
    """The training deltas indexed for :meth:`base` (single genes, perturbations, contexts)."""

    def __init__(self, groups: Sequence[GroupInfo], deltas: np.ndarray, use_additive: bool = True,
                 transfer_interaction: bool = False) -> None:
        self.use_additive = use_additive
        self.transfer_interaction = transfer_interaction
        self.by_key: dict[tuple[str, str, str], tuple[str, np.ndarray]] = {}
        self.by_pert: dict[str, list[tuple[str, str, np.ndarray]]] = {}
        self.ctx_sum: dict[str, np.ndarray] = {}
        self.ctx_n: dict[str, int] = {}
        for g, d in zip(groups, deltas):
            d = np.asarray(d, dtype=np.float64)
            self.by_key[(g.perturbation, g.context, g.covariates)] = (g.group_id, d)
            self.by_pert.setdefault(g.perturbation, []).append((g.group_id, g.context, d))
            self.ctx_sum[g.context] = self.ctx_sum.get(g.context, 0.0) + d
            self.ctx_n[g.context] = self.ctx_n.get(g.context, 0) + 1
        self.all_sum = np.sum(deltas, axis=0) if len(deltas) else None
        self.all_n = len(deltas)

    def _single(self, gene: str, ctx: str, cov: str, self_id: str) -> np.ndarray | None:
        hit = self.by_key.get((gene, ctx, cov))
        return hit[1] if hit is not None and hit[0] != self_id else None

    def base(self, q: GroupInfo, n_genes: int) -> tuple[np.ndarray, str]:
        """``(base delta, kind)`` for ``q`` from every indexed group except ``q`` itself."""
        genes = q.genes
        if self.use_additive and len(genes) > 1:
            singles = [self._single(x, q.context, q.covariates, q.group_id) for x in genes]
            if all(s is not None for s in singles):
                out = np.sum(singles, axis=0)
                inter = []
                for gid, ctx, d in self.by_pert.get(q.perturbation, []):
                    if gid == q.group_id or ctx == q.context:
                        continue
                    other = [self._single(x, ctx, q.covariates, q.group_id) for x in genes]
                    if all(s is not None for s in other):
                        inter.append(d - np.sum(other, axis=0))
                if inter and self.transfer_interaction:
                    out = out + np.mean(inter, axis=0)
                return out, "additive"
        same = [d for gid, ctx, d in self.by_pert.get(q.perturbation, []) if gid != q.group_id and ctx != q.context]
        if same:
            return np.mean(same, axis=0), "transfer"
        own = self.by_key.get((q.perturbation, q.context, q.covariates))
        own_d = own[1] if own is not None and own[0] == q.group_id else None
        n = self.ctx_n.get(q.context, 0) - (own_d is not None)
        if n > 0:
            s = self.ctx_sum[q.context] - (own_d if own_d is not None else 0.0)
            return s / n, "context_mean"
        n = self.all_n - (own_d is not None)
        if n > 0 and self.all_sum is not None:
            return (self.all_sum - (own_d if own_d is not None else 0.0)) / n, "global_mean"
        return np.zeros(n_genes), "global_mean"

    def bases(self, queries: Sequence[GroupInfo], n_genes: int) -> tuple[np.ndarray, list[str]]:
        out = [self.base(q, n_genes) for q in queries]
        if not out:
            return np.zeros((0, n_genes)), []
        return np.stack([o[0] for o in out]), [o[1] for o in out]


def _ls_scale(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Least-squares ``argmin_s ||y − s x||²`` clipped to ``[lo, hi]``."""
    den = float((x * x).sum())
    return float(np.clip((x * y).sum() / den, lo, hi)) if den > 1e-12 else hi


def fit_shrinkage(base: np.ndarray, corr: np.ndarray, truth: np.ndarray, kinds: Sequence[str], *,
                  min_n: int = 3, lam_min: float = 0.05) -> dict[str, dict[str, float]]:
    """Per base kind: the correction gate ``s`` (``truth − base ≈ s·corr``, in [0, 1]) and the
    shrinkage ``λ`` of the whole delta toward zero (``truth ≈ λ (base + s·corr)``, in
    [``lam_min``, 1]), both least squares over out-of-fold predictions.

    A kind with fewer than ``min_n`` out-of-fold groups uses the pooled ``s`` and ``λ``;
    ``λ`` is always 1 for ``additive`` (the sum of measured singles is not shrunk).
    """
    kinds_a = np.asarray(kinds)
    out: dict[str, dict[str, float]] = {}
    if len(kinds_a) == 0:
        return {k: {"s": 1.0, "lambda": 1.0, "n": 0} for k in KINDS}
    s_all = _ls_scale(corr, truth - base, 0.0, 1.0)
    lam_all = _ls_scale(base + s_all * corr, truth, lam_min, 1.0)
    for k in KINDS:
        sel = kinds_a == k
        n = int(sel.sum())
        if n >= min_n:
            s = _ls_scale(corr[sel], truth[sel] - base[sel], 0.0, 1.0)
            lam = _ls_scale(base[sel] + s * corr[sel], truth[sel], lam_min, 1.0)
        else:
            s, lam = s_all, lam_all
        if k == "additive":
            lam = 1.0  # the sum of measured singles is never shrunk toward zero
        out[k] = {"s": s, "lambda": lam, "n": n}
    return out
