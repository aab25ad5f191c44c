"""Time one CGIO training epoch at Norman 2019 scale (synthetic stand-in).

Norman 2019: ~91k cells x ~5k genes -> ~280 perturbation groups (~150 singles, ~130
doubles). CGIO trains full-batch on pseudobulk deltas, so an epoch's cost depends on
the groups, genes, node universe and graphs, not on the cells. This builds those
inputs directly: ``G`` measured genes, ``P`` perturbed genes (most not measured),
two random top-k graphs (standing in for GO and co-expression, k = 20) over the
node universe, random deltas, and the default CGIONet; then times the signal
propagation once and ``--epochs`` full-batch Adam steps (Gaussian NLL), reporting
the median epoch. A default fit trains ``cv_folds`` (3) members for up to
``epochs`` (200) epochs each, so a fit costs about 3 x 200 epochs at most.

Usage: .venv/bin/python benchmarks/cgio_gpu_epoch.py [--device cuda|cpu] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import scipy.sparse as sp
import torch
from perturbfm_models.cgio import graphs as G
from perturbfm_models.cgio.config import DEFAULTS
from perturbfm_models.cgio.model import CGIONet, NetSpec
from perturbfm_models.cgio.train import Batch, train_net


def random_graph(rng: np.random.Generator, n: int, k: int) -> sp.csr_matrix:
    src = np.repeat(np.arange(n), k)
    dst = rng.integers(0, n, size=n * k)
    w = rng.uniform(0.1, 1.0, size=n * k).astype(np.float32)
    keep = src != dst
    a = sp.coo_matrix((w[keep], (src[keep], dst[keep])), shape=(n, n)).tocsr()
    return G.normalised_adjacency(a.maximum(a.T).tocsr())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of Norman's genes and groups")
    ap.add_argument("--epochs", type=int, default=20, help="epochs to time (median reported)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    n_genes = max(20, int(round(5000 * args.scale)))
    n_singles = max(4, int(round(150 * args.scale)))
    n_doubles = max(2, int(round(130 * args.scale)))
    n_pert = n_singles
    n_in = int(0.1 * n_pert)  # ~10 % of targets are measured genes
    n_nodes = n_genes + n_pert - n_in
    measured = np.arange(n_genes)
    targets = np.arange(n_genes - n_in, n_nodes)
    masks = [[t] for t in targets]
    pairs = set()
    while len(pairs) < n_doubles:
        a, b = sorted(rng.choice(n_pert, size=2, replace=False).tolist())
        pairs.add((a, b))
    masks += [[targets[a], targets[b]] for a, b in sorted(pairs)]
    n_groups = len(masks)
    x = np.zeros((n_groups, n_nodes), np.float32)
    for i, m in enumerate(masks):
        x[i, m] = 1.0
    y = rng.normal(0, 0.2, size=(n_groups, n_genes)).astype(np.float32)
    adjs = [random_graph(rng, n_nodes, DEFAULTS["go_k"]), random_graph(rng, n_nodes, DEFAULTS["coexpr_k"])]
    r = DEFAULTS["rank"]
    _, s, vt = np.linalg.svd(y - y.mean(0), full_matrices=False)
    basis = vt[:r].T * (s[:r] / np.sqrt(n_groups))
    spec = NetSpec(n_nodes=n_nodes, measured_idx=measured, n_contexts=1, n_graphs=2, hidden=DEFAULTS["hidden"],
                   rank=r, steps=DEFAULTS["steps"], dropout=DEFAULTS["dropout"])
    logvar = np.log(np.expm1(y.var(0) + 1e-4))

    def make() -> CGIONet:
        return CGIONet(spec, adjs, basis, y.mean(0), logvar, device).to(device)

    net = make()
    xt = torch.as_tensor(x, device=device)
    sync(device)
    t0 = time.perf_counter()
    sig = net.signals(xt)
    sync(device)
    t_sig = time.perf_counter() - t0
    batch = Batch(xt, torch.zeros(n_groups, dtype=torch.long, device=device),
                  torch.zeros(n_groups, 2, device=device), torch.as_tensor(y, device=device), sig)
    train_net(make, batch, None, epochs=2, lr=0.01, weight_decay=1e-4, patience=30, context_dropout=0.1,
              unknown_ctx=1, seed=0)  # warm-up (kernels, allocator)
    # the same step as train.train_net: context dropout, forward, Gaussian NLL, backward, Adam
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=DEFAULTS["lr"], weight_decay=DEFAULTS["weight_decay"])
    loss_fn = torch.nn.GaussianNLLLoss(eps=1e-6)
    times = []
    for e in range(args.epochs + 1):
        sync(device)
        t0 = time.perf_counter()
        drop = (torch.rand(n_groups) < DEFAULTS["context_dropout"]).to(device)
        ctx = torch.where(drop, torch.ones_like(batch.ctx), batch.ctx)
        mean, var, _ = net(batch.x, ctx, batch.cov, batch.sig)
        loss = loss_fn(mean, batch.y, var)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        if e:  # the first step allocates Adam's state
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"device={device} scale={args.scale} genes={n_genes} nodes={n_nodes} groups={n_groups} "
          f"(singles={n_singles}, doubles={n_doubles}) signal-propagation={t_sig * 1000:.1f} ms")
    print(f"one CGIO training epoch (one full-batch step): median {med * 1000:.1f} ms "
          f"over {args.epochs} (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}); "
          f"a default fit (3 members x <= 200 epochs) <= {3 * 200 * med:.1f} s")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
