"""Vectorised distances between sets of cells, used by the distribution metrics.

* :func:`pairwise_sq_euclidean` / :func:`pairwise_euclidean`: all pairwise
  distances through one (batched) GEMM, ``||x||^2 + ||y||^2 - 2 x y^T`` clipped at
  0, after centring both sets on their joint mean (translation-invariant, and it
  limits the cancellation of the expansion).
* :func:`edistance`: the energy distance ``2 E||X-Y|| - E||X-X'|| - E||Y-Y'||``.
* :func:`sinkhorn`: entropic optimal transport between two point clouds (uniform
  weights, squared-Euclidean cost), returning ``<P, C>`` as POT's ``sinkhorn2``:
  log-domain Sinkhorn with epsilon scaling, then Newton steps on the dual where
  Sinkhorn's linear rate is too slow; convergence (iterations, final marginal
  error) is always reported, never assumed.
* :func:`gaussian_sym_kl`: per-gene symmetric KL divergence of Gaussian fits
  (sigma floored at :data:`KL_STD_FLOOR`).

An optional ``device`` (e.g. ``"cuda"``) runs the distance GEMM with torch when
torch is importable; otherwise everything is numpy. torch is imported lazily.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

#: relative scale of the entropic regularisation: eps = EPS_REL * mean cost.
EPS_REL = 0.05
#: scPerturBench's Gaussian fits use sigma = std + STD_EPS (kept for reference; the kl key uses the floor).
STD_EPS = 1e-8
#: the kl key's Gaussian fits use sigma = max(std, KL_STD_FLOOR), in log1p units: about the quantisation
#: s.d. (step / sqrt(12)) of a one-UMI step of 0.35 log1p units (1 UMI in a cell of ~25,000 UMIs, CP10k).
KL_STD_FLOOR = 0.1
#: Sinkhorn scalings are absorbed into the log potentials beyond exp(+-ABSORB).
ABSORB = 50.0
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
        marginal_error: L1 violation of the row marginal at the end, measured after
            a column update (so the column marginal is exact).
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


def _lse(z: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable log-sum-exp along ``axis`` (max-shifted; -inf rows stay -inf)."""
    zmax = np.max(z, axis=axis, keepdims=True)
    zmax = np.where(np.isfinite(zmax), zmax, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(zmax, axis=axis) + np.log(np.sum(np.exp(z - zmax), axis=axis))


class _Dual:
    """Log-domain Sinkhorn on the dual potentials ``f, g`` of one cost matrix.

    The plan is ``P = exp((f_i + g_j - C_ij) / eps)``. ``stabilized`` iterations
    run on the kernel ``K = exp((f + g - C) / eps)`` of the last absorbed
    potentials with scalings ``u, v`` that are folded into ``f, g`` whenever they
    leave ``[exp(-ABSORB), exp(ABSORB)]`` (Schmitzer 2019): algebraically the
    log-sum-exp update shifted by the previous potentials, at the cost of a
    matrix-vector product. Where a non-finite value appears anyway (a row whose
    kernel underflowed entirely) the iterations continue with exact log-sum-exp
    updates (``log``), which never overflow.
    """

    def __init__(self, C: np.ndarray, method: str) -> None:
        self.C = C
        n, m = C.shape
        self.a, self.b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
        self.log_a, self.log_b = -math.log(n), -math.log(m)
        # double c-transform start: every row and column of the kernel has an entry 1
        self.f = C.min(axis=1)
        self.g = (C - self.f[:, None]).min(axis=0)
        self.log_mode = method == "log"

    # ------------------------------------------------------------ helpers
    def plan(self, eps: float) -> np.ndarray:
        return np.exp((self.f[:, None] + self.g[None, :] - self.C) / eps)

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

    def row_error(self, eps: float) -> float:
        """L1 error of the row marginal of the current potentials (log-domain sums)."""
        row = np.exp(_lse((self.f[:, None] + self.g[None, :] - self.C) / eps, axis=1))
        return float(np.abs(row - self.a).sum())

    # ------------------------------------------------------------ Sinkhorn
    def iterate(self, eps: float, tol: float, budget: int, check_every: int,
                give_up_when_slow: bool = False) -> tuple[int, float]:
        """Sinkhorn iterations at ``eps`` until the row error is below ``tol`` or
        ``budget`` iterations ran (or, with ``give_up_when_slow``, as soon as the
        observed linear rate predicts that ``tol`` will not be reached within the
        budget). Returns ``(iterations, row error)``; the potentials end absorbed
        and column-exact."""
        if budget <= 0:
            return 0, self.row_error(eps)
        a, b, C = self.a, self.b, self.C
        it, err, prev = 0, np.inf, np.inf
        if not self.log_mode:
            K = self.plan(eps)
            u, v = np.ones_like(a), np.ones_like(b)
        while it < budget:
            it += 1
            if self.log_mode:
                self.f = eps * (self.log_a - _lse((self.g[None, :] - C) / eps, axis=1))
                self.g = eps * (self.log_b - _lse((self.f[:, None] - C) / eps, axis=0))
            else:
                with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                    u = a / (K @ v)
                    v = b / (K.T @ u)
                    ok = bool(np.all(np.isfinite(u)) and np.all(np.isfinite(v)) and u.min() > 0 and v.min() > 0)
                if not ok:
                    # fall back to exact log-sum-exp updates from the last absorbed potentials
                    self.log_mode = True
                    continue
                if np.max(np.abs(np.log(u))) > ABSORB or np.max(np.abs(np.log(v))) > ABSORB:
                    self.f, self.g = self.f + eps * np.log(u), self.g + eps * np.log(v)
                    u, v = np.ones_like(a), np.ones_like(b)
                    K = self.plan(eps)
            if it % check_every == 0 or it == budget:
                prev, err = err, (self.row_error(eps) if self.log_mode
                                  else float(np.abs(u * (K @ v) - a).sum()))
                if err < tol:
                    break
                if give_up_when_slow and it >= MIN_BEFORE_NEWTON and np.isfinite(prev) and err > 0:
                    rate = (err / prev) ** (1.0 / check_every)
                    if rate >= 1.0 or math.log(tol / err) / math.log(rate) > budget - it:
                        break
        if not self.log_mode:
            self.f, self.g = self.f + eps * np.log(u), self.g + eps * np.log(v)
        return it, err

    # ------------------------------------------------------------ Newton
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
                z = float(_lse(((f[:, None] + g[None, :] - self.C) / eps).ravel(), axis=0))
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
             tol: float = 1e-9, max_iter: int = 10_000, check_every: int = 10,
             device: str | None = None, cost: np.ndarray | None = None,
             method: Literal["stabilized", "log"] = "stabilized", eps_scaling: bool = True,
             newton: bool = True, newton_after: int = NEWTON_AFTER, max_newton: int = MAX_NEWTON
             ) -> SinkhornResult:
    """Entropic OT between the point clouds ``x`` and ``y``, uniform weights.

    The cost is the squared Euclidean distance; the regularisation is
    ``eps = eps_rel * mean(C)`` (the ott-jax ``PointCloud`` relative-epsilon
    convention) unless ``eps`` is given. The solver works on the dual potentials
    in the log domain (no kernel entry over- or underflows):

    1. **epsilon scaling**: Sinkhorn at ``eps_k = mean(C) * EPS_SCALING_FACTOR^k``
       for every ``eps_k > eps`` (each level until an L1 row-marginal error below
       ``EPS_LEVEL_TOL`` or ``EPS_LEVEL_MAX_ITER`` iterations), warm-starting the
       next level;
    2. **Sinkhorn** at the target ``eps`` (log-stabilised, see :class:`_Dual`)
       until the L1 row-marginal error is below ``tol``;
    3. where that has not happened after ``newton_after`` target iterations,
       **Newton steps** on the dual (Sinkhorn-Newton: the Hessian system solved
       exactly through its Schur complement, backtracking on the dual objective,
       an exact column update after each step), up to ``max_newton``; Sinkhorn's
       linear rate can be arbitrarily slow when the plan is close to a permutation
       (pred cells close to the true cells), Newton's local rate is quadratic.
       If Newton stalls, Sinkhorn resumes until ``max_iter``.

    The fixed point is the same whatever the path (the entropic problem has a
    unique solution), so a converged result equals POT's ``sinkhorn2`` at the
    same ``eps``.

    Args:
        x: ``[n, d]``; y: ``[m, d]``.
        eps_rel: relative regularisation (ignored when ``eps`` is given).
        eps: absolute regularisation.
        tol: converged when the L1 row-marginal error (after a column update) is below this.
        max_iter: maximum number of Sinkhorn (row + column) iterations, scaling levels included.
        check_every: test convergence every this many iterations.
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
        done, _ = dual.iterate(e, max(tol, EPS_LEVEL_TOL), min(EPS_LEVEL_MAX_ITER, max_iter - it), check_every)
        it += done
    first = min(newton_after, max_iter - it) if newton else max_iter - it
    done, err = dual.iterate(eps, tol, first, check_every, give_up_when_slow=newton and max_newton > 0)
    it += done
    n_newton = 0
    if newton and max_newton > 0 and not err < tol:
        n_newton, err = dual.newton(eps, tol, max_newton)
    if not err < tol and it < max_iter:
        done, err = dual.iterate(eps, tol, max_iter - it, check_every)
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
