"""Vectorised distances between sets of cells, used by the distribution metrics.

* :func:`pairwise_sq_euclidean` / :func:`pairwise_euclidean`: all pairwise
  distances through one (batched) GEMM, ``||x||^2 + ||y||^2 - 2 x y^T`` clipped at
  0, after centring both sets on their joint mean (translation-invariant, and it
  limits the cancellation of the expansion).
* :func:`edistance`: the energy distance ``2 E||X-Y|| - E||X-X'|| - E||Y-Y'||``.
* :func:`sinkhorn`: entropic optimal transport between two point clouds (uniform
  weights, squared-Euclidean cost), returning ``<P, C>`` as POT's ``sinkhorn2``:
  POT's Sinkhorn solvers (stabilised, log-domain where the kernel underflows) with
  epsilon scaling by warm starts, then Newton steps on the dual where Sinkhorn's
  linear rate is too slow; convergence (iterations, final marginal error) is always
  reported, never assumed.
* :func:`gaussian_sym_kl`: per-gene symmetric KL divergence of Gaussian fits
  (sigma floored at :data:`KL_STD_FLOOR`).

An optional ``device`` (e.g. ``"cuda"``) runs the distance GEMM with torch when
torch is importable; otherwise everything is numpy. torch is imported lazily.
Parity with the peers (scperturb, POT) is checked by :mod:`perturbfm_metrics.parity`.

Length (over 400 lines on purpose): the distances share the centring, batching and
convergence bookkeeping defined here; parity checks live in :mod:`perturbfm_metrics.parity`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp

#: relative scale of the entropic regularisation: eps = EPS_REL * mean cost.
EPS_REL = 0.05
#: scPerturBench's Gaussian fits use sigma = std + STD_EPS (kept for reference; the kl key uses the floor).
STD_EPS = 1e-8
#: the kl key's Gaussian fits use sigma = max(std, KL_STD_FLOOR), in log1p units: about the quantisation
#: s.d. (step / sqrt(12)) of a one-UMI step of 0.35 log1p units (1 UMI in a cell of ~25,000 UMIs, CP10k).
KL_STD_FLOOR = 0.1
#: POT's stabilised Sinkhorn absorbs its scalings into the potentials when one exceeds this (POT's default,
#: 1e3, recomputes the kernel every few iterations; 1e20 ~ exp(46) keeps u K v far from overflow).
ABSORB_TAU = 1e20
#: epsilon scaling: levels mean(C) x EPS_SCALING_FACTOR^k above the target eps.
EPS_SCALING_FACTOR = 0.5
#: each epsilon-scaling level runs until this L1 marginal error, or EPS_LEVEL_MAX_ITER iterations.
EPS_LEVEL_TOL = 1e-3
EPS_LEVEL_MAX_ITER = 100
#: Sinkhorn iterations at the target eps before the Newton phase starts, and its step limit.
NEWTON_AFTER = 300
MAX_NEWTON = 30
#: Sinkhorn iterations at the target eps before a slow observed rate may hand over to Newton.
MIN_BEFORE_NEWTON = 30
#: with a Newton phase to hand over to, the target-eps iterations run in chunks of this many, the
#: observed linear rate measured between chunks.
SLOW_CHECK_EVERY = 10


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
        n_iter: Sinkhorn iterations run (one row + one column update each), the
            epsilon-scaling levels included.
        marginal_error: L1 violation of the marginal that was not updated last (the
            other one is exact), at the end.
        eps: the regularisation used (absolute).
        n_newton: Newton steps on the dual taken after the Sinkhorn iterations.
        eps_levels: the regularisations of the epsilon-scaling schedule, the target
            last.
    """

    cost: float
    converged: bool
    n_iter: int
    marginal_error: float
    eps: float
    n_newton: int = 0
    eps_levels: list[float] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (iterations, Newton steps, marginal error)."""
        return {"converged": self.converged, "n_iter": self.n_iter, "n_newton": self.n_newton,
                "marginal_error": self.marginal_error, "eps": self.eps}

    def check(self) -> SinkhornResult:
        """Return self, or raise :class:`SinkhornConvergenceError` if not converged."""
        if not self.converged:
            raise SinkhornConvergenceError(
                f"Sinkhorn did not converge in {self.n_iter} iterations and {self.n_newton} Newton steps "
                f"(marginal error {self.marginal_error:.3g}, eps {self.eps:.3g})")
        return self


class SinkhornConvergenceError(RuntimeError):
    """Sinkhorn stopped at ``max_iter`` without reaching the tolerance."""


def import_pot() -> Any:
    """``import ot`` (POT) with its numpy backend only.

    POT probes every array library it finds at import (torch, jax, tensorflow, cupy),
    which costs seconds and is never used here: the ``POT_BACKEND_DISABLE_*``
    variables are set (unless already set) before the first import."""
    for k in ("POT_BACKEND_DISABLE_PYTORCH", "POT_BACKEND_DISABLE_JAX", "POT_BACKEND_DISABLE_TENSORFLOW",
              "POT_BACKEND_DISABLE_CUPY"):
        os.environ.setdefault(k, "1")
    import ot

    return ot


class _Dual:
    """The dual potentials ``f, g`` of one entropic OT problem (plan
    ``P = exp((f_i + g_j - C_ij) / eps)``), advanced by POT's Sinkhorn solvers
    (warm-started from the current potentials) and by Newton steps on the dual."""

    def __init__(self, C: np.ndarray, method: str) -> None:
        self.C = C
        n, m = C.shape
        self.a, self.b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
        self.log_b = -math.log(m)
        # double c-transform start: every row and column of the kernel has an entry 1
        self.f = C.min(axis=1)
        self.g = (C - self.f[:, None]).min(axis=0)
        self.log_mode = method == "log"

    def plan(self, eps: float) -> np.ndarray:
        return np.exp((self.f[:, None] + self.g[None, :] - self.C) / eps)

    def error(self, eps: float, P: np.ndarray | None = None) -> float:
        """L1 violation of the worse marginal of the plan ``P`` (default: the plan of the
        current potentials)."""
        P = self.plan(eps) if P is None else P
        return float(max(np.abs(P.sum(axis=1) - self.a).sum(), np.abs(P.sum(axis=0) - self.b).sum()))

    # ------------------------------------------------------------ Sinkhorn (POT)
    def _pot(self, eps: float, n_iter: int, stop: float) -> tuple[int, np.ndarray]:
        """Up to ``n_iter`` POT Sinkhorn iterations at ``eps`` from the current potentials,
        stopping once POT's L2 marginal error is at most ``stop``. ``"stabilized"``:
        ``ot.bregman.sinkhorn_stabilized`` (scalings absorbed into the potentials); where it
        meets a non-finite value (a row whose kernel underflowed entirely) the problem
        switches for good to ``ot.bregman.sinkhorn_log`` (exact log-sum-exp updates, which
        never overflow), restarted from the last finite potentials.

        Returns:
            ``(iterations run, plan of the new potentials)`` (the plan as POT returns it).
        """
        ot = import_pot()
        f0, g0 = self.f, self.g
        if not self.log_mode:
            # an overflowing kernel is detected below and handed to the log-domain solver
            with warnings.catch_warnings(record=True) as caught, np.errstate(over="ignore", invalid="ignore",
                                                                               divide="ignore"):
                warnings.simplefilter("always")
                P, log = ot.bregman.sinkhorn_stabilized(self.a, self.b, self.C, eps, numItermax=n_iter,
                                                        stopThr=stop, warmstart=(f0, g0), log=True, warn=False,
                                                        print_period=10, tau=ABSORB_TAU)
            f, g = np.asarray(log["alpha"], dtype=np.float64), np.asarray(log["beta"], dtype=np.float64)
            numerical = any("Numerical errors" in str(w.message) for w in caught)
            if not numerical and np.all(np.isfinite(f)) and np.all(np.isfinite(g)) and np.all(np.isfinite(P)):
                self.f, self.g = f, g
                return int(log["n_iter"]) + 1, np.asarray(P, dtype=np.float64)
            self.log_mode = True
        # POT also returns the scalings exp(log_u), exp(log_v), which overflow for far outliers at small eps:
        # unused here (the potentials and the plan are finite)
        with np.errstate(over="ignore"):
            P, log = ot.bregman.sinkhorn_log(self.a, self.b, self.C, eps, numItermax=n_iter, stopThr=stop,
                                             warmstart=(f0 / eps, g0 / eps), log=True, warn=False)
        self.f = eps * np.asarray(log["log_u"], dtype=np.float64)
        self.g = eps * np.asarray(log["log_v"], dtype=np.float64)
        return int(log["niter"]) + 1, np.asarray(P, dtype=np.float64)

    def iterate(self, eps: float, tol: float, budget: int, give_up_when_slow: bool = False) -> tuple[int, float]:
        """Sinkhorn iterations at ``eps`` until the L1 marginal error is below ``tol`` or
        ``budget`` iterations ran (or, with ``give_up_when_slow``, as soon as the observed
        linear rate predicts that ``tol`` will not be reached within the budget; the
        iterations then run in chunks of :data:`SLOW_CHECK_EVERY`). Returns
        ``(iterations, error)``."""
        if budget <= 0:
            return 0, self.error(eps)
        # POT stops on the L2 error of one marginal; L1 <= sqrt(m) L2, so this bound meets ``tol`` in L1
        stop = tol / math.sqrt(max(self.C.shape))
        it, err, prev = 0, math.inf, math.inf
        while it < budget:
            chunk = min(SLOW_CHECK_EVERY, budget - it) if give_up_when_slow else budget - it
            done, P = self._pot(eps, chunk, stop)
            it += done
            prev, err = err, self.error(eps, P)
            if err < tol or done < chunk:
                break
            if give_up_when_slow and it >= MIN_BEFORE_NEWTON and math.isfinite(prev) and err > 0:
                rate = (err / prev) ** (1.0 / done)
                if rate >= 1.0 or math.log(tol / err) / math.log(rate) > budget - it:
                    break
        return it, err

    # ------------------------------------------------------------ Newton
    def col_update_plan(self, eps: float) -> np.ndarray:
        """Exact log-domain column update (afterwards the column marginal is ``b``);
        returns the plan of the updated potentials (one ``exp`` of the matrix)."""
        z = (self.f[:, None] - self.C) / eps
        zmax = z.max(axis=0)
        np.subtract(z, zmax[None, :], out=z)
        np.exp(z, out=z)
        s = z.sum(axis=0)
        self.g = eps * (self.log_b - zmax - np.log(s))
        z *= (self.b / s)[None, :]
        return z

    def newton(self, eps: float, tol: float, max_steps: int) -> tuple[int, float]:
        """Damped Newton steps on the dual (Sinkhorn-Newton, Brauer et al. 2017), each
        followed by an exact column update, until the row error is below ``tol``.
        Returns ``(steps taken, row error)``; stops early when no ascent step is found."""
        import scipy.linalg as sla

        P = self.col_update_plan(eps)
        err = float(np.abs(P.sum(axis=1) - self.a).sum())
        steps = 0
        while not err < tol and steps < max_steps:
            r, c = P.sum(axis=1), P.sum(axis=0)
            if not (np.all(np.isfinite(P)) and r.min() > 0 and c.min() > 0):
                break
            ra, rb = self.a - r, self.b - c  # the dual gradient
            # Hessian (x eps): [[diag r, P], [P^T, diag c]] (df, dg) = eps (ra, rb); eliminate the longer side
            swap = P.shape[0] < P.shape[1]
            A, rA, cA, gA, gB = (P.T, c, r, rb, ra) if swap else (P, r, c, ra, rb)
            W = A / np.sqrt(rA)[:, None]
            k = A.shape[1]
            # S = diag(cA) - W^T W, PSD with the constant vector as null space; the rhs is orthogonal
            # to it, so adding tau * 11^T / k leaves the solution and makes S definite
            S = -sla.blas.dsyrk(1.0, W.T, trans=0, lower=0)
            S[np.diag_indices(k)] += cA
            rhs = eps * (gB - W.T @ (gA / np.sqrt(rA)))
            tau = max(float(np.trace(S)) / k, 1e-300)
            S += tau / k
            try:
                d2 = sla.cho_solve(sla.cho_factor(S, lower=False, overwrite_a=True, check_finite=False), rhs,
                                   check_finite=False)
            except (np.linalg.LinAlgError, ValueError):  # numerically indefinite: least squares instead
                full = np.triu(S) + np.triu(S, 1).T
                d2 = np.linalg.lstsq(full, rhs, rcond=None)[0]
            d1 = (eps * gA - A @ d2) / rA
            df, dg = (d2, d1) if swap else (d1, d2)
            if not (np.all(np.isfinite(df)) and np.all(np.isfinite(dg))):
                break
            slope = float(ra @ df + rb @ dg)
            base = float(self.f @ self.a + self.g @ self.b) - eps * float(P.sum())
            step, accepted = 1.0, False
            while step > 1e-10:
                f, g = self.f + step * df, self.g + step * dg
                z = float(logsumexp((f[:, None] + g[None, :] - self.C) / eps))
                if math.isfinite(z) and z < 700.0:
                    value = float(f @ self.a + g @ self.b) - eps * math.exp(z)
                    if value >= base + 1e-4 * step * slope:
                        accepted = True
                        break
                step *= 0.5
            if not accepted:
                break
            self.f, self.g = f, g
            P = self.col_update_plan(eps)
            err = float(np.abs(P.sum(axis=1) - self.a).sum())
            steps += 1
        return steps, err


def sinkhorn(x: np.ndarray, y: np.ndarray, *, eps_rel: float = EPS_REL, eps: float | None = None,
             tol: float = 1e-9, max_iter: int = 10_000, device: str | None = None, cost: np.ndarray | None = None,
             method: Literal["stabilized", "log"] = "stabilized", eps_scaling: bool = True,
             newton: bool = True, newton_after: int = NEWTON_AFTER, max_newton: int = MAX_NEWTON
             ) -> SinkhornResult:
    """Entropic OT between the point clouds ``x`` and ``y``, uniform weights.

    The cost is the squared Euclidean distance; the regularisation is
    ``eps = eps_rel * mean(C)`` (the ott-jax ``PointCloud`` relative-epsilon
    convention) unless ``eps`` is given. The Sinkhorn iterations are POT's
    (``ot.bregman.sinkhorn_stabilized``, or ``sinkhorn_log`` with ``method="log"``
    and wherever the stabilised kernel meets a non-finite value), warm-started on
    the dual potentials between the phases:

    1. **epsilon scaling**: Sinkhorn at ``eps_k = mean(C) * EPS_SCALING_FACTOR^k``
       for every ``eps_k > eps`` (each level until an L1 marginal error below
       ``EPS_LEVEL_TOL`` or ``EPS_LEVEL_MAX_ITER`` iterations), warm-starting the
       next level;
    2. **Sinkhorn** at the target ``eps`` until the L1 marginal error is below ``tol``;
    3. where that has not happened after ``newton_after`` target iterations (or the
       observed rate says it will not within them), **Newton steps** on the dual
       (Sinkhorn-Newton: the Hessian system solved exactly through its Schur
       complement, backtracking on the dual objective, an exact column update after
       each step), up to ``max_newton``; Sinkhorn's linear rate can be arbitrarily
       slow when the plan is close to a permutation (pred cells close to the true
       cells), Newton's local rate is quadratic. If Newton stalls, Sinkhorn resumes
       until ``max_iter``.

    The fixed point is the same whatever the path (the entropic problem has a
    unique solution), so a converged result equals POT's ``sinkhorn2`` at the
    same ``eps``.

    Args:
        x: ``[n, d]``; y: ``[m, d]``.
        eps_rel: relative regularisation (ignored when ``eps`` is given).
        eps: absolute regularisation.
        tol: converged when the L1 error of the marginal not updated last is below this.
        max_iter: maximum number of Sinkhorn (row + column) iterations, scaling levels included.
        device: optional torch device for the cost GEMM.
        cost: precomputed ``[n, m]`` cost (then ``x``/``y`` are not read).
        method: ``"stabilized"`` (default, absorbed scalings) or ``"log"`` (exact
            log-sum-exp updates throughout: slower, same fixed point).
        eps_scaling: run the epsilon-scaling levels first.
        newton: allow the Newton phase.
        newton_after: Sinkhorn iterations at the target eps before Newton starts.
        max_newton: maximum number of Newton steps.

    Returns:
        :class:`SinkhornResult`; ``converged`` is False when the tolerance was not
        reached (never silently: callers declare it, or call ``.check()``).
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
        return SinkhornResult(0.0, True, 0, 0.0, float(eps), 0, [float(eps)])
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    eps = float(eps)
    dual = _Dual(C, method)
    levels: list[float] = []
    if eps_scaling:
        e = mean_c
        while e > eps * (1.0 + 1e-12):
            levels.append(e)
            e *= EPS_SCALING_FACTOR
    levels.append(eps)
    it = 0
    for e in levels[:-1]:
        done, _ = dual.iterate(e, max(tol, EPS_LEVEL_TOL), min(EPS_LEVEL_MAX_ITER, max_iter - it))
        it += done
    first = min(newton_after, max_iter - it) if newton else max_iter - it
    done, err = dual.iterate(eps, tol, first, give_up_when_slow=newton and max_newton > 0)
    it += done
    n_newton = 0
    if newton and max_newton > 0 and not err < tol:
        n_newton, err = dual.newton(eps, tol, max_newton)
    if not err < tol and it < max_iter:
        done, err = dual.iterate(eps, tol, max_iter - it)
        it += done
    P = dual.plan(eps)
    return SinkhornResult(float(np.sum(P * C)), bool(err < tol), it, float(err), eps, n_newton, levels)


# ------------------------------------------------------------------ Gaussian KL
def gaussian_sym_kl(x: np.ndarray, y: np.ndarray, *, std_floor: float = KL_STD_FLOOR,
                    std_eps: float = 0.0) -> np.ndarray:
    """Per-gene symmetric KL divergence ``KL(N_x || N_y) + KL(N_y || N_x)``.

    Each gene of each set is fitted by a Gaussian with the sample mean and
    ``sigma = max(std + std_eps, std_floor)`` (population std, ``ddof=0``). The
    log terms of the two directions cancel::

        (s_x^2 + d^2) / (2 s_y^2) + (s_y^2 + d^2) / (2 s_x^2) - 1,  d = mu_x - mu_y

    The floor (default :data:`KL_STD_FLOOR`) is what makes the value mean something
    on real data: a gene that is constant in one set (all zeros in a group's true
    cells is common among top DEGs) has std 0, and with ``std + 1e-8`` alone the
    divergence is ``~ d^2 / 1e-16`` (values like 1e13). With the floor, a constant
    gene is read at the resolution of the measurement and contributes
    ``(s^2 + d^2) / (2 floor^2)``-sized terms.

    Args:
        x: ``[n, G]`` cells; y: ``[m, G]`` cells.
        std_floor: lower bound on each fitted sigma (0 disables it).
        std_eps: added to the std before the floor (scPerturBench's ``+ 1e-8``).

    Returns:
        ``[G]`` divergences; finite whenever ``std_floor > 0`` or ``std_eps > 0``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("Gaussian fit of an empty cell set is undefined")
    sx2 = np.maximum(x.std(axis=0) + std_eps, std_floor) ** 2
    sy2 = np.maximum(y.std(axis=0) + std_eps, std_floor) ** 2
    d2 = (x.mean(axis=0) - y.mean(axis=0)) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return (sx2 + d2) / (2.0 * sy2) + (sy2 + d2) / (2.0 * sx2) - 1.0


def floored_genes(x: np.ndarray, y: np.ndarray, *, std_floor: float = KL_STD_FLOOR) -> np.ndarray:
    """Per gene: True where either set's std is below ``std_floor`` (the floor applies)."""
    return (np.asarray(x, dtype=np.float64).std(axis=0) < std_floor) | (
        np.asarray(y, dtype=np.float64).std(axis=0) < std_floor)


def warn_not_converged(n_groups: int) -> None:
    """Emit the warning that accompanies groups whose Sinkhorn did not converge."""
    warnings.warn(f"Sinkhorn did not converge for {n_groups} group(s); see the metric's extra",
                  RuntimeWarning, stacklevel=2)
