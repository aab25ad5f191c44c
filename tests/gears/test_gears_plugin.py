"""The optional GEARS model plugin (plugins/perturbfm-gears).

Needs the plugin and its pinned extras (cell-gears 0.1.2, torch 2.13.0,
torch_geometric 2.8.1): skipped when missing, except under ``CI=true`` where a
missing plugin fails. Every test runs with a socket guard: any outbound
connection raises, so GEARS must work fully offline.
"""

from __future__ import annotations

import gzip
import importlib
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _require(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI (pip install -e plugins/perturbfm-gears): {exc}",
                        pytrace=False)
        pytest.skip(f"{name} not installed ({exc}); pip install -e plugins/perturbfm-gears",
                    allow_module_level=True)


_require("gears")
gears_model = _require("perturbfm_gears.model")

from perturbfm.dataset import control_stats, group_table  # noqa: E402
from perturbfm.testing.conformance import ModelConformance  # noqa: E402
from perturbfm.testing.data import make_canonical_adata  # noqa: E402
from perturbfm.training import TrainingData  # noqa: E402

GearsModel = gears_model.GearsModel
REPO = Path(__file__).resolve().parents[2]
# tiny and fast: 1 epoch, small network, few cells per condition
FAST = {"epochs": 1, "hidden_size": 8, "decoder_hidden_size": 4, "batch_size": 64, "go_k": 5,
        "coexpress_k": 5, "predict_control_cells": 16, "max_cells_per_group": 8, "max_control_cells": 24}


def _synthetic_go_table() -> str:
    """A GO table over the synthetic genes G0..G39 of the conformance data (written
    once per process): gene i is annotated with terms i//4 and (i+1)//4 (neighbours
    share terms); G39 gets only an ND root annotation, which the wrapper drops."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pfm-gears-test-go-")) / "go.tsv.gz"
    rows = ["SYMBOL\tGO\tONTOLOGY\tEVIDENCE"]
    for i in range(39):
        for t in sorted({i // 4, (i + 1) // 4, 100 + i % 3}):
            rows.append(f"G{i}\tGO:{t:07d}\tBP\tIDA")
    rows.append("G39\tGO:0008150\tBP\tND")
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    return str(path)


SYNTH_GO = _synthetic_go_table()


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any IPv4/IPv6 connection attempt raises (and is recorded)."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise RuntimeError(f"network access attempted: {address!r}")
        return real_connect(self, address)

    def guarded_create(address: Any, *a: Any, **kw: Any) -> Any:
        attempts.append(address)
        raise RuntimeError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "create_connection", guarded_create)
    yield attempts
    assert not attempts, f"GEARS tried to reach the network: {attempts}"


class TestGearsConformance(ModelConformance):
    model_class = GearsModel
    config = {**FAST, "go_table": SYNTH_GO}


def test_unmapped_genes_get_the_declared_fallback() -> None:
    """A gene without (non-ND) GO annotation: its training groups are dropped and
    recorded; a query with it gets the context's mean training delta and a note.
    Also: fitting/predicting leaves the global warning filters and RNG states as they were."""
    import torch

    filters = list(warnings.filters)
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    adata = make_canonical_adata(seed=0, singles=("G0", "G1", "G2", "G3", "G39"), doubles=(("G0", "G1"),))
    groups = group_table(adata)
    ctrl = control_stats(adata)
    test_ids = ["G0+G1@ctxA", "G39@ctxB"]
    train_groups = [g for gid, g in groups.items() if not g.is_control and gid not in test_ids]
    train = TrainingData(adata, train_groups, ctrl, synthetic=True)
    queries = [groups[g] for g in test_ids]
    model = GearsModel()
    model.fit(train, None, {**model.default_config(), **FAST, "go_table": SYNTH_GO})
    pred = model.predict(queries)

    assert "G39@ctxA" in model.diagnostics()["dropped_training_groups"]
    assert "G0+G1@ctxA" not in pred.notes  # GEARS predicted it
    note = pred.notes["G39@ctxB"]
    assert "G39" in note and "not in GEARS's perturbation graph" in note and "mean training delta" in note
    ctxb = [i for i, g in enumerate(train.groups) if g.context == "ctxB"]
    np.testing.assert_allclose(pred.mean_delta[1], train.deltas()[ctxb].mean(axis=0))
    assert pred.info["n_groups_fallback"] == 1
    assert list(warnings.filters) == filters
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_unknown_context_gets_the_global_fallback() -> None:
    adata = make_canonical_adata(seed=0)
    groups = group_table(adata)
    train = TrainingData(adata, [g for g in groups.values() if not g.is_control and g.context == "ctxA"
                                 and g.group_id != "G0+G1@ctxA"], control_stats(adata), synthetic=True)
    model = GearsModel()
    model.fit(train, None, {**model.default_config(), **FAST, "go_table": SYNTH_GO})
    pred = model.predict([groups["G2@ctxB"]])
    assert "no GEARS model for context 'ctxB'" in pred.notes["G2@ctxB"]
    np.testing.assert_allclose(pred.mean_delta[0], train.deltas().mean(axis=0))


def test_devel_k562_doubles_offline(shared_data: Path, no_network: list[Any]) -> None:
    """The 5 held-out K562 doubles of the devel file with the real GO table: shapes,
    finite, not the control mean, no fallback notes, and no network access."""
    from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter

    adata = AnnDataAdapter().load(str(shared_data / "perturbench_devel/norman19_mcfaline23_devel.h5ad"),
                                  perturbation_key="condition", control="control",
                                  context_keys="cell_type").adata
    groups = group_table(adata)
    k562 = {g.perturbation for g in groups.values() if g.context == "k562" and not g.is_control}
    singles = {p for p in k562 if "+" not in p}
    doubles = sorted(p for p in k562 if "+" in p and all(x in singles for x in p.split("+")))
    test_ids = [f"{d}@k562" for d in doubles]
    assert len(test_ids) == 5
    # K562 groups only: one GEARS model (GEARS fits one per context)
    train_groups = [g for gid, g in groups.items()
                    if g.context == "k562" and not g.is_control and gid not in set(test_ids)]
    ctrl = control_stats(adata)
    train = TrainingData(adata, train_groups, ctrl)
    model = GearsModel()
    model.fit(train, None, {**model.default_config(), **FAST, "hidden_size": 16, "batch_size": 128,
                            "max_cells_per_group": 20, "max_control_cells": 100})
    queries = [groups[g] for g in test_ids]
    pred = model.predict(queries)

    assert pred.group_ids == test_ids
    assert pred.mean_delta.shape == (5, adata.n_vars)
    assert np.isfinite(pred.mean_delta).all()
    assert pred.notes == {}  # every double's genes are GO nodes: GEARS predicted all five
    assert np.abs(pred.mean_delta).max(axis=1).min() > 1e-4  # differs from the control mean
    diag = model.diagnostics()
    assert set(diag["contexts"]) == {"k562"}
    assert diag["go_table"]["excluded_evidence"] == ["ND"]
    assert any("IER5L" in gid for gid in diag["dropped_training_groups"])  # not in the GO table
    assert not no_network
