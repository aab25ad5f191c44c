"""Tests of the distance helpers against explicit loops, closed forms and the peers (POT, scperturb)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from perturbfm_metrics.distances import (
    SinkhornConvergenceError,
    edistance,
    edistance_batch,
    floored_genes,
    gaussian_sym_kl,
    pairwise_euclidean,
    pairwise_sq_euclidean,
    sinkhorn,
)
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

HAS_POT = importlib.util.find_spec("ot") is not None
HAS_SCPERTURB = importlib.util.find_spec("scperturb") is not None
# the POT parity test must run in CI: there, a missing POT is a failure, not a skip
needs_pot = pytest.mark.skipif(not HAS_POT and os.environ.get("CI") != "true",
                               reason="POT (pip install pot) not installed")


def _clouds(seed: int, n: int = 30, m: int = 22, d: int = 6, shift: float = 0.7):
    rng = np.random.default_rng(seed)
    x = 3.0 + rng.normal(size=(n, d))
    y = 3.0 + shift + 1.3 * rng.normal(size=(m, d))
    return x, y


def _edist_loops(x, y, squared: bool, within: str = "distinct") -> float:
    """E-distance with explicit loops over pairs."""
    def dist(a, b):
        s = float(np.sum((a - b) ** 2))
        return s if squared else float(np.sqrt(s))

    cross = sum(dist(a, b) for a in x for b in y) / (len(x) * len(y))

    def w(z):
        tot = sum(dist(z[i], z[j]) for i in range(len(z)) for j in range(len(z)) if i != j)
        return tot / (len(z) * (len(z) - 1) if within == "distinct" else len(z) ** 2)

    return 2 * cross - w(x) - w(y)


def _sinkhorn_reference(C: np.ndarray, eps: float, n_iter: int = 5000) -> float:
    """Plain log-domain Sinkhorn, one potential at a time, fixed iteration count."""
    n, m = C.shape
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(n_iter):
        f = eps * (-np.log(n) - logsumexp((g[None, :] - C) / eps, axis=1))
        g = eps * (-np.log(m) - logsumexp((f[:, None] - C) / eps, axis=0))
    P = np.exp((f[:, None] + g[None, :] - C) / eps)
    return float(np.sum(P * C))


def test_pairwise_matches_cdist_plain_and_batched():
    x, y = _clouds(0)
    np.testing.assert_allclose(pairwise_sq_euclidean(x, y), cdist(x, y, "sqeuclidean"), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pairwise_euclidean(x, y), cdist(x, y), rtol=1e-10, atol=1e-10)
    d = pairwise_sq_euclidean(x, x)
    assert (d >= 0).all() and np.abs(np.diag(d)).max() < 1e-10
    rng = np.random.default_rng(1)
    xb, yb = rng.normal(size=(4, 9, 5)), rng.normal(size=(4, 7, 5))
    batched = pairwise_sq_euclidean(xb, yb)
    assert batched.shape == (4, 9, 7)
    for b in range(4):
        np.testing.assert_allclose(batched[b], cdist(xb[b], yb[b], "sqeuclidean"), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError):
        pairwise_sq_euclidean(x, y[:, :3])


def test_torch_path_matches_numpy():
    pytest.importorskip("torch")
    x, y = _clouds(2)
    np.testing.assert_allclose(pairwise_sq_euclidean(x, y, device="cpu"), pairwise_sq_euclidean(x, y),
                               rtol=1e-12, atol=1e-12)
    assert edistance(x, y, device="cpu") == pytest.approx(edistance(x, y), rel=1e-12)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("within", ["distinct", "all"])
def test_edistance_matches_explicit_pairs(squared, within):
    x, y = _clouds(3, n=12, m=9)
    got = edistance(x, y, squared=squared, within=within)
    assert got == pytest.approx(_edist_loops(x, y, squared, within), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("squared", [False, True])
def test_edistance_batch_matches_single(squared):
    rng = np.random.default_rng(14)
    xs, ys = rng.normal(size=(5, 11, 4)), 0.5 + rng.normal(size=(5, 8, 4))
    for within in ("distinct", "all"):
        got = edistance_batch(xs, ys, squared=squared, within=within)
        want = [edistance(x, y, squared=squared, within=within) for x, y in zip(xs, ys)]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError):
        edistance_batch(xs[:, :1], ys)


def test_squared_edistance_identities():
    x, y = _clouds(4, n=40, m=25, d=8)
    dmu = x.mean(axis=0) - y.mean(axis=0)
    # over all n^2 pairs (V-statistic) the squared statistic is exactly 2 ||mu_X - mu_Y||^2
    assert edistance(x, y, squared=True, within="all") == pytest.approx(2 * dmu @ dmu, rel=1e-12)
    # over distinct pairs (scperturb / pertpy) it is that minus 2 tr(S_X)/n + 2 tr(S_Y)/m (unbiased S)
    want = 2 * dmu @ dmu - 2 * x.var(axis=0, ddof=1).sum() / len(x) - 2 * y.var(axis=0, ddof=1).sum() / len(y)
    assert edistance(x, y, squared=True, within="distinct") == pytest.approx(want, rel=1e-12)
    # identical sets: 0 with all pairs, and the Euclidean statistic is 0 too
    assert edistance(x, x, squared=True, within="all") == pytest.approx(0.0, abs=1e-10)
    # (Euclidean: sqrt of the GEMM's rounding on the matching cross pairs, ~1e-9)
    assert edistance(x, x, within="all") == pytest.approx(0.0, abs=1e-8)


def test_edistance_rejects_undefined_cases():
    x, y = _clouds(5)
    with pytest.raises(ValueError, match=">= 2"):
        edistance(x[:1], y)
    with pytest.raises(ValueError):
        edistance(x[:0], y)
    assert np.isfinite(edistance(x[:1], y, within="all"))


@pytest.mark.skipif(not HAS_SCPERTURB, reason="scperturb (optional peer) not installed")
def test_edistance_parity_with_scperturb():
    import anndata as ad
    import pandas as pd
    import scperturb  # one import for all variants: it pulls in scanpy

    x, y = _clouds(6, n=35, m=28, d=10)
    a = ad.AnnData(np.zeros((len(x) + len(y), 1)),
                   obs=pd.DataFrame({"g": ["pred"] * len(x) + ["true"] * len(y)},
                                    index=[str(i) for i in range(len(x) + len(y))]))
    a.obsm["cells"] = np.vstack([x, y])
    for dist in ("sqeuclidean", "euclidean"):
        for sample_correct in (True, False):
            est = scperturb.edist(a, obs_key="g", obsm_key="cells", dist=dist,
                                  sample_correct=sample_correct, n_jobs=1, verbose=False)
            peer = float(est.loc["pred", "true"])
            squared, within = dist == "sqeuclidean", "distinct" if sample_correct else "all"
            ours = edistance(x, y, squared=squared, within=within)
            # squared: same arithmetic up to rounding; Euclidean: scperturb (sklearn) expands the
            # GEMM without centring and keeps sqrt(rounding) on the within-set diagonal (~1e-9
            # relative), while ours agrees with the explicit pair loops to ~1e-14
            assert ours == pytest.approx(peer, rel=1e-12 if squared else 1e-7), (dist, sample_correct)
            assert ours == pytest.approx(_edist_loops(x, y, squared, within), rel=1e-12)


def test_sinkhorn_matches_naive_reference():
    x, y = _clouds(7, n=25, m=18)
    C = cdist(x, y, "sqeuclidean")
    for method in ("stabilized", "log"):
        res = sinkhorn(x, y, method=method, tol=1e-12)
        assert res.converged and res.marginal_error < 1e-12
        assert res.eps == pytest.approx(0.05 * C.mean(), rel=1e-12)
        assert res.cost == pytest.approx(_sinkhorn_reference(C, res.eps, 300), rel=1e-8)
    # a precomputed cost and an absolute eps give the same as the point clouds
    res2 = sinkhorn(None, None, cost=C, eps=res.eps, tol=1e-12)  # type: ignore[arg-type]
    assert res2.cost == pytest.approx(res.cost, rel=1e-10)


def test_sinkhorn_small_eps_and_outliers_stay_finite():
    x, y = _clouds(8, n=30, m=20, d=4)
    x[0] += 40.0  # an outlier far from every target point
    C = cdist(x, y, "sqeuclidean")
    stab = sinkhorn(x, y, eps_rel=0.002, tol=1e-10, max_iter=100_000)
    exact = sinkhorn(x, y, eps_rel=0.002, tol=1e-10, max_iter=100_000, method="log")
    assert stab.converged and exact.converged
    assert stab.cost == pytest.approx(exact.cost, rel=1e-7)
    # the entropic cost approaches the exact OT cost from above as eps -> 0
    assert stab.cost >= C.min(axis=1).mean() - 1e-9


@needs_pot
@pytest.mark.parametrize("seed,shift", [(9, 0.0), (10, 0.8), (11, 3.0)])
def test_sinkhorn_parity_with_pot(seed, shift):
    import ot  # a missing POT fails here under CI=true, by design

    x, y = _clouds(seed, n=60, m=45, d=12, shift=shift)
    res = sinkhorn(x, y).check()
    C = cdist(x, y, "sqeuclidean")
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    peer = float(ot.sinkhorn2(a, b, C, res.eps, numItermax=100_000, stopThr=1e-12))
    assert res.cost == pytest.approx(peer, rel=1e-4)
    assert abs(res.cost - peer) / peer < 1e-8  # in practice far tighter than the 1e-4 contract


def test_sinkhorn_reports_non_convergence():
    x, y = _clouds(12, shift=2.0)
    res = sinkhorn(x, y, max_iter=1, tol=1e-15, newton=False)
    assert not res.converged and res.n_iter == 1 and res.marginal_error > 0 and res.n_newton == 0
    assert np.isfinite(res.cost)
    assert res.describe() == {"converged": False, "n_iter": 1, "n_newton": 0,
                              "marginal_error": res.marginal_error, "eps": res.eps}
    with pytest.raises(SinkhornConvergenceError, match="did not converge"):
        res.check()
    with pytest.raises(ValueError):
        sinkhorn(x[:0], y)
    with pytest.raises(ValueError):
        sinkhorn(x, y, method="exact")  # type: ignore[arg-type]


def test_gaussian_sym_kl_matches_two_direction_formula():
    x, y = _clouds(13, n=50, m=40, d=7)
    x[:, 0] = 1.5  # a constant gene: std 0 on that side
    x[:, 1] = 3.0 + 0.05 * np.random.default_rng(0).standard_normal(50)  # std 0.05, below the floor

    def kl(m1, s1, m2, s2):
        return np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5

    mx, my = x.mean(axis=0), y.mean(axis=0)

    def both(sx, sy):
        return [kl(mx[g], sx[g], my[g], sy[g]) + kl(my[g], sy[g], mx[g], sx[g]) for g in range(x.shape[1])]

    # scPerturBench's sigma = std + 1e-8: the constant gene explodes (the degenerate value)
    legacy = gaussian_sym_kl(x, y, std_floor=0.0, std_eps=1e-8)
    np.testing.assert_allclose(legacy, both(x.std(axis=0) + 1e-8, y.std(axis=0) + 1e-8), rtol=1e-8)
    assert legacy[0] > 1e10
    # the pinned rule: sigma = max(std, 0.1); equal to the legacy value where both stds are >= 0.1
    got = gaussian_sym_kl(x, y)
    np.testing.assert_allclose(got, both(np.maximum(x.std(axis=0), 0.1), np.maximum(y.std(axis=0), 0.1)),
                               rtol=1e-10)
    np.testing.assert_allclose(got[2:], legacy[2:], rtol=1e-6)
    assert np.isfinite(got).all() and got[0] < 1e3
    assert floored_genes(x, y).tolist() == [True, True] + [False] * 5
    np.testing.assert_allclose(gaussian_sym_kl(y, y), 0.0, atol=1e-12)
    with pytest.raises(ValueError):
        gaussian_sym_kl(x[:0], y)


def _near_copy(seed: int, n: int = 100, g: int = 100):
    """log1p counts of n cells x g genes, and a near copy of them (a prediction close to the truth):
    the entropic plan is close to a permutation, where Sinkhorn's linear rate is very slow."""
    rng = np.random.default_rng(seed)
    t = np.log1p(rng.poisson(rng.gamma(0.6, 1.5, g)[None, :], (n, g)).astype(float))
    q = np.clip(t[rng.permutation(n)] + 0.05 * rng.standard_normal(t.shape), 0, None)
    return q, t


def test_sinkhorn_converges_where_plain_sinkhorn_does_not():
    q, t = _near_copy(0)
    # the previous solver (log-stabilised Sinkhorn, no eps scaling, no Newton) stalls at the cap
    plain = sinkhorn(q, t, eps_scaling=False, newton=False, max_iter=10_000)
    assert not plain.converged and plain.n_iter == 10_000 and plain.marginal_error > 1e-7
    res = sinkhorn(q, t)
    assert res.converged and res.marginal_error < 1e-9 and res.n_iter < 1_000 and 0 < res.n_newton <= 10
    assert res.eps_levels[-1] == res.eps and len(res.eps_levels) > 1  # eps scaling ran
    exact = sinkhorn(q, t, method="log")  # exact log-sum-exp updates: the same fixed point
    assert exact.converged and exact.cost == pytest.approx(res.cost, rel=1e-9)
    # the stalled iterate is close, but only to its marginal error
    assert plain.cost == pytest.approx(res.cost, rel=1e-4)


@needs_pot
def test_sinkhorn_converges_where_pot_hits_its_cap():
    import warnings

    import ot

    q, t = _near_copy(1)
    res = sinkhorn(q, t).check()
    C = cdist(q, t, "sqeuclidean")
    a = np.full(len(q), 1 / len(q))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        P, log = ot.sinkhorn(a, a, C, res.eps, numItermax=10_000, stopThr=1e-9, log=True)
    assert log["niter"] >= 9_999 and any("did not converge" in str(w.message) for w in caught)
    assert float(np.sum(P * C)) == pytest.approx(res.cost, rel=1e-5)


def _degenerate(kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(x, y, eps_rel) of inputs where a linear-domain kernel underflows or the problem degenerates."""
    rng = np.random.default_rng(21)
    if kind == "far-outliers":
        x, y = _clouds(22, n=40, m=30, d=5)
        x[:3] += 60.0
        return x, y, 0.001
    if kind == "constant-side":  # every pred cell identical (a model that predicts one cell)
        x, y = _clouds(23, n=25, m=30, d=8)
        return np.repeat(x[:1], 25, axis=0), y, 0.01
    if kind == "single-cells":
        x, y = _clouds(24, n=1, m=1, d=6, shift=2.0)
        return x, y, 0.05
    if kind == "large-scale":  # counts not log-transformed: costs ~1e6
        return 300.0 * rng.gamma(1.0, size=(30, 10)), 300.0 * rng.gamma(1.2, size=(25, 10)), 0.002
    if kind == "duplicates":  # many tied cells on both sides
        x, y = _clouds(25, n=10, m=8, d=4)
        return np.repeat(x, 4, axis=0), np.repeat(y, 5, axis=0), 0.005
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["far-outliers", "constant-side", "single-cells", "large-scale", "duplicates"])
def test_sinkhorn_degenerate_inputs_stay_finite_and_agree_with_log_domain(kind):
    x, y, eps_rel = _degenerate(kind)
    stab = sinkhorn(x, y, eps_rel=eps_rel, tol=1e-9, max_iter=100_000)
    exact = sinkhorn(x, y, eps_rel=eps_rel, tol=1e-9, max_iter=100_000, method="log")
    for res in (stab, exact):
        assert res.converged and np.isfinite(res.cost) and res.marginal_error < 1e-9, (kind, res.describe())
    assert stab.cost == pytest.approx(exact.cost, rel=1e-7)
    C = cdist(x, y, "sqeuclidean")
    # the entropic cost lies between the cheapest row assignment and the independent coupling's cost
    assert C.min(axis=1).mean() - 1e-9 <= stab.cost <= C.mean() + 1e-9


@needs_pot
def test_sinkhorn_iterations_are_pots_and_a_numerical_failure_switches_to_sinkhorn_log(monkeypatch):
    import ot

    calls = {"sinkhorn_stabilized": 0, "sinkhorn_log": 0}
    real = {name: getattr(ot.bregman, name) for name in calls}
    fail_at = {"call": -1}

    def stabilized(*args, **kw):
        calls["sinkhorn_stabilized"] += 1
        P, log = real["sinkhorn_stabilized"](*args, **kw)
        if calls["sinkhorn_stabilized"] == fail_at["call"]:  # what an overflowing kernel leaves behind
            log["alpha"] = np.full_like(log["alpha"], np.inf)
        return P, log

    def log_domain(*args, **kw):
        calls["sinkhorn_log"] += 1
        return real["sinkhorn_log"](*args, **kw)

    monkeypatch.setattr(ot.bregman, "sinkhorn_stabilized", stabilized)
    monkeypatch.setattr(ot.bregman, "sinkhorn_log", log_domain)
    x, y = _clouds(26, n=30, m=25, d=5)
    plain = sinkhorn(x, y)
    assert plain.converged and calls["sinkhorn_stabilized"] > 2 and calls["sinkhorn_log"] == 0
    for k in calls:
        calls[k] = 0
    fail_at["call"] = 2  # fails on the second epsilon-scaling level
    res = sinkhorn(x, y)
    assert res.converged and calls["sinkhorn_stabilized"] == 2 and calls["sinkhorn_log"] > 0
    assert np.isfinite(res.cost) and res.cost == pytest.approx(plain.cost, rel=1e-9)
    for k in calls:
        calls[k] = 0
    assert sinkhorn(x, y, method="log").cost == pytest.approx(plain.cost, rel=1e-9)
    assert calls["sinkhorn_stabilized"] == 0 and calls["sinkhorn_log"] > 0
