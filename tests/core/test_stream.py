"""Streaming by group: one scan for every pseudobulk, backed reads equal in-memory ones,
bounded control samples, group-level accessors, sharded evaluation equal to the whole,
float32 kept where exact, and a run that is the same backed or in memory."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from perturbfm.backed import read_rows
from perturbfm.dataset import (
    control_stats,
    dataset_moments,
    ensure_group_column,
    group_table,
    grouped_moments,
)
from perturbfm.evaluation import build_eval_data, compute_panel_values, evaluate_panels, merge_panel_values
from perturbfm.interfaces import Prediction
from perturbfm.testing import make_canonical_adata
from perturbfm.training import TrainingData


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small canonical dataset (SYNTHETIC), in memory and as a backed file, cells shuffled."""
    adata = make_canonical_adata(n_genes=30, cells_per_group=12, n_control=40, seed=3)
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    adata = adata[perm].copy()
    path = tmp_path_factory.mktemp("stream") / "data.h5ad"
    adata.write_h5ad(path)
    return {"mem": ad.read_h5ad(path), "path": path}


def _backed(path: Path) -> ad.AnnData:
    return ad.read_h5ad(path, backed="r")


def test_one_scan_equals_separate_moments_to_the_bit(files: dict) -> None:
    mem = files["mem"]
    backed = _backed(files["path"])
    ids = [g for g, i in group_table(mem).items() if not i.is_control]
    want = grouped_moments(mem, ensure_group_column(mem).astype(str).to_numpy(), ids)
    plain = control_stats(mem)
    for a in (mem, backed):
        cs = control_stats(a, with_groups=True)
        got = cs.group_moments(ids)
        assert got is not None
        for x, y in zip(want, got):
            assert np.array_equal(x, y, equal_nan=True)
        assert cs.contexts == plain.contexts and np.array_equal(cs.means, plain.means)
        assert np.array_equal(cs.counts, plain.counts)
    m = dataset_moments(mem, ids[:3])
    assert m.labels[:3] == ids[:3] and len(m.labels) == 3 + len(plain.contexts)
    # the control variance is the variance of the context's control cells
    X = mem.X.toarray()
    ctrl = mem.obs["pfm_is_control"].to_numpy(bool) & (mem.obs["pfm_context"].to_numpy() == plain.contexts[0])
    np.testing.assert_allclose(control_stats(mem, with_groups=True).var(plain.contexts[0]),
                               X[ctrl].var(axis=0, ddof=1), rtol=1e-12, atol=1e-14)


def test_backed_rows_equal_in_memory_rows(files: dict) -> None:
    mem, backed = files["mem"], _backed(files["path"])
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 60, mem.n_obs):
        idx = np.sort(rng.choice(mem.n_obs, n, replace=False))
        got = read_rows(backed, idx)
        assert sp.issparse(got) and got.shape == (n, mem.n_vars)
        assert (got != mem.X[idx]).nnz == 0


def _eval(adata: ad.AnnData, *, max_cells: int = 20, seed: int = 4):
    groups = [g for g in group_table(adata).values() if not g.is_control]
    ctrl = control_stats(adata, with_groups=True)
    rng = np.random.default_rng(9)
    pred = Prediction([g.group_id for g in groups], rng.normal(0, 0.3, (len(groups), adata.n_vars)))
    return build_eval_data(adata, groups, ctrl, pred, seed=seed, max_cells=max_cells)


def test_eval_cells_are_the_same_backed_and_in_memory(files: dict) -> None:
    a, b = _eval(files["mem"]), _eval(_backed(files["path"]))
    for i in range(len(a.groups)):
        np.testing.assert_array_equal(a.all_true_cells(i), b.all_true_cells(i))
        np.testing.assert_array_equal(a.true_cells(i), b.true_cells(i))
        np.testing.assert_array_equal(a.pred_cells(i), b.pred_cells(i))
    for c in a.contexts:
        ca = a.control_cells(c)
        assert ca.shape[0] == 20 < a.n_control_cells(c) == 40  # the cap applies
        np.testing.assert_array_equal(ca, b.control_cells(c))
    # group-level accessors need no cells
    np.testing.assert_array_equal(a.group_means(), a.true_mean)
    assert a.group_n().tolist() == [12] * len(a.groups)
    assert set(a.control_means()) == set(a.contexts) == set(a.control_vars()) == set(a.control_counts())
    assert a.control_counts() == {c: 40 for c in a.contexts}


def test_sharded_evaluation_equals_the_whole(files: dict) -> None:
    from perturbfm.plugins import get_registry

    reg = get_registry()
    panels = [reg.create("metric_panel", n) for n in ("basic", "scperturbench")]
    data = _eval(files["mem"])
    whole = evaluate_panels(panels, data)
    shards = [compute_panel_values(panels, data.subset(contexts=[c])) for c in data.contexts]
    merged = evaluate_panels(panels, data, values_by_panel=merge_panel_values(shards))
    assert json.dumps(merged, sort_keys=True) == json.dumps(whole, sort_keys=True)
    sub = data.subset(contexts=[data.contexts[1]])
    j = data.group_ids.index(sub.group_ids[0])
    np.testing.assert_array_equal(sub.true_cells(0), data.true_cells(j))  # same seeded subsample
    np.testing.assert_array_equal(sub.pred_cells(0), data.pred_cells(j))


def test_training_data_is_group_level_and_control_samples_are_bounded(files: dict) -> None:
    mem = files["mem"]
    groups = [g for g in group_table(mem).values() if not g.is_control]
    fast = TrainingData(mem, groups, control_stats(mem, with_groups=True))
    slow = TrainingData(mem, groups, control_stats(mem))
    for f in ("group_means", "group_vars", "group_n", "deltas", "mean_se2", "control_vars"):
        np.testing.assert_array_equal(getattr(fast, f)(), getattr(slow, f)())
    ctx = groups[0].context
    assert fast.control_n(ctx) == 40
    s1, s2 = fast.control_sample(ctx, 15, seed=2), fast.control_sample(ctx, 15, seed=2)
    assert s1.shape == (15, mem.n_vars) and np.array_equal(s1, s2)
    assert fast.control_sample(ctx, 100).shape == (40, mem.n_vars)
    all_ctrl = fast.control_cells(ctx)
    assert {tuple(r) for r in s1} <= {tuple(r) for r in all_ctrl}
    with pytest.raises(ValueError):
        fast.control_sample(ctx, 0)


def test_float32_input_is_kept_float32_with_the_same_id(tmp_path: Path) -> None:
    from perturbfm.dataset_store import content_hash
    from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter

    base = make_canonical_adata(n_genes=12, cells_per_group=5, n_control=10, seed=1)
    X32 = sp.csr_matrix(np.log1p(base.X.toarray()).astype(np.float32))
    obs = base.obs.rename(columns={"pfm_perturbation": "perturbation", "pfm_context": "cell_type"})[
        ["perturbation", "cell_type"]]
    out = {}
    for name, X in (("f32", X32), ("f64", sp.csr_matrix(X32, dtype=np.float64))):
        p = tmp_path / f"{name}.h5ad"
        ad.AnnData(X=X, obs=obs, var=base.var).write_h5ad(p)
        for backed in (False, True):
            res = AnnDataAdapter().load(p, context_keys="cell_type", backed=backed)
            out[name, backed] = res
    for backed in (False, True):
        r32, r64 = out["f32", backed], out["f64", backed]
        assert r32.adata.X.dtype == np.float32 and r64.adata.X.dtype == np.float64
        assert any("float32" in line for line in r32.processing)
        assert (r32.adata.X != r64.adata.X.astype(np.float32)).nnz == 0
        assert content_hash(r32.adata, expression_space="x", synthetic=True) == \
            content_hash(r64.adata, expression_space="x", synthetic=True)
    counts = tmp_path / "counts.h5ad"
    ad.AnnData(X=sp.csr_matrix(np.rint(base.X.toarray() * 5).astype(np.float32)), obs=obs,
               var=base.var).write_h5ad(counts)
    assert AnnDataAdapter().load(counts, context_keys="cell_type").adata.X.dtype == np.float64  # normalised


def _cli(store: Path, *args: str) -> str:
    from perturbfm.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--store", str(store), *args]) == 0
    return out.getvalue().strip().splitlines()[-1].strip()


def test_a_run_is_the_same_backed_and_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    ds = _cli(store, "data", "import", "--adapter", "synthetic", "--opt", "n_genes=24", "--opt", "n_singles=6",
              "--opt", "n_doubles=2", "--opt", "cells_per_group=10", "--opt", "n_control=40")
    split = _cli(store, "splits", "create", "--dataset", ds, "--generator", "random-groups", "--test-fraction", "0.4")
    docs = {}
    for mode, limit in (("memory", str(1 << 40)), ("backed", "0")):
        monkeypatch.setenv("PFM_BACKED_BYTES", limit)
        run = Path(_cli(store, "run", "--model", "linear", "--split", split, "--set", "run.max_cells=15",
                        "--set", "run.panels=[basic]", "--set", "run.replicate_seeds=2"))
        status = json.loads((run / "run_status.json").read_text())
        assert status["stages"]["load"]["backed"] is (mode == "backed")
        m = json.loads((run / "metrics.json").read_text())
        for k in ("run_id", "timing_seconds"):
            m.pop(k)
        docs[mode] = json.dumps(m, sort_keys=True)
    assert docs["memory"] == docs["backed"]


def test_subset_keeps_context_positions_so_tied_ranks_equal_the_whole(files: dict) -> None:
    """PerturBench breaks rank ties with a seed from the context's position: a subset must use
    its position in the full evaluation (a model predicting one delta for every group ties all)."""
    from perturbfm.plugins import get_registry

    panel = get_registry().create("metric_panel", "perturbench")
    data = _eval(files["mem"])
    data.pred_delta[:] = data.pred_delta[0]  # every group tied
    whole = evaluate_panels([panel], data)
    shards = [compute_panel_values([panel], data.subset(contexts=[c])) for c in data.contexts]
    merged = evaluate_panels([panel], data, values_by_panel=merge_panel_values(shards))
    assert json.dumps(merged, sort_keys=True) == json.dumps(whole, sort_keys=True)
    sub = data.subset(contexts=[data.contexts[-1]])
    assert sub.context_positions[data.contexts[-1]] == len(data.contexts) - 1


def test_merge_refuses_a_metric_some_shards_cannot_score() -> None:
    """A key that is not applicable in one shard but scored in another cannot be rebuilt exactly:
    an error, never the silent loss of the shards that did score it."""
    from perturbfm.interfaces import MetricValue, NotApplicable

    scored = {"p": {"m": MetricValue(per_group={"g1": 0.5, "g2": 0.25}, per_context={"a": 0.375})}}
    na = {"p": {"m": NotApplicable("a single group: no variance across groups")}}
    with pytest.raises(ValueError, match="some shards cannot score it"):
        merge_panel_values([scored, na])
    assert isinstance(merge_panel_values([na, na])["p"]["m"], NotApplicable)


def test_target_positions_match_recorded_symbols(files: dict) -> None:
    """With var names as Ensembl ids and the symbols recorded at import (--gene-symbol-key), the
    metrics still find each group's perturbed gene (VCC's discrimination leaves it out)."""
    from perturbfm.dataset import SYMBOL_COL

    plain = _eval(files["mem"])
    expected = plain.target_positions()
    assert any(len(t) for t in expected)  # the fixture perturbs measured genes
    adata = files["mem"].copy()
    adata.var[SYMBOL_COL] = [str(g) for g in adata.var_names]
    adata.var_names = [f"ENSG{j:011d}.1" for j in range(adata.n_vars)]
    renamed = _eval(adata)
    assert [t.tolist() for t in renamed.target_positions()] == [t.tolist() for t in expected]
