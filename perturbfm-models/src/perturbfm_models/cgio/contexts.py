"""Contexts from observation: what a context's control cells show, and how a perturbation's
response moves from the contexts where it was measured to one where it was not.

A context (cell type, cell line, donor, patient) is represented by its control cells, which a
context-OOD split shows the model for every context, held-out ones included: the control
pseudobulk mean, the per-gene dispersion and detection rate (from a bounded, seeded subsample
of at most :data:`MAX_CONTROL_CELLS` control cells per context), standardised per feature
over the training contexts and projected onto their principal axes (at most ``rank``): an
unseen context gets its own coordinates, never only a learned id.

Transfer of a perturbation ``p`` to context ``c*`` from its deltas ``d_c`` in training
contexts ``S`` (control means ``x_c``, ``x*`` for ``c*``). Candidates:

* ``mean`` — ``mean_c d_c`` (the base: what the closed-form ``T`` predictor always was);
* ``similar`` — ``Σ w_c d_c`` with ``w_c ∝ exp(−‖z_c − z*‖² / 2h²)`` over the control
  coordinates ``z`` (``h``: the median distance between training contexts);
* ``baseline`` — the response depends on the baseline state: each context's delta is read as
  a fold change of expression in linear space, ``ℓ_c = log((e^{x_c+d_c} − 1 + ε) /
  (e^{x_c} − 1 + ε))``, averaged with the ``similar`` weights and applied to the new
  baseline, ``d* = log(1 + max((e^{x*} − 1 + ε) e^{ℓ̄} − ε, 0)) − x*``: a gene that is not
  expressed in ``c*`` cannot go down, and a gene's response scales with its level there
  (``ε`` = :data:`FOLD_PSEUDOCOUNT`; only for non-negative, log1p-like data).

Do no harm: the candidate and its blend ``α`` (``T + α (C − T)``, ``α`` in [0, 1] from 0, the
base) are chosen leave-one-context-out on the training contexts (each training context's
deltas predicted from the other contexts only); a candidate is used only if it lowers the
out-of-fold squared error of ``mean``; with fewer than :data:`MIN_LOCO` out-of-fold
(group, context) cases nothing is used, and the reason is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo
    from perturbfm.training import TrainingData

MAX_CONTROL_CELLS = 500  # control cells per context read for dispersion and detection (seeded subsample)
FOLD_PSEUDOCOUNT = 0.1  # ε of the baseline (fold-change) transfer, in expm1 units of the data
MIN_LOCO = 3  # fewest out-of-fold (group, context) cases that validate a transfer candidate
CANDIDATES = ("mean", "similar", "baseline")


@dataclass
class ContextProfiles:
    """Control-cell profiles of every context with control cells, in a low-rank space learned
    from the training contexts."""

    contexts: list[str]
    mean: np.ndarray  # [C, G] control pseudobulk means
    coords: np.ndarray  # [C, r] standardised (mean, log-dispersion, detection) projected on training axes
    nonnegative: bool  # every control mean and training pseudobulk >= 0 (the floor and fold transfer apply)
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.contexts)}

    def has(self, context: str) -> bool:
        return context in self.index

    def control_mean(self, context: str) -> np.ndarray:
        return self.mean[self.index[context]]

    def distance(self, a: str, b: str) -> float:
        return float(np.linalg.norm(self.coords[self.index[a]] - self.coords[self.index[b]]))


def _control_dispersion(train: TrainingData, contexts: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per context, the variance and detection rate of each gene over a seeded subsample of at
    most :data:`MAX_CONTROL_CELLS` control cells (bounded memory whatever the number of cells)."""
    from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, dense_rows

    adata = train._adata  # noqa: SLF001 - TrainingData exposes control cells only densified in full
    obs = adata.obs
    is_ctrl = obs[CONTROL_COL].to_numpy(dtype=bool)
    ctx = obs[CONTEXT_COL].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    var = np.zeros((len(contexts), adata.n_vars))
    det = np.zeros((len(contexts), adata.n_vars))
    for i, c in enumerate(contexts):
        rows = np.flatnonzero(is_ctrl & (ctx == c))
        if rows.size > MAX_CONTROL_CELLS:
            rows = np.sort(rng.choice(rows, MAX_CONTROL_CELLS, replace=False))
        if rows.size == 0:
            continue
        mask = np.zeros(adata.n_obs, bool)
        mask[rows] = True
        x = dense_rows(adata, mask)
        var[i] = x.var(axis=0, ddof=1) if len(x) > 1 else 0.0
        det[i] = (x > 0).mean(axis=0)
    return var, det


def context_profiles(train: TrainingData, fit_contexts: Sequence[str], *, rank: int = 8, seed: int = 0,
                     ) -> ContextProfiles:
    """The profiles of every context with control cells; axes learned from ``fit_contexts``."""
    ctrl = train.control
    contexts = [c for c in ctrl.contexts if ctrl.has(c)]
    mean = np.stack([ctrl.mean(c) for c in contexts]) if contexts else np.zeros((0, len(train.genes)))
    var, det = _control_dispersion(train, contexts, seed)
    feats = np.hstack([mean, np.log1p(np.maximum(var, 0.0)), det])
    fit = [i for i, c in enumerate(contexts) if c in set(fit_contexts)] or list(range(len(contexts)))
    mu = feats[fit].mean(axis=0)
    sd = feats[fit].std(axis=0)
    z = (feats - mu) / np.where(sd > 1e-8, sd, 1.0)
    z[:, sd <= 1e-8] = 0.0
    k = max(0, min(rank, len(fit) - 1))
    if k:
        _, _, vt = np.linalg.svd(z[fit] - z[fit].mean(axis=0), full_matrices=False)
        coords = (z - z[fit].mean(axis=0)) @ vt[:k].T
    else:
        coords = np.zeros((len(contexts), 1))
    nonneg = bool(mean.size == 0 or mean.min() >= 0)
    if nonneg and train.groups:
        nonneg = bool(np.nanmin(train.group_means()) >= 0)
    return ContextProfiles(contexts, mean, coords, nonneg)


# ------------------------------------------------------------------ candidates
def _weights(prof: ContextProfiles, source: Sequence[str], target: str) -> np.ndarray:
    """Similarity weights of the source contexts for ``target`` (uniform where undefined)."""
    if len(source) < 2 or not prof.has(target) or not all(prof.has(c) for c in source):
        return np.full(len(source), 1.0 / max(len(source), 1))
    d = np.array([prof.distance(c, target) for c in source])
    pair = [prof.distance(a, b) for i, a in enumerate(source) for b in source[i + 1:]]
    h = float(np.median(pair)) if pair else 0.0
    if h <= 1e-12:
        return np.full(len(source), 1.0 / len(source))
    w = np.exp(-0.5 * (d / h) ** 2)
    return w / w.sum()


def candidates(prof: ContextProfiles, source: Sequence[str], deltas: np.ndarray, target: str,
               ) -> dict[str, np.ndarray]:
    """Every transfer candidate for ``target`` from ``deltas`` ``[m, G]`` measured in ``source``."""
    out = {"mean": deltas.mean(axis=0)}
    if not prof.has(target):
        return out
    w = _weights(prof, source, target)
    out["similar"] = w @ deltas
    if prof.nonnegative and all(prof.has(c) for c in source):
        eps = FOLD_PSEUDOCOUNT
        xs = np.stack([prof.control_mean(c) for c in source])
        lin0 = np.expm1(np.clip(xs, 0, 30)) + eps
        lin1 = np.expm1(np.clip(xs + deltas, 0, 30)) + eps
        lfc = w @ np.log(lin1 / lin0)
        xt = prof.control_mean(target)
        new = np.maximum((np.expm1(np.clip(xt, 0, 30)) + eps) * np.exp(lfc) - eps, 0.0)
        out["baseline"] = np.log1p(new) - xt
    return out


@dataclass
class ContextTransfer:
    """The chosen transfer candidate and blend, with what the leave-one-context-out check found."""

    prof: ContextProfiles
    choice: str = "mean"
    alpha: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.choice != "mean" and self.alpha > 0

    def transfer(self, source: Sequence[str], deltas: np.ndarray, target: str) -> np.ndarray:
        """The perturbation's delta in ``target`` from its ``deltas`` in ``source``."""
        cand = candidates(self.prof, source, deltas, target)
        base = cand["mean"]
        if not self.active or self.choice not in cand:
            return base
        return base + self.alpha * (cand[self.choice] - base)


def _ls_alpha(diff: np.ndarray, resid: np.ndarray) -> float:
    den = float((diff * diff).sum())
    return float(np.clip((diff * resid).sum() / den, 0.0, 1.0)) if den > 1e-12 else 0.0


def fit_transfer(prof: ContextProfiles, groups: Sequence[GroupInfo], deltas: np.ndarray) -> ContextTransfer:
    """Choose the candidate and blend leave-one-context-out (see the module docstring)."""
    by_pert: dict[str, list[tuple[str, np.ndarray]]] = {}
    for g, d in zip(groups, deltas):
        by_pert.setdefault(g.perturbation, []).append((g.context, d))
    rows: dict[str, list[np.ndarray]] = {k: [] for k in CANDIDATES}
    truth: list[np.ndarray] = []
    for items in by_pert.values():
        ctxs = [c for c, _ in items]
        if len(set(ctxs)) < 2:
            continue
        for c, d in items:
            src = [(s, x) for s, x in items if s != c]
            cand = candidates(prof, [s for s, _ in src], np.stack([x for _, x in src]), c)
            truth.append(d)
            for k in CANDIDATES:
                rows[k].append(cand.get(k, cand["mean"]))
    n = len(truth)
    if n < MIN_LOCO:
        return ContextTransfer(prof, report={
            "applied": False, "n_out_of_fold": n,
            "reason": f"{n} leave-one-context-out case(s) (a perturbation measured in >= 2 training contexts); "
                      f"needs >= {MIN_LOCO}: the plain mean over contexts is used"})
    t = np.stack(truth)
    base = np.stack(rows["mean"])
    err_base = float(((t - base) ** 2).sum())
    scores: dict[str, dict[str, float]] = {"mean": {"sse": err_base, "alpha": 0.0}}
    best, best_err, best_a = "mean", err_base, 0.0
    for k in CANDIDATES[1:]:
        cmat = np.stack(rows[k])
        a = _ls_alpha(cmat - base, t - base)
        err = float(((t - base - a * (cmat - base)) ** 2).sum())
        scores[k] = {"sse": err, "alpha": round(a, 6)}
        if err < best_err - 1e-12 and a > 0:
            best, best_err, best_a = k, err, a
    applied = best != "mean"
    reason = (f"{best} (alpha {best_a:.3f}) lowers the leave-one-context-out squared error from {err_base:.4g} to "
              f"{best_err:.4g}" if applied else "no candidate beats the plain mean over contexts out of fold")
    return ContextTransfer(prof, best, best_a if applied else 0.0, report={
        "applied": applied, "choice": best, "alpha": best_a if applied else 0.0, "n_out_of_fold": n,
        "loco_sse": scores, "reason": reason})
