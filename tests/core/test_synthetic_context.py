"""The simulator's baseline-dependent contexts (``context_model=baseline``): SYNTHETIC DATA."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from perturbfm.builtin.synthetic import SyntheticAdapter, _baseline_response, effect_scale
from perturbfm.dataset import CONTROL, group_table, grouped_moments
from perturbfm.errors import DatasetValidationError

SMALL = dict(n_genes=40, n_singles=6, n_doubles=4, cells_per_group=10, n_control=20, seed=3)
CTX = dict(n_genes=80, n_contexts=6, n_singles=10, n_doubles=4, cells_per_group=40, n_control=150, seed=1,
           context_model="baseline")


@pytest.fixture(scope="module")
def ctx_result():
    return SyntheticAdapter().load(**CTX)


@pytest.fixture(scope="module")
def means(ctx_result):
    a = ctx_result.adata
    order = sorted(group_table(a))
    m, _, _ = grouped_moments(a, a.obs["pfm_group"].astype(str).to_numpy(), order)
    return {g: m[i] for i, g in enumerate(order)}


def test_default_output_is_unchanged_bytes():
    """Without ``context_model`` the simulator's counts are those of simulator version 1 before the
    option existed (sha256 of the dense int64 counts; a numpy release that changed its random
    streams would break this too: then check that only numpy changed)."""
    r = SyntheticAdapter().load(**SMALL)
    digest = hashlib.sha256(r.adata.layers["counts"].toarray().tobytes()).hexdigest()
    assert digest == "53a3889e4eba669f81a229b0120a82a5ba0ca493cc47490376ce61f8d4614a43"
    assert "context_model" not in r.source["params"] and "context_model" not in r.extra
    explicit = SyntheticAdapter().load(**SMALL, context_model="operator")
    assert (explicit.adata.layers["counts"] != r.adata.layers["counts"]).nnz == 0
    assert explicit.source == r.source


def test_baseline_model_is_labelled_synthetic_and_recorded(ctx_result):
    r = ctx_result
    assert r.synthetic and r.adata.uns["synthetic"] and r.adata.obs["synthetic"].all()
    assert r.source["params"]["context_model"] == "baseline"
    assert r.source["params"]["baseline_rank"] == 2 and r.source["params"]["baseline_spread"] == 0.6
    assert r.extra["context_model"] == "baseline" and "SYNTHETIC" in r.extra["context_model_note"]
    assert set(r.extra["context_factors"]) == set(r.extra["contexts"])
    assert any("baseline" in line for line in r.processing)
    json.dumps(r.extra)  # the manifest's extra stays JSON
    again = SyntheticAdapter().load(**CTX)
    assert (again.adata.X != r.adata.X).nnz == 0
    other = SyntheticAdapter().load(**{**CTX, "context_model": "operator"})
    assert (other.adata.X != r.adata.X).nnz > 0


def test_option_errors():
    with pytest.raises(DatasetValidationError, match="context_model"):
        SyntheticAdapter().load(**SMALL, context_model="weird")
    with pytest.raises(DatasetValidationError, match="baseline_rank"):
        SyntheticAdapter().load(**SMALL, baseline_rank=3)  # only with context_model=baseline
    with pytest.raises(DatasetValidationError, match="baseline_spread"):
        SyntheticAdapter().load(**SMALL, context_model="baseline", baseline_spread=-1)
    r = SyntheticAdapter().load(**SMALL, context_model="baseline", baseline_rank="3", baseline_spread="0.4")
    assert r.source["params"]["baseline_rank"] == 3 and r.source["params"]["baseline_spread"] == 0.4
    assert set(SyntheticAdapter.options) == set(r.source["params"])


def test_control_cells_show_the_context_factors(ctx_result, means):
    """The control pseudobulk of a context, projected on the baseline basis, recovers its factors."""
    ex = ctx_result.extra
    V = np.array(ex["baseline_basis"])
    ctrl = np.stack([means[f"{CONTROL}@{c}"] for c in ex["contexts"]])
    y = ctrl - ctrl.mean(axis=0)
    z_hat = np.linalg.lstsq(V, y.T, rcond=None)[0].T  # contexts x rank
    z = np.stack([ex["context_factors"][c] for c in ex["contexts"]])
    z = z - z.mean(axis=0)
    for k in range(z.shape[1]):
        assert np.corrcoef(z[:, k], z_hat[:, k])[0, 1] > 0.9


def _network_response(ex: dict, genes: list[str], label: str) -> np.ndarray:
    n = len(genes)
    A = np.zeros((n, n))
    for s, d, w in ex["graph_edges"]:
        A[s, d] = w
    idx = {g: i for i, g in enumerate(genes)}
    d = np.zeros(n)
    for g in label.split("+"):
        d[idx[g]] -= ex["knockdown_strength"][g]
    for g, v in ex["epistasis"].get(label, []):
        d[idx[g]] += v
    return np.linalg.solve(np.eye(n) - ex["propagation_alpha"] * A.T, d)


def test_response_in_a_context_is_a_function_of_its_baseline(ctx_result, means):
    """Transfer is learnable by construction: the generative response evaluated at a context's
    factors predicts its groups far better than the same perturbation's mean delta in the
    other contexts (the train-mean of a context hold-out)."""
    r, ex = ctx_result, ctx_result.extra
    genes = list(r.adata.var_names)
    groups = group_table(r.adata)
    gl = np.array(ex["global_log_baseline"])
    V = np.array(ex["baseline_basis"])
    truth = {
        "U": np.array(ex["modulation_basis"]), "W": np.array(ex["modulation_weights"]),
        "gamma": np.array([ex["response_gain_gamma"][g] for g in genes]), "global_log_base": gl,
    }
    time = r.adata.obs.groupby("pfm_group", observed=True)["pfm_time"].first()
    perts = ex["singles"] + ex["doubles"]
    ctxs = ex["contexts"]
    delta = {(p, c): means[f"{p}@{c}"] - means[f"{CONTROL}@{c}"] for p in perts for c in ctxs}
    err_model, err_transfer = [], []
    for c in ctxs:
        z = np.array(ex["context_factors"][c])
        b = {**truth, "z": {c: z}, "log_base": {c: gl + 0.6 * V @ z}, "lib": {c: 1e4}}
        for p in perts:
            gid = f"{p}@{c}"
            pred = effect_scale(groups[gid].dose, time[gid]) * _baseline_response(b, c, _network_response(ex, genes, p))
            err_model.append(np.linalg.norm(pred - delta[(p, c)]))
            other = np.mean([delta[(p, o)] for o in ctxs if o != c], axis=0)
            err_transfer.append(np.linalg.norm(other - delta[(p, c)]))
    assert np.mean(err_model) < 0.7 * np.mean(err_transfer)


def test_unexpressed_genes_cannot_go_down_and_expressed_scale_up():
    n = 4
    b = {"U": np.zeros((n, 0)), "W": np.zeros((1, 0, 0)), "z": {"c": np.zeros(1)}, "gamma": np.full(n, 1.0),
         "global_log_base": np.zeros(n), "log_base": {"c": np.array([-12.0, 0.0, 0.5, 0.5])}, "lib": {"c": 1e4}}
    r = np.array([-2.0, -2.0, 1.0, -1.0])
    out = _baseline_response(b, "c", r)
    assert abs(out[0]) < 1e-3  # essentially not expressed: no decrease
    assert out[1] < -1.9  # expressed at the global level: the full decrease
    assert out[2] == pytest.approx(np.exp(0.5))  # an increase scaled by the baseline shift, no down-gate
    assert out[3] < 0 and abs(out[3]) > 1.0  # a decrease on a gene expressed above its global level grows
