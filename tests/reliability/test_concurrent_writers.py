"""Two processes import the same dataset into the same store and put the same
split at the same moment, many times: one intact copy each, the same hash and
id reported by both, no leftovers."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
from pathlib import Path
from typing import Any

from reliability_helpers import COUNTS, store_problems

TRIALS = 12
SYNTH = {"n_genes": 30, "n_singles": 4, "n_doubles": 2, "cells_per_group": 6, "n_control": 12}


def _worker(roots: list[str], barrier: Any, results: Any, worker: int) -> None:
    """Per trial: wait for the other process, then import + split into ``root``."""
    import warnings

    warnings.simplefilter("ignore")
    from perturbfm.datasets import create_split, import_dataset
    from perturbfm.plugins import PluginRegistry
    from perturbfm.store import ArtifactStore
    from perturbfm.testing.doubles import TestDoublesPlugin

    registry = PluginRegistry(extra_plugins=[("doubles", TestDoublesPlugin())])
    for i, root in enumerate(roots):
        store = ArtifactStore(root)
        barrier.wait(timeout=120)
        try:
            ds, created = import_dataset(store, "synthetic", None, {**SYNTH, "seed": i}, registry=registry)
            barrier.wait(timeout=120)  # both hold the dataset; now race on the split
            groups = sorted(_groups(ds))
            sid, s_created, _ = create_split(store, ds.hash, "test-explicit", {"test": groups[:2]}, 0,
                                             registry=registry)
            results.put((worker, i, ds.hash, created, sid, s_created, None))
        except Exception as exc:  # reported to the parent, which fails the test
            results.put((worker, i, None, None, None, None, f"{type(exc).__name__}: {exc}"))


def _groups(ds: Any) -> list[str]:
    from perturbfm.dataset import group_table

    adata = ds.load(backed=True)
    try:
        return [g for g, info in group_table(adata).items() if not info.is_control]
    finally:
        adata.file.close()


def test_two_processes_write_the_same_artifacts_concurrently() -> None:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        roots = [str(Path(tmp) / f"store{i}") for i in range(TRIALS)]
        barrier = ctx.Barrier(2)
        results = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(roots, barrier, results, w)) for w in (0, 1)]
        for p in procs:
            p.start()
        got = [results.get(timeout=300) for _ in range(2 * TRIALS)]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        errors = [r for r in got if r[6]]
        assert not errors, errors
        by_trial: dict[int, list[tuple[Any, ...]]] = {}
        for r in got:
            by_trial.setdefault(r[1], []).append(r)
        lost = 0
        for i, (a, b) in sorted(by_trial.items()):
            assert a[2] == b[2], f"trial {i}: dataset hashes differ"
            assert a[4] == b[4], f"trial {i}: split ids differ"
            assert [a[3], b[3]].count(True) == 1, f"trial {i}: exactly one process must create the dataset"
            root = Path(roots[i])
            problems = store_problems(root)
            lost += len(problems)
            assert not problems, problems
            assert [p.name for p in (root / "datasets").iterdir()] == [a[2]]
            assert [p.name for p in (root / "splits").iterdir()] == [f"{a[4]}.json"]
        COUNTS["concurrent-writer trials (2 processes each)"] += TRIALS
        COUNTS["concurrent writers: artifacts lost or corrupted"] += lost
