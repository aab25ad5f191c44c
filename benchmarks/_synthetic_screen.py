"""A seeded SYNTHETIC perturbation screen of any size, written to .h5ad in row chunks.

Used by the scale benchmarks (``benchmarks/stream_memory.py``, ``benchmarks/scale.py``);
never by the test suite. The file is labelled synthetic (``uns["synthetic"] = True``), so
every dataset imported from it is marked synthetic in the store and in every run.

Shape of the data (a stand-in for Replogle 2022 K562 essential by default):

* ``n_cells`` cells x ``n_genes`` genes, CSR float32, log1p-like values (per gene a
  detection rate, mean ~10 % non-zero, and a level; values ``log1p(level * gamma)``);
* ``n_groups`` perturbations spread over ``n_contexts`` contexts (obs ``cell_type``), each
  knocking down its target gene (a measured gene) and shifting 40 random genes;
* ``n_controls`` control cells (obs ``perturbation == "control"``) over the contexts;
* cells in random order (a group's cells are scattered through the file, as in real
  screens), written ``chunk`` rows at a time: memory is one chunk, never the matrix.

Usage::

    .venv/bin/python benchmarks/_synthetic_screen.py OUT.h5ad [--cells 300000 --genes 8000 --groups 2000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

#: Replogle-size defaults (K562 essential: ~310k cells, ~8k genes, ~2k perturbations, ~10k controls).
REPLOGLE = {"n_cells": 300_000, "n_genes": 8_000, "n_groups": 2_000, "n_controls": 10_000}
#: Norman-size (91k cells x 5k genes, 280 groups).
NORMAN = {"n_cells": 91_000, "n_genes": 5_000, "n_groups": 280, "n_controls": 11_000}


def write_synthetic_screen(path: str | Path, *, n_cells: int = 300_000, n_genes: int = 8_000, n_groups: int = 2_000,
                           n_controls: int = 10_000, n_contexts: int = 1, density: float = 0.10, seed: int = 0,
                           chunk: int = 10_000) -> dict[str, int]:
    """Write the synthetic screen to ``path`` (see the module docstring); returns its shape and nnz."""
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem  # type: ignore[no-redef]
    if n_controls >= n_cells or n_groups < 1 or n_groups > n_genes:
        raise SystemExit("need n_controls < n_cells and 1 <= n_groups <= n_genes")
    rng = np.random.default_rng(seed)
    G = n_genes
    rate = np.clip(rng.beta(0.6, 0.6 * (1 - density) / density, G), 0.005, 0.9)
    level = rng.gamma(2.0, 1.0, G).astype(np.float32)
    # labels: controls then groups (group k targets gene k), sizes as even as possible, shuffled
    sizes = np.full(n_groups, (n_cells - n_controls) // n_groups)
    sizes[: (n_cells - n_controls) % n_groups] += 1
    label = np.concatenate([np.full(n_controls, -1), np.repeat(np.arange(n_groups), sizes)])
    rng.shuffle(label)
    context = rng.integers(0, n_contexts, n_cells) if n_contexts > 1 else np.zeros(n_cells, dtype=np.int64)
    if n_contexts > 1:  # a group lives in one context
        g_ctx = rng.integers(0, n_contexts, n_groups)
        context = np.where(label >= 0, g_ctx[np.maximum(label, 0)], context)
    eff_genes = rng.integers(0, G, (n_groups, 40))
    eff_size = rng.normal(0.0, 0.6, (n_groups, 40)).astype(np.float32)
    keys = (np.arange(n_groups)[:, None] * G + eff_genes).ravel()
    order = np.argsort(keys, kind="stable")
    eff_keys, eff_sorted = keys[order], eff_size.ravel()[order]
    genes = [f"G{i:05d}" for i in range(G)]

    path = Path(path)
    nnz = 0
    with h5py.File(path, "w") as f:
        g = f.create_group("X")
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(1 << 20,))
        idx = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(1 << 20,))
        indptr = [np.zeros(1, dtype=np.int64)]
        for start in range(0, n_cells, chunk):
            lab = label[start:start + chunk]
            n = lab.size
            # detection: per gene a binomial number of cells (with replacement; duplicates summed)
            per_gene = rng.binomial(n, rate)
            c = np.repeat(np.arange(G, dtype=np.int64), per_gene)
            r = rng.integers(0, n, c.size)
            vals = level[c] * rng.gamma(2.0, 0.5, c.size).astype(np.float32)
            lab_r = lab[r]
            hit = lab_r >= 0
            # a perturbed cell's 40 effect genes are scaled by exp(effect); its target knocked down
            key = np.where(hit, lab_r * G + c, -1)
            pos = np.clip(np.searchsorted(eff_keys, key), 0, eff_keys.size - 1)
            match = hit & (eff_keys[pos] == key)
            vals[match] *= np.exp(eff_sorted[pos[match]])
            keep = ~(hit & (c == lab_r) & (rng.random(c.size) < 0.85))
            r, c, vals = r[keep], c[keep], np.log1p(vals[keep])
            M = sp.csr_matrix((vals.astype(np.float32), (r, c)), shape=(n, G))
            k = M.nnz
            data.resize((nnz + k,))
            idx.resize((nnz + k,))
            data[nnz:] = M.data
            idx[nnz:] = M.indices.astype(np.int32)
            indptr.append(M.indptr[1:].astype(np.int64) + nnz)
            nnz += k
        g.create_dataset("indptr", data=np.concatenate(indptr))
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = (n_cells, G)
        pert_names = np.array(["control"] + genes[:n_groups], dtype=object)[label + 1]
        obs = pd.DataFrame({"perturbation": pd.Categorical(pert_names),
                            "cell_type": pd.Categorical([f"ctx{int(c)}" for c in context])},
                           index=[f"cell{i:07d}" for i in range(n_cells)])
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=genes))
        for key in ("obsm", "varm", "layers", "obsp", "varp"):
            write_elem(f, key, {})
        write_elem(f, "uns", {"synthetic": True, "generator": f"benchmarks/_synthetic_screen.py seed={seed}"})
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    return {"n_cells": n_cells, "n_genes": G, "n_groups": n_groups, "n_controls": n_controls, "nnz": nnz}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--cells", type=int, default=REPLOGLE["n_cells"])
    ap.add_argument("--genes", type=int, default=REPLOGLE["n_genes"])
    ap.add_argument("--groups", type=int, default=REPLOGLE["n_groups"])
    ap.add_argument("--controls", type=int, default=REPLOGLE["n_controls"])
    ap.add_argument("--contexts", type=int, default=1)
    ap.add_argument("--density", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    info = write_synthetic_screen(a.out, n_cells=a.cells, n_genes=a.genes, n_groups=a.groups,
                                  n_controls=a.controls, n_contexts=a.contexts, density=a.density, seed=a.seed)
    print(f"wrote SYNTHETIC {a.out}: {info} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
