"""Perturbation kinds and gene symbols in the canonical dataset: GroupInfo, TrainingData, the id."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from perturbfm.dataset import (
    KIND_COL,
    SYMBOL_COL,
    GroupInfo,
    control_stats,
    gene_symbols,
    group_table,
    kind_note,
)
from perturbfm.dataset_store import content_hash
from perturbfm.testing.data import make_canonical_adata
from perturbfm.training import TrainingData


def _with_kinds(adata, chemical: set[str]):
    out = adata.copy()
    pert = out.obs["pfm_perturbation"].astype(str)
    out.obs[KIND_COL] = pd.Categorical(np.where(out.obs["pfm_is_control"], "control",
                                                np.where(pert.isin(chemical), "chemical", "genetic")))
    return out


def _train(adata) -> TrainingData:
    groups = [g for g in group_table(adata).values() if not g.is_control]
    return TrainingData(adata, groups, control_stats(adata))


def test_group_info_kind_and_target_genes() -> None:
    gene = GroupInfo("KLF1@k", "KLF1", "k", "", 5)
    drug = GroupInfo("TP53@k", "TP53", "k", "", 5, kind="chemical")  # a drug named like a gene
    assert gene.kind == "genetic" and gene.is_genetic and gene.target_genes == ("KLF1",)
    assert drug.genes == ("TP53",) and drug.target_genes == () and not drug.is_genetic
    assert drug.to_dict()["kind"] == "chemical"


def test_group_table_reads_kinds_and_old_datasets_read_as_genetic_with_a_note() -> None:
    adata = make_canonical_adata(n_genes=12)
    old = group_table(adata)
    assert {g.kind for g in old.values() if not g.is_control} == {"genetic"}
    assert {g.kind for g in old.values() if g.is_control} == {"control"}
    note = kind_note(adata)
    assert note is not None and "genetic" in note and "--perturbation-kind" in note
    new = _with_kinds(adata, {"G0", "G1"})
    assert kind_note(new) is None
    kinds = {gid: g.kind for gid, g in group_table(new).items()}
    assert kinds["G0@ctxA"] == "chemical" and kinds["G2@ctxA"] == "genetic" and kinds["control@ctxA"] == "control"
    assert _train(adata).kind_note == note and _train(new).kind_note is None


def test_training_data_kind_accessors_and_gene_messages_speak_of_genes_only() -> None:
    adata = make_canonical_adata(n_genes=12, singles=("G0", "G1", "NOTMEASURED"), doubles=())
    adata = _with_kinds(adata, {"G1", "NOTMEASURED"})
    train = _train(adata)
    assert train.perturbation_kind("G1@ctxA") == "chemical"
    assert train.perturbation_kind(train.groups[0]) == train.groups[0].kind
    with pytest.raises(KeyError):
        train.perturbation_kind("nope@ctxA")
    # a drug is never "a perturbed gene that is not measured", nor a bit of the gene mask
    assert train.unmapped_genes() == []
    mask = train.pert_mask()
    by_id = dict(zip(train.group_ids, mask))
    assert by_id["G0@ctxA"].sum() == 1 and by_id["G1@ctxA"].sum() == 0 and by_id["NOTMEASURED@ctxA"].sum() == 0


def test_gene_symbols_are_the_recorded_column_else_the_var_names() -> None:
    adata = make_canonical_adata(n_genes=6, singles=("SYM2",), doubles=())
    assert gene_symbols(adata) == list(adata.var_names)
    adata.var_names = [f"ENSG{i:011d}.{i + 1}" for i in range(6)]
    adata.var[SYMBOL_COL] = ["SYM0", "", "SYM2", "SYM3", "SYM4", "SYM5"]
    syms = gene_symbols(adata)
    assert syms[0] == "SYM0" and syms[1] == adata.var_names[1] and syms[2] == "SYM2"
    train = _train(adata)
    assert train.gene_symbols == syms
    # the perturbed gene SYM2 is measured (by symbol): not unmapped, and its mask bit is set
    assert train.unmapped_genes() == []
    assert train.pert_mask()[:, 2].sum() == len(train.groups) and train.pert_mask().sum() == len(train.groups)


def test_kinds_and_symbols_are_hashed_into_the_id_and_absence_keeps_the_old_id() -> None:
    adata = make_canonical_adata(n_genes=6)
    h0 = content_hash(adata, expression_space="x", synthetic=True)
    genetic = _with_kinds(adata, set())
    chemical = _with_kinds(adata, {"G0"})
    h1 = content_hash(genetic, expression_space="x", synthetic=True)
    h2 = content_hash(chemical, expression_space="x", synthetic=True)
    assert len({h0, h1, h2}) == 3
    sym = adata.copy()
    sym.var[SYMBOL_COL] = [f"S{i}" for i in range(6)]
    h3 = content_hash(sym, expression_space="x", synthetic=True)
    sym.var[SYMBOL_COL] = [f"T{i}" for i in range(6)]
    assert len({h0, h3, content_hash(sym, expression_space="x", synthetic=True)}) == 3
    del sym.var[SYMBOL_COL]
    assert content_hash(sym, expression_space="x", synthetic=True) == h0


def test_sample_cells_respects_the_budget_is_seeded_and_centres_by_context() -> None:
    adata = make_canonical_adata(n_genes=8)
    groups = [g for g in group_table(adata).values() if not g.is_control]
    train = TrainingData(adata, groups[:3], control_stats(adata))
    full, ctx, total = train.sample_cells(None)
    n_ctrl = int(adata.obs["pfm_is_control"].sum())
    assert total == full.shape[0] == n_ctrl + sum(g.n_cells for g in groups[:3])
    a, _, t = train.sample_cells(50, seed=1)
    b, _, _ = train.sample_cells(50, seed=1)
    c, _, _ = train.sample_cells(50, seed=2)
    assert a.shape == (50, 8) and t == total
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    same, _, _ = train.sample_cells(total)  # a budget that is not exceeded reads every cell
    np.testing.assert_array_equal(same, full)
    # rows are the eligible cells in file order, each centred by its context's control mean
    obs = adata.obs
    gid = obs["pfm_group"].astype(str)
    eligible = (obs["pfm_is_control"] | gid.isin([g.group_id for g in groups[:3]])).to_numpy()
    raw = np.asarray(adata.X[eligible].todense())
    is_ctrl = obs["pfm_is_control"].to_numpy()[eligible]
    stats = control_stats(adata)
    for context in sorted(set(ctx)):
        sel = ctx == context
        np.testing.assert_allclose(full[sel], raw[sel] - stats.mean(context), atol=1e-12)
        np.testing.assert_allclose(full[sel & is_ctrl].mean(axis=0), 0.0, atol=1e-9)


def test_linear_baseline_notes_call_a_drug_a_drug() -> None:
    pytest.importorskip("perturbfm_models")
    from perturbfm.testing.data import training_and_queries
    from perturbfm_models.baselines.linear import LinearModel

    adata = _with_kinds(make_canonical_adata(n_genes=12, singles=("G0", "G1", "G2", "DRUGX"), doubles=()),
                        {"DRUGX"})
    train, queries = training_and_queries(adata, ["DRUGX@ctxA", "G2@ctxB"])
    model = LinearModel()
    model.fit(train, None, model.default_config())
    notes = model.predict(queries).notes
    assert "chemical perturbation(s) DRUGX (not genes" in notes["DRUGX@ctxA"]
    assert "perturbed gene" not in notes["DRUGX@ctxA"]
