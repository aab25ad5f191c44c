"""The steps of :meth:`CGIOModel.fit <perturbfm_models.cgio.wrapper.CGIOModel.fit>`, one job each.

``fit`` runs them in this order (the order matters: torch's seeded generator is drawn by every
net built, so building and training happen exactly in this sequence):

1. :func:`collect_fit_data` — the fitting groups (training, then validation) and their deltas;
2. graphs and the node universe (in the model, which keeps them for predict-time extension);
3. :func:`stacked_se2`, :func:`residual_target` — the closed-form base and the network's target;
4. :func:`output_init`, :func:`net_spec`, :func:`net_factory` — the low-rank head and the nets;
5. :func:`train_members` — K-fold cross-fitting (:func:`cross_fit`, then :func:`calibrate` on
   the out-of-fold predictions), or one net with early stopping (:func:`early_stopping_split`,
   :func:`train_single`) and an optional refit;
6. :func:`fit_diagnostics` — what the run records about the fit.

This module imports torch: it is imported only once ``fit`` has checked that torch is available.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import graphs as G
from . import residual as R
from .config import CGIOConfig
from .model import CGIONet, NetSpec
from .train import Batch, Curve, train_net

if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo
    from perturbfm.training import TrainingData

Shrink = dict[str, dict[str, Any]]


# ------------------------------------------------------------------ data
@dataclass
class FitData:
    """The groups the model is fitted on: the training groups, then the validation groups."""

    groups: list[GroupInfo]
    deltas: np.ndarray  # [len(groups), n_genes]
    n_train: int  # the first ``n_train`` groups are training groups
    transfer: Any = None  # the fitted :class:`.contexts.ContextTransfer` (None: plain mean over contexts)

    @property
    def has_val(self) -> bool:
        """Whether validation groups follow the training groups."""
        return len(self.groups) > self.n_train


def _with_val(val: TrainingData | None) -> bool:
    return val is not None and bool(val.groups)


def collect_fit_data(train: TrainingData, val: TrainingData | None) -> FitData:
    """Training and validation groups together, with their pseudobulk deltas stacked in that order."""
    groups = list(train.groups) + (list(val.groups) if val is not None else [])
    deltas = np.vstack([train.deltas()] + ([val.deltas()] if val is not None and _with_val(val) else []))
    return FitData(groups, deltas, len(train.groups))


def stacked_se2(train: TrainingData, val: TrainingData | None) -> np.ndarray:
    """The squared standard errors of the deltas of :func:`collect_fit_data`, in the same order."""
    return np.vstack([train.mean_se2()] + ([val.mean_se2()] if val is not None and _with_val(val) else []))


def time_scale(groups: Sequence[GroupInfo]) -> float:
    """The largest absolute time of the groups (1 when there is none), to scale the time covariate."""
    times = [abs(g.time) for g in groups if g.time is not None]
    return max(times) if times and max(times) > 0 else 1.0


def choose_device(device: str) -> torch.device:
    """``cuda`` when asked for, or on ``auto`` when available; else ``cpu``."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


# ------------------------------------------------------------------ residual design and the nets
def residual_target(index: R.BaseIndex, data: FitData, residual: bool) -> tuple[list[str], np.ndarray]:
    """The base kind of each fitting group and the network's target: the delta minus the
    closed-form base (:mod:`.residual`), or the delta itself with ``residual`` off."""
    base, kinds = index.bases(data.groups, data.deltas.shape[1])
    if not residual:
        base = np.zeros_like(data.deltas)
    return kinds, data.deltas - base


def _inv_softplus(v: np.ndarray) -> np.ndarray:
    v = np.maximum(v, 1e-6)
    return np.where(v > 20, v, np.log(np.expm1(v)))


def output_init(target: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial low-rank basis (the targets' principal directions, scaled by their singular
    values), bias (the targets' mean) and log-variance (inverse softplus of their variance)."""
    centred = target - target.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    basis = np.zeros((target.shape[1], rank))
    k = min(rank, vt.shape[0])
    basis[:, :k] = vt[:k].T * (s[:k] / np.sqrt(max(len(target), 1)))
    return basis, target.mean(axis=0), _inv_softplus(target.var(axis=0) + 1e-4)


def net_spec(cfg: CGIOConfig, *, n_nodes: int, measured: np.ndarray, n_contexts: int, n_graphs: int) -> NetSpec:
    """The network's sizes and switches from the configuration and the fitted universe."""
    return NetSpec(n_nodes=n_nodes, measured_idx=measured, n_contexts=n_contexts, n_graphs=n_graphs,
                   hidden=cfg.hidden, rank=cfg.rank, steps=cfg.steps, use_graphs=cfg.use_graphs and n_graphs > 0,
                   gating=cfg.gating, context_conditioning=cfg.context_conditioning, dropout=cfg.dropout)


def net_factory(spec: NetSpec, adjs: list[Any], basis: np.ndarray, bias: np.ndarray, logvar: np.ndarray,
                device: torch.device) -> Callable[[], CGIONet]:
    """A builder of fresh nets (each draws its initial weights from torch's generator)."""

    def make() -> CGIONet:
        return CGIONet(spec, adjs, basis, bias, logvar, device).to(device)

    return make


# ------------------------------------------------------------------ training
NOT_VALIDATED = "not validated out of fold"


def default_shrink(reason: str = NOT_VALIDATED) -> Shrink:
    """The base alone for every base kind: correction gate ``s = 0``, no shrinkage (``λ = 1``);
    a correction that was not validated out of fold is never applied."""
    return {k: {"s": 0.0, "lambda": 1.0, "n": 0, "applied": False, "reason": reason} for k in R.KINDS}


@dataclass
class Members:
    """The trained nets (averaged at predict time) and what was fitted with them."""

    nets: list[CGIONet]
    curve: Curve  # the first member's training curve
    how: str  # how early stopping was done, for the diagnostics
    refit: Curve | None = None
    shrink: Shrink = field(default_factory=default_shrink)
    var_scale: dict[str, np.ndarray] = field(default_factory=dict)
    self_effect: dict[str, dict[str, float]] = field(default_factory=dict)


def train_kwargs(cfg: CGIOConfig, n_contexts: int) -> dict[str, Any]:
    """The keyword arguments of :func:`train_net` shared by every member."""
    return dict(lr=cfg.lr, weight_decay=cfg.weight_decay, patience=cfg.patience,
                context_dropout=cfg.context_dropout, unknown_ctx=n_contexts, seed=cfg.seed)


def train_members(make: Callable[[], CGIONet], full: Batch, data: FitData, cfg: CGIOConfig,
                  se2: np.ndarray | None, gene_pos: dict[str, int], n_contexts: int) -> Members:
    """Cross-fitting: ``cv_folds`` folds when there are at least ``2 × cv_folds`` groups, else
    leave-one-group-out (at least 3 groups); the correction of each base kind is then gated
    on its out-of-fold predictions (:func:`calibrate`). With fewer groups, or ``cv_folds`` 0,
    one net is trained (early stopping where possible) but its correction is never applied:
    nothing validated it (``s = 0`` for every kind, with the reason)."""
    kw = train_kwargs(cfg, n_contexts)
    n = len(data.groups)
    if cfg.cv_folds >= 2 and n >= 3:
        loo = n < 2 * cfg.cv_folds
        members, oof = cross_fit(make, full, data, cfg, se2, kw, leave_one_out=loo)
        calibrate(members, oof, cfg, gene_pos)
        return members
    tr_idx, va_idx, how = early_stopping_split(data, cfg)
    members = train_single(make, full, tr_idx, va_idx, how, cfg, kw)
    why = ("cv_folds is 0: no out-of-fold check" if cfg.cv_folds < 2 else
           f"only {n} training group(s): too few to cross-fit (needs >= 3)")
    members.shrink = default_shrink(f"network correction off: {why}")
    return members


@dataclass
class OutOfFold:
    """The members' predictions on their held-out folds, in fold order."""

    groups: list[GroupInfo] = field(default_factory=list)
    base: list[np.ndarray] = field(default_factory=list)
    corr: list[np.ndarray] = field(default_factory=list)
    var: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)


def cv_folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` sorted folds of a seeded permutation of ``range(n)``."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, k)]


def cross_fit(make: Callable[[], CGIONet], full: Batch, data: FitData, cfg: CGIOConfig,
              se2: np.ndarray | None, kw: dict[str, Any], leave_one_out: bool = False,
              ) -> tuple[Members, OutOfFold]:
    """K-fold (or leave-one-group-out) cross-fitting: each member early-stops on its held-out
    fold; its out-of-fold correction is recorded with the base computed from that fold's
    training groups only."""
    n_fit, n_genes = len(data.groups), data.deltas.shape[1]
    nets, curves, oof = [], [], OutOfFold()
    folds = [np.array([i]) for i in range(n_fit)] if leave_one_out else cv_folds(n_fit, cfg.cv_folds, cfg.seed)
    for fi, va_idx in enumerate(folds):
        tr_idx = np.setdiff1d(np.arange(n_fit), va_idx)
        net_k, curve_k = train_net(make, full.subset(tr_idx), full.subset(va_idx), epochs=cfg.epochs,
                                   **{**kw, "seed": cfg.seed + fi})
        nets.append(net_k)
        curves.append(curve_k)
        sub = R.BaseIndex([data.groups[i] for i in tr_idx], data.deltas[tr_idx], use_additive=cfg.additive_prior,
                          stack=cfg.stacking, se2=None if se2 is None else se2[tr_idx], transfer=data.transfer)
        va_groups = [data.groups[i] for i in va_idx]
        b, kinds = sub.bases(va_groups, n_genes)
        if not cfg.residual:
            b = np.zeros_like(b)
        with torch.no_grad():
            sv = full.subset(va_idx)
            c, cv_, _ = (t.cpu().numpy().astype(np.float64) for t in net_k(sv.x, sv.ctx, sv.cov, sv.sig))
        oof.groups += va_groups
        oof.base.append(b)
        oof.corr.append(c)
        oof.var.append(cv_)
        oof.truth.append(data.deltas[va_idx])
        oof.kinds += kinds
    how = ("leave-one-group-out cross-fitting (fewer than 2 x cv_folds groups; members averaged)" if leave_one_out
           else f"{cfg.cv_folds}-fold cross-fitting over the training groups (members averaged)")
    return Members(nets, curves[0], how), oof


def calibrate(members: Members, oof: OutOfFold, cfg: CGIOConfig, gene_pos: dict[str, int]) -> None:
    """From the out-of-fold predictions: the per-kind gate ``s`` and shrinkage ``λ``
    (``shrinkage``), then the self-effect (``self_effect``) and the variance scale, both on
    the out-of-fold error of the final prediction (with ``residual``)."""
    base, corr, truth = np.vstack(oof.base), np.vstack(oof.corr), np.vstack(oof.truth)
    members.shrink = R.fit_shrinkage(base, corr, truth, oof.kinds, lam_fit=cfg.shrinkage)
    if not cfg.residual:
        return
    sh = [members.shrink[k] for k in oof.kinds]
    lam = np.array([x["lambda"] for x in sh])[:, None]
    s_ = np.array([x["s"] for x in sh])[:, None]
    pred = lam * (base + s_ * corr)
    if cfg.self_effect:  # the perturbed genes' own change, from the out-of-fold error there
        members.self_effect = R.fit_self_effect(pred, truth, oof.groups, oof.kinds, gene_pos)
        pred = add_self_effect(pred, oof.groups, oof.kinds, members.self_effect, gene_pos)
    members.var_scale = R.fit_variance_scale(pred, np.vstack(oof.var), truth, oof.kinds)


def early_stopping_split(data: FitData, cfg: CGIOConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and early-stopping indices: the given validation groups, else a seeded
    ``val_fraction`` slice of the training groups (at least 5 groups), else none."""
    n_tr = data.n_train
    if data.has_val:
        return np.arange(n_tr), np.arange(n_tr, len(data.groups)), "given val set"
    if n_tr >= 5 and cfg.val_fraction > 0:
        perm = np.random.default_rng(cfg.seed).permutation(n_tr)
        n_va = max(1, int(round(cfg.val_fraction * n_tr)))
        return np.sort(perm[n_va:]), np.sort(perm[:n_va]), "held-out slice of training groups"
    return np.arange(n_tr), np.zeros(0, np.int64), "none (too few groups)"


def train_single(make: Callable[[], CGIONet], full: Batch, tr_idx: np.ndarray, va_idx: np.ndarray, how: str,
                 cfg: CGIOConfig, kw: dict[str, Any]) -> Members:
    """One net, early-stopped on ``va_idx`` when it is not empty; with ``refit_full`` a fresh
    net is then trained on every group for the best epoch count."""
    net, curve = train_net(make, full.subset(tr_idx), full.subset(va_idx) if va_idx.size else None,
                           epochs=cfg.epochs, **kw)
    refit = None
    if va_idx.size and cfg.refit_full:
        net, refit = train_net(make, full, None, epochs=max(curve.best_epoch, 1), **kw)
    return Members([net], curve, how, refit=refit)


# ------------------------------------------------------------------ self-effect
def self_effect_for(self_effect: dict[str, dict[str, float]], gene_pos: dict[str, int], g: GroupInfo,
                    kind: str) -> tuple[dict[str, float] | None, list[str]]:
    """The context's fitted self-effect and the measured perturbed genes it applies to, for
    a group whose base kind carries no measurement of its perturbation (else ``None``)."""
    eff = self_effect.get(g.context)
    own = [x for x in g.genes if x in gene_pos] if getattr(g, "kind", None) in (None, "genetic") else []
    if eff is None or kind not in R.SELF_EFFECT_KINDS or not own:
        return None, []
    return eff, own


def add_self_effect(pred: np.ndarray, groups: Sequence[GroupInfo], kinds: Sequence[str],
                    self_effect: dict[str, dict[str, float]], gene_pos: dict[str, int]) -> np.ndarray:
    """``pred`` plus the context's ``κ`` at the genes :func:`self_effect_for` names."""
    out = np.array(pred, dtype=np.float64, copy=True)
    for i, (g, k) in enumerate(zip(groups, kinds)):
        eff, own = self_effect_for(self_effect, gene_pos, g, k)
        if eff is None:
            continue
        for x in own:
            out[i, gene_pos[x]] += eff["kappa"]
    return out


# ------------------------------------------------------------------ diagnostics
def fit_diagnostics(cfg: CGIOConfig, *, n_nodes: int, n_measured: int, n_trained_genes: int,
                    graphs: Sequence[G.GeneGraph], kinds_fit: Sequence[str], index: R.BaseIndex,
                    members: Members) -> dict[str, Any]:
    """What the run records about the fit (the model adds gates, device and timing)."""
    return {
        "node_universe": {"n_nodes": n_nodes, "n_measured": n_measured, "n_perturbed_in_training": n_trained_genes,
                          "go_hops": cfg.go_hops if "go" in cfg.graphs else None, "max_nodes": cfg.max_nodes},
        "graphs": [dict(name=g.name, **g.provenance) for g in graphs],
        "switches": {"use_graphs": cfg.use_graphs, "graphs": cfg.graphs, "gating": cfg.gating,
                     "context_conditioning": cfg.context_conditioning, "additive_prior": cfg.additive_prior,
                     "residual": cfg.residual, "stacking": cfg.stacking, "denoise": cfg.denoise,
                     "self_effect": cfg.self_effect,
                     "cv_folds": cfg.cv_folds,
                     "shrinkage": cfg.shrinkage},
        "base_kinds_in_training": {k: list(kinds_fit).count(k) for k in R.KINDS},
        "base_weights": index.weights,
        "denoise_mean_factor_per_context": index.shrink_factors,
        "self_effect_per_context": members.self_effect,
        "shrinkage": members.shrink,
        "variance_calibration": {k: {"median_scale": float(np.median(v)), "min": float(v.min()),
                                     "max": float(v.max())} for k, v in members.var_scale.items()},
        "ensemble_members": len(members.nets),
        "early_stopping": members.how,
        "training_curve": members.curve.summary(),
        "refit_on_all_groups": members.refit.summary() if members.refit else None,
    }
