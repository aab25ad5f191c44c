"""Sharded evaluation (perturbfm.shard): the merged result equals the single-process one.

A small SYNTHETIC truth/prediction pair; cells are subsampled (max_cells below the group
sizes), one group is too small to split into replicate halves, and every installed panel
runs, so the seeds keyed by group and context positions are exercised."""

from __future__ import annotations

import importlib.util

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from perturbfm.api import evaluate
from perturbfm.errors import ConfigError
from perturbfm.shard import plan_shards
from perturbfm.testing import make_canonical_adata


def _files(tmp_path):
    src = make_canonical_adata(n_genes=24, contexts=("ctxA", "ctxB", "ctxC"), singles=("G0", "G1", "G2", "G3"),
                               doubles=(("G0", "G1"),), cells_per_group=12, n_control=24,
                               seed=5, sparse=False)
    obs = pd.DataFrame({"perturbation": src.obs["pfm_perturbation"].astype(str).to_numpy(),
                        "cell_line": src.obs["pfm_context"].astype(str).to_numpy()}, index=src.obs_names)
    # one group with 3 true cells: declared unsplittable by the replicate reference
    small = np.flatnonzero(((obs["perturbation"] == "G2") & (obs["cell_line"] == "ctxB")).to_numpy())
    keep = np.ones(len(obs), dtype=bool)
    keep[small[3:]] = False
    X = np.asarray(src.X, dtype=np.float64)[keep]
    obs = obs[keep]
    truth = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(src.var_names)))
    truth.uns["synthetic"] = True
    rng = np.random.default_rng(1)
    pk = obs["perturbation"].to_numpy() != "control"
    pX = np.clip(X[pk] + 0.2 * rng.standard_normal((int(pk.sum()), X.shape[1])), 0, None)
    pred = ad.AnnData(X=pX, obs=obs[pk].copy(), var=pd.DataFrame(index=list(src.var_names)))
    pred.obs_names = [f"p{i}" for i in range(pred.n_obs)]
    truth.write_h5ad(tmp_path / "truth.h5ad")
    pred.write_h5ad(tmp_path / "pred.h5ad")
    return str(tmp_path / "pred.h5ad"), str(tmp_path / "truth.h5ad")


#: a group-local panel (chunked with shard_by="group"), context-level panels listing groups in
#: evaluation order (vcc) and context by context (perturbench, vcc2026: context-position tie-break seeds)
PANELS = "basic,perturbench,vcc,vcc2026"


def _metrics(pred, truth, **kw):
    frame = evaluate(pred, truth, context_key="cell_line", max_cells=9, seed=3, panels=PANELS, **kw)
    return frame.attrs["metrics"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shard")
    pred, truth = _files(tmp)
    return pred, truth, _metrics(pred, truth)


def _same(a, b):
    assert a["panels"] == b["panels"]
    assert a["references"] == b["references"]
    assert a["groups"] == b["groups"]


def test_serial_context_shards_equal_single_process(pair):
    pred, truth, single = pair
    assert len(single["panels"]) == 4
    assert single["references"]["n_unsplittable_groups"] == 1
    sharded = _metrics(pred, truth, executor="serial", shard_by="context")
    _same(sharded, single)
    assert sharded["sharding"]["n_shards"] == 3 and "sharding" not in single


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (pip install 'perturbfm-core[ray]'); the Ray shard test needs it")
def test_ray_two_workers_equal_single_process(pair):
    import ray

    pred, truth, single = pair
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sharded = _metrics(pred, truth, executor="ray", workers=2, shard_by="group", group_chunk=2)
    finally:
        ray.shutdown()
    _same(sharded, single)
    assert sharded["sharding"]["executor"] == "ray" and sharded["sharding"]["n_shards"] == 3 + 9


def test_plan_keeps_context_panels_whole():
    from perturbfm.plugins import get_registry

    reg = get_registry()
    panels = [reg.create("metric_panel", n) for n in ("basic", "vcc")]
    src = make_canonical_adata(n_genes=10, contexts=("a", "b"), seed=0)
    from perturbfm.dataset import group_table

    groups = [g for g in group_table(src).values() if not g.is_control]
    plan = plan_shards(groups, panels, "group", 3)
    whole = [idx for names, idx in plan if names == ["vcc"]]
    assert sorted(len(i) for i in whole) == [8, 8]  # one vcc shard per context, all its groups
    chunks = [idx for names, idx in plan if names == ["basic"]]
    assert all(len(i) <= 3 for i in chunks) and sum(len(i) for i in chunks) == len(groups)
    assert {groups[int(i)].context for idx in whole for i in idx[:1]} == {"a", "b"}
    with pytest.raises(ConfigError, match="--shard-by"):
        plan_shards(groups, panels, "cells")


def test_sharded_needs_files(pair):
    pred, truth, _ = pair
    with pytest.raises(ConfigError, match="in-memory AnnData"):
        _metrics(ad.read_h5ad(pred), truth, executor="serial")
