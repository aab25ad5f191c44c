"""Import options for perturbation kinds and gene symbols (anndata and format adapters, CLI, registry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from adapter_helpers import make_adata, run_cli
from perturbfm.dataset import KIND_COL, SYMBOL_COL, group_table
from perturbfm.errors import DatasetValidationError
from perturbfm.store import ArtifactStore
from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter
from perturbfm_bench_adapters.formats import PerturBenchAdapter
from perturbfm_bench_adapters.registry import REGISTRY

ENSEMBL = [f"ENSG{i:011d}.{i % 3 + 1}" for i in range(4)]


def _drug_adata(**extra):
    labels = ["ctrl"] * 4 + ["panobinostat"] * 3 + ["KLF1"] * 3
    adata = make_adata(labels, extra_obs=extra or None)
    return adata


def test_default_kind_is_genetic_and_is_recorded() -> None:
    res = AnnDataAdapter().load(_drug_adata(), control="ctrl")
    obs = res.adata.obs
    assert set(obs.loc[~obs["pfm_is_control"], KIND_COL]) == {"genetic"}
    assert set(obs.loc[obs["pfm_is_control"], KIND_COL]) == {"control"}
    assert res.extra["perturbation_kind_source"] == {"adapter_default": "genetic"}
    assert res.extra["perturbation_kinds"] == {"genetic": 2}


def test_chemical_kind_keeps_drugs_out_of_the_unmeasured_genes() -> None:
    res = AnnDataAdapter().load(_drug_adata(), control="ctrl", perturbation_kind="Chemical")
    kinds = {g.perturbation: g.kind for g in group_table(res.adata).values() if not g.is_control}
    assert kinds == {"panobinostat": "chemical", "KLF1": "chemical"}
    assert res.extra["perturbed_genes_not_measured"] == []
    assert any("2 chemical perturbation(s) (not genes)" in p for p in res.processing)
    assert not any("perturbed genes (genetic perturbations) are not measured" in p and not p.startswith("0")
                   for p in res.processing)


def test_kind_from_an_obs_column_per_perturbation() -> None:
    kind = ["", "", "", "", "chemical", "chemical", "chemical", "genetic", "genetic", ""]
    res = AnnDataAdapter().load(_drug_adata(treatment_kind=kind), control="ctrl",
                                perturbation_kind_key="treatment_kind")
    kinds = {g.perturbation: g.kind for g in group_table(res.adata).values() if not g.is_control}
    assert kinds == {"panobinostat": "chemical", "KLF1": "genetic"}
    assert res.extra["perturbed_genes_not_measured"] == ["KLF1"]  # the drug is not counted
    assert res.extra["perturbation_kind_source"] == {"obs_column": "treatment_kind"}


@pytest.mark.parametrize(("options", "field", "text"), [
    ({"perturbation_kind": "drug"}, "perturbation_kind", "not one of genetic, chemical, other"),
    ({"perturbation_kind_key": "nope"}, "nope", "no column 'nope'"),
    ({"perturbation_kind_key": "k"}, "k", "more than one kind"),
    ({"perturbation_kind_key": "bad"}, "bad", "not perturbation kinds"),
])
def test_bad_kind_options_are_clear_errors(options, field, text) -> None:
    mixed = ["", "", "", "", "chemical", "genetic", "chemical", "genetic", "genetic", "genetic"]
    bad = ["", "", "", "", "drug", "drug", "drug", "genetic", "genetic", "genetic"]
    with pytest.raises(DatasetValidationError) as err:
        AnnDataAdapter().load(_drug_adata(k=mixed, bad=bad), control="ctrl", **options)
    assert err.value.field == field and text in str(err.value) and err.value.fix


def test_gene_symbol_key_records_symbols_and_keeps_the_ids() -> None:
    adata = make_adata(["control"] * 3 + ["SYM1"] * 3)
    adata.var_names = ENSEMBL
    adata.var["symbol"] = ["SYM0", "SYM1", "SYM2", "SYM3"]
    res = AnnDataAdapter().load(adata, gene_symbol_key="symbol")
    assert list(res.adata.var_names) == ENSEMBL
    assert list(res.adata.var[SYMBOL_COL]) == ["SYM0", "SYM1", "SYM2", "SYM3"]
    assert res.extra["perturbed_genes_not_measured"] == []  # SYM1 is measured, by its symbol
    assert res.extra["gene_symbol_key"] == "symbol"
    with pytest.raises(DatasetValidationError) as err:
        AnnDataAdapter().load(adata, gene_symbol_key="gene_symbol")
    assert err.value.field == "gene_symbol" and "symbol" in err.value.fix


def test_ensembl_var_names_without_a_symbol_key_tell_the_user_which_column_to_pass() -> None:
    adata = make_adata(["control"] * 3 + ["SYM1"] * 3)
    adata.var_names = ENSEMBL
    adata.var["symbol"] = ["SYM0", "SYM1", "SYM2", "SYM3"]
    res = AnnDataAdapter().load(adata)
    hint = [p for p in res.processing if "Ensembl gene ids" in p]
    assert hint and "--gene-symbol-key symbol" in hint[0]
    plain = AnnDataAdapter().load(make_adata(["control"] * 3 + ["g1"] * 3))
    assert not any("Ensembl" in p for p in plain.processing)


def test_format_adapters_accept_the_new_options() -> None:
    adata = make_adata(["control"] * 3 + ["DrugX"] * 3)
    adata.obs["condition"] = adata.obs["perturbation"]
    adata.obs["cell_type"] = "K"
    res = PerturBenchAdapter().load(adata, perturbation_kind="chemical")
    assert {g.kind for g in group_table(res.adata).values() if not g.is_control} == {"chemical"}


def test_registry_defaults_name_chemical_and_stimulus_sources() -> None:
    assert REGISTRY["sciplex3-perturbench"].options["perturbation_kind"] == "chemical"
    assert REGISTRY["kang2018"].options["perturbation_kind"] == "other"
    assert "perturbation_kind" not in REGISTRY["norman2019-gears"].options  # genetic by default


def test_cli_flags_kind_and_symbols_in_the_manifest(tmp_path: Path, capsys, write_h5ad) -> None:
    adata = _drug_adata()
    adata.var_names = ENSEMBL
    adata.var["symbol"] = ["KLF1", "B", "C", "D"]
    path = write_h5ad(adata)
    store = tmp_path / "store"
    base = ["--store", str(store), "data", "import", "--adapter", "anndata", str(path), "--control", "ctrl"]
    rc, out, err = run_cli(base, capsys)
    assert rc == 0
    plain = out.strip().splitlines()[-1]
    flat = " ".join(err.split())
    assert "2 of 2 perturbed genes (genetic perturbations) are not measured" in flat
    assert "--perturbation-kind chemical" in flat and "--gene-symbol-key symbol" in flat
    rc, out, err = run_cli([*base, "--perturbation-kind", "chemical", "--gene-symbol-key", "symbol"], capsys)
    assert rc == 0
    chem = out.strip().splitlines()[-1]
    assert chem != plain  # the kind and the symbols are part of the content
    assert "perturbed genes" not in err and "2 chemical group(s)" in " ".join(err.split())
    m = ArtifactStore(store).datasets.get(chem).manifest
    assert m["perturbed_genes"] == [] and m["groups_by_perturbation_kind"] == {"chemical": 2}
    assert m["adapter_options"]["perturbation_kind"] == "chemical"
    rc, out, _ = run_cli(["--store", str(store), "data", "show", chem], capsys)
    assert json.loads(out)["extra"]["gene_symbol_key"] == "symbol"
    stored = ArtifactStore(store).datasets.get(chem).load()
    assert list(stored.var[SYMBOL_COL]) == ["KLF1", "B", "C", "D"]
    assert np.array_equal(stored.var_names, ENSEMBL)
