"""Official split import: PerturBench CSVs, GEARS pickles (safely), obs split columns."""

from __future__ import annotations

import os
import pickle

import pytest
from adapter_helpers import combo_adata, run_cli
from perturbfm.errors import SplitIntegrityError
from perturbfm.hashing import sha256_file
from perturbfm.store import ArtifactStore
from perturbfm_bench_adapters.official_splits import import_split, safe_load_pickle


@pytest.fixture
def stored(tmp_path, write_h5ad):
    a = combo_adata(("K",))
    a.obs["split_col"] = ["train"] * len(a)
    for i, p in enumerate(a.obs["perturbation"]):
        if p in ("C+D", "F"):
            a.obs.iloc[i, a.obs.columns.get_loc("split_col")] = "test"
        elif p == "B":
            a.obs.iloc[i, a.obs.columns.get_loc("split_col")] = "val"
    path = write_h5ad(a)
    store = ArtifactStore(tmp_path / "store")
    from perturbfm.datasets import import_dataset

    ds, _ = import_dataset(store, "perturbench", str(path), {"perturbation_key": "perturbation"})
    return store, ds, a


def _csv(tmp_path, rows, name="split.csv"):
    p = tmp_path / name
    p.write_text("".join(f"{n},{r}\n" for n, r in rows))
    return p


def test_perturbench_csv(stored, tmp_path, capsys):
    store, ds, a = stored
    rows = list(zip(a.obs_names, a.obs["split_col"]))
    path = _csv(tmp_path, rows)
    split = import_split(ds, "perturbench-csv", str(path), seed_name="seed0")
    assert split.generator == "import:perturbench-csv" and split.seed is None
    assert split.source == {"path": str(path.resolve()), "sha256": sha256_file(path)}
    assert split.groups("test") == ["C+D@K", "F@K"] and split.groups("val") == ["B@K"]
    rc, out, err = run_cli(["--store", str(store.root), "splits", "import", "--dataset", ds.hash[:10],
                            "--format", "perturbench-csv", str(path), "--seed-name", "seed0"], capsys)
    assert rc == 0, err
    assert out.strip() == split.id and store.splits.get(split.id).params == {"format": "perturbench-csv",
                                                                               "seed_name": "seed0"}
    with pytest.raises(SplitIntegrityError, match="not in the CSV"):
        import_split(ds, "perturbench-csv", str(_csv(tmp_path, rows[:-1], "short.csv")))
    with pytest.raises(SplitIntegrityError, match="not in the dataset.*ghost"):
        import_split(ds, "perturbench-csv", str(_csv(tmp_path, rows + [("ghost", "train")], "extra.csv")))
    bad = [(n, "test" if i == 4 else r) for i, (n, r) in enumerate(rows)]  # one cell of group A@K
    with pytest.raises(SplitIntegrityError, match=r"A@K \(test/train\)"):
        import_split(ds, "perturbench-csv", str(_csv(tmp_path, bad, "straddle.csv")))
    ctrl = [(n, "test" if a.obs["perturbation"].iloc[i] == "control" and i % 2 else r) for i, (n, r) in
            enumerate(rows)]  # control cells may be spread over roles
    assert import_split(ds, "perturbench-csv", str(_csv(tmp_path, ctrl, "ctrl.csv"))).assignments == split.assignments


def test_obs_column(stored):
    store, ds, _ = stored
    split = import_split(ds, "obs-column", "split_col")
    assert split.source == {"column": "split_col", "dataset": ds.hash}
    assert split.groups("test") == ["C+D@K", "F@K"]
    with pytest.raises(SplitIntegrityError, match="no obs column"):
        import_split(ds, "obs-column", "nope")


def test_gears_pickle(stored, tmp_path):
    store, ds, _ = stored
    data = {"train": ["ctrl", "A+ctrl", "C+ctrl", "D+ctrl", "E+ctrl", "A+B", "A+E", "E+F"],
            "val": ["B+ctrl"], "test": ["F+ctrl", "D+C"]}
    p = tmp_path / "norman_simulation_1_0.75.pkl"
    p.write_bytes(pickle.dumps(data))
    sub = tmp_path / "norman_simulation_1_0.75_subgroup.pkl"
    sub.write_bytes(pickle.dumps({"test_subgroup": {"combo_seen2": ["C+D"], "unseen_single": ["F+ctrl"]},
                                  "val_subgroup": {}}))
    split = import_split(ds, "gears-pickle", str(p), subgroup=str(sub))
    assert split.groups("test") == ["C+D@K", "F@K"] and split.groups("val") == ["B@K"]
    assert split.labels == {"C+D@K": "combo_seen2", "F@K": "unseen_single"}
    assert split.ood == {"C+D@K": False, "F@K": True}
    assert split.source["sha256"] == sha256_file(p) and split.source["subgroup"]["sha256"] == sha256_file(sub)
    p.write_bytes(pickle.dumps({**data, "test": ["F+ctrl", "D+C", "ZZZ+ctrl"]}))
    with pytest.raises(SplitIntegrityError, match="match no group.*ZZZ"):
        import_split(ds, "gears-pickle", str(p))
    p.write_bytes(pickle.dumps({**data, "test": ["F+ctrl"]}))
    with pytest.raises(SplitIntegrityError, match="in no role.*C\\+D@K"):
        import_split(ds, "gears-pickle", str(p))


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(stored, tmp_path):
    _, ds, _ = stored
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"train": ["A+ctrl"], "test": [_Evil(str(marker))]}))
    with pytest.raises(SplitIntegrityError, match="refused to load posix.system|refused to load os.system"):
        import_split(ds, "gears-pickle", str(p))
    assert not marker.exists()
    p.write_bytes(pickle.dumps({"train": {1, 2}}, protocol=2))  # a set needs builtins.set: refused
    with pytest.raises(SplitIntegrityError, match="refused"):
        safe_load_pickle(p)
    p.write_bytes(pickle.dumps({"train": ["A"], "n": (1, 2.5, None, True)}))
    assert safe_load_pickle(p)["n"] == (1, 2.5, None, True)


def test_plain_pickles_of_real_size_pass_the_expansion_bound(tmp_path):
    """The bound refuses bombs only: a GEARS-sized split (many distinct, long
    condition names, plus a subgroup-style nested dict) loads unchanged."""
    conds = [f"GENE{i:05d}_{'X' * 40}+ctrl" for i in range(30_000)]
    data = {"train": conds[:20_000], "val": conds[20_000:25_000], "test": conds[25_000:],
            "sub": {"test_subgroup": {"combo_seen0": conds[:100], "unseen_single": conds[100:200]}}}
    path = tmp_path / "split.pkl"
    path.write_bytes(pickle.dumps(data))
    assert safe_load_pickle(path) == data


def test_pickle_sharing_one_list_is_refused_by_size(tmp_path):
    inner = ["A+ctrl"] * 10
    level = inner
    for _ in range(22):  # 10 * 2**22 items when expanded, a few hundred bytes pickled
        level = [level, level]
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps({"train": level}))
    assert path.stat().st_size < 1000
    with pytest.raises(SplitIntegrityError, match="expands to") as err:
        safe_load_pickle(path)
    assert err.value.file == str(path) and err.value.fix


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing"])
def test_split_file_that_is_not_a_regular_file(stored, tmp_path, kind):
    store, ds, _ = stored
    path = tmp_path / "split.csv"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(SplitIntegrityError) as err:
        import_split(ds, "perturbench-csv", str(path))
    assert err.value.file == str(path) and err.value.fix
