"""The ``anndata`` adapter on the real shared data files (fail under CI if missing)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from adapter_helpers import require_shared
from perturbfm.dataset import group_table
from perturbfm.hashing import sha256_file
from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter

DEVEL = "perturbench_devel/norman19_mcfaline23_devel.h5ad"
PAPALEXI = "papalexi2021_thp1/papalexi2021_thp1_lowmoi.h5ad"


@pytest.fixture(scope="module")
def devel():
    path = require_shared(DEVEL)
    return path, AnnDataAdapter().load(str(path), perturbation_key="condition", context_keys=["cell_type"])


def test_devel_contexts_and_groups(devel):
    path, res = devel
    groups = {g: i for g, i in group_table(res.adata).items() if not i.is_control}
    per_ctx = Counter(i.context for i in groups.values())
    assert per_ctx == {"k562": 33, "A172": 9, "T98G": 9, "U87MG": 9}
    k562 = [i for i in groups.values() if i.context == "k562"]
    assert sum(len(i.genes) == 1 for i in k562) == 18
    assert sum(len(i.genes) == 2 for i in k562) == 15
    assert "KLF1+SET@k562" in groups  # "SET+KLF1" canonicalised
    assert res.expression_space == "log1p (as provided)"
    assert any("auto-detected as log1p" in p for p in res.processing)
    assert res.adata.obs["pfm_is_control"].sum() == 400
    assert res.source["file_sha256"] == sha256_file(path)
    assert res.adata.X.dtype == np.float64


def test_devel_dose_is_string_covariate_only():
    path = require_shared(DEVEL)
    res = AnnDataAdapter().load(str(path), perturbation_key="condition", context_keys="cell_type",
                                covariate_keys="dose")
    assert "pfm_dose" not in res.adata.obs
    assert set(res.adata.obs["pfm_covariates"]) == {"dose=1", "dose=1+1"}


def test_papalexi_counts_and_filter():
    path = require_shared(PAPALEXI)
    res = AnnDataAdapter().load(str(path), perturbation_key="perturbation",
                                obs_filter="confident_assignment=True")
    assert res.expression_space == "log1p_cp10k"
    assert "normalised to 10,000 counts per cell, then log1p" in res.processing
    obs = res.adata.obs
    assert res.adata.n_obs == 16192 and obs["confident_assignment"].all()
    assert obs["pfm_is_control"].any()
    totals = np.expm1(res.adata.X[:50].toarray()).sum(axis=1)
    np.testing.assert_allclose(totals, 1e4, rtol=1e-9)
    assert "CD274@all" not in group_table(res.adata)  # empty category is no group
