"""CGIO's residual-over-baseline design: the closed-form base each prediction starts from,
and the gate and shrinkage fitted on out-of-fold predictions of the training groups.

The network only learns a *correction* to a base that needs no training. The base is a
stacked combination of the closed-form predictors available for the query:

* ``A`` (additive): a combination whose singles were all measured in the query's context
  and covariates: the sum of those single deltas (exactly the ``additive`` baseline);
* ``T`` (transfer): a perturbation measured in other contexts: the mean of its deltas there
  (for a combination this carries its measured non-additive part to the new context);
* ``M`` (mean): the mean training delta of the query's context, or of all training groups
  when the context has none.

Which of ``A`` and ``T`` exist, and whether the query's context has training groups, decide
its *kind* (``additive+transfer``, ``additive``, ``transfer``, ``context_mean``; in a
context without training groups ``transfer_new_context`` or ``global_mean``). Per kind,
non-negative weights ``base = w_A A + w_T T + w_M M`` are fitted by least squares over the
training groups, each with its predictors built exactly as a held-out query's of that kind
would be: its own group left out, and for the two new-context kinds its whole context left
out (``M`` = the mean of the other contexts' groups). A kind with fewer than
``min_n`` training groups keeps the rule-based default: ``A`` alone, else ``T`` alone, else
``M`` alone. ``weights`` records what was fitted and from how many groups.

With ``denoise`` the singles summed by ``A`` are empirical-Bayes estimates of their deltas
(:func:`eb_shrink`) rather than the raw pseudobulk deltas: each measured delta is a mean over
a finite number of cells, and a sum of two noisy singles carries the noise of both, which on
the devel K562 doubles is most of the additive baseline's error (``T`` and ``M`` average
several groups and are left as measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import lsq_linear

if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo

    from .contexts import ContextTransfer

KINDS = ("additive+transfer", "additive", "transfer", "context_mean", "transfer_new_context", "global_mean")
SLOTS = ("A", "T", "M")
MAX_WEIGHT = 1.5  # upper bound of a stacking weight (a combination may act beyond its parts)


def _default_weights(kind: str) -> dict[str, float]:
    if kind.startswith("additive"):
        return {"A": 1.0, "T": 0.0, "M": 0.0}
    if kind.startswith("transfer"):
        return {"A": 0.0, "T": 1.0, "M": 0.0}
    return {"A": 0.0, "T": 0.0, "M": 1.0}


def eb_shrink(deltas: np.ndarray, se2: np.ndarray, contexts: Sequence[str], *, min_groups: int = 3,
              ) -> tuple[np.ndarray, dict[str, float]]:
    """Posterior means of the true deltas under a per-gene normal prior, fitted per context.

    Per context ``c`` and gene ``g``, the training deltas are ``d = θ + ε`` with sampling noise
    ``ε ~ N(0, se²)`` (``se²`` of the group mean, :meth:`TrainingData.mean_se2`: the control
    mean is shared by every delta of the context and by the held-out truth, so its noise is an
    offset common to prediction and truth, not noise to remove) and true effects
    ``θ ~ N(0, τ²_cg)``; ``τ²`` is the method-of-moments estimate ``max(mean d² − mean se², 0)``
    over the context's groups (over all groups where a context has fewer than ``min_groups``).
    The posterior mean is ``d · τ² / (τ² + se²)``: a gene whose effects across perturbations
    are no larger than the noise is shrunk to 0, a gene with large effects is barely moved.
    Nothing is tuned, and no held-out group is used.

    Returns:
        ``(shrunk deltas, mean shrink factor per context)``.
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    se2 = np.maximum(np.asarray(se2, dtype=np.float64), 0.0)
    if deltas.shape != se2.shape:
        raise ValueError(f"deltas {deltas.shape} and their squared standard errors {se2.shape} differ in shape")
    ctx = np.asarray(contexts, dtype=object)
    if not len(deltas):
        return deltas.copy(), {}

    def tau2(sel: np.ndarray) -> np.ndarray:
        return np.maximum((deltas[sel] ** 2).mean(axis=0) - se2[sel].mean(axis=0), 0.0)

    pooled = tau2(np.ones(len(deltas), bool))
    out = np.empty_like(deltas)
    factors: dict[str, float] = {}
    for c in sorted(set(ctx)):
        sel = ctx == c
        t2 = tau2(sel) if int(sel.sum()) >= min_groups else pooled
        den = t2[None, :] + se2[sel]
        f = np.where(den > 0, t2[None, :] / np.where(den > 0, den, 1.0), 1.0)
        out[sel] = deltas[sel] * f
        factors[str(c)] = round(float(f.mean()), 6)
    return out, factors


class BaseIndex:
    """The training deltas indexed for :meth:`base` (single genes, perturbations, contexts),
    with per-kind stacking weights fitted on the indexed groups themselves (leave-self-out)."""

    def __init__(self, groups: Sequence[GroupInfo], deltas: np.ndarray, use_additive: bool = True,
                 stack: bool = True, min_n: int = 3, se2: np.ndarray | None = None,
                 transfer: ContextTransfer | None = None) -> None:
        """``transfer`` (:mod:`.contexts`) moves ``T`` to the query's context from what its control
        cells show (else ``T`` is the plain mean over the other contexts). ``se2`` (the deltas' squared standard errors) turns on :func:`eb_shrink` for the
        singles summed by ``A``; ``T`` and ``M`` are means over several groups already, and the
        stacking weights are fitted against the measured deltas."""
        self.use_additive = use_additive
        self.transfer = transfer
        self._t_cache: dict[tuple[str, str, tuple[str, ...]], np.ndarray] = {}
        self.shrink_factors: dict[str, float] | None = None
        deltas = np.asarray(deltas, dtype=np.float64)
        shrunk = deltas
        if se2 is not None:
            shrunk, self.shrink_factors = eb_shrink(deltas, se2, [g.context for g in groups])
        self.by_key: dict[tuple[str, str, str], tuple[str, np.ndarray, np.ndarray]] = {}
        self.by_pert: dict[str, list[tuple[str, str, np.ndarray]]] = {}
        self.ctx_sum: dict[str, np.ndarray] = {}
        self.ctx_n: dict[str, int] = {}
        for g, d, ds in zip(groups, deltas, shrunk):
            self.by_key[(g.perturbation, g.context, g.covariates)] = (g.group_id, d, ds)
            self.by_pert.setdefault(g.perturbation, []).append((g.group_id, g.context, d))
            self.ctx_sum[g.context] = self.ctx_sum.get(g.context, 0.0) + d
            self.ctx_n[g.context] = self.ctx_n.get(g.context, 0) + 1
        self.all_sum = np.sum(deltas, axis=0) if len(deltas) else None
        self.all_n = len(deltas)
        self.n_genes = deltas.shape[1] if deltas.ndim == 2 else 0
        self.weights: dict[str, dict[str, Any]] = {
            k: {**_default_weights(k), "n": 0, "fitted": False} for k in KINDS}
        if stack and len(groups):
            self._fit_weights(groups, deltas, min_n)

    # ------------------------------------------------------------------ predictors
    def _single(self, gene: str, ctx: str, cov: str, self_id: str) -> np.ndarray | None:
        hit = self.by_key.get((gene, ctx, cov))
        return hit[2] if hit is not None and hit[0] != self_id else None

    def features(self, q: GroupInfo, n_genes: int, drop_context: bool = False,
                 ) -> tuple[dict[str, np.ndarray], str]:
        """The predictors ``{"A"?, "T"?, "M"}`` available for ``q`` (never using ``q``'s own
        group) and its kind; ``drop_context`` builds them as if ``q``'s context had no
        training groups (how the new-context kinds' weights are fitted)."""
        out: dict[str, np.ndarray] = {}
        genes = q.genes
        if drop_context:
            same = [(ctx, d) for _, ctx, d in self.by_pert.get(q.perturbation, []) if ctx != q.context]
            if same:
                out["T"] = self._transfer(same, q.perturbation, q.context)
            n = self.all_n - self.ctx_n.get(q.context, 0)
            if n <= 0 or self.all_sum is None:
                out["M"] = np.zeros(n_genes)
            else:
                out["M"] = (self.all_sum - self.ctx_sum.get(q.context, 0.0)) / n
            return out, "transfer_new_context" if "T" in out else "global_mean"
        if self.use_additive and len(genes) > 1:
            singles = [self._single(x, q.context, q.covariates, q.group_id) for x in genes]
            measured = [s for s in singles if s is not None]
            if len(measured) == len(singles):
                out["A"] = np.sum(measured, axis=0)
        same = [(ctx, d) for gid, ctx, d in self.by_pert.get(q.perturbation, [])
                if gid != q.group_id and ctx != q.context]
        if same:
            out["T"] = self._transfer(same, q.perturbation, q.context)
        own = self.by_key.get((q.perturbation, q.context, q.covariates))
        own_d = own[1] if own is not None and own[0] == q.group_id else None
        n = self.ctx_n.get(q.context, 0) - (own_d is not None)
        if n > 0:
            out["M"] = (self.ctx_sum[q.context] - (own_d if own_d is not None else 0.0)) / n
        else:
            n = self.all_n - (own_d is not None)
            out["M"] = ((self.all_sum - (own_d if own_d is not None else 0.0)) / n
                        if n > 0 and self.all_sum is not None else np.zeros(n_genes))
            return out, "transfer_new_context" if "T" in out else "global_mean"
        if "A" in out:
            kind = "additive+transfer" if "T" in out else "additive"
        else:
            kind = "transfer" if "T" in out else "context_mean"
        return out, kind

    def _transfer(self, same: list[tuple[str, np.ndarray]], perturbation: str, context: str) -> np.ndarray:
        """``T``: the perturbation's deltas in other contexts moved to ``context`` (cached: the
        same perturbation, target and source contexts always give the same deltas here)."""
        key = (perturbation, context, tuple(c for c, _ in same))
        hit = self._t_cache.get(key)
        if hit is not None:
            return hit
        deltas = np.stack([d for _, d in same])
        out = deltas.mean(axis=0) if self.transfer is None else self.transfer.transfer(
            [c for c, _ in same], deltas, context)
        self._t_cache[key] = out
        return out

    def _fit_weights(self, groups: Sequence[GroupInfo], deltas: np.ndarray, min_n: int) -> None:
        """Per kind, non-negative least squares of the training deltas on their predictors,
        kept only where it beats the kind's rule-based weights out of fold (:func:`_oof_check`:
        held out by group, or by context for the new-context kinds)."""
        rows: dict[str, list[tuple[dict[str, np.ndarray], np.ndarray, str]]] = {}
        several = len(self.ctx_n) > 1
        for g, d in zip(groups, deltas):
            f, kind = self.features(g, self.n_genes)
            if kind in ("context_mean", "transfer", "additive", "additive+transfer"):
                rows.setdefault(kind, []).append((f, d, g.group_id))
            if several:  # the same group as a query from a context without training groups
                f, kind = self.features(g, self.n_genes, drop_context=True)
                rows.setdefault(kind, []).append((f, d, g.context))
        for kind, items in rows.items():
            self.weights[kind]["n"] = len(items)
            if len(items) < min_n:
                self.weights[kind]["reason"] = (f"{len(items)} training group(s) of this kind (needs >= {min_n}): "
                                                "rule-based base")
                continue
            slots = [s for s in SLOTS if s in items[0][0]]
            x = np.vstack([np.stack([f[s] for s in slots], axis=1) for f, _, _ in items])
            y = np.concatenate([d for _, d, _ in items])
            if not np.isfinite(x).all() or float((x * x).sum()) < 1e-12:
                self.weights[kind]["reason"] = "predictors all zero or not finite: rule-based base"
                continue
            keys = np.concatenate([[k] * self.n_genes for _, _, k in items])
            default = np.array([_default_weights(kind)[s] for s in slots])
            ok, err_fit, err_default = _oof_check(x, y, keys, default)
            if not ok:
                self.weights[kind]["reason"] = (f"stacked weights do not beat the rule-based base out of fold "
                                                f"({err_fit:.4g} vs {err_default:.4g}): rule-based base")
                continue
            w = _bounded_ls(x.T @ x, x.T @ y)
            self.weights[kind].update({s: 0.0 for s in SLOTS})
            self.weights[kind].update({s: round(float(v), 6) for s, v in zip(slots, w)})
            self.weights[kind]["fitted"] = True
            self.weights[kind]["reason"] = (f"out-of-fold squared error {err_fit:.4g} < rule-based "
                                            f"{err_default:.4g}")

    # ------------------------------------------------------------------ bases
    def base(self, q: GroupInfo, n_genes: int) -> tuple[np.ndarray, str]:
        """``(base delta, kind)`` for ``q`` from every indexed group except ``q`` itself."""
        f, kind = self.features(q, n_genes)
        w = self.weights[kind]
        out = np.zeros(n_genes)
        for s, v in f.items():
            if w[s]:
                out = out + w[s] * v
        return out, kind

    def bases(self, queries: Sequence[GroupInfo], n_genes: int) -> tuple[np.ndarray, list[str]]:
        out = [self.base(q, n_genes) for q in queries]
        if not out:
            return np.zeros((0, n_genes)), []
        return np.stack([o[0] for o in out]), [o[1] for o in out]


def _bounded_ls(xtx: np.ndarray, xty: np.ndarray) -> np.ndarray:
    """``argmin_w ||y − x w||²`` over ``0 <= w <= MAX_WEIGHT`` from the normal equations (the
    objective equals ``||R w − R⁻ᵀ xᵀy||²`` + const with ``xᵀx = RᵀR``): a k × k problem."""
    k = len(xty)
    r = np.linalg.cholesky(xtx + 1e-10 * (np.trace(xtx) / max(k, 1) + 1e-12) * np.eye(k)).T
    return np.asarray(lsq_linear(r, np.linalg.solve(r.T, xty), bounds=(0.0, MAX_WEIGHT)).x)


def _oof_check(x: np.ndarray, y: np.ndarray, keys: np.ndarray, default: np.ndarray, max_folds: int = 10,
               ) -> tuple[bool, float, float]:
    """Whether non-negative least-squares weights fitted without each held-out key (group or
    context; at most ``max_folds`` folds of keys) predict its rows better than ``default``."""
    uniq = np.unique(keys)
    if len(uniq) < 2:
        return False, float("nan"), float("nan")
    fold_of = {k: i % max_folds for i, k in enumerate(uniq)}
    fold = np.array([fold_of[k] for k in keys])
    folds = np.unique(fold)
    gram = {f: (x[fold == f].T @ x[fold == f], x[fold == f].T @ y[fold == f]) for f in folds}
    xtx_all, xty_all = sum(g[0] for g in gram.values()), sum(g[1] for g in gram.values())
    err_fit = err_def = 0.0
    for f in folds:
        te = fold == f
        w = _bounded_ls(xtx_all - gram[f][0], xty_all - gram[f][1])
        err_fit += float(((y[te] - x[te] @ w) ** 2).sum())
        err_def += float(((y[te] - x[te] @ default) ** 2).sum())
    return err_fit < err_def, err_fit, err_def


def _ls_scale(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Least-squares ``argmin_s ||y − s x||²`` clipped to ``[lo, hi]``."""
    den = float((x * x).sum())
    return float(np.clip((x * y).sum() / den, lo, hi)) if den > 1e-12 else hi


def fit_shrinkage(base: np.ndarray, corr: np.ndarray, truth: np.ndarray, kinds: Sequence[str], *,
                  min_n: int = 3, lam_min: float = 0.05, lam_fit: bool = True) -> dict[str, dict[str, Any]]:
    """Per base kind: the correction gate ``s`` (``truth − base ≈ s·corr``, in [0, 1]) and the
    shrinkage ``λ`` of the whole delta toward zero (``truth ≈ λ (base + s·corr)``, in
    [``lam_min``, 1]; only with ``lam_fit``), both least squares over out-of-fold predictions,
    starting from the base (``s = 0``, ``λ = 1``).

    Do no harm: a kind with fewer than ``min_n`` out-of-fold groups has no evidence that the
    network's correction helps it, and a kind whose fitted ``(s, λ)`` does not lower the
    out-of-fold squared error of the base gets the base alone (``s = 0``, ``λ = 1``);
    ``applied`` and ``reason`` say which. ``λ`` is always 1 for the kinds with an additive
    predictor (the sum of measured singles is not shrunk).
    """
    kinds_a = np.asarray(kinds)
    out: dict[str, dict[str, Any]] = {}
    for k in KINDS:
        sel = kinds_a == k if len(kinds_a) else np.zeros(0, bool)
        n = int(sel.sum())
        s, lam, applied = 0.0, 1.0, False
        if n < min_n:
            reason = f"network correction off: {n} out-of-fold group(s) of this kind (needs >= {min_n})"
        else:
            s = _ls_scale(corr[sel], truth[sel] - base[sel], 0.0, 1.0)
            lam = _ls_scale(base[sel] + s * corr[sel], truth[sel], lam_min, 1.0) if lam_fit else 1.0
            if k.startswith("additive"):
                lam = 1.0  # the sum of measured singles is never shrunk toward zero
            err_base = float(((truth[sel] - base[sel]) ** 2).sum())
            err = float(((truth[sel] - lam * (base[sel] + s * corr[sel])) ** 2).sum())
            applied = err < err_base and (s > 0 or lam < 1)
            if applied:
                reason = f"out-of-fold squared error {err:.4g} < base {err_base:.4g}"
            else:
                reason = (f"network correction off: out of fold it does not beat the base "
                          f"({err:.4g} vs {err_base:.4g})")
                s, lam = 0.0, 1.0
        out[k] = {"s": s, "lambda": lam, "n": n, "applied": applied, "reason": reason}
    return out


def fit_variance_scale(pred: np.ndarray, net_var: np.ndarray, truth: np.ndarray, kinds: Sequence[str], *,
                       min_n: int = 3, floor: float = 1e-6) -> dict[str, np.ndarray]:
    """Per base kind and gene, the factor ``a`` that calibrates the network's variance head
    to the out-of-fold squared error of the final prediction: ``a = mean (truth − pred)² /
    mean net_var`` over that kind's out-of-fold groups (pooled over all kinds where a kind
    has fewer than ``min_n``). The predicted variance is then ``a · net_var``: on average it
    matches the error actually made, whatever the base and the gate ``s`` did, and it keeps
    the head's group-to-group differences.
    """
    kinds_a = np.asarray(kinds)
    err = (truth - pred) ** 2
    nv = np.maximum(net_var, floor)
    pooled = np.maximum(err.mean(axis=0), floor) / nv.mean(axis=0) if len(kinds_a) else None
    out: dict[str, np.ndarray] = {}
    for k in KINDS:
        sel = kinds_a == k if len(kinds_a) else np.zeros(0, bool)
        if int(sel.sum()) >= min_n:
            out[k] = np.maximum(err[sel].mean(axis=0), floor) / nv[sel].mean(axis=0)
        elif pooled is not None:
            out[k] = pooled
    return out


SELF_EFFECT_KINDS = ("context_mean", "global_mean")  # bases that carry no measurement of the perturbation


def fit_self_effect(pred: np.ndarray, truth: np.ndarray, groups: Sequence[GroupInfo], kinds: Sequence[str],
                    gene_pos: dict[str, int], *, min_n: int = 3) -> dict[str, dict[str, float]]:
    """Per context, the median out-of-fold error ``κ = median (truth − pred)`` at the perturbed
    genes themselves, over the groups of a base kind without a measurement of the
    perturbation (:data:`SELF_EFFECT_KINDS`) whose perturbed genes are measured.

    A knock-out or knock-down lowers its own target's transcript (CRISPRa raises it) by a
    roughly constant amount in log expression. The sum of measured singles and the
    perturbation's delta elsewhere carry that change; a context-mean base (other
    perturbations' deltas at that gene) and the low-rank operator do not. ``κ`` is added to
    such a query's prediction at each of its measured perturbed genes. A context with fewer
    than ``min_n`` such (group, gene) pairs gets none; nothing is pooled across contexts,
    whose perturbation modality (and so the sign) may differ. The median, not the mean: a
    target that is itself induced by the pathway it belongs to (STAT1, JAK2 under IFN-γ in
    papalexi) drops several times more than a typical target and would drag a mean.
    """
    per: dict[str, list[float]] = {}
    for p, t, g, k in zip(pred, truth, groups, kinds):
        if k not in SELF_EFFECT_KINDS:
            continue
        for x in g.genes:
            j = gene_pos.get(x)
            if j is not None:
                per.setdefault(g.context, []).append(float(t[j] - p[j]))
    return {c: {"kappa": round(float(np.median(v)), 6), "n": len(v)} for c, v in sorted(per.items())
            if len(v) >= min_n}
