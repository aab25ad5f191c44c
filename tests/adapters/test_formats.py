"""Format adapters (perturbench, scperturb, gears), backed mode and the gene universe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from adapter_helpers import make_adata, require_shared
from perturbfm.dataset import group_table, pert_mask
from perturbfm.errors import DatasetValidationError
from perturbfm.hashing import dataset_content_hash
from perturbfm_bench_adapters import plugin
from perturbfm_bench_adapters.formats import GearsAdapter, PerturBenchAdapter, ScPerturbAdapter

DEVEL = "perturbench_devel/norman19_mcfaline23_devel.h5ad"
PAPALEXI = "papalexi2021_thp1/papalexi2021_thp1_lowmoi.h5ad"


def test_registered_adapters():
    names = [c.name for c in plugin.pfm_register_dataset_adapters()]
    assert names == ["anndata", "perturbench", "scperturb", "gears"]
    for cls in plugin.pfm_register_dataset_adapters():
        assert "backed" in cls.options and all(cls.options.values())


def test_perturbench_defaults_covariates_and_universe(write_h5ad):
    labels = ["control"] * 4 + ["TP53"] * 4 + ["g1+TP53"] * 4
    a = make_adata(labels, contexts=["k562"] * 12,
                   extra_obs={"dose": [0.0] * 4 + [1.0, 1.0, 10.0, 10.0] + [1.0] * 4, "treatment": ["none"] * 12})
    a.obs = a.obs.rename(columns={"perturbation": "condition"})
    res = PerturBenchAdapter().load(str(write_h5ad(a)), covariate_keys="dose,treatment")
    obs = res.adata.obs
    assert set(obs["pfm_context"]) == {"k562"}
    np.testing.assert_array_equal(obs["pfm_dose"].to_numpy()[4:8], [1, 1, 10, 10])
    groups = group_table(res.adata)
    assert "TP53@k562@dose=10.0;treatment=none" in groups
    assert res.extra["gene_universe"] == ["g0", "g1", "g2", "g3", "TP53"]
    assert res.extra["perturbed_genes_not_measured"] == ["TP53"]
    assert res.extra["format"] == "perturbench"
    perts = [groups[g].genes for g in sorted(groups) if not groups[g].is_control]
    mask = pert_mask(perts, res.extra["gene_universe"])
    assert mask[:, 4].all() and mask.sum() == 3 + 1  # TP53 in all 3 groups, g1 in the combo group


def test_scperturb_extra_columns_and_guides(write_h5ad, tmp_path):
    a = make_adata(["control", "control", "A", "A_B", "B", "C"],
                   extra_obs={"perturbation_2": [None, None, "C", None, "control", None],
                              "cell_line": ["L"] * 6,
                              "guide": ["NT-1", "NT-2", "sgA_1+sgC_2", "sgA_2+sgB_1", "sgB_2", "x9"]})
    path = write_h5ad(a)
    res = ScPerturbAdapter().load(str(path))
    assert list(res.adata.obs["pfm_perturbation"]) == ["control", "control", "A+C", "A+B", "B", "C"]
    assert set(res.adata.obs["pfm_context"]) == {"L"}
    table = tmp_path / "guides.tsv"
    table.write_text("guide\tgene\nx9\tC\n")
    res = ScPerturbAdapter().load(str(path), guide_key="guide", guide_pattern=r"^sg(?P<gene>[A-Z]+)_\d$",
                                  guide_map=str(table), guide_control="^NT", extra_perturbation_keys=[])
    assert list(res.adata.obs["pfm_perturbation"]) == ["control", "control", "A+C", "A+B", "B", "C"]
    assert res.extra["guide_mapping"]["guide_key"] == "guide"
    with pytest.raises(DatasetValidationError, match="map to no gene.*x9"):
        ScPerturbAdapter().load(str(path), guide_key="guide", guide_pattern=r"^sg(?P<gene>[A-Z]+)_\d$",
                                guide_control="^NT")
    with pytest.raises(DatasetValidationError, match="guide_pattern or guide_map"):
        ScPerturbAdapter().load(str(path), guide_key="guide")


def test_gears_conditions_and_gene_names(write_h5ad):
    a = make_adata(["ctrl"] * 3 + ["g1+ctrl"] * 2 + ["g1+KLF1"] * 2, contexts=["K562"] * 7)
    a.obs = a.obs.rename(columns={"perturbation": "condition"})
    a.var["gene_name"] = ["SYM0", "g1", "SYM2", "SYM3"]
    a.var_names = [f"ENSG{i}" for i in range(4)]
    res = GearsAdapter().load(str(write_h5ad(a)))
    assert list(res.adata.var_names) == ["SYM0", "g1", "SYM2", "SYM3"]
    assert set(group_table(res.adata)) == {"control@K562", "g1@K562", "KLF1+g1@K562"}
    assert res.extra["perturbed_genes_not_measured"] == ["KLF1"]
    with pytest.raises(DatasetValidationError, match="unknown option"):
        GearsAdapter().load(str(write_h5ad(a)), bogus=1)


def test_backed_equals_in_memory(write_h5ad):
    rng = np.random.default_rng(3)
    labels = ["control"] * 30 + ["A"] * 40 + ["B+A"] * 30
    a = make_adata(labels, X=rng.integers(0, 30, size=(100, 7)).astype(np.float32),
                   extra_obs={"keep": [i % 5 != 0 for i in range(100)]})
    a.obsm["emb"] = rng.normal(size=(100, 2))
    path = str(write_h5ad(a))
    mem = PerturBenchAdapter().load(path, perturbation_key="perturbation", context_keys=(), obs_filter="keep=True")
    bk = PerturBenchAdapter().load(path, perturbation_key="perturbation", context_keys=(), obs_filter="keep=True",
                                   backed=True, chunk_size=7)
    assert bk.adata.n_obs == 80 and bk.extra["backed"] is True
    assert (mem.adata.X != bk.adata.X).nnz == 0
    np.testing.assert_array_equal(mem.adata.obsm["emb"], bk.adata.obsm["emb"])
    cols = ["pfm_perturbation", "pfm_is_control", "pfm_context", "pfm_covariates"]
    meta = {"expression_space": mem.expression_space, "synthetic": False}
    assert dataset_content_hash(mem.adata, cols, meta) == dataset_content_hash(bk.adata, cols, meta)
    assert any("chunks of 7 rows" in p for p in bk.processing)


def test_real_devel_backed_and_papalexi_guides():
    devel = str(require_shared(DEVEL))
    a = PerturBenchAdapter().load(devel)
    b = PerturBenchAdapter().load(devel, backed=True, chunk_size=2000)
    assert (a.adata.X != b.adata.X).nnz == 0
    assert set(a.adata.obs["pfm_context"]) == {"k562", "A172", "T98G", "U87MG"}
    assert len(a.extra["perturbed_genes_not_measured"]) == 30  # 31 perturbed genes, TMSB4X measured
    pap = str(require_shared(PAPALEXI))
    r = ScPerturbAdapter().load(pap, guide_key="grna", guide_pattern=r"^(?P<gene>.+)g\d+$", guide_control="^NT",
                                obs_filter="confident_assignment=True")
    obs = r.adata.obs
    assert (obs["pfm_perturbation"].astype(str) == obs["perturbation"].astype(str)).all()
    assert r.expression_space == "log1p_cp10k" and len(r.extra["perturbed_genes_not_measured"]) == 16
    assert pd.Index(r.extra["gene_universe"]).is_unique
