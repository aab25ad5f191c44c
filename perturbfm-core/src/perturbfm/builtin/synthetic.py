"""PerturbFM's embedded synthetic dataset (adapter name ``synthetic``).

SYNTHETIC DATA. Everything here is simulated; nothing is downloaded. The
dataset exists so that a benchmark runs out of the box and so that models can
be checked against a known ground truth. Every output is marked synthetic
(``AdapterResult.synthetic``, ``obs["synthetic"]``, ``uns["synthetic"]``).

Generative model (all draws from ``numpy.random.default_rng(seed)`` and
sub-generators spawned from it, so a seed fixes the dataset exactly):

1. **Genes and graph.** ``n_genes`` genes ``SG000 ..``. A sparse directed,
   weighted gene-gene graph ``A`` (``A[i, j]`` = weight of edge ``i -> j``):
   every gene has ``1 + Poisson(2)`` out-edges (capped; about 3 on average) to
   random other genes, weights ``±U(0.3, 0.8)``. ``alpha`` scales it so that the
   spectral radius of ``alpha * |A|`` is 0.9 (at most ``alpha = 1``); that
   bounds the one of ``alpha * A``, so propagation converges. The edge list is
   ``extra["graph_edges"]`` as ``[src, dst, weight]`` (gene indices, weights
   before ``alpha``; ``alpha`` is ``extra["propagation_alpha"]``).
2. **Perturbations.** ``n_singles`` target genes (measured genes, drawn among
   the better-expressed 70 %), each with a knockdown strength
   ``k_g ~ U(1.5, 3.0)`` (log scale). A gene set ``S`` has the direct effect
   ``d_S = -sum_{g in S} k_g e_g`` (its targets' own expression drops), and the
   network response ``r_S = (I - alpha A^T)^{-1} d_S`` (the steady state of
   ``r = d + alpha A^T r``: each gene receives its regulators' responses).
   ``n_doubles`` distinct pairs of the singles; on
   ``round(interaction_fraction * n_doubles)`` of them the direct effect gets an
   epistasis vector ``e`` (``max(3, n_genes // 20)`` non-target genes,
   ``±U(0.8, 1.5)``): ``d_ab = d_a + d_b + e_ab``, propagated the same way. On
   the others the direct effects add. ``extra["non_additive_doubles"]`` lists
   the former, ``extra["epistasis"]`` their vectors.
3. **Contexts.** ``n_contexts`` contexts ``ctx0 ..``. A global basis ``U``
   (``n_genes x rank``, orthonormal) and per-context mixing weights ``W_c``
   (``rank x rank``, Gaussian, scaled so ``|U W_c U^T r|`` is about half of
   ``|r|``): the expressed response is ``r_c = r + U W_c U^T r``. Each context
   also has its own baseline (global log-baseline ``N(0, 1.2)`` plus a per-context
   ``N(0, 0.35)`` shift per gene) and its own library-size factor
   ``f_c ~ U(0.8, 1.25)``.
4. **Dose and time.** Groups are ``(perturbation, context)``: each perturbed
   group gets one dose from ``{0.1, 1.0, 10.0}`` and one time from ``{24, 72}``
   hours, drawn per group. The response is scaled by
   :func:`effect_scale` ``= hill(dose) * (1 - exp(-time / 24h))`` with
   ``hill(d) = d / (d + 0.3)``. ``obs["pfm_dose"]`` / ``obs["pfm_time"]`` hold
   them (controls: 0.0 and 0.0). Dose and time are attributes of the group, not
   group-defining covariates, so ``pfm_covariates`` is ``""`` everywhere and a
   group id is ``"<perturbation>@<context>"``.
5. **Counts.** Per cell, library size ``L ~ LogNormal(log(10000 * f_c), 0.35)``;
   mean ``mu = L * p_c * exp(clip(scale * r_c, -6, 3))`` with ``p_c`` the
   context's baseline proportions (``exp(log baseline)`` normalised);
   negative-binomial counts as a gamma-Poisson mixture with per-gene dispersion
   ``phi ~ U(0.02, 0.2)`` (variance ``mu + phi mu^2``). Raw counts are kept in
   ``layers["counts"]``; ``X`` is ``log1p(counts / total * 1e4)``, float64 CSR.

6. **Baseline-dependent contexts** (``context_model=baseline``; off by default, and
   then items 1-5 are exactly as above, byte for byte). A context is a point
   ``z_c ~ N(0, I)`` of a ``baseline_rank``-dimensional baseline space: its log
   baseline is ``b_c = b + baseline_spread * V z_c + N(0, 0.1)`` (``b`` the global
   log baseline, ``V`` a fixed ``n_genes x baseline_rank`` Gaussian basis scaled by
   ``1/sqrt(baseline_rank)``), so its control cells show where it lies. The network
   response ``r`` of a perturbation is expressed in context ``c`` as
   ``r_c = m_c * exp(gamma * (b_c - b)) * g_c`` with

   * ``m_c = r + U (sum_k z_c[k] W_k) U^T r``: modulation by the same context factors
     (``U`` an orthonormal ``n_genes x rank`` basis, ``W_k`` Gaussian ``rank x rank``
     scaled like item 3), instead of item 3's free per-context ``W_c``;
   * ``exp(gamma_g (b_c - b)_g)``, ``gamma_g ~ U(0, 1)``: a per-gene response scale that
     grows with the gene's baseline level in that context;
   * ``g_c = mu / (mu + 2)`` on negative entries only (``mu`` = expected control counts
     per cell at 10,000 counts): a gene that is not expressed cannot go down.

   Everything ``r_c`` depends on besides the perturbation is a function of ``z_c``,
   i.e. of the context's baseline: a response in an unseen context is learnable from
   its control cells and the other contexts' responses. These draws come from a sixth
   generator spawned from the seed; dose, time and counts follow items 4-5. ``extra``
   records ``context_model``, ``global_log_baseline``, ``context_factors``,
   ``baseline_basis``, ``response_gain_gamma``, ``modulation_basis``,
   ``modulation_weights`` and ``down_half_counts``.

Every single and double is measured in every context; each context has
``n_control`` control cells and ``cells_per_group`` cells per perturbed group.

Length (over 400 lines on purpose): the generative model, its documented parameters and
the adapter that exposes them are one unit whose docstring is the dataset's specification.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbfm.dataset import (
    CONTEXT_COL,
    CONTROL,
    CONTROL_COL,
    COVARIATES_COL,
    GENETIC,
    KIND_COL,
    PERT_COL,
    canonical_perturbation,
)
from perturbfm.errors import DatasetValidationError
from perturbfm.interfaces import AdapterResult, DatasetAdapter

SIMULATOR = "perturbfm.synthetic"
SIMULATOR_VERSION = 1
DOSE_LEVELS = (0.1, 1.0, 10.0)
TIME_LEVELS = (24.0, 72.0)
HILL_EC50 = 0.3
HILL_N = 1.0
TIME_TAU_H = 24.0
TARGET_SPECTRAL_RADIUS = 0.9
CONTEXT_STRENGTH = 0.5
KNOCKDOWN = (1.5, 3.0)
LIBRARY_MEAN = 10000.0
DISPERSION = (0.02, 0.2)
NORMALISE_TO = 1e4
NOTE = (
    "SYNTHETIC DATA simulated by perturbfm (perturbfm.builtin.synthetic, simulator version "
    f"{SIMULATOR_VERSION}); not measured in any cell. Ground truth is in the dataset manifest's extra."
)

_INT_OPTIONS = {
    "seed": 0,
    "n_genes": 200,
    "n_contexts": 3,
    "n_singles": 24,
    "n_doubles": 16,
    "cells_per_group": 60,
    "n_control": 200,
    "rank": 4,
}
_FLOAT_OPTIONS = {"interaction_fraction": 0.3}
CONTEXT_MODELS = ("operator", "baseline")
#: options of the baseline-dependent context model (item 6): they enter the dataset's parameters
#: (and so its hash) only when ``context_model=baseline``, so the default output is unchanged
_BASELINE_INT_OPTIONS = {"baseline_rank": 2}
_BASELINE_FLOAT_OPTIONS = {"baseline_spread": 0.6}
BASELINE_NOISE = 0.1
GAIN_RANGE = (0.0, 1.0)
DOWN_HALF_COUNTS = 2.0
_EXAMPLE: dict[str, Any] = {**_INT_OPTIONS, **_FLOAT_OPTIONS, **_BASELINE_INT_OPTIONS, **_BASELINE_FLOAT_OPTIONS}


def hill(dose: float | np.ndarray) -> float | np.ndarray:
    """Hill dose function ``d^n / (d^n + EC50^n)`` (0 for dose 0)."""
    d = np.asarray(dose, dtype=np.float64)
    out = d**HILL_N / (d**HILL_N + HILL_EC50**HILL_N)
    return float(out) if out.ndim == 0 else out


def time_factor(time: float | np.ndarray) -> float | np.ndarray:
    """Time factor ``1 - exp(-time / 24 h)`` (0 at time 0)."""
    t = np.asarray(time, dtype=np.float64)
    out = 1.0 - np.exp(-t / TIME_TAU_H)
    return float(out) if out.ndim == 0 else out


def effect_scale(dose: float | np.ndarray, time: float | np.ndarray) -> float | np.ndarray:
    """The factor the simulator multiplies a group's response by: ``hill(dose) * time_factor(time)``."""
    d = np.asarray(dose, dtype=np.float64)
    t = np.asarray(time, dtype=np.float64)
    out = np.asarray(hill(d)) * np.asarray(time_factor(t))
    return float(out) if out.ndim == 0 else out


def _parse_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise DatasetValidationError(
            f"synthetic option {name!r} must be an integer, got {value!r}", field=name,
            fix=f"pass e.g. --opt {name}={_EXAMPLE[name]}",
        )
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        f = float(str(value).strip())
    except ValueError:
        f = math.nan
    if not math.isfinite(f) or f != int(f):
        raise DatasetValidationError(
            f"synthetic option {name!r} must be an integer, got {value!r}", field=name,
            fix=f"pass e.g. --opt {name}={_EXAMPLE[name]}",
        )
    return int(f)


def _parse_float(name: str, value: Any) -> float:
    try:
        f = float(str(value).strip()) if not isinstance(value, bool) else math.nan
    except ValueError:
        f = math.nan
    if not math.isfinite(f):
        raise DatasetValidationError(
            f"synthetic option {name!r} must be a finite number, got {value!r}", field=name,
            fix=f"pass e.g. --opt {name}={_EXAMPLE[name]}",
        )
    return f


def _check(cond: bool, name: str, message: str, fix: str) -> None:
    if not cond:
        raise DatasetValidationError(f"synthetic option {name!r}: {message}", field=name, fix=fix)


MAX_GENES = 5000
MAX_VALUES = 500_000_000


def parse_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and type the adapter's options (strings from the CLI allowed)."""
    known = (set(_INT_OPTIONS) | set(_FLOAT_OPTIONS) | {"context_model"} | set(_BASELINE_INT_OPTIONS)
             | set(_BASELINE_FLOAT_OPTIONS))
    unknown = sorted(set(options) - known)
    if unknown:
        raise DatasetValidationError(
            f"unknown option(s) for the synthetic dataset: {', '.join(map(repr, unknown))}",
            field=unknown[0],
            fix=f"known options: {', '.join(sorted(known))}",
        )
    p: dict[str, Any] = {}
    for k, default in _INT_OPTIONS.items():
        p[k] = _parse_int(k, options[k]) if k in options and options[k] is not None else default
    for k, fdefault in _FLOAT_OPTIONS.items():
        p[k] = _parse_float(k, options[k]) if k in options and options[k] is not None else fdefault
    _check(p["seed"] >= 0, "seed", f"must be >= 0, got {p['seed']}", "use a non-negative integer seed")
    _check(p["n_genes"] >= 10, "n_genes", f"must be >= 10, got {p['n_genes']}", "use at least 10 genes")
    _check(p["n_contexts"] >= 1, "n_contexts", f"must be >= 1, got {p['n_contexts']}", "use e.g. 3")
    _check(1 <= p["n_singles"] <= int(0.7 * p["n_genes"]), "n_singles",
           f"must be between 1 and 70 % of n_genes ({int(0.7 * p['n_genes'])}), got {p['n_singles']}",
           "lower n_singles or raise n_genes")
    max_doubles = p["n_singles"] * (p["n_singles"] - 1) // 2
    _check(0 <= p["n_doubles"] <= max_doubles, "n_doubles",
           f"must be between 0 and n_singles*(n_singles-1)/2 = {max_doubles}, got {p['n_doubles']}",
           "lower n_doubles or raise n_singles")
    _check(p["cells_per_group"] >= 2, "cells_per_group", f"must be >= 2, got {p['cells_per_group']}", "use e.g. 60")
    _check(p["n_control"] >= 2, "n_control", f"must be >= 2, got {p['n_control']}", "use e.g. 200")
    _check(0 <= p["rank"] <= p["n_genes"], "rank", f"must be between 0 and n_genes, got {p['rank']}", "use e.g. 4")
    _check(0.0 <= p["interaction_fraction"] <= 1.0, "interaction_fraction",
           f"must be in [0, 1], got {p['interaction_fraction']}", "use e.g. 0.3")
    model = str(options.get("context_model") or "operator").strip().lower()
    _check(model in CONTEXT_MODELS, "context_model", f"must be one of {', '.join(CONTEXT_MODELS)}, got "
           f"{options.get('context_model')!r}", "use --opt context_model=baseline (or omit it: operator)")
    given = sorted(k for k in (*_BASELINE_INT_OPTIONS, *_BASELINE_FLOAT_OPTIONS) if options.get(k) is not None)
    _check(model == "baseline" or not given, given[0] if given else "context_model",
           "applies only with context_model=baseline", "add --opt context_model=baseline or drop the option")
    if model == "baseline":
        p["context_model"] = model
        for k, default in _BASELINE_INT_OPTIONS.items():
            p[k] = _parse_int(k, options[k]) if options.get(k) is not None else default
        for k, fdefault in _BASELINE_FLOAT_OPTIONS.items():
            p[k] = _parse_float(k, options[k]) if options.get(k) is not None else fdefault
        _check(1 <= p["baseline_rank"] <= p["n_genes"], "baseline_rank",
               f"must be between 1 and n_genes, got {p['baseline_rank']}", "use e.g. 2")
        _check(0.0 <= p["baseline_spread"] <= 3.0, "baseline_spread",
               f"must be in [0, 3], got {p['baseline_spread']}", "use e.g. 0.6")
    # the simulator holds a dense gene x gene operator and dense per-group cell blocks: refuse sizes
    # that cannot fit in memory instead of letting the machine run out of it
    _check(p["n_genes"] <= MAX_GENES, "n_genes", f"must be <= {MAX_GENES}, got {p['n_genes']}",
           "simulate fewer genes; import a real dataset for larger gene panels")
    _check(p["n_contexts"] <= 100, "n_contexts", f"must be <= 100, got {p['n_contexts']}", "use e.g. 3")
    n_cells = p["n_contexts"] * (p["n_control"] + (p["n_singles"] + p["n_doubles"]) * p["cells_per_group"])
    _check(n_cells * p["n_genes"] <= MAX_VALUES, "cells_per_group",
           f"{n_cells} cells x {p['n_genes']} genes exceeds the simulator's limit of {MAX_VALUES:.0e} values",
           "lower cells_per_group, n_control, n_contexts or n_genes")
    return p


def _graph(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[list[Any]]]:
    A = np.zeros((n, n))
    for i in range(n):
        k = min(1 + int(rng.poisson(2.0)), 6, n - 1)
        others = rng.choice(n - 1, size=k, replace=False)
        dst = np.where(others >= i, others + 1, others)  # skip self-loops
        w = rng.uniform(0.3, 0.8, size=k) * rng.choice([-1.0, 1.0], size=k)
        A[i, dst] = w
    src, dst = np.nonzero(A)
    return A, [[int(s), int(d), round(float(A[s, d]), 6)] for s, d in zip(src, dst)]


def _perron_radius(B: np.ndarray, iters: int = 500) -> float:
    """Spectral radius of a non-negative matrix by power iteration on ``B + I``
    (an upper bound on the spectral radius of any matrix with ``|entries| = B``)."""
    if not B.any():
        return 0.0
    v = np.full(B.shape[0], 1.0 / B.shape[0])
    lam = 0.0
    for _ in range(iters):
        w = B @ v + v
        lam_new = float(w.sum() / v.sum())
        v = w / w.sum()
        if abs(lam_new - lam) < 1e-10 * max(1.0, lam_new):
            lam = lam_new
            break
        lam = lam_new
    return max(lam - 1.0, 0.0)


def simulate(p: Mapping[str, Any]) -> tuple[ad.AnnData, dict[str, Any]]:
    """Run the generative model for parsed options ``p``; return (AnnData, extra)."""
    n_genes, rank = p["n_genes"], p["rank"]
    root = np.random.default_rng(p["seed"])
    r_graph, r_ctx, r_pert, r_cov, r_cells = root.spawn(5)
    genes = [f"SG{i:03d}" for i in range(n_genes)]

    # 1. graph and propagation operator M = (I - alpha A^T)^{-1}
    A, edges = _graph(r_graph, n_genes)
    rho = _perron_radius(np.abs(A))
    alpha = min(1.0, TARGET_SPECTRAL_RADIUS / rho) if rho > 0 else 1.0
    M = np.linalg.inv(np.eye(n_genes) - alpha * A.T)

    # 3. contexts: baselines, library factors, low-rank operators
    contexts = [f"ctx{i}" for i in range(p["n_contexts"])]
    log_base = r_ctx.normal(0.0, 1.2, n_genes)
    ctx_log_base = {c: log_base + r_ctx.normal(0.0, 0.35, n_genes) for c in contexts}
    lib_factor = {c: float(r_ctx.uniform(0.8, 1.25)) for c in contexts}
    if rank > 0:
        U, _ = np.linalg.qr(r_ctx.standard_normal((n_genes, rank)))
        sigma = CONTEXT_STRENGTH * math.sqrt(n_genes) / rank
        ctx_op = {c: U @ (sigma * r_ctx.standard_normal((rank, rank))) @ U.T for c in contexts}
    else:
        ctx_op = {c: np.zeros((n_genes, n_genes)) for c in contexts}
    dispersion = r_ctx.uniform(*DISPERSION, n_genes)
    baseline = _baseline_contexts(root, p, log_base, contexts) if p.get("context_model") == "baseline" else None
    if baseline is not None:
        ctx_log_base = baseline["log_base"]

    # 2. perturbations
    expressed = np.argsort(log_base)[int(round(0.3 * n_genes)):]
    target_idx = np.sort(r_pert.choice(expressed, size=p["n_singles"], replace=False))
    strength = {int(g): float(r_pert.uniform(*KNOCKDOWN)) for g in target_idx}

    def direct(idx: list[int]) -> np.ndarray:
        d = np.zeros(n_genes)
        for g in idx:
            d[g] -= strength[g]
        return d

    all_pairs = list(combinations(range(len(target_idx)), 2))
    pick = r_pert.choice(len(all_pairs), size=p["n_doubles"], replace=False) if p["n_doubles"] else []
    pairs = sorted(all_pairs[int(i)] for i in pick)
    n_nonadd = int(round(p["interaction_fraction"] * len(pairs)))
    nonadd_pos = set(int(i) for i in r_pert.choice(len(pairs), size=n_nonadd, replace=False)) if n_nonadd else set()
    non_target = np.setdiff1d(np.arange(n_genes), target_idx)
    k_epi = min(max(3, n_genes // 20), non_target.size)

    perts: list[tuple[str, np.ndarray]] = []  # (label, network response r)
    for g in target_idx:
        perts.append((canonical_perturbation([genes[g]]), M @ direct([int(g)])))
    epistasis: dict[str, list[list[Any]]] = {}
    non_additive: list[str] = []
    for pos, (a, b) in enumerate(pairs):
        ga, gb = int(target_idx[a]), int(target_idx[b])
        label = canonical_perturbation([genes[ga], genes[gb]])
        d = direct([ga, gb])
        if pos in nonadd_pos:
            idx = r_pert.choice(non_target, size=k_epi, replace=False)
            e = r_pert.uniform(0.8, 1.5, k_epi) * r_pert.choice([-1.0, 1.0], k_epi)
            d[idx] += e
            non_additive.append(label)
            epistasis[label] = [[genes[int(i)], round(float(v), 6)] for i, v in sorted(zip(idx, e))]
        perts.append((label, M @ d))

    # 4. dose / time per (perturbation, context) group
    n_groups = len(perts) * len(contexts)
    doses = r_cov.choice(np.array(DOSE_LEVELS), size=n_groups)
    times = r_cov.choice(np.array(TIME_LEVELS), size=n_groups)

    # 5. cells
    blocks: list[np.ndarray] = []
    obs_pert: list[str] = []
    obs_ctx: list[str] = []
    obs_dose: list[np.ndarray] = []
    obs_time: list[np.ndarray] = []
    gi = 0
    for c in contexts:
        props = np.exp(ctx_log_base[c])
        props /= props.sum()
        op = np.eye(n_genes) + ctx_op[c]
        conds = [(CONTROL, np.zeros(n_genes), 0.0, 0.0, p["n_control"])]
        for label, r in perts:
            dose, time = float(doses[gi]), float(times[gi])
            gi += 1
            resp = op @ r if baseline is None else _baseline_response(baseline, c, r)
            conds.append((label, effect_scale(dose, time) * resp, dose, time, p["cells_per_group"]))
        for label, resp, dose, time, n in conds:
            lib = r_cells.lognormal(math.log(LIBRARY_MEAN * lib_factor[c]), 0.35, size=n)
            mu = lib[:, None] * (props * np.exp(np.clip(resp, -6.0, 3.0)))[None, :]
            shape = 1.0 / dispersion
            lam = r_cells.gamma(shape[None, :], mu * dispersion[None, :])
            blocks.append(r_cells.poisson(lam))
            obs_pert += [label] * n
            obs_ctx += [c] * n
            obs_dose.append(np.full(n, dose))
            obs_time.append(np.full(n, time))

    counts = np.vstack(blocks).astype(np.int64)
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    X = np.log1p(counts / np.maximum(totals, 1.0) * NORMALISE_TO)
    n_obs = counts.shape[0]
    obs = pd.DataFrame(
        {
            PERT_COL: pd.Categorical(obs_pert),
            CONTROL_COL: np.array([x == CONTROL for x in obs_pert], dtype=bool),
            CONTEXT_COL: pd.Categorical(obs_ctx, categories=contexts),
            COVARIATES_COL: np.full(n_obs, "", dtype=object),
            "pfm_dose": np.concatenate(obs_dose).astype(np.float64),
            "pfm_time": np.concatenate(obs_time).astype(np.float64),
            # the simulated perturbations are gene sets (the simulator's targets): kind genetic
            KIND_COL: pd.Categorical([CONTROL if x == CONTROL else GENETIC for x in obs_pert]),
            "synthetic": np.ones(n_obs, dtype=bool),
        },
        index=pd.Index([f"syncell{i:06d}" for i in range(n_obs)]),
    )
    var = pd.DataFrame(index=pd.Index(genes))
    var["synthetic_target"] = np.isin(np.arange(n_genes), target_idx)
    adata = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float64), obs=obs, var=var)
    adata.layers["counts"] = sp.csr_matrix(counts, dtype=np.int64)
    adata.uns["synthetic"] = True
    adata.uns["perturbfm_synthetic_note"] = NOTE

    extra = {
        "synthetic": True,
        "ground_truth_note": (
            "SYNTHETIC DATA. Response of gene set S in context c at (dose, time): "
            "effect_scale(dose, time) * (I + U W_c U^T) (I - alpha A^T)^{-1} d_S on the log-mean scale, "
            "d_S = -sum of the targets' knockdown strengths (+ epistasis vector for non-additive doubles); "
            "A from graph_edges [src, dst, weight] (gene indices into var_names), alpha = propagation_alpha; "
            "effect_scale = hill(dose) * (1 - exp(-time/24h)), hill(d) = d/(d+0.3). "
            "Counts are negative binomial; X = log1p(counts per 10,000). See perturbfm.builtin.synthetic."
        ),
        "genes_note": "graph_edges use gene indices: index i is gene SG{i:03d}",
        "graph_edges": edges,
        "propagation_alpha": float(alpha),
        "contexts": contexts,
        "context_rank": rank,
        "singles": [lab for lab, _ in perts[: len(target_idx)]],
        "doubles": [lab for lab, _ in perts[len(target_idx):]],
        "knockdown_strength": {genes[g]: round(v, 6) for g, v in strength.items()},
        "non_additive_doubles": non_additive,
        "epistasis": epistasis,
        "dose_levels": list(DOSE_LEVELS),
        "time_levels_h": list(TIME_LEVELS),
        "dose_time_model": {
            "formula": "hill(dose) * (1 - exp(-time / tau_h)), hill(d) = d^n / (d^n + ec50^n)",
            "ec50": HILL_EC50,
            "hill_n": HILL_N,
            "tau_h": TIME_TAU_H,
            "function": "perturbfm.builtin.synthetic.effect_scale",
        },
        "group_attributes_note": "dose and time are per (perturbation, context) group, not covariates; "
        "pfm_covariates is empty, controls have dose 0 and time 0",
    }
    if baseline is not None:
        extra.update(_baseline_extra(baseline, genes))
    return adata, extra


def _baseline_contexts(root: np.random.Generator, p: Mapping[str, Any], log_base: np.ndarray,
                       contexts: list[str]) -> dict[str, Any]:
    """Draws of the baseline-dependent context model (item 6 of the module docstring).

    Uses its own generator (the 6th child of the seed), so the draws of items 1-5 are those
    of the default model."""
    (r_base,) = root.spawn(1)
    n_genes, k, rank = p["n_genes"], p["baseline_rank"], p["rank"]
    V = r_base.standard_normal((n_genes, k)) / math.sqrt(k)
    z = {c: r_base.standard_normal(k) for c in contexts}
    log_b = {c: log_base + p["baseline_spread"] * (V @ z[c]) + r_base.normal(0.0, BASELINE_NOISE, n_genes)
             for c in contexts}
    gamma = r_base.uniform(*GAIN_RANGE, n_genes)
    if rank > 0:
        U, _ = np.linalg.qr(r_base.standard_normal((n_genes, rank)))
        sigma = CONTEXT_STRENGTH * math.sqrt(n_genes) / (rank * math.sqrt(k))
        W = sigma * r_base.standard_normal((k, rank, rank))
    else:
        U, W = np.zeros((n_genes, 0)), np.zeros((k, 0, 0))
    lib = {c: float(LIBRARY_MEAN) for c in contexts}
    return {"log_base": log_b, "V": V, "z": z, "gamma": gamma, "U": U, "W": W, "global_log_base": log_base,
            "lib": lib}


def _baseline_response(b: Mapping[str, Any], c: str, r: np.ndarray) -> np.ndarray:
    """Response of network response ``r`` in context ``c`` under the baseline model (log-mean scale)."""
    U, W, z = b["U"], b["W"], b["z"][c]
    mod = r + U @ (np.tensordot(z, W, axes=1) @ (U.T @ r)) if U.shape[1] else r.copy()
    gain = np.exp(b["gamma"] * (b["log_base"][c] - b["global_log_base"]))
    props = np.exp(b["log_base"][c])
    mu = b["lib"][c] * props / props.sum()  # expected control counts per cell at the mean library size
    down = mu / (mu + DOWN_HALF_COUNTS)
    out: np.ndarray = mod * gain * np.where(mod < 0.0, down, 1.0)
    return out


def _baseline_extra(b: Mapping[str, Any], genes: list[str]) -> dict[str, Any]:
    def rnd(x: np.ndarray) -> list[Any]:
        return np.round(np.asarray(x, dtype=np.float64), 6).tolist()

    return {
        "context_model": "baseline",
        "context_model_note": (
            "SYNTHETIC DATA, baseline-dependent contexts: log baseline of context c = global log baseline "
            "+ baseline_spread * V z_c + N(0, 0.1) noise (V: genes x baseline_rank, z_c ~ N(0, I)); response of "
            "network response r in c = effect_scale * [r + U (sum_k z_c[k] W_k) U^T r] * exp(gamma_g * "
            "(log baseline_c - global log baseline)) * (mu_gc / (mu_gc + 2) where the response is negative), "
            "mu_gc = expected control counts per cell at 10,000 counts. Everything a response depends on "
            "besides the perturbation is a function of the context's baseline, which its control cells show."
        ),
        "global_log_baseline": rnd(b["global_log_base"]),
        "context_factors": {c: rnd(v) for c, v in b["z"].items()},
        "baseline_basis": rnd(b["V"]),
        "response_gain_gamma": dict(zip(genes, rnd(b["gamma"]))),
        "modulation_basis": rnd(b["U"]),
        "modulation_weights": rnd(b["W"]),
        "down_half_counts": DOWN_HALF_COUNTS,
    }


class SyntheticAdapter(DatasetAdapter):
    """PerturbFM's embedded simulated dataset: needs no download and no path."""

    name = "synthetic"
    description = (
        "SYNTHETIC DATA: simulated CRISPR knockdowns (singles + doubles) propagating through a known "
        "gene graph, in several contexts, with dose/time, as negative-binomial counts (log1p CP10k)"
    )
    options: ClassVar[Mapping[str, str]] = {
        "seed": "random seed (int >= 0, default 0); the dataset is a function of the options",
        "n_genes": "number of simulated genes SG000.. (default 200)",
        "n_contexts": "number of contexts ctx0.. (cell lines; default 3)",
        "n_singles": "number of single-gene perturbations (targets are measured genes; default 24)",
        "n_doubles": "number of double perturbations, pairs of the singles (default 16)",
        "cells_per_group": "cells per (perturbation, context) group (default 60)",
        "n_control": "control cells per context (default 200)",
        "rank": "rank of the per-context response operator U W_c U^T (default 4; 0 = contexts share responses)",
        "interaction_fraction": "fraction of doubles with a non-additive (epistatic) response (0..1, default 0.3)",
        "context_model": "operator (default: a random low-rank response operator per context) or baseline "
                         "(contexts drawn from a low-rank baseline space; the response is a function of the "
                         "context's baseline, so transfer to an unseen context is learnable from its control cells)",
        "baseline_rank": "context_model=baseline only: rank of the baseline space (default 2)",
        "baseline_spread": "context_model=baseline only: sd of a context's log-baseline shift per gene (default 0.6)",
    }

    def load(self, path: str | None = None, **options: Any) -> AdapterResult:
        if path is not None:
            raise DatasetValidationError(
                "the synthetic dataset is simulated and reads no file", file=str(path), field="path",
                fix="omit the path (use --opt key=value to change the simulation)",
            )
        p = parse_options(options)
        adata, extra = simulate(p)
        return AdapterResult(
            adata=adata,
            source={"simulator": SIMULATOR, "version": SIMULATOR_VERSION, "seed": p["seed"], "params": dict(p)},
            synthetic=True,
            expression_space="log1p_cp10k",
            processing=[
                f"simulated by {SIMULATOR} v{SIMULATOR_VERSION} (negative-binomial counts from a gene-graph "
                "response model with contexts, doubles, dose and time; SYNTHETIC DATA)",
                "normalised to 10,000 counts per cell, then log1p",
                *(["contexts drawn from a low-rank baseline space; responses depend on the context's baseline "
                   "(context_model=baseline; SYNTHETIC DATA)"] if p.get("context_model") == "baseline" else []),
            ],
            licence="CC0-1.0 (simulated by PerturbFM)",
            citation="synthetic; no publication",
            extra=extra,
        )
