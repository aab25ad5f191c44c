"""Vectorised distances between sets of cells, used by the distribution metrics.

* :func:`pairwise_sq_euclidean` / :func:`pairwise_euclidean`: all pairwise
  distances through one (batched) GEMM, ``||x||^2 + ||y||^2 - 2 x y^T`` clipped at
  0, after centring both sets on their joint mean (translation-invariant, and it
  limits the cancellation of the expansion).
* :func:`edistance`: the energy distance ``2 E||X-Y|| - E||X-X'|| - E||Y-Y'||``.
* :func:`sinkhorn`: entropic optimal transport between two point clouds (uniform
  weights, squared-Euclidean cost), returning ``<P, C>`` as POT's ``sinkhorn2``.
* :func:`gaussian_sym_kl`: per-gene symmetric KL divergence of Gaussian fits.

An optional ``device`` (e.g. ``"cuda"``) runs the distance GEMM with torch when
torch is importable; otherwise everything is numpy. torch is imported lazily.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

#: relative scale of the entropic regularisation: eps = EPS_REL * mean cost.
EPS_REL = 0.05
#: Gaussian fits use sigma = std + STD_EPS.
STD_EPS = 1e-8
#: Sinkhorn scalings are absorbed into the log potentials beyond exp(+-ABSORB).
ABSORB = 50.0


def _torch_or_none() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def pairwise_sq_euclidean(x: np.ndarray, y: np.ndarray, *, device: str | None = None,
                          center: bool = True) -> np.ndarray:
    """All pairwise squared Euclidean distances between the rows of ``x`` and ``y``.

    Args:
        x: ``[n, d]`` or batched ``[b, n, d]``.
        y: ``[m, d]`` or batched ``[b, m, d]`` (same batch shape as ``x``).
        device: torch device for the GEMM (used only when torch is importable;
            otherwise numpy, silently, since the result is the same).
        center: subtract the joint mean of ``x`` and ``y`` first (does not change
            the distances; reduces rounding).

    Returns:
        ``[n, m]`` (or ``[b, n, m]``) float64 distances, clipped at 0.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[-1] != y.shape[-1] or x.shape[:-2] != y.shape[:-2]:
        raise ValueError(f"incompatible shapes {x.shape} and {y.shape}")
    if center and x.shape[-2] + y.shape[-2] > 0:
        mu = np.concatenate([x, y], axis=-2).mean(axis=-2, keepdims=True)
        x, y = x - mu, y - mu
    torch = _torch_or_none() if device is not None else None
    if torch is not None:
        tx = torch.as_tensor(x, dtype=torch.float64, device=device)
        ty = torch.as_tensor(y, dtype=torch.float64, device=device)
        d = ((tx * tx).sum(-1)[..., :, None] + (ty * ty).sum(-1)[..., None, :]
             - 2.0 * torch.matmul(tx, ty.transpose(-1, -2)))
        return d.clamp_min_(0.0).cpu().numpy()
    d = np.einsum("...ij,...ij->...i", x, x)[..., :, None] + np.einsum("...ij,...ij->...i", y, y)[..., None, :]
    d -= 2.0 * np.matmul(x, np.swapaxes(y, -1, -2))
    return np.maximum(d, 0.0, out=d)


def pairwise_euclidean(x: np.ndarray, y: np.ndarray, *, device: str | None = None) -> np.ndarray:
    """All pairwise Euclidean distances (``sqrt`` of :func:`pairwise_sq_euclidean`)."""
    return np.sqrt(pairwise_sq_euclidean(x, y, device=device))


def _within_mean(d: np.ndarray, within: str) -> float:
    n = d.shape[0]
    np.fill_diagonal(d, 0.0)  # a point's distance to itself is exactly 0 (the GEMM leaves rounding)
    if within == "all":
        return float(d.sum() / (n * n))
    if n < 2:
        raise ValueError(f"within-set mean over distinct pairs needs >= 2 points, got {n}")
    return float(d.sum() / (n * (n - 1)))


def edistance(x: np.ndarray, y: np.ndarray, *, squared: bool = False,
              within: Literal["distinct", "all"] = "distinct", device: str | None = None) -> float:
    """Energy distance ``2 E||X-Y|| - E||X-X'|| - E||Y-Y'||`` between two cell sets.

    Args:
        x: ``[n, d]`` cells; y: ``[m, d]`` cells.
        squared: use squared Euclidean distances (scperturb's convention) instead
            of Euclidean (pertpy's / PerturbFM's ``edistance`` key).
        within: ``"distinct"`` averages the within-set terms over the ``n(n-1)``
            distinct pairs (pertpy >= 1.0.4, scperturb ``sample_correct=True``);
            ``"all"`` over all ``n^2`` pairs including the zero diagonal.
        device: optional torch device for the GEMM.

    Returns:
        The statistic. With ``squared=True`` it equals, exactly,
        ``2||mu_X - mu_Y||^2`` for ``within="all"`` and
        ``2||mu_X - mu_Y||^2 - 2 tr(S_X)/n - 2 tr(S_Y)/m`` (``S`` the unbiased
        covariances) for ``within="distinct"``.

    Raises:
        ValueError: empty sets, or ``within="distinct"`` with fewer than 2 cells
            on a side (the within-set term is undefined).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("E-distance of an empty cell set is undefined")
    if within not in ("distinct", "all"):
        raise ValueError(f"within must be 'distinct' or 'all', got {within!r}")
    dist = pairwise_sq_euclidean if squared else pairwise_euclidean
    cross = float(dist(x, y, device=device).mean())
    wx = _within_mean(dist(x, x, device=device), within)
    wy = _within_mean(dist(y, y, device=device), within)
    return 2.0 * cross - wx - wy


def edistance_batch(xs: np.ndarray, ys: np.ndarray, *, squared: bool = False,
                    within: Literal["distinct", "all"] = "distinct", device: str | None = None) -> np.ndarray:
    """:func:`edistance` of many equally sized pairs of sets at once (batched GEMMs).

    Args:
        xs: ``[b, n, d]``; ys: ``[b, m, d]``.

    Returns:
        ``[b]`` statistics, equal to ``edistance(xs[i], ys[i], ...)`` for every ``i``.
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    n, m = xs.shape[1], ys.shape[1]
    if within not in ("distinct", "all"):
        raise ValueError(f"within must be 'distinct' or 'all', got {within!r}")
    if n == 0 or m == 0 or (within == "distinct" and min(n, m) < 2):
        raise ValueError(f"E-distance undefined for sets of {n} and {m} cells with within={within!r}")
    dist = pairwise_sq_euclidean if squared else pairwise_euclidean
    cross = dist(xs, ys, device=device).mean(axis=(1, 2))

    def w(z: np.ndarray) -> np.ndarray:
        d = dist(z, z, device=device)
        k = z.shape[1]
        d[:, np.arange(k), np.arange(k)] = 0.0
        return d.sum(axis=(1, 2)) / (k * (k - 1) if within == "distinct" else k * k)

    return 2.0 * cross - w(xs) - w(ys)


# ------------------------------------------------------------------ entropic OT
@dataclass
class SinkhornResult:
    """Outcome of :func:`sinkhorn`.

    Attributes:
        cost: transport cost ``<P, C>`` of the entropic plan (POT ``sinkhorn2``).
        converged: whether the marginal error fell below ``tol``.
        n_iter: iterations run.
        marginal_error: L1 violation of the row marginal at the end (the column
            marginal is exact after each column update).
        eps: the regularisation used (absolute).
    """

    cost: float
    converged: bool
    n_iter: int
    marginal_error: float
    eps: float

    def check(self) -> SinkhornResult:
        """Return self, or raise :class:`SinkhornConvergenceError` if not converged."""
        if not self.converged:
            raise SinkhornConvergenceError(
                f"Sinkhorn did not converge in {self.n_iter} iterations "
                f"(marginal error {self.marginal_error:.3g}, eps {self.eps:.3g})")
        return self


class SinkhornConvergenceError(RuntimeError):
    """Sinkhorn stopped at ``max_iter`` without reaching the tolerance."""


def _lse(z: np.ndarray, axis: int) -> np.ndarray:
    zmax = np.max(z, axis=axis, keepdims=True)
    zmax = np.where(np.isfinite(zmax), zmax, 0.0)
    return np.squeeze(zmax, axis=axis) + np.log(np.sum(np.exp(z - zmax), axis=axis))


def sinkhorn(x: np.ndarray, y: np.ndarray, *, eps_rel: float = EPS_REL, eps: float | None = None,
             tol: float = 1e-9, max_iter: int = 10_000, check_every: int = 10,
             device: str | None = None, cost: np.ndarray | None = None,
             method: Literal["stabilized", "log"] = "stabilized") -> SinkhornResult:
    """Entropic OT between the point clouds ``x`` and ``y``, uniform weights.

    The cost is the squared Euclidean distance; the regularisation is
    ``eps = eps_rel * mean(C)`` (the ott-jax ``PointCloud`` relative-epsilon
    convention) unless ``eps`` is given. Iterations are Sinkhorn's in the log
    domain: dual potentials ``f, g`` are kept in log form and the scalings of
    the inner matrix-vector iterations are absorbed into them whenever they leave
    ``[exp(-50), exp(50)]`` (log-stabilised Sinkhorn, Schmitzer 2019), so no
    kernel entry over- or underflows; where a non-finite value appears anyway the
    iterations continue with exact log-sum-exp updates.

    Args:
        x: ``[n, d]``; y: ``[m, d]``.
        eps_rel: relative regularisation (ignored when ``eps`` is given).
        eps: absolute regularisation.
        tol: stop when the L1 row-marginal error is below this.
        max_iter: maximum number of (row + column) updates.
        check_every: test convergence every this many iterations.
        device: optional torch device for the cost GEMM.
        cost: precomputed ``[n, m]`` cost (then ``x``/``y`` are not read).
        method: ``"stabilized"`` (default, the absorption scheme above) or ``"log"``
            (exact log-sum-exp updates throughout: slower, same fixed point).

    Returns:
        :class:`SinkhornResult`; ``converged`` is False when ``max_iter`` was hit
        (never silently: callers report it, or call ``.check()``).
    """
    if method not in ("stabilized", "log"):
        raise ValueError(f"method must be 'stabilized' or 'log', got {method!r}")
    C = pairwise_sq_euclidean(x, y, device=device) if cost is None else np.asarray(cost, dtype=np.float64)
    n, m = C.shape
    if n == 0 or m == 0:
        raise ValueError("optimal transport of an empty cell set is undefined")
    mean_c = float(C.mean())
    if eps is None:
        eps = eps_rel * mean_c
    if mean_c == 0.0:  # identical single points everywhere: zero cost, any plan
        return SinkhornResult(0.0, True, 0, 0.0, float(eps))
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    log_a, log_b = -math.log(n), -math.log(m)
    # double c-transform start: every row and column of the kernel has an entry 1
    f = C.min(axis=1)
    g = (C - f[:, None]).min(axis=0)
    K = np.exp((f[:, None] + g[None, :] - C) / eps)
    u, v = np.ones(n), np.ones(m)
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    log_mode = method == "log"
    err, it = np.inf, 0
    while it < max_iter:
        it += 1
        if log_mode:
            f = eps * (log_a - _lse((g[None, :] - C) / eps, axis=1))
            g = eps * (log_b - _lse((f[:, None] - C) / eps, axis=0))
        else:
            u = a / (K @ v)
            v = b / (K.T @ u)
            if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
                log_mode = True  # fall back to exact log-sum-exp updates from the last potentials
                continue
            if np.max(np.abs(np.log(u))) > ABSORB or np.max(np.abs(np.log(v))) > ABSORB:
                f, g = f + eps * np.log(u), g + eps * np.log(v)
                u, v = np.ones(n), np.ones(m)
                K = np.exp((f[:, None] + g[None, :] - C) / eps)
        if it % check_every == 0 or it == max_iter:
            if log_mode:
                row = np.exp((f[:, None] + g[None, :] - C) / eps).sum(axis=1)
            else:
                row = u * (K @ v)
            err = float(np.abs(row - a).sum())
            if err < tol:
                break
    if log_mode:
        P = np.exp((f[:, None] + g[None, :] - C) / eps)
    else:
        P = u[:, None] * K * v[None, :]
    return SinkhornResult(float(np.sum(P * C)), bool(err < tol), it, err, float(eps))


# ------------------------------------------------------------------ Gaussian KL
def gaussian_sym_kl(x: np.ndarray, y: np.ndarray, *, std_eps: float = STD_EPS) -> np.ndarray:
    """Per-gene symmetric KL divergence ``KL(N_x || N_y) + KL(N_y || N_x)``.

    Each gene of each set is fitted by a Gaussian with the sample mean and
    ``sigma = std + std_eps`` (population std, ``ddof=0``). The log terms of the
    two directions cancel::

        (s_x^2 + d^2) / (2 s_y^2) + (s_y^2 + d^2) / (2 s_x^2) - 1,  d = mu_x - mu_y

    Args:
        x: ``[n, G]`` cells; y: ``[m, G]`` cells.

    Returns:
        ``[G]`` divergences (finite for finite inputs; very large where a gene is
        constant in one set and its means differ).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("Gaussian fit of an empty cell set is undefined")
    sx2 = (x.std(axis=0) + std_eps) ** 2
    sy2 = (y.std(axis=0) + std_eps) ** 2
    d2 = (x.mean(axis=0) - y.mean(axis=0)) ** 2
    return (sx2 + d2) / (2.0 * sy2) + (sy2 + d2) / (2.0 * sx2) - 1.0


def warn_not_converged(n_groups: int) -> None:
    """Emit the warning that accompanies groups whose Sinkhorn did not converge."""
    warnings.warn(f"Sinkhorn did not converge for {n_groups} group(s); see the metric's extra",
                  RuntimeWarning, stacklevel=2)


# ------------------------------------------------------------------ parity with peers
def _peer_version(dist: str, module: str) -> str | None:
    import importlib
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - not importable = not installed
            return None
        return "unknown version"


def _parity_sets(adata: Any, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(group id, group cells, control cells of its context) for every perturbation group,
    both sides seeded subsamples of at most 60 cells (keeps the peers' runtime small)."""
    import scipy.sparse as sp
    from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, ensure_group_column

    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    X = np.asarray(X, dtype=np.float64)
    gid = ensure_group_column(adata).astype(str).to_numpy()
    is_ctrl = adata.obs[CONTROL_COL].to_numpy(dtype=bool)
    ctx = adata.obs[CONTEXT_COL].astype(str).to_numpy()
    rng = np.random.default_rng([seed, 11])
    out = []
    for g in sorted(set(gid[~is_ctrl])):
        rows = np.flatnonzero(gid == g)
        crow = np.flatnonzero(is_ctrl & (ctx == ctx[rows[0]]))
        rows = np.sort(rng.choice(rows, min(60, rows.size), replace=False))
        crow = np.sort(rng.choice(crow, min(60, crow.size), replace=False))
        out.append((g, X[rows], X[crow]))
    return out


def parity_rows(adata: Any, seed: int = 0, tol: float | None = None) -> list[Any]:
    """Parity of the distribution metrics with their peers on ``adata`` (group cells vs
    the context's control cells, every perturbation group).

    * ``edistance_squared``: :func:`edistance` (``squared=True``, ``within="distinct"``) vs
      ``scperturb.edist(dist="sqeuclidean", sample_correct=True)``;
    * ``wasserstein``: :func:`sinkhorn` (eps = EPS_REL x mean cost, tol 1e-9) vs POT
      ``ot.sinkhorn2`` with the same eps on ``ot.dist`` (squared Euclidean).

    Returns :class:`perturbfm_metrics.parity.ParityRow` rows (``not installed`` where a
    peer is missing, ``error`` where it raised).
    """
    import os

    from perturbfm_metrics.parity import ERROR, NOT_INSTALLED, REL_TOL, ParityRow, _compare

    tol = REL_TOL if tol is None else tol
    sets = _parity_sets(adata, seed)
    rows: list[Any] = []

    def row(metric: str, ours: dict[str, float], peer: dict[str, float], pkg: str, note: str) -> Any:
        return _compare(metric, ours, peer, pkg, tol, f"vs control cells; {note}")

    # E-distance (squared, scperturb convention)
    ver = _peer_version("scperturb", "scperturb")
    metric = "distances.edistance_squared"
    if ver is None:
        rows.append(ParityRow(metric, None, None, "scperturb", None, None, tol, NOT_INSTALLED))
    else:
        try:
            import anndata as ad
            import pandas as pd
            import scperturb

            ours, peer = {}, {}
            for g, x, y in sets:
                ours[g] = edistance(x, y, squared=True, within="distinct")
                obs = pd.DataFrame({"g": ["x"] * len(x) + ["y"] * len(y)},
                                   index=[str(i) for i in range(len(x) + len(y))])
                a = ad.AnnData(np.zeros((len(obs), 1)), obs=obs)
                a.obsm["cells"] = np.vstack([x, y])
                est = scperturb.edist(a, obs_key="g", obsm_key="cells", dist="sqeuclidean",
                                      sample_correct=True, n_jobs=1, verbose=False)
                peer[g] = float(est.loc["x", "y"])
            rows.append(row(metric, ours, peer, f"scperturb {ver}", "sqeuclidean, sample_correct=True"))
        except Exception as exc:  # noqa: BLE001 - the peer failing is reported, not hidden
            rows.append(ParityRow(metric, None, None, f"scperturb {ver}", None, None, tol, ERROR,
                                  f"{type(exc).__name__}: {exc}"))
    # entropic OT (POT sinkhorn2 at the same eps)
    ver = _peer_version("POT", "ot")
    metric = "distances.wasserstein"
    if ver is None:
        rows.append(ParityRow(metric, None, None, "POT", None, None, tol, NOT_INSTALLED))
    else:
        try:
            for k in ("POT_BACKEND_DISABLE_PYTORCH", "POT_BACKEND_DISABLE_JAX", "POT_BACKEND_DISABLE_TENSORFLOW",
                      "POT_BACKEND_DISABLE_CUPY"):
                os.environ.setdefault(k, "1")
            import ot

            ours, peer = {}, {}
            for g, x, y in sets:
                res = sinkhorn(x, y, tol=1e-12, max_iter=100_000).check()
                ours[g] = res.cost
                C = ot.dist(x, y)
                a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
                peer[g] = float(ot.sinkhorn2(a, b, C, res.eps, method="sinkhorn_log", numItermax=100_000,
                                             stopThr=1e-12))
            rows.append(row(metric, ours, peer, f"POT {ver}",
                            f"eps = {EPS_REL} x mean cost, sinkhorn_log, stopThr 1e-12"))
        except Exception as exc:  # noqa: BLE001
            rows.append(ParityRow(metric, None, None, f"POT {ver}", None, None, tol, ERROR,
                                  f"{type(exc).__name__}: {exc}"))
    return rows
