"""Seeded, deterministic full-batch training of :class:`CGIONet` with early stopping."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .model import CGIONet


@dataclass
class Batch:
    """Tensors of a set of groups: mask ``[B, N]``, context ``[B]``, covariates ``[B, 2]``, delta ``[B, G]``,
    propagated signals."""

    x: torch.Tensor
    ctx: torch.Tensor
    cov: torch.Tensor
    y: torch.Tensor
    sig: torch.Tensor  # propagated signals [B, n_g, K+1, N] (CGIONet.signals)

    def subset(self, idx: np.ndarray) -> Batch:
        i = torch.as_tensor(idx, dtype=torch.long, device=self.x.device)
        return Batch(self.x[i], self.ctx[i], self.cov[i], self.y[i], self.sig[i])

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Curve:
    """Per-epoch training NLL and validation MSE (when a validation set exists)."""

    train_nll: list[float] = field(default_factory=list)
    val_mse: list[float] = field(default_factory=list)
    best_epoch: int = 0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs_run": len(self.train_nll), "best_epoch": self.best_epoch}
        if self.train_nll:
            out.update(train_nll_first=self.train_nll[0], train_nll_last=self.train_nll[-1])
        if self.val_mse:
            out.update(val_mse_first=self.val_mse[0], val_mse_best=min(self.val_mse), val_mse_last=self.val_mse[-1])
        return out


def seed_everything(seed: int) -> None:
    """Seed torch and numpy and ask torch for deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_net(
    make_net: Callable[[], CGIONet],
    train: Batch,
    val: Batch | None,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    patience: int,
    context_dropout: float,
    unknown_ctx: int,
    seed: int,
) -> tuple[CGIONet, Curve]:
    """Train a fresh net on ``train`` (Adam, Gaussian NLL on the deltas).

    With ``val`` the epoch of lowest validation MSE is kept (early stopping with
    ``patience``); without it the net trains for ``epochs``. During training each
    group's context is replaced by the "unknown" context with probability
    ``context_dropout``, so that embedding learns the context-agnostic response.
    """
    seed_everything(seed)
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.GaussianNLLLoss(eps=1e-6)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    curve = Curve()
    best_state, best = copy.deepcopy(net.state_dict()), float("inf")
    since = 0
    for epoch in range(epochs):
        net.train()
        ctx = train.ctx
        if context_dropout > 0:
            drop = torch.rand(len(train), generator=gen) < context_dropout
            ctx = torch.where(drop.to(ctx.device), torch.full_like(ctx, unknown_ctx), ctx)
        mean, var, _ = net(train.x, ctx, train.cov, train.sig)
        loss = loss_fn(mean, train.y, var)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.train_nll.append(float(loss.detach()))
        if val is not None and len(val):
            net.eval()
            with torch.no_grad():
                vm, _, _ = net(val.x, val.ctx, val.cov, val.sig)
                mse = float(((vm - val.y) ** 2).mean())
            curve.val_mse.append(mse)
            if mse < best - 1e-9:
                best, since, curve.best_epoch = mse, 0, epoch + 1
                best_state = copy.deepcopy(net.state_dict())
            else:
                since += 1
                if since >= patience:
                    break
    if val is not None and len(val):
        net.load_state_dict(best_state)
    else:
        curve.best_epoch = len(curve.train_nll)
    net.eval()
    return net, curve
