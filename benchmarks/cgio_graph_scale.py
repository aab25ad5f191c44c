"""CGIO's gene graphs at screen scale: time and peak memory of the co-expression graph
(a bounded, seeded cell sample; blocked top-k) and of the GO graph over every measured gene.

Reads a SYNTHETIC screen written by ``benchmarks/_synthetic_screen.py`` (Norman- or
Replogle-size) in backed mode: only the sampled rows are ever densified, so the memory is
``coexpr_max_cells x genes`` plus the per-group summaries, whatever the number of cells.
Prints one line per step with wall time and the process's peak RSS. Not part of the tests.

Usage::

    .venv/bin/python benchmarks/_synthetic_screen.py /tmp/screen.h5ad --cells 300000 --genes 8000 --groups 2000
    .venv/bin/python benchmarks/cgio_graph_scale.py /tmp/screen.h5ad [--max-cells 20000] [--train-groups 1600]
"""

from __future__ import annotations

import argparse
import resource
import time


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="a synthetic screen .h5ad (obs 'perturbation', 'cell_type'; control 'control')")
    ap.add_argument("--max-cells", type=int, default=20_000, help="co-expression cell budget (default 20000)")
    ap.add_argument("--train-groups", type=int, default=None, help="training groups (default: 80 %% of groups)")
    ap.add_argument("--go", action="store_true", help="also build the GO graph (needs the shared GO table)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import anndata as ad
    import numpy as np
    from perturbfm.dataset import (
        CONTEXT_COL,
        CONTROL,
        CONTROL_COL,
        COVARIATES_COL,
        KIND_COL,
        PERT_COL,
        control_stats,
        group_table,
    )
    from perturbfm.training import TrainingData
    from perturbfm_models.cgio import graphs as G

    t0 = time.perf_counter()
    adata = ad.read_h5ad(args.file, backed="r")
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs[PERT_COL] = pert
    adata.obs[CONTROL_COL] = pert == CONTROL
    adata.obs[CONTEXT_COL] = adata.obs["cell_type"].astype(str).to_numpy() if "cell_type" in adata.obs else "all"
    adata.obs[COVARIATES_COL] = ""
    adata.obs[KIND_COL] = np.where(pert == CONTROL, CONTROL, "genetic")
    groups = [g for g in group_table(adata).values() if not g.is_control]
    n_train = args.train_groups or int(0.8 * len(groups))
    train = TrainingData(adata, groups[:n_train], control_stats(adata))
    print(f"SYNTHETIC screen {adata.n_obs} cells x {adata.n_vars} genes, {len(groups)} groups "
          f"({n_train} training): loaded + control means {time.perf_counter() - t0:.1f} s, "
          f"peak RSS {_rss_gib():.2f} GiB", flush=True)
    t = time.perf_counter()
    g = G.coexpr_graph(train, k=20, min_abs_r=0.1, source="cells", max_cells=args.max_cells, seed=args.seed)
    print(f"coexpr (cells, budget {args.max_cells}): {g.provenance['n_edges']} edges, "
          f"{g.provenance['cell_budget']['cells_used']} of {g.provenance['cell_budget']['cells_available']} cells, "
          f"block {g.provenance['block_genes']} genes: {time.perf_counter() - t:.1f} s, "
          f"peak RSS {_rss_gib():.2f} GiB", flush=True)
    t = time.perf_counter()
    g = G.coexpr_graph(train, k=20, min_abs_r=0.1, source="groups")
    print(f"coexpr (groups: {n_train} pseudobulk deltas): {g.provenance['n_edges']} edges: "
          f"{time.perf_counter() - t:.1f} s, peak RSS {_rss_gib():.2f} GiB", flush=True)
    if args.go:
        t = time.perf_counter()
        seeds = list(dict.fromkeys(train.genes))
        universe, graphs, _, dropped = G.build_graphs(
            train, seeds, graphs=["go"], go_table=None, go_k=20, go_min_jaccard=0.1, go_hops=1, max_nodes=3000,
            coexpr_k=20, coexpr_min_abs_r=0.1, coexpr_source="groups", edge_list=None)
        cov = graphs[0].provenance["coverage"] if graphs else dropped[0]["coverage"]
        print(f"GO graph over {len(universe)} nodes: coverage {cov}: {time.perf_counter() - t:.1f} s, "
              f"peak RSS {_rss_gib():.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
