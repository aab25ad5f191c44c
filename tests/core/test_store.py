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
