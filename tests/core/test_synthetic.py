"""The embedded synthetic dataset (adapter ``synthetic``): SYNTHETIC DATA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from perturbfm.builtin.synthetic import SyntheticAdapter, effect_scale
from perturbfm.dataset import (
    CONTEXT_COL,
    CONTROL,
    CONTROL_COL,
    COVARIATES_COL,
    PERT_COL,
    REQUIRED_COLS,
    canonical_perturbation,
    group_table,
    grouped_moments,
)
from perturbfm.errors import DatasetValidationError
from perturbfm.interfaces import AdapterResult


@pytest.fixture(scope="module")
def result() -> AdapterResult:
    return SyntheticAdapter().load()


@pytest.fixture(scope="module")
def pseudobulk(result):
    """(group id -> mean delta vs its context's controls, group table)."""
    adata = result.adata
    groups = group_table(adata)
    order = sorted(groups)
    means, _, _ = grouped_moments(adata, adata.obs["pfm_group"].astype(str).to_numpy(), order)
    m = {g: means[i] for i, g in enumerate(order)}
    deltas = {
        g: m[g] - m[f"{CONTROL}@{info.context}"] for g, info in groups.items() if not info.is_control
    }
    return deltas, groups


def _small(**kw):
    opts = dict(n_genes=40, n_singles=6, n_doubles=4, cells_per_group=10, n_control=20)
    opts.update(kw)
    return SyntheticAdapter().load(**opts)


def test_deterministic_for_a_seed():
    a, b, c = _small(seed=3), _small(seed=3), _small(seed=4)
    assert (a.adata.X != b.adata.X).nnz == 0
    assert a.adata.obs.equals(b.adata.obs)
    assert a.extra == b.extra
    assert list(a.adata.var_names) == list(b.adata.var_names)
    assert a.adata.X.shape == c.adata.X.shape
    assert (a.adata.X != c.adata.X).nnz > 0
    assert a.extra["graph_edges"] != c.extra["graph_edges"]


def test_shape_and_canonical_columns(result):
    adata = result.adata
    n_ctx, n_pert = 3, 24 + 16
    assert adata.shape == (n_ctx * (200 + n_pert * 60), 200)
    assert list(adata.var_names[:2]) == ["SG000", "SG001"] and adata.var_names[-1] == "SG199"
    for col in (*REQUIRED_COLS, "pfm_dose", "pfm_time", "synthetic"):
        assert col in adata.obs, col
    obs = adata.obs
    assert obs["synthetic"].all()
    assert (obs[COVARIATES_COL].astype(str) == "").all()
    labels = obs[PERT_COL].astype(str)
    assert (obs[CONTROL_COL].to_numpy(dtype=bool) == (labels == CONTROL).to_numpy()).all()
    for lab in set(labels) - {CONTROL}:
        assert lab == canonical_perturbation(lab.split("+"))
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.float64
    assert np.issubdtype(adata.layers["counts"].dtype, np.integer)
    assert bool(adata.uns["synthetic"]) is True
    assert adata.uns["perturbfm_synthetic_note"].startswith("SYNTHETIC DATA simulated by perturbfm")


def test_result_metadata_is_synthetic_and_json(result):
    assert result.synthetic is True
    assert result.expression_space == "log1p_cp10k"
    assert result.source["simulator"] == "perturbfm.synthetic" and result.source["seed"] == 0
    assert result.source["params"]["n_genes"] == 200
    assert result.licence.startswith("CC0-1.0") and result.citation
    assert any("log1p" in p for p in result.processing)
    extra = result.extra
    assert extra["synthetic"] is True
    json.dumps(extra)
    json.dumps(result.source)
    assert len(json.dumps(extra)) < 100_000
    edges = extra["graph_edges"]
    assert len(edges) > 200 and all(len(e) == 3 and e[0] != e[1] for e in edges)
    assert all(0.3 <= abs(e[2]) <= 0.8 for e in edges)
    assert set(extra["non_additive_doubles"]) <= set(extra["doubles"])
    assert len(extra["non_additive_doubles"]) == round(0.3 * 16)


def test_contexts_groups_and_controls(result):
    obs = result.adata.obs
    contexts = sorted(set(obs[CONTEXT_COL].astype(str)))
    assert len(contexts) >= 3 and contexts == sorted(result.extra["contexts"])
    perts = set(result.extra["singles"]) | set(result.extra["doubles"])
    assert len(result.extra["singles"]) == 24 and len(result.extra["doubles"]) == 16
    assert all(len(d.split("+")) == 2 and set(d.split("+")) <= set(result.extra["singles"])
               for d in result.extra["doubles"])
    for ctx in contexts:
        in_ctx = obs[obs[CONTEXT_COL].astype(str) == ctx]
        counts = in_ctx[PERT_COL].astype(str).value_counts()
        assert counts[CONTROL] == 200
        assert set(counts.index) - {CONTROL} == perts
        assert (counts.drop(CONTROL) == 60).all()


def test_dose_and_time(result, pseudobulk):
    obs = result.adata.obs
    dose, time = obs["pfm_dose"].to_numpy(), obs["pfm_time"].to_numpy()
    assert dose.dtype == np.float64 and time.dtype == np.float64
    assert np.isfinite(dose).all() and np.isfinite(time).all()
    ctrl = obs[CONTROL_COL].to_numpy(dtype=bool)
    assert (dose[ctrl] == 0.0).all() and (time[ctrl] == 0.0).all()
    assert set(np.unique(dose[~ctrl])) <= {0.1, 1.0, 10.0} and len(np.unique(dose[~ctrl])) > 1
    assert set(np.unique(time[~ctrl])) <= {24.0, 72.0} and len(np.unique(time[~ctrl])) > 1
    # one dose and one time per (perturbation, context) group
    per_group = obs.groupby("pfm_group", observed=True)[["pfm_dose", "pfm_time"]].nunique()
    assert (per_group == 1).all().all()
    _, groups = pseudobulk
    assert all(g.dose is not None and g.time is not None for g in groups.values())
    assert effect_scale(0.1, 24.0) < effect_scale(1.0, 24.0) < effect_scale(10.0, 72.0) <= 1.0


def test_x_is_log1p_cp10k_of_counts(result):
    adata = result.adata
    X = adata.X.toarray()
    assert np.allclose(np.expm1(X).sum(axis=1), 1e4)
    counts = adata.layers["counts"].toarray().astype(np.float64)
    expect = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    assert np.allclose(X, expect)


def test_effect_is_visible(result, pseudobulk):
    deltas, _ = pseudobulk
    pert = np.mean([np.abs(d).mean() for d in deltas.values()])
    adata, obs = result.adata, result.adata.obs
    rng = np.random.default_rng(0)
    null = []
    for ctx in result.extra["contexts"]:
        idx = np.flatnonzero(obs[CONTROL_COL].to_numpy(dtype=bool) & (obs[CONTEXT_COL] == ctx).to_numpy())
        rng.shuffle(idx)
        half = idx.size // 2
        X = adata.X[idx].toarray()
        null.append(np.abs(X[:half].mean(0) - X[half:].mean(0)).mean())
    assert pert > 1.5 * np.mean(null)
    # the targets themselves are knocked down
    var = list(adata.var_names)
    target_deltas = [
        deltas[f"{s}@{c}"][var.index(s)] for s in result.extra["singles"] for c in result.extra["contexts"]
    ]
    assert np.mean(np.array(target_deltas) < 0) > 0.9


def test_response_differs_between_contexts(result, pseudobulk):
    deltas, _ = pseudobulk
    contexts = result.extra["contexts"]
    corrs = []
    for p in result.extra["singles"] + result.extra["doubles"]:
        for i in range(len(contexts)):
            for j in range(i + 1, len(contexts)):
                corrs.append(np.corrcoef(deltas[f"{p}@{contexts[i]}"], deltas[f"{p}@{contexts[j]}"])[0, 1])
    corrs = np.array(corrs)
    assert np.all(corrs < 0.99)
    assert 0.0 < np.median(corrs) < 0.99
    assert np.mean(corrs > 0) > 0.8


def test_non_additive_doubles_deviate_more(result, pseudobulk):
    deltas, _ = pseudobulk
    non_add = set(result.extra["non_additive_doubles"])
    assert non_add
    dev: dict[bool, list[float]] = {True: [], False: []}
    for d in result.extra["doubles"]:
        a, b = d.split("+")
        for c in result.extra["contexts"]:
            resid = deltas[f"{d}@{c}"] - deltas[f"{a}@{c}"] - deltas[f"{b}@{c}"]
            dev[d in non_add].append(float(np.abs(resid).mean()))
    assert np.mean(dev[True]) > 1.2 * np.mean(dev[False])


def test_options_from_strings_and_errors():
    res = SyntheticAdapter().load(n_genes="40", n_singles="6", n_doubles="4", cells_per_group="10",
                                  n_control="20", n_contexts="3", rank="2", interaction_fraction="0.5",
                                  seed="7")
    assert res.adata.n_vars == 40 and res.source["params"]["interaction_fraction"] == 0.5
    assert res.source["seed"] == 7 and len(res.extra["non_additive_doubles"]) == 2
    with pytest.raises(DatasetValidationError, match="bogus"):
        SyntheticAdapter().load(bogus=1)
    with pytest.raises(DatasetValidationError, match="n_genes"):
        SyntheticAdapter().load(n_genes="many")
    with pytest.raises(DatasetValidationError, match="interaction_fraction"):
        SyntheticAdapter().load(interaction_fraction=1.5)
    with pytest.raises(DatasetValidationError, match="n_doubles"):
        _small(n_doubles=100)
    with pytest.raises(DatasetValidationError, match="path"):
        SyntheticAdapter().load("/some/file.h5ad")
    baseline_only = {"context_model", "baseline_rank", "baseline_spread"}  # in params only when set
    assert set(SyntheticAdapter.options) - baseline_only == set(res.source["params"])


def test_registered_as_synthetic():
    from perturbfm.plugins import PluginRegistry

    adapter = PluginRegistry().create("dataset_adapter", "synthetic")
    assert isinstance(adapter, SyntheticAdapter) and adapter.name == "synthetic"
    res = adapter.load(n_genes=30, n_singles=4, n_doubles=2, cells_per_group=5, n_control=10)
    assert res.synthetic and res.adata.n_vars == 30
