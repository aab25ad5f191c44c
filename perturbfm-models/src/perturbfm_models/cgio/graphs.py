"""Gene graphs for CGIO: GO (Jaccard of GO term sets), co-expression, user edge lists.

Every builder returns a :class:`GeneGraph`: an undirected weighted edge list over
an explicit node list, with its provenance (source path, sha256, sizes), so a run
records exactly which prior it used. No graph is ever invented: a missing source
raises :class:`perturbfm.errors.ConfigError` naming the path and the fix.

Gene identifiers: the node universe holds the dataset's gene ids (its var names,
e.g. versioned Ensembl ids) and perturbed / GO gene names; the GO table and prior
graphs are keyed by gene symbol. Every lookup goes through ``symbols`` (gene id ->
symbol, :func:`symbol_map` from ``TrainingData.gene_symbols``), then the name itself,
then the name without its Ensembl version (for graphs keyed by unversioned Ensembl
ids). :func:`graph_coverage` reports what each graph covers of the universe, and
:func:`build_graphs` drops (with a note) a graph with no edges among the universe.

Scale: the co-expression graph is computed from pseudobulk deltas (``source="groups"``)
or from a seeded uniform subsample of at most ``max_cells`` cells (``"cells"``), never
from all cells; gene-gene correlations are computed ``block`` rows at a time and only
each gene's top ``k`` neighbours are kept, so no dense genes x genes matrix exists when
there are more than :data:`DENSE_MAX_GENES` genes (computed in float32 there: |r| moves by
about 1e-6, which can only reorder near-exact ties among neighbours).

Length (about 480 lines, on purpose): the three graph builders share the symbol lookup,
the top-k selection and the coverage report; split apart, a builder could bypass the
lookup that keeps Ensembl-keyed datasets from getting empty graphs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from perturbfm.canonical.genes import strip_version
from perturbfm.errors import ConfigError
from perturbfm.hashing import sha256_file
from perturbfm.training import TrainingData
from scipy.sparse.csgraph import dijkstra

GO_RELATIVE = Path("go_human") / "gene2go_human.tsv.gz"
_GO_CACHE: dict[tuple[str, float], GoTable] = {}
#: Up to this many genes the co-expression correlations are one dense block (as before
#: budgets existed); beyond it they are computed in blocks of rows.
DENSE_MAX_GENES = 2048
#: Default cell budget of the co-expression graph from cells.
COEXPR_MAX_CELLS = 20_000
#: The cell sample is also capped at ``COEXPR_MAX_WORK / genes**2`` cells (at least
#: :data:`COEXPR_MIN_CELLS`): the correlations cost cells x genes**2 multiply-adds, so 8,000
#: genes use 3,125 cells (|r| then has a standard error of about 0.02), 500 genes the full budget.
COEXPR_MAX_WORK = 2e11
COEXPR_MIN_CELLS = 1_000
#: A mapping gene id -> gene symbol (only where they differ).
Symbols = dict[str, str]


def symbol_map(train: TrainingData) -> Symbols:
    """Gene id -> symbol for the measured genes whose recorded symbol differs from the id."""
    syms = getattr(train, "gene_symbols", None) or train.genes
    return {g: s for g, s in zip(train.genes, syms) if s and s != g}


def lookup_key(name: str, symbols: Symbols | None) -> str:
    """The name a prior source knows a node by: its symbol where one is recorded."""
    return symbols.get(name, name) if symbols else name


def default_go_table() -> Path:
    """``$PFM_SHARED_DATA/go_human/gene2go_human.tsv.gz``, else ``<repo>/../shared/data/...``."""
    env = os.environ.get("PFM_SHARED_DATA")
    repo = Path(__file__).resolve().parents[4]
    base = Path(env) if env else repo.parent / "shared" / "data"
    if not base.is_absolute():
        base = repo / base
    return (base / GO_RELATIVE).resolve()


@dataclass
class GeneGraph:
    """An undirected weighted graph over named genes, with provenance.

    Attributes:
        name: ``go``, ``coexpr`` or ``edges``.
        genes: node names the edge indices refer to.
        src, dst, weight: edges (each undirected edge once or twice; symmetrised later).
        provenance: source path, sha256, parameters, n_nodes / n_edges.
    """

    name: str
    genes: list[str]
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)

    def reindex(self, universe: Sequence[str], symbols: Symbols | None = None) -> sp.csr_matrix:
        """Symmetric weighted adjacency over ``universe`` (edges to genes outside it dropped).

        A graph gene matches a universe node by name, else by the node's symbol
        (``symbols``), else by the unversioned Ensembl id of either."""
        m = universe_positions(self.genes, universe, symbols)
        s, d = m[self.src], m[self.dst]
        keep = (s >= 0) & (d >= 0) & (s != d)
        n = len(universe)
        a = sp.coo_matrix((self.weight[keep], (s[keep], d[keep])), shape=(n, n)).tocsr()
        return a.maximum(a.T).tocsr()


def universe_positions(names: Sequence[str], universe: Sequence[str], symbols: Symbols | None = None) -> np.ndarray:
    """The universe position of each of ``names`` (-1: none): by exact name first, then by a
    node's symbol, then by unversioned Ensembl id."""
    pos: dict[str, int] = {}
    for i, u in enumerate(universe):
        pos.setdefault(u, i)
    for i, u in enumerate(universe):
        sym = symbols.get(u) if symbols else None
        if sym:
            pos.setdefault(sym, i)
    for i, u in enumerate(universe):
        pos.setdefault(strip_version(u), i)
    return np.array([pos.get(g, pos.get(strip_version(g), -1)) for g in names], dtype=np.int64)


# --------------------------------------------------------------------------- GO
class GoTable:
    """A gene x GO-term incidence matrix read from ``SYMBOL GO ONTOLOGY EVIDENCE``."""

    def __init__(self, path: Path) -> None:
        df = pd.read_csv(path, sep="\t", usecols=["SYMBOL", "GO"], dtype=str).dropna().drop_duplicates()
        genes, gi = np.unique(df["SYMBOL"].to_numpy(), return_inverse=True)
        terms, ti = np.unique(df["GO"].to_numpy(), return_inverse=True)
        self.path = path
        self.sha256 = sha256_file(path)
        self.genes: list[str] = [str(g) for g in genes]
        self.index = {g: i for i, g in enumerate(self.genes)}
        self.incidence = sp.csr_matrix(
            (np.ones(len(df), dtype=np.float32), (gi, ti)), shape=(len(genes), len(terms))
        )
        self.sizes = np.asarray(self.incidence.sum(axis=1)).ravel()


def load_go_table(path: str | Path | None) -> GoTable:
    """Read (and cache per path and mtime) a GO annotation table.

    Raises:
        ConfigError: the file is missing or lacks the ``SYMBOL``/``GO`` columns.
    """
    p = Path(path) if path else default_go_table()
    if not p.is_file():
        raise ConfigError(
            "GO annotation table not found (CGIO never invents a graph)",
            file=str(p),
            field="go_table",
            fix="set model.go_table to a TSV with columns SYMBOL and GO (e.g. shared/data/go_human/"
            "gene2go_human.tsv.gz), set PFM_SHARED_DATA, or drop 'go' from model.graphs",
        )
    key = (str(p.resolve()), p.stat().st_mtime)
    if key not in _GO_CACHE:
        try:
            _GO_CACHE[key] = GoTable(p)
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"cannot read the GO table: {exc}", file=str(p), field="go_table",
                fix="give a tab-separated file with header SYMBOL GO ONTOLOGY EVIDENCE",
            ) from exc
    return _GO_CACHE[key]


def go_rows(table: GoTable, names: Sequence[str], symbols: Symbols | None = None) -> np.ndarray:
    """The GO table row of each name (-1: not annotated), looked up by symbol."""
    out = np.empty(len(names), dtype=np.int64)
    for i, g in enumerate(names):
        key = lookup_key(g, symbols)
        out[i] = table.index.get(key, table.index.get(strip_version(key), -1))
    return out


def jaccard(table: GoTable, rows: Sequence[str], cols: Sequence[str], symbols: Symbols | None = None) -> np.ndarray:
    """Dense Jaccard similarity of the GO term sets of ``rows`` x ``cols`` (float32).

    ``|A ∩ B| / (|A| + |B| − |A ∩ B|)`` from one sparse product; genes without
    annotation have similarity 0 to everything. Names are looked up by symbol.
    """
    ri = go_rows(table, rows, symbols)
    ci = go_rows(table, cols, symbols)
    out = np.zeros((len(rows), len(cols)), dtype=np.float32)
    rk, ck = np.flatnonzero(ri >= 0), np.flatnonzero(ci >= 0)
    if rk.size == 0 or ck.size == 0:
        return out
    inter = (table.incidence[ri[rk]] @ table.incidence[ci[ck]].T).toarray()
    union = table.sizes[ri[rk]][:, None] + table.sizes[ci[ck]][None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out[np.ix_(rk, ck)] = np.where(union > 0, inter / union, 0.0)
    return out


def _topk_edges(sim: np.ndarray, k: int, min_sim: float, row_offset: int = 0) -> tuple[np.ndarray, ...]:
    """Top-``k`` columns per row of ``sim`` with similarity > ``min_sim`` (ties broken by index)."""
    kk = min(k, sim.shape[1])
    if kk == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if kk < sim.shape[1]:
        part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        part.sort(axis=1)  # ties then resolve to the lower index, as a stable sort would
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
    else:
        idx = np.argsort(-sim, axis=1, kind="stable")
    vals = np.take_along_axis(sim, idx, axis=1)
    rows = np.repeat(np.arange(sim.shape[0]) + row_offset, kk)
    keep = vals.ravel() > min_sim
    return rows[keep], idx.ravel()[keep], vals.ravel()[keep]


def expand_universe(
    table: GoTable | None, seeds: Sequence[str], *, hops: int, k: int, min_sim: float, max_nodes: int,
    symbols: Symbols | None = None,
) -> list[str]:
    """``seeds`` plus the GO genes within ``hops`` top-k hops of them, capped at ``max_nodes``.

    New genes are added hop by hop, most similar first (highest Jaccard to the
    current set), so the cap keeps the closest genes. Order is deterministic. Seeds
    are looked up by symbol; a GO gene that is a seed's symbol is not added again.
    """
    universe = list(dict.fromkeys(seeds))
    if table is None or hops <= 0:
        return universe
    have = set(universe) | {lookup_key(g, symbols) for g in universe}
    rows = go_rows(table, universe, symbols)
    frontier = [table.genes[r] for r in rows if r >= 0]
    for _ in range(hops):
        if not frontier or len(universe) >= max_nodes:
            break
        best: dict[str, float] = {}
        for start in range(0, len(frontier), 512):
            chunk = frontier[start : start + 512]
            sim = jaccard(table, chunk, table.genes)
            r, c, v = _topk_edges(sim, k + 1, min_sim)
            for j, s in zip(c, v):
                g = table.genes[j]
                if g not in have and s > best.get(g, -1.0):
                    best[g] = float(s)
        new = sorted(best, key=lambda g: (-best[g], g))[: max(0, max_nodes - len(universe))]
        universe += new
        have.update(new)
        frontier = new
    return universe


def go_graph(table: GoTable, universe: Sequence[str], *, k: int, min_sim: float,
             symbols: Symbols | None = None) -> GeneGraph:
    """GEARS-style GO graph: each gene's top-``k`` Jaccard neighbours within ``universe``
    (genes looked up by symbol)."""
    genes = list(universe)
    srcs, dsts, ws = [], [], []
    for start in range(0, len(genes), 1000):
        sim = jaccard(table, genes[start : start + 1000], genes, symbols)
        for i in range(sim.shape[0]):
            sim[i, start + i] = 0.0  # no self loops
        r, c, v = _topk_edges(sim, k, min_sim, row_offset=start)
        srcs.append(r)
        dsts.append(c)
        ws.append(v)
    src, dst, w = (np.concatenate(x) for x in (srcs, dsts, ws))
    n_annot = int((go_rows(table, genes, symbols) >= 0).sum())
    return GeneGraph("go", genes, src, dst, w.astype(np.float32), {
        "source": str(table.path), "sha256": table.sha256, "k": k, "min_jaccard": min_sim,
        "n_nodes": len(genes), "n_nodes_with_go_terms": n_annot, "n_edges": int(src.size),
        "keyed_by": "gene symbol" + (f" ({len(symbols)} gene ids mapped to symbols)" if symbols else ""),
    })


# --------------------------------------------------------------------------- co-expression
def coexpr_graph(train: TrainingData, *, k: int, min_abs_r: float, source: str,
                 max_cells: int | None = COEXPR_MAX_CELLS, seed: int = 0, block: int | None = None) -> GeneGraph:
    """Top-``k`` |Pearson r| neighbours among the measured genes, from training data only.

    ``source="groups"``: correlation across the training group pseudobulk deltas.
    ``source="cells"``: across the control cells of every context and the cells of
    the training groups, each centred by its context's control mean; a seeded uniform
    sample of at most ``max_cells`` of them (None: no cell budget), and of at most
    ``COEXPR_MAX_WORK / genes**2`` cells (:data:`COEXPR_MAX_WORK`; it binds only beyond
    about 3,000 genes); both are recorded in the provenance.
    Held-out groups are never read (TrainingData does not expose them).

    Correlations are computed ``block`` genes at a time (default: all genes at once up
    to :data:`DENSE_MAX_GENES`, else 512), keeping each gene's top ``k``: memory is
    ``cells x genes + block x genes``, never genes x genes for large gene counts.
    """
    if max_cells is not None and int(max_cells) < 3:
        raise ConfigError(f"the co-expression cell budget must be at least 3 cells, got {max_cells}",
                          field="coexpr_max_cells", fix="pass e.g. coexpr_max_cells=20000 (or null: all cells)")
    budget: dict[str, Any] = {}
    if source == "groups":
        rows = np.array(train.deltas(), dtype=np.float64, copy=True)  # centred in place below
        what = f"pseudobulk deltas of {len(train.groups)} training groups"
    else:
        n_genes = max(len(train.genes), 1)
        work_cap = max(COEXPR_MIN_CELLS, int(COEXPR_MAX_WORK // (n_genes * n_genes)))
        effective = work_cap if max_cells is None else min(int(max_cells), work_cap)
        rows, _, total = train.sample_cells(effective, seed=seed)
        sampled = rows.shape[0] < total
        what = (f"{rows.shape[0]} of {total} control + training-group cells (seeded uniform sample, seed {seed})"
                if sampled else f"{rows.shape[0]} control + training-group cells")
        what += ", centred by their context's control mean"
        budget = {"max_cells": max_cells, "cells_available": total, "cells_used": int(rows.shape[0]),
                  "subsampled": sampled, "seed": seed if sampled else None}
        if max_cells is None or effective < int(max_cells):
            budget["work_cap_cells"] = effective  # cells x genes**2 <= COEXPR_MAX_WORK
    n = len(train.genes)
    blk = int(block) if block else (n if n <= DENSE_MAX_GENES else 512)
    if n > DENSE_MAX_GENES:  # float32 halves the GEMM; top-k selection does not notice the rounding
        rows = rows.astype(np.float32, copy=False)
    src, dst, w = _corr_topk(rows, k, min_abs_r, blk)
    return GeneGraph("coexpr", list(train.genes), src, dst, w, {
        "source": what, "sha256": None, "k": k, "min_abs_r": min_abs_r,
        "n_nodes": n, "n_edges": int(src.size), "training_groups": len(train.groups),
        "block_genes": blk, **({"cell_budget": budget} if budget else {}),
    })


def _corr_topk(rows: np.ndarray, k: int, min_abs_r: float, block: int) -> tuple[np.ndarray, ...]:
    """Each column's top-``k`` |Pearson r| partners over the rows of ``rows`` (no self edges),
    ``block`` columns at a time. ``rows`` is centred in place."""
    n = rows.shape[1]
    if rows.shape[0] < 3 or n == 0:  # no correlation can be estimated: no edges
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    x = rows
    x -= rows.mean(axis=0)  # in place: ``rows`` is this function's own copy (a sample or the deltas)
    sd = np.sqrt(np.einsum("ij,ij->j", x, x))
    srcs, dsts, ws = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.nan_to_num((x[:, start:stop].T @ x) / np.outer(sd[start:stop], sd)).astype(np.float32)
        r[np.arange(stop - start), np.arange(start, stop)] = 0.0
        a, b, v = _topk_edges(np.abs(r), k, min_abs_r, row_offset=start)
        srcs.append(a)
        dsts.append(b)
        ws.append(v)
    return np.concatenate(srcs), np.concatenate(dsts), np.concatenate(ws).astype(np.float32)


# --------------------------------------------------------------------------- edge list
def edge_list_graph(path: str | Path | None) -> GeneGraph:
    """A user edge list: CSV ``src,dst[,weight]`` (a header row is allowed)."""
    fix = "set model.edge_list to a CSV with columns src,dst[,weight], or drop 'edges' from model.graphs"
    if not path or not Path(path).is_file():
        raise ConfigError("edge list file not found", file=str(path), field="edge_list", fix=fix)
    df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    if df.shape[1] < 2:
        raise ConfigError("the edge list needs at least two columns", file=str(path), field="edge_list", fix=fix)
    if df.shape[1] >= 3 and pd.to_numeric(df.iloc[:1, 2], errors="coerce").isna().all():
        df = df.iloc[1:]
    elif df.shape[1] == 2 and str(df.iloc[0, 0]).lower() in ("src", "source"):
        df = df.iloc[1:]
    w = pd.to_numeric(df.iloc[:, 2], errors="coerce").to_numpy(np.float32) if df.shape[1] >= 3 else None
    if w is None:
        w = np.ones(len(df), dtype=np.float32)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ConfigError("edge weights must be finite and >= 0", file=str(path), field="edge_list", fix=fix)
    genes, inv = np.unique(np.concatenate([df.iloc[:, 0].str.strip(), df.iloc[:, 1].str.strip()]),
                           return_inverse=True)
    m = len(df)
    return GeneGraph("edges", [str(g) for g in genes], inv[:m], inv[m:], w, {
        "source": str(Path(path).resolve()), "sha256": sha256_file(path),
        "n_nodes": len(genes), "n_edges": m,
    })


# --------------------------------------------------------------------------- utilities
def normalised_adjacency(adj: sp.csr_matrix) -> sp.csr_matrix:
    """``D^-1/2 (A + I) D^-1/2`` (GCN normalisation; isolated nodes keep a self loop)."""
    a = adj + sp.identity(adj.shape[0], format="csr", dtype=adj.dtype)
    d = np.asarray(a.sum(axis=1)).ravel()
    inv = 1.0 / np.sqrt(np.maximum(d, 1e-12))
    return sp.diags(inv) @ a @ sp.diags(inv)


def attach_go(g: GeneGraph, go: GoTable, new: Sequence[str], old: Sequence[str], *, k: int, min_sim: float,
              symbols: Symbols | None = None) -> None:
    """Attach the genes ``new`` (not in the universe ``old``) to the GO graph ``g`` in place, by
    their top-``k`` GO neighbours among ``old + new`` (no self-edges; looked up by symbol)."""
    universe = list(old) + list(new)
    sim = jaccard(go, list(new), universe, symbols)
    for r in range(len(new)):
        sim[r, len(old) + r] = 0.0
    s, d, w = _topk_edges(sim, k, min_sim)
    names = [new[j] for j in s]
    pos = {n: i for i, n in enumerate(g.genes)}
    extra = [n for n in new if n not in pos]
    g.genes = g.genes + extra
    pos.update({n: len(pos) + i for i, n in enumerate(extra)})
    g.src = np.concatenate([g.src, [pos[n] for n in names]]).astype(np.int64)
    g.dst = np.concatenate([g.dst, [pos[universe[j]] for j in d]]).astype(np.int64)
    g.weight = np.concatenate([g.weight, w]).astype(np.float32)


def hops_to_measured(adjs: Sequence[sp.csr_matrix], measured: np.ndarray, n: int) -> np.ndarray:
    """Fewest edges from each node to any measured node over the union of ``adjs`` (inf: no path)."""
    union = sp.csr_matrix((n, n), dtype=np.float32)
    for a in adjs:
        union = union + (a > 0).astype(np.float32)
    if measured.size == 0:
        return np.full(n, np.inf)
    return dijkstra(union, directed=False, indices=measured, unweighted=True, min_only=True)


# --------------------------------------------------------------------------- coverage, assembly
def graph_coverage(g: GeneGraph, universe: Sequence[str], measured: Sequence[str] | None = None,
                   symbols: Symbols | None = None) -> dict[str, Any]:
    """What graph ``g`` covers of the node ``universe``: nodes the graph's source knows,
    nodes with at least one edge, undirected edges among the universe (and the same for the
    ``measured`` genes)."""
    adj = g.reindex(universe, symbols)
    known = universe_positions(g.genes, universe, symbols)
    if g.name == "go" and "n_nodes_with_go_terms" in g.provenance:
        n_known = int(g.provenance["n_nodes_with_go_terms"])
    else:
        n_known = int(np.unique(known[known >= 0]).size)
    deg = np.asarray((adj > 0).sum(axis=1)).ravel()
    out: dict[str, Any] = {
        "universe_nodes": len(universe), "nodes_covered": n_known, "nodes_with_edges": int((deg > 0).sum()),
        "edges_among_universe": int(adj.nnz // 2),
    }
    if measured is not None:
        m = universe_positions(list(measured), universe, symbols)
        m = m[m >= 0]
        out["measured_genes"] = int(m.size)
        out["measured_with_edges"] = int((deg[m] > 0).sum())
    return out


def build_graphs(
    train: TrainingData, seeds: Sequence[str], *, graphs: Sequence[str], go_table: str | Path | None,
    go_k: int, go_min_jaccard: float, go_hops: int, max_nodes: int, coexpr_k: int, coexpr_min_abs_r: float,
    coexpr_source: str, edge_list: str | Path | None, coexpr_max_cells: int | None = COEXPR_MAX_CELLS,
    seed: int = 0,
) -> tuple[list[str], list[GeneGraph], GoTable | None, list[dict[str, Any]]]:
    """The node universe and the graphs ``graphs`` (go, coexpr, edges) over it, looked up by
    gene symbol, each with its coverage in ``provenance["coverage"]``.

    A graph with no edges among the universe is dropped, not gated (a gate on an empty
    graph only adds noise): it is returned in the last list, each entry a record with a
    ``note``. Returns ``(universe, kept graphs, the GO table or None, dropped)``.
    """
    symbols = symbol_map(train)
    go = load_go_table(go_table) if "go" in graphs else None
    universe = expand_universe(go, seeds, hops=go_hops, k=go_k, min_sim=go_min_jaccard, max_nodes=max_nodes,
                               symbols=symbols)
    built: list[GeneGraph] = []
    for kind in graphs:
        if kind == "go":
            assert go is not None
            built.append(go_graph(go, universe, k=go_k, min_sim=go_min_jaccard, symbols=symbols))
        elif kind == "coexpr":
            built.append(coexpr_graph(train, k=coexpr_k, min_abs_r=coexpr_min_abs_r, source=coexpr_source,
                                      max_cells=coexpr_max_cells, seed=seed))
        else:
            g = edge_list_graph(edge_list)
            pos = universe_positions(g.genes, universe, symbols)
            inside = pos >= 0
            near = {g.genes[j] for i, j in zip(g.src, g.dst) if inside[i] and not inside[j]}
            near |= {g.genes[i] for i, j in zip(g.src, g.dst) if inside[j] and not inside[i]}
            universe += sorted(near)[: max(0, max_nodes - len(universe))]
            built.append(g)
    kept: list[GeneGraph] = []
    dropped: list[dict[str, Any]] = []
    for g in built:
        cov = graph_coverage(g, universe, train.genes, symbols)
        g.provenance["coverage"] = cov
        if cov["edges_among_universe"] == 0:
            hint = (" (its genes are looked up by symbol: import the dataset with --gene-symbol-key when its var "
                    "names are Ensembl ids)" if g.name in ("go", "edges") else "")
            dropped.append({"name": g.name, **g.provenance,
                            "note": f"graph {g.name!r} has no edges among the {len(universe)}-node universe "
                                    f"({cov['nodes_covered']} nodes covered): dropped, not gated{hint}"})
        else:
            kept.append(g)
    return universe, kept, go, dropped
