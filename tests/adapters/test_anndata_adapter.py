"""The ``anndata`` adapter on small files written in the test."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from adapter_helpers import make_adata
from perturbfm.dataset import group_table
from perturbfm.errors import DatasetValidationError
from perturbfm.hashing import sha256_file
from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter


def load(path: Path, **opts):
    return AnnDataAdapter().load(str(path), **opts)


def expect_error(path: Path, field: str, match: str | None = None, **opts) -> DatasetValidationError:
    with pytest.raises(DatasetValidationError, match=match) as info:
        load(path, **opts)
    err = info.value
    assert err.file == str(Path(path).resolve())
    assert err.field == field
    assert err.fix
    return err


# ------------------------------------------------------------------ happy paths
def test_counts_normalised_to_log1p_cp10k(write_h5ad):
    X = np.array([[1, 3, 0, 6], [0, 0, 2, 2], [5, 0, 0, 0], [1, 1, 1, 1]], dtype=np.float32)
    path = write_h5ad(make_adata(["control", "control", "A", "A"], X=sp.csr_matrix(X)))
    res = load(path)
    assert res.expression_space == "log1p_cp10k"
    assert "normalised to 10,000 counts per cell, then log1p" in res.processing
    assert any("auto-detected as raw counts" in p for p in res.processing)
    out = res.adata.X
    assert sp.issparse(out) and out.format == "csr"
    assert out.dtype == np.float64
    X64 = X.astype(np.float64)
    expected = np.log1p(X64 / X64.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-12)


def test_dense_log1p_kept_as_provided(write_h5ad):
    X = np.log1p(np.arange(32, dtype=np.float64).reshape(8, 4) / 3.0)
    path = write_h5ad(make_adata(X=X))
    res = load(path)
    assert res.expression_space == "log1p (as provided)"
    assert any("auto-detected as log1p" in p for p in res.processing)
    np.testing.assert_array_equal(res.adata.X.toarray(), X)
    assert sp.issparse(res.adata.X) and res.adata.X.dtype == np.float64


def test_forced_modes(write_h5ad):
    path = write_h5ad(make_adata())
    assert load(path, expression="log1p").expression_space == "log1p (as provided)"
    assert load(path, expression="counts").expression_space == "log1p_cp10k"


def test_combos_canonical_and_control(write_h5ad):
    labels = ["control", "control", "B+A", "A+B", " A ", "C+"]
    res = load(write_h5ad(make_adata(labels, n_genes=3)))
    obs = res.adata.obs
    assert obs["pfm_perturbation"].tolist() == ["control", "control", "A+B", "A+B", "A", "C"]
    assert obs["pfm_is_control"].tolist() == [True, True, False, False, False, False]
    assert set(obs["pfm_context"]) == {"all"}
    assert set(obs["pfm_covariates"]) == {""}
    assert "perturbation" in obs.columns  # original columns kept
    assert set(group_table(res.adata)) == {"control@all", "A+B@all", "A@all", "C@all"}


def test_gears_style_ctrl_parts(write_h5ad):
    labels = ["ctrl", "ctrl", "A+ctrl", "ctrl+B", "B+A", "ctrl+ctrl"]
    res = load(write_h5ad(make_adata(labels)), control="ctrl")
    assert res.adata.obs["pfm_perturbation"].tolist() == ["control", "control", "A", "B", "A+B", "control"]
    assert res.adata.obs["pfm_is_control"].sum() == 3


def test_other_delimiter(write_h5ad):
    res = load(write_h5ad(make_adata(["NT", "NT", "B_A", "A"])), control="NT", combo_delimiter="_")
    assert res.adata.obs["pfm_perturbation"].tolist() == ["control", "control", "A+B", "A"]


def test_context_and_covariate_keys(write_h5ad):
    labels = ["control", "control", "A", "A", "control", "A"]
    adata = make_adata(
        labels, contexts=["K", "K", "K", "K", "H", "H"],
        extra_obs={"donor": ["d1", "d2", "d1", "d2", "d1", "d1"],
                   "dose": [0.0, 0.0, 1.5, 3.0, 0.0, 1.5],
                   "time": ["24", "24", "24", "48", "24", "24"],
                   "guides": ["1", "1", "1+1", "1", "1", "1"]},
    )
    res = load(write_h5ad(adata), context_keys="cell_type,donor", covariate_keys=["dose", "time", "guides"])
    obs = res.adata.obs
    assert obs["pfm_context"].tolist() == ["K/d1", "K/d2", "K/d1", "K/d2", "H/d1", "H/d1"]
    assert obs["pfm_covariates"].iloc[2] == "dose=1.5;guides=1+1;time=24"
    np.testing.assert_array_equal(obs["pfm_dose"].to_numpy(), [0.0, 0.0, 1.5, 3.0, 0.0, 1.5])
    np.testing.assert_array_equal(obs["pfm_time"].to_numpy(), [24.0, 24, 24, 48, 24, 24])
    gids = set(group_table(res.adata))
    assert "A@K/d1@dose=1.5;guides=1+1;time=24" in gids


def test_non_numeric_dose_kept_as_string_only(write_h5ad):
    adata = make_adata(extra_obs={"dose": ["1"] * 6 + ["1+1"] * 2})
    res = load(write_h5ad(adata), covariate_keys="dose")
    assert "pfm_dose" not in res.adata.obs
    assert res.adata.obs["pfm_covariates"].iloc[-1] == "dose=1+1"
    assert any("not numeric" in p for p in res.processing)


def test_obs_filter_bool_and_string(write_h5ad):
    adata = make_adata(extra_obs={"ok": [True, False, True, True, False, True, True, False],
                                  "rep": ["r1", "r2"] * 4, "n": [1.0, 2.0] * 4})
    path = write_h5ad(adata)
    res = load(path, obs_filter="ok=True")
    assert res.adata.n_obs == 5 and res.adata.obs["ok"].all()
    assert load(path, obs_filter="rep=r2").adata.n_obs == 4
    assert load(path, obs_filter="n=2").adata.n_obs == 4
    expect_error(path, "ok", "boolean", obs_filter="ok=maybe")
    expect_error(path, "nope", "no obs column", obs_filter="nope=1")
    expect_error(path, "rep", "zero cells", obs_filter="rep=r9")
    expect_error(path, "obs_filter", "column=value", obs_filter="rep")


def test_input_file_not_modified_and_source(write_h5ad):
    adata = make_adata(extra_obs={"pfm_group": ["stale"] * 8})
    path = write_h5ad(adata)
    before = sha256_file(path)
    res = load(path, licence="CC-BY-4.0", citation="Doe 2024")
    assert sha256_file(path) == before
    assert res.source == {"path": str(path.resolve()), "file_sha256": before, "format": "h5ad"}
    assert res.synthetic is False and res.licence == "CC-BY-4.0" and res.citation == "Doe 2024"
    assert "pfm_group" not in res.adata.obs  # a stale cached group column is dropped
    again = ad.read_h5ad(path)
    assert "pfm_perturbation" not in again.obs
    assert again.X.dtype == np.float32


def test_options_documented():
    for opt in ("perturbation_key", "control", "combo_delimiter", "context_keys", "covariate_keys",
                "expression", "obs_filter", "licence", "citation"):
        assert AnnDataAdapter.options[opt]


# ------------------------------------------------------------------ malformed input
def test_missing_and_unreadable_file(tmp_path):
    expect_error(tmp_path / "nope.h5ad", "path", "does not exist")
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    expect_error(bad, "path", "cannot read")


def test_unknown_option_and_bad_expression(write_h5ad):
    path = write_h5ad(make_adata())
    expect_error(path, "perturbation_col", "unknown option", perturbation_col="x")
    expect_error(path, "expression", "expression must be", expression="raw")


def test_missing_keys(write_h5ad):
    path = write_h5ad(make_adata(contexts=["K"] * 8))
    err = expect_error(path, "condition", "no column", perturbation_key="condition")
    assert "perturbation" in err.fix and "cell_type" in err.fix  # lists available columns
    expect_error(path, "cell_line", "context_keys", context_keys="cell_line")
    expect_error(path, "dose", "covariate_keys", covariate_keys=["dose"])


def test_no_control_cells(write_h5ad):
    path = write_h5ad(make_adata(["NT"] * 3 + ["A"] * 5))
    err = expect_error(path, "perturbation", "no control cells")
    assert "'control'" in err.message and "A (5)" in err.message and "NT (3)" in err.message


def test_context_without_controls(write_h5ad):
    adata = make_adata(contexts=["K", "K", "K", "K", "H", "H", "K", "H"])
    err = expect_error(write_h5ad(adata), "cell_type", "no control cells", context_keys="cell_type")
    assert "H" in err.message


@pytest.mark.parametrize("bad, n", [(np.nan, 1), (np.inf, 1)])
def test_non_finite_values(write_h5ad, bad, n):
    X = np.ones((8, 4))
    X[2, 1] = bad
    err = expect_error(write_h5ad(make_adata(X=X)), "X", "NaN or infinite")
    assert f"holds {n} " in err.message


def test_negative_values(write_h5ad):
    X = np.ones((8, 4))
    X[0, 0] = -2.0
    path = write_h5ad(make_adata(X=X))
    expect_error(path, "X", "negative", expression="counts")
    expect_error(path, "X", "negative")  # auto: not counts, and not log1p either


@pytest.mark.filterwarnings("ignore:(Observation|Variable) names are not unique:UserWarning")
def test_duplicate_names(write_h5ad):
    adata = make_adata()
    adata.obs_names = ["c0"] * 2 + [f"c{i}" for i in range(2, 8)]
    expect_error(write_h5ad(adata, "dupobs"), "obs_names", "duplicate obs")
    adata = make_adata()
    adata.var_names = ["g0", "g1", "g1", "g3"]
    err = expect_error(write_h5ad(adata, "dupvar"), "var_names", "duplicate var")
    assert "g1" in err.message


def test_empty_labels(write_h5ad):
    path = write_h5ad(make_adata(["control", "control", "", "A"]), "empty")
    expect_error(path, "perturbation", "empty perturbation label")
    adata = make_adata(["control", "control", "A", "A"])
    adata.obs["perturbation"] = pd.Categorical(["control", None, "A", "A"])
    expect_error(write_h5ad(adata, "nan"), "perturbation", "2 cell|1 cell")
    adata = make_adata(contexts=["K", None, "K", "K", "K", "K", "K", "K"])
    expect_error(write_h5ad(adata, "ctx"), "cell_type", "empty context", context_keys="cell_type")


def test_reserved_characters(write_h5ad):
    expect_error(write_h5ad(make_adata(["control", "A@x"])), "perturbation", "reserved")


def test_zero_cells_and_zero_genes(write_h5ad):
    empty = make_adata(X=sp.csr_matrix((8, 4)))[:0].copy()
    expect_error(write_h5ad(empty, "nocells"), "obs", "zero cells")
    nogenes = make_adata(X=sp.csr_matrix((8, 0)))
    expect_error(write_h5ad(nogenes, "nogenes"), "var", "zero genes")
