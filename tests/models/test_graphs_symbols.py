"""CGIO's gene graphs keyed by gene symbol: lookups through the recorded symbols, coverage
per graph, and a graph without edges among the node universe dropped with a note."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from perturbfm.dataset import SYMBOL_COL, control_stats, group_table
from perturbfm.testing.data import make_canonical_adata
from perturbfm.training import TrainingData
from perturbfm_models.cgio import graphs as G

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters"))
from adapter_helpers import require_shared  # noqa: E402

SYMS = ["A", "B", "C", "D", "E", "F"]


def _go_table(tmp_path: Path) -> Path:
    table = tmp_path / "go.tsv"
    rows = [("A", "t1"), ("A", "t2"), ("B", "t2"), ("B", "t3"), ("C", "t1"), ("C", "t2"), ("C", "t3"),
            ("D", "t4"), ("E", "t4"), ("F", "t4"), ("H", "t1"), ("H", "t2")]
    table.write_text("SYMBOL\tGO\tONTOLOGY\tEVIDENCE\n" + "".join(f"{g}\t{t}\tBP\tIDA\n" for g, t in rows))
    return table


def _train(symbols: bool) -> TrainingData:
    adata = make_canonical_adata(n_genes=6, singles=("ENSG00000000001.3", "ENSG00000000002.1"), doubles=())
    adata.var_names = [f"ENSG{i:011d}.{i + 2}" for i in range(6)]  # versioned Ensembl ids
    if symbols:
        adata.var[SYMBOL_COL] = SYMS
    groups = [g for g in group_table(adata).values() if not g.is_control]
    return TrainingData(adata, groups, control_stats(adata))


def _build(train: TrainingData, table: Path, graphs=("go", "coexpr"), edge_list=None, **kw):
    seeds = list(dict.fromkeys(train.genes + sorted({x for g in train.groups for x in g.target_genes})))
    return G.build_graphs(train, seeds, graphs=list(graphs), go_table=table, go_k=3, go_min_jaccard=0.1,
                          go_hops=kw.get("go_hops", 0), max_nodes=100, coexpr_k=3, coexpr_min_abs_r=0.0,
                          coexpr_source="groups", edge_list=edge_list)


def test_ensembl_ids_with_a_symbol_column_get_a_non_empty_go_graph(tmp_path: Path) -> None:
    table = _go_table(tmp_path)
    universe, graphs, _, dropped = _build(_train(True), table)
    assert dropped == [] and [g.name for g in graphs] == ["go", "coexpr"]
    go = graphs[0]
    cov = go.provenance["coverage"]
    assert cov["nodes_covered"] == 6 and cov["edges_among_universe"] > 0 and cov["measured_with_edges"] == 6
    edges = {(SYMS[s], SYMS[d]) for s, d in zip(go.src, go.dst)}
    assert ("A", "C") in edges and ("D", "E") in edges and ("A", "D") not in edges
    assert graphs[1].provenance["coverage"]["nodes_covered"] == 6


def test_a_graph_without_edges_among_the_universe_is_dropped_with_a_note(tmp_path: Path) -> None:
    table = _go_table(tmp_path)
    universe, graphs, _, dropped = _build(_train(False), table)
    assert [g.name for g in graphs] == ["coexpr"]
    assert [d["name"] for d in dropped] == ["go"]
    note = dropped[0]["note"]
    assert "no edges" in note and "dropped, not gated" in note and "--gene-symbol-key" in note
    assert dropped[0]["coverage"]["edges_among_universe"] == 0 and dropped[0]["coverage"]["nodes_covered"] == 0


def test_universe_expansion_looks_seeds_up_by_symbol_without_duplicating_them(tmp_path: Path) -> None:
    table = _go_table(tmp_path)
    universe, _, _, _ = _build(_train(True), table, graphs=("go",), go_hops=1)
    # H shares A's terms: it joins; A..F are there already under their Ensembl ids
    assert "H" in universe and not set(SYMS) & set(universe)


def test_edge_lists_keyed_by_symbol_or_unversioned_ensembl_match_versioned_ids(tmp_path: Path) -> None:
    train = _train(True)
    for name, (a, b) in {"sym": ("A", "B"), "ens": ("ENSG00000000000", "ENSG00000000001")}.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(f"src,dst,weight\n{a},{b},1.0\n")
        universe, graphs, _, dropped = _build(train, _go_table(tmp_path), graphs=("edges",), edge_list=path)
        assert not dropped
        adj = graphs[0].reindex(universe, G.symbol_map(train))
        assert adj[0, 1] == 1.0 and adj.nnz == 2
        assert graphs[0].provenance["coverage"]["edges_among_universe"] == 1


def test_glioblastoma_go_graph_is_keyed_by_symbol(tmp_path: Path) -> None:
    """The real file with Ensembl var names: 0 GO edges without the symbol key (dropped), a GO graph with it."""
    path = require_shared("lemur_glioblastoma/zhao2021_glioblastoma_panobinostat.h5ad")
    go_path = require_shared("go_human/gene2go_human.tsv.gz")
    from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter

    out = {}
    for key in (None, "symbol"):
        res = AnnDataAdapter().load(path, perturbation_key="condition", control="ctrl", context_keys="patient_id",
                                    expression="counts", perturbation_kind="chemical", gene_symbol_key=key)
        groups = [g for g in group_table(res.adata).values() if not g.is_control]
        train = TrainingData(res.adata, groups[:4], control_stats(res.adata))
        assert train.unmapped_genes() == [] and train.pert_mask().sum() == 0  # the drug is not a gene
        seeds = list(dict.fromkeys(train.genes))
        out[key] = G.build_graphs(train, seeds, graphs=["go"], go_table=go_path, go_k=20, go_min_jaccard=0.1,
                                  go_hops=0, max_nodes=3000, coexpr_k=20, coexpr_min_abs_r=0.1,
                                  coexpr_source="groups", edge_list=None)
    _, graphs, _, dropped = out[None]
    assert graphs == [] and dropped[0]["name"] == "go"
    _, graphs, _, dropped = out["symbol"]
    cov = graphs[0].provenance["coverage"]
    assert dropped == [] and cov["edges_among_universe"] > 1000 and cov["nodes_covered"] > 250
    assert np.isfinite(graphs[0].weight).all()


@pytest.mark.parametrize("with_symbols", [False, True])
def test_symbol_map_lists_only_genes_whose_symbol_differs(with_symbols: bool) -> None:
    train = _train(with_symbols)
    m = G.symbol_map(train)
    assert (m == dict(zip(train.genes, SYMS))) if with_symbols else m == {}


def test_cgio_reports_coverage_drops_empty_graphs_and_gives_drugs_no_gene_notes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from perturbfm.dataset import KIND_COL
    from perturbfm.testing.data import training_and_queries
    from perturbfm_models.cgio import CGIOModel

    adata = make_canonical_adata(n_genes=12, singles=("G0", "G1", "DRUGX", "DRUGY"), doubles=())
    pert = adata.obs["pfm_perturbation"].astype(str)
    adata.obs[KIND_COL] = np.where(adata.obs["pfm_is_control"], "control",
                                   np.where(pert.str.startswith("DRUG"), "chemical", "genetic"))
    train, queries = training_and_queries(adata, ["DRUGX@ctxA", "DRUGY@ctxB"])
    assert {q.kind for q in queries} == {"chemical"}
    model = CGIOModel()
    cfg = {"graphs": ["go", "coexpr"], "go_table": str(_go_table(tmp_path)), "epochs": 5, "hidden": 8, "rank": 4,
           "patience": 3, "cv_folds": 0}
    model.fit(train, None, {**model.default_config(), **cfg})
    diag = model.diagnostics()
    assert [g["name"] for g in diag["graphs"]] == ["coexpr"] and "coverage" in diag["graphs"][0]
    assert [d["name"] for d in diag["graphs_dropped"]] == ["go"]  # G0.. are not GO symbols: no edges
    pred = model.predict(queries)
    assert not any("perturbed gene DRUG" in n for n in pred.notes.values())
