"""Tampered artifacts are detected by their hashes; references that try to
escape the store are refused for datasets, splits and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from perturbfm.datasets import create_split
from perturbfm.errors import ArtifactIntegrityError, ArtifactNotFoundError, PerturbFMError, SplitIntegrityError
from perturbfm.plugins import PluginRegistry
from perturbfm.store import ArtifactStore
from perturbfm.testing.data import make_canonical_adata
from perturbfm.testing.doubles import TestDoublesPlugin, canonical_result
from reliability_helpers import COUNTS

ESCAPES = ["../", "../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc", "abcd\x00ef", "abcd/../abcd", "~", ".",
           "..", "datasets/../x", "%2e%2e%2f", "\\..\\x", "abcd\n../x", "ab cd"]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[ArtifactStore, str, str]:
    store = ArtifactStore(tmp_path / "store")
    registry = PluginRegistry(extra_plugins=[("doubles", TestDoublesPlugin())])
    ds, _ = store.datasets.put(canonical_result(make_canonical_adata(n_genes=12, cells_per_group=5, n_control=10)),
                               adapter="test", options={})
    sid, _, _ = create_split(store, ds.hash, "test-explicit", {"test": ["G0+G1@ctxA"]}, 0, registry=registry)
    return store, ds.hash, sid


def test_tampered_dataset_file_is_detected(stored: tuple[ArtifactStore, str, str]) -> None:
    store, h, _ = stored
    path = store.datasets.get(h).h5ad
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="modified"):
        store.datasets.get(h).load()


@pytest.mark.parametrize("edit", [
    lambda m: m.update(synthetic=not m["synthetic"]),
    lambda m: m.update(licence="CC0"),
    lambda m: m.update(n_obs=m["n_obs"] + 1),
    lambda m: m.update(file_sha256="0" * 64),
    lambda m: m.update(hash="f" * 64),
])
def test_tampered_manifest_is_detected(stored: tuple[ArtifactStore, str, str], edit) -> None:  # type: ignore[no-untyped-def]
    store, h, _ = stored
    mpath = store.datasets.root / h / "manifest.json"
    m = json.loads(mpath.read_text())
    edit(m)
    mpath.write_text(json.dumps(m))
    with pytest.raises(ArtifactIntegrityError):
        store.datasets.get(h).load()
    COUNTS["tamper: tampered artifacts detected"] += 1


def test_truncated_manifest_is_detected(stored: tuple[ArtifactStore, str, str]) -> None:
    store, h, _ = stored
    mpath = store.datasets.root / h / "manifest.json"
    mpath.write_text(mpath.read_text()[:40])
    with pytest.raises(ArtifactIntegrityError):
        store.datasets.get(h)


@pytest.mark.parametrize("how", ["role", "reformat", "truncate"])
def test_tampered_split_is_detected(stored: tuple[ArtifactStore, str, str], how: str) -> None:
    store, _, sid = stored
    path = store.splits.root / f"{sid}.json"
    text = path.read_text()
    path.write_text({"role": text.replace('"test"', '"train"', 1), "reformat": json.dumps(json.loads(text), indent=1),
                     "truncate": text[: len(text) // 2]}[how])
    with pytest.raises(SplitIntegrityError):
        store.splits.get(sid)
    COUNTS["tamper: tampered artifacts detected"] += 1


@pytest.mark.parametrize("ref", ESCAPES)
def test_escaping_references_are_refused(stored: tuple[ArtifactStore, str, str], ref: str) -> None:
    store, _, _ = stored
    with pytest.raises(ArtifactNotFoundError):
        store.datasets.get(ref)
    with pytest.raises(ArtifactNotFoundError):
        store.splits.get(ref)
    with pytest.raises(ArtifactNotFoundError):
        store.run_dir(ref)
    if any(c in ref for c in "/\\\x00\n %~"):  # ("." or ".." inside a longer name is just a name)
        with pytest.raises(ArtifactNotFoundError):
            store.run_dir(f"20260101-120000_abcdef1_{ref}_1234abc")


def test_escaping_references_through_the_cli(stored: tuple[ArtifactStore, str, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from perturbfm.cli import main

    store, _, _ = stored
    for ref in ["../../etc", "/etc/passwd", "..%2F..%2Fx", "ab\x00cd"]:
        for args in (["data", "show", ref], ["splits", "show", ref], ["run", "--model", "train-mean", "--split", ref]):
            assert main(["--store", str(store.root), *args]) == 2, args
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a hash" in err
    assert not (store.root / "runs").exists()


def test_escaping_generator_and_model_names(stored: tuple[ArtifactStore, str, str]) -> None:
    store, h, _ = stored
    for name in ["../x", "/abs", "a\x00b"]:
        with pytest.raises(PerturbFMError):
            create_split(store, h, name, {}, 0)
