"""Gene graphs for CGIO: GO (Jaccard of GO term sets), co-expression, user edge lists.

Every builder returns a :class:`GeneGraph`: an undirected weighted edge list over
an explicit node list, with its provenance (source path, sha256, sizes), so a run
records exactly which prior it used. No graph is ever invented: a missing source
raises :class:`perturbfm.errors.ConfigError` naming the path and the fix.
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
from perturbfm.errors import ConfigError
from perturbfm.hashing import sha256_file
from perturbfm.training import TrainingData
from scipy.sparse.csgraph import dijkstra

GO_RELATIVE = Path("go_human") / "gene2go_human.tsv.gz"
_GO_CACHE: dict[tuple[str, float], GoTable] = {}


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

    def reindex(self, universe: Sequence[str]) -> sp.csr_matrix:
        """Symmetric weighted adjacency over ``universe`` (edges to genes outside it dropped)."""
        pos = {g: i for i, g in enumerate(universe)}
        m = np.array([pos.get(g, -1) for g in self.genes], dtype=np.int64)
        s, d = m[self.src], m[self.dst]
        keep = (s >= 0) & (d >= 0) & (s != d)
        n = len(universe)
        a = sp.coo_matrix((self.weight[keep], (s[keep], d[keep])), shape=(n, n)).tocsr()
        return a.maximum(a.T).tocsr()


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


def jaccard(table: GoTable, rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
    """Dense Jaccard similarity of the GO term sets of ``rows`` x ``cols`` (float32).

    ``|A ∩ B| / (|A| + |B| − |A ∩ B|)`` from one sparse product; genes without
    annotation have similarity 0 to everything.
    """
    ri = np.array([table.index.get(g, -1) for g in rows])
    ci = np.array([table.index.get(g, -1) for g in cols])
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
    table: GoTable | None, seeds: Sequence[str], *, hops: int, k: int, min_sim: float, max_nodes: int
) -> list[str]:
    """``seeds`` plus the GO genes within ``hops`` top-k hops of them, capped at ``max_nodes``.

    New genes are added hop by hop, most similar first (highest Jaccard to the
    current set), so the cap keeps the closest genes. Order is deterministic.
    """
    universe = list(dict.fromkeys(seeds))
    if table is None or hops <= 0:
        return universe
    have = set(universe)
    frontier = [g for g in universe if g in table.index]
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


def go_graph(table: GoTable, universe: Sequence[str], *, k: int, min_sim: float) -> GeneGraph:
    """GEARS-style GO graph: each gene's top-``k`` Jaccard neighbours within ``universe``."""
    genes = list(universe)
    srcs, dsts, ws = [], [], []
    for start in range(0, len(genes), 1000):
        sim = jaccard(table, genes[start : start + 1000], genes)
        for i in range(sim.shape[0]):
            sim[i, start + i] = 0.0  # no self loops
        r, c, v = _topk_edges(sim, k, min_sim, row_offset=start)
        srcs.append(r)
        dsts.append(c)
        ws.append(v)
    src, dst, w = (np.concatenate(x) for x in (srcs, dsts, ws))
    n_annot = sum(g in table.index for g in genes)
    return GeneGraph("go", genes, src, dst, w.astype(np.float32), {
        "source": str(table.path), "sha256": table.sha256, "k": k, "min_jaccard": min_sim,
        "n_nodes": len(genes), "n_nodes_with_go_terms": n_annot, "n_edges": int(src.size),
    })


# --------------------------------------------------------------------------- co-expression
def coexpr_graph(train: TrainingData, *, k: int, min_abs_r: float, source: str) -> GeneGraph:
    """Top-``k`` |Pearson r| neighbours among the measured genes, from training data only.

    ``source="groups"``: correlation across the training group pseudobulk deltas.
    ``source="cells"``: across the control cells of every context and the cells of
    the training groups, each centred by its context's control mean. Held-out
    groups are never read (TrainingData does not expose them).
    """
    if source == "groups":
        rows = np.asarray(train.deltas(), dtype=np.float64)
        what = f"pseudobulk deltas of {len(train.groups)} training groups"
    else:
        parts = []
        for ctx in train.control.contexts:
            c = train.control_cells(ctx)
            if c.shape[0]:
                parts.append(c - train.control.mean(ctx))
        for g in train.groups:
            parts.append(train.cells(g.group_id) - train.control.mean(g.context))
        rows = np.vstack(parts) if parts else np.zeros((0, len(train.genes)))
        what = f"{rows.shape[0]} control + training-group cells, centred by their context's control mean"
    n = len(train.genes)
    if rows.shape[0] < 3:
        r = np.zeros((n, n), dtype=np.float32)
    else:
        x = rows - rows.mean(axis=0)
        sd = np.sqrt((x * x).sum(axis=0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.nan_to_num((x.T @ x) / np.outer(sd, sd)).astype(np.float32)
    np.fill_diagonal(r, 0.0)
    src, dst, w = _topk_edges(np.abs(r), k, min_abs_r)
    return GeneGraph("coexpr", list(train.genes), src, dst, w, {
        "source": what, "sha256": None, "k": k, "min_abs_r": min_abs_r,
        "n_nodes": n, "n_edges": int(src.size), "training_groups": len(train.groups),
    })


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


def attach_go(g: GeneGraph, go: GoTable, new: Sequence[str], old: Sequence[str], *, k: int, min_sim: float) -> None:
    """Attach the genes ``new`` (not in the universe ``old``) to the GO graph ``g`` in place, by
    their top-``k`` GO neighbours among ``old + new`` (no self-edges)."""
    universe = list(old) + list(new)
    sim = jaccard(go, list(new), universe)
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
