"""The CGIO network: graph-propagated intervention encoder, trust gates, contextual
low-rank operator, mean and variance heads (plain torch, no GNN library)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


def sparse_tensor(a: sp.spmatrix, device: torch.device) -> torch.Tensor:
    """A scipy matrix as a coalesced float32 torch sparse COO tensor."""
    c = a.tocoo()
    idx = torch.as_tensor(np.vstack([c.row, c.col]), dtype=torch.long)
    val = torch.as_tensor(c.data, dtype=torch.float32)
    return torch.sparse_coo_tensor(idx, val, c.shape, device=device, check_invariants=False).coalesce()


@dataclass
class NetSpec:
    """Sizes and switches of :class:`CGIONet`."""

    n_nodes: int
    measured_idx: np.ndarray  # node index of each measured gene, in the dataset's gene order
    n_contexts: int  # training contexts; index n_contexts is the learned "unknown" context
    n_graphs: int
    hidden: int = 32
    rank: int = 8
    steps: int = 2
    use_graphs: bool = True
    gating: bool = True
    context_conditioning: bool = True
    dropout: float = 0.1
    n_cov: int = 2


class CGIONet(nn.Module):
    """Maps (perturbed-gene mask, context, covariates) to a Gaussian over the delta.

    * Encoder: the intervention mask ``x`` is propagated over each graph by
      ``K`` sparse normalised-adjacency products; a perturbation's embedding on
      graph ``g`` is ``Σ_k a_gk (Â_g^k x) E`` = ``x P_g`` with ``P_g`` the node
      embeddings ``E`` smoothed over the graph (sum over its genes).
      The scalar intervention signal ``Â_g^k x`` is also read out at the measured
      genes (hop-weighted), giving a direct local effect (e.g. on the target itself).
    * Trust gates: ``γ_g = σ(MLP([context, perturbation features]))`` weight each
      graph; with ``gating`` off all graphs weigh ``1 / n_graphs``.
    * Contextual operator: an MLP gives ``r`` coefficients that are mixed by the
      context (``a ⊙ m_c + o_c``) and mapped to genes by the global basis
      ``W`` (``G × r``); without ``context_conditioning`` one global ``m, o``.
    * Heads: mean = ``W a' + direct + b``; variance = softplus of a low-rank
      head plus a per-gene base, always > 0.
    """

    measured: torch.Tensor  # a registered buffer: the measured genes' node indices

    def __init__(self, spec: NetSpec, adjs: list[sp.spmatrix], basis: np.ndarray,
                 gene_bias: np.ndarray, gene_logvar: np.ndarray, device: torch.device) -> None:
        super().__init__()
        self.spec = spec
        n, h, r, n_g = spec.n_nodes, spec.hidden, spec.rank, max(spec.n_graphs, 1)
        self.adjs = [sparse_tensor(a, device) for a in adjs] if spec.use_graphs else []
        self.register_buffer("measured", torch.as_tensor(spec.measured_idx, dtype=torch.long))
        self.node_emb = nn.Parameter(torch.zeros(n, h))  # untrained nodes contribute exactly 0
        self.hop_logits = nn.Parameter(torch.zeros(n_g, spec.steps + 1))
        self.direct_w = nn.Parameter(torch.zeros(n_g, spec.steps + 1))
        self.ctx_emb = nn.Embedding(spec.n_contexts + 1, h)
        nn.init.normal_(self.ctx_emb.weight, std=0.1)
        gate_in = 2 * h + spec.n_cov + n_g
        self.gate = nn.Sequential(nn.Linear(gate_in, h), nn.ReLU(), nn.Linear(h, n_g))
        nn.init.constant_(cast(nn.Linear, self.gate[2]).bias, 2.0)  # graphs start trusted (σ(2) ≈ 0.88)
        self.trunk = nn.Sequential(
            nn.Linear(2 * h + spec.n_cov, 2 * h), nn.ReLU(), nn.Dropout(spec.dropout), nn.Linear(2 * h, h), nn.ReLU()
        )
        self.coef = nn.Linear(h, r)
        n_mix = spec.n_contexts + 1 if spec.context_conditioning else 1
        self.ctx_scale = nn.Parameter(torch.ones(n_mix, r))
        self.ctx_offset = nn.Parameter(torch.zeros(n_mix, r))
        self.basis = nn.Parameter(torch.as_tensor(basis, dtype=torch.float32))
        self.gene_bias = nn.Parameter(torch.as_tensor(gene_bias, dtype=torch.float32))
        self.var_coef = nn.Linear(h, r)
        nn.init.zeros_(self.var_coef.weight), nn.init.zeros_(self.var_coef.bias)
        self.var_basis = nn.Parameter(torch.zeros(len(spec.measured_idx), r))
        self.var_base = nn.Parameter(torch.as_tensor(gene_logvar, dtype=torch.float32))

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def signals(self, x: torch.Tensor) -> torch.Tensor:
        """Message passing of the intervention signal: ``[B, n_g, K+1, N]`` holding
        ``x, Âx, Â²x, ...`` per graph (``K`` sparse normalised-adjacency products).

        The propagation is linear and parameter-free, so it is run once per batch
        and cached; the learned hop weights, embeddings and gates act on it.
        """
        if not self.adjs:
            return x[:, None, None, :]
        per_graph = []
        for a in self.adjs:
            outs = [x.T.contiguous()]  # [N, B]
            for _ in range(self.spec.steps):
                outs.append(torch.sparse.mm(a, outs[-1]))
            per_graph.append(torch.stack([o.T for o in outs], dim=1))  # [B, K+1, N]
        return torch.stack(per_graph, dim=1)

    def encode(self, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-graph perturbation embeddings ``[B, n_g, h]`` and direct effects ``[B, n_g, G]``.

        ``u_g = Σ_k a_gk (Â_g^k x) E`` equals ``x (Σ_k a_gk Â_g^k E)``: the
        perturbed genes' embeddings smoothed over graph ``g`` (``Â`` symmetric).
        """
        if not self.adjs:
            return (sig[:, :, 0] @ self.node_emb), self.direct_w[:1, :1] * sig[:, :, 0][..., self.measured]
        w = torch.softmax(self.hop_logits, dim=1)  # [n_g, K+1]
        smooth = torch.einsum("bgkn,gk->bgn", sig, w)
        direct = torch.einsum("bgkn,gk->bgn", sig[..., self.measured], self.direct_w)
        return smooth @ self.node_emb, direct

    def gates(self, x: torch.Tensor, ctx: torch.Tensor, cov: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Trust weight per graph ``[B, n_g]`` (constant ``1/n_g`` with gating off)."""
        n_g = u.shape[1]
        if not self.spec.gating or n_g == 1 and not self.adjs:
            return torch.full((x.shape[0], n_g), 1.0 / n_g, device=x.device)
        n_pert = x.sum(dim=1, keepdim=True).clamp_min(1.0)
        feats = torch.cat([self.ctx_emb(ctx), (x @ self.node_emb) / n_pert, cov,
                           u.norm(dim=2) / n_pert], dim=1)
        return torch.sigmoid(self.gate(feats))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, ctx: torch.Tensor, cov: torch.Tensor, sig: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean ``[B, G]``, variance ``[B, G]`` and gates ``[B, n_g]`` (``sig``: cached :meth:`signals`)."""
        u, direct = self.encode(self.signals(x) if sig is None else sig)
        gamma = self.gates(x, ctx, cov, u)
        pert = (gamma[:, :, None] * u).sum(dim=1)
        local = (gamma[:, :, None] * direct).sum(dim=1)
        hid = self.trunk(torch.cat([pert, self.ctx_emb(ctx), cov], dim=1))
        mix = ctx if self.spec.context_conditioning else torch.zeros_like(ctx)
        a = self.coef(hid) * self.ctx_scale[mix] + self.ctx_offset[mix]
        mean = a @ self.basis.T + local + self.gene_bias
        logv = self.var_base + (self.var_coef(hid) * self.ctx_scale[mix]) @ self.var_basis.T
        var = nn.functional.softplus(logv) + 1e-6
        return mean, var, gamma
