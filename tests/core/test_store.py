"""Artifact store invariants: content addressing, immutable hash-locked splits,
tamper detection, atomic publication."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from perturbfm.errors import ArtifactIntegrityError, ArtifactNotFoundError, SplitIntegrityError
from perturbfm.hashing import canonical_json, sha256_json
from perturbfm.splits import Split
from perturbfm.store import ArtifactStore, resolve_store_root
from perturbfm.testing import make_canonical_adata
from perturbfm.testing.doubles import canonical_result


def _split(dataset: str, test: list[str], groups: list[str]) -> Split:
    return Split(dataset=dataset, generator="explicit", params={"test": test}, seed=0,
                 assignments={g: "test" if g in test else "train" for g in groups})


def _groups(adata) -> list[str]:
    return sorted(set(adata.obs.loc[~adata.obs["pfm_is_control"], "pfm_perturbation"].astype(str)
                      + "@" + adata.obs.loc[~adata.obs["pfm_is_control"], "pfm_context"].astype(str)))


def test_store_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFM_HOME", str(tmp_path / "env"))
    assert resolve_store_root(tmp_path / "flag") == (tmp_path / "flag").resolve()
    assert resolve_store_root(None) == (tmp_path / "env").resolve()
    monkeypatch.delenv("PFM_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_store_root(None) == (tmp_path / "xdg" / "perturbfm").resolve()


def test_dataset_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    a, created = store.datasets.put(canonical_result(make_canonical_adata(seed=0)), adapter="t", options={})
    b, created_again = store.datasets.put(canonical_result(make_canonical_adata(seed=0)), adapter="t", options={})
    c, _ = store.datasets.put(canonical_result(make_canonical_adata(seed=1)), adapter="t", options={})
    assert created and not created_again
    assert a.hash == b.hash != c.hash
    assert len(store.datasets.list()) == 2
    assert a.manifest["synthetic"] is True
    assert store.datasets.get(a.hash[:8]).hash == a.hash
    # the hash does not depend on sparse vs dense storage
    d, _ = store.datasets.put(canonical_result(make_canonical_adata(seed=0, sparse=False)), adapter="t", options={})
    assert d.hash == a.hash


def test_tampered_dataset_is_detected(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ds, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    with open(ds.h5ad, "ab") as fh:
        fh.write(b"tamper")
    with pytest.raises(ArtifactIntegrityError, match="modified after it was stored"):
        store.datasets.get(ds.hash).load()


def test_split_id_is_hash_of_canonical_content(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    adata = make_canonical_adata()
    split = _split("ab" * 32, ["G0@ctxA"], _groups(adata))
    sid, created = store.splits.put(split)
    assert created and sid == split.id == sha256_json(split.content())
    assert (tmp_path / "splits" / f"{sid}.json").read_bytes() == canonical_json(split.content())
    assert store.splits.put(split) == (sid, False)
    assert store.splits.get(sid[:10]) == split


def test_split_overwrite_with_different_content_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    groups = _groups(make_canonical_adata())
    split = _split("ab" * 32, ["G0@ctxA"], groups)
    sid, _ = store.splits.put(split)
    path = tmp_path / "splits" / f"{sid}.json"
    content = json.loads(path.read_bytes())
    content["assignments"]["G1@ctxA"] = "test"
    path.write_bytes(canonical_json(content))
    with pytest.raises(SplitIntegrityError, match="different content"):
        store.splits.put(split)
    with pytest.raises(SplitIntegrityError, match="does not match its hash"):
        store.splits.get(sid)


def test_unknown_or_malformed_split_reference(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactNotFoundError, match="never generated implicitly"):
        store.splits.get("abcdef1")
    with pytest.raises(ArtifactNotFoundError, match="not a hash"):
        store.splits.get("../../etc/passwd")


def test_split_without_test_groups_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(SplitIntegrityError, match="no test groups"):
        store.splits.put(_split("ab" * 32, [], _groups(make_canonical_adata())))


def test_failed_dataset_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anndata as ad

    store = ArtifactStore(tmp_path)

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", boom)
    with pytest.raises(OSError):
        store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    assert list((tmp_path / "datasets").iterdir()) == []


def test_reimport_records_source_and_upgrades_verification(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    again = canonical_result(make_canonical_adata())
    again.source = {"url": "http://127.0.0.1/x.h5ad"}
    again.extra["registry"] = {"name": "x", "verified": True}
    second, created = store.datasets.put(again, adapter="t", options={})
    assert not created and second.hash == first.hash
    assert second.manifest["extra"]["registry"]["verified"] is True
    assert second.manifest["provenance_records"][0]["source"] == {"url": "http://127.0.0.1/x.h5ad"}
    third, _ = store.datasets.put(again, adapter="t", options={})
    assert len(third.manifest["provenance_records"]) == 1
    third.load()  # data file untouched: still matches its hash


def test_content_hash_is_rechecked_once_per_file_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perturbfm.store as store_mod

    store = ArtifactStore(tmp_path)
    ds, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    calls = []
    real = store_mod.StoredDataset._check_content
    monkeypatch.setattr(store_mod.StoredDataset, "_check_content", lambda self: (calls.append(1), real(self)))
    store_mod._VERIFIED.clear()
    store.datasets.get(ds.hash).verify()  # written by put: the cache stamp already vouches for it
    assert calls == []
    store_mod._VERIFIED.clear()
    (tmp_path / "cache" / "verified" / f"{ds.hash}.json").unlink()
    store.datasets.get(ds.hash).verify()  # no stamp: rehashed once, then cached
    store.datasets.get(ds.hash).verify()
    assert calls == [1]
    store.datasets.get(ds.hash).verify(full=True)
    assert calls == [1, 1]


def test_rewritten_data_with_rewritten_digests_is_refused(tmp_path: Path) -> None:
    import anndata as ad
    from perturbfm.errors import DatasetFileError
    from perturbfm.hashing import sha256_file
    from perturbfm.store import manifest_digest

    store = ArtifactStore(tmp_path)
    ds, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    adata = ad.read_h5ad(ds.h5ad)
    adata.X = adata.X * 2
    adata.write_h5ad(ds.h5ad)
    m = dict(ds.manifest, file_sha256=sha256_file(ds.h5ad))
    m["manifest_sha256"] = manifest_digest(m)
    (ds.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFileError, match="not to the dataset's id") as err:
        store.datasets.get(ds.hash).load()
    assert f"pfm-bench data repair {ds.hash}" in (err.value.fix or "")


def test_synthetic_flag_lives_in_the_hashed_data(tmp_path: Path) -> None:
    import anndata as ad

    store = ArtifactStore(tmp_path)
    ds, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    mark = ad.read_h5ad(ds.h5ad).uns["perturbfm"]
    assert bool(mark["synthetic"]) is True and mark["dataset_hash"] == ds.hash
    # the same content imported without the flag but carrying the mark stays synthetic (same id)
    plain = canonical_result(ad.read_h5ad(ds.h5ad))
    plain.synthetic = False
    again, created = store.datasets.put(plain, adapter="anndata", options={})
    assert again.hash == ds.hash and not created and again.synthetic


def test_deleted_data_is_restored_by_reimport_and_repair(tmp_path: Path) -> None:
    import shutil

    from perturbfm.datasets import repair_dataset
    from perturbfm.errors import DatasetFileError

    store = ArtifactStore(tmp_path / "s")
    ds, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    copy = tmp_path / "copy.h5ad"
    shutil.copy(ds.h5ad, copy)
    ds.h5ad.unlink()
    with pytest.raises(DatasetFileError, match="deleted"):
        store.datasets.get(ds.hash).load()
    again, created = store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    assert not created and again.manifest["repairs"]
    again.load()
    again.h5ad.unlink()
    repaired, did = repair_dataset(store, ds.hash[:8], str(copy))
    assert did and repaired.hash == ds.hash
    repaired.verify(full=True)
    assert repair_dataset(store, ds.hash, str(copy))[1] is False  # intact: nothing to do


def test_stray_entries_do_not_hide_datasets_or_splits(tmp_path: Path) -> None:
    import shutil

    store = ArtifactStore(tmp_path)
    ds, _ = store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})
    shutil.copytree(ds.path, store.datasets.root / f"{ds.hash}.bak")
    (store.datasets.root / f"{ds.hash[:10]}-notes.txt").write_text("x")
    assert store.datasets.get(ds.hash).hash == store.datasets.get(ds.hash[:5]).hash == ds.hash
    split = _split(ds.hash, ["G0@ctxA"], _groups(make_canonical_adata()))
    sid, _ = store.splits.put(split)
    shutil.copy(store.splits.root / f"{sid}.json", store.splits.root / f"{sid}.bak.json")
    assert store.splits.get(sid[:6]) == split and [s for s, _ in store.splits.list()] == [sid]


def test_store_folders_that_are_files(tmp_path: Path) -> None:
    from perturbfm.errors import StoreLayoutError

    store = ArtifactStore(tmp_path)
    for name in ("splits", "runs", "datasets"):
        (tmp_path / name).write_text("")
    with pytest.raises(StoreLayoutError, match="not the store's 'splits' folder"):
        store.splits.list()
    with pytest.raises(StoreLayoutError, match="mv "):
        store.run_dir("20260101-120000_abcdef1_m_1234abc")
    with pytest.raises(StoreLayoutError):
        store.datasets.put(canonical_result(make_canonical_adata()), adapter="t", options={})


def test_fsio_helpers(tmp_path: Path) -> None:
    import os

    from perturbfm.errors import InputFileError, StoreWriteError
    from perturbfm.fsio import atomic_write_bytes, file_lock, make_exclusive_dir, read_regular_file

    os.mkfifo(tmp_path / "fifo")
    for name, match in (("fifo", "FIFO"), ("missing", "does not exist"), (".", "directory")):
        with pytest.raises(InputFileError, match=match):
            read_regular_file(tmp_path / name)
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(InputFileError, match="more than"):
        read_regular_file(tmp_path / "big", max_bytes=10)
    assert read_regular_file(tmp_path / "big") == b"x" * 100
    a, b = make_exclusive_dir(tmp_path / "runs", "r"), make_exclusive_dir(tmp_path / "runs", "r")
    assert a.name == "r" and b.name == "r_1"
    (tmp_path / "blocker").write_text("")
    with pytest.raises(StoreWriteError, match="is a file, not a folder") as err:
        atomic_write_bytes(tmp_path / "blocker" / "x.json", b"{}")
    assert isinstance(err.value, OSError) and "mv " in (err.value.fix or "")
    with file_lock(tmp_path / "locks" / "x.lock"):
        with pytest.raises(StoreWriteError, match="held the lock"):
            with file_lock(tmp_path / "locks" / "x.lock", timeout=0.1):
                pass


@pytest.mark.parametrize("content", [[1, 2], None, "x", {"schema": 1}, {"schema": 1, "dataset": "a" * 64,
                                     "generator": "g", "params": {}, "seed": 0, "assignments": ["a"]}])
def test_split_content_of_the_wrong_shape(content: object) -> None:
    with pytest.raises(SplitIntegrityError):
        Split.from_content(content)  # type: ignore[arg-type]
