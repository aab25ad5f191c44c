"""Adversarial split files (issue 18 classes 11 and 13).

* class 11: small GEARS pickles that expand enormously (one list referenced
  millions of times through the pickle memo, a long string repeated, deep
  nesting) are refused quickly, bounded by the file's size.
* class 13: stored split files that are a JSON list, null, invalid UTF-8,
  truncated, deeply nested, of the wrong types, a directory or a FIFO; split
  files to import that are missing, a directory, a FIFO, not UTF-8 or binary:
  clean errors naming the path and a fix (never a hang); following the fix
  makes ``splits list`` work again.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
from harness import attempt, check, record_outcome
from perturbfm.errors import PerturbFMError, SplitIntegrityError
from perturbfm.store import ArtifactStore
from perturbfm.testing import make_canonical_adata
from perturbfm.testing.doubles import canonical_result
from perturbfm_bench_adapters.official_splits import import_split


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "store"
    ds, _ = ArtifactStore(root).datasets.put(
        canonical_result(make_canonical_adata(n_genes=12, cells_per_group=5, n_control=10)), adapter="t", options={})
    return root, ds.hash


# ----------------------------------------------------------------------------- class 11: pickle bombs
def _binunicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def doubling_pickle(depth: int, leaf: str = "G0+ctrl", *, key: str = "train") -> bytes:
    """``{key: L_depth}`` with ``L_0 = [leaf]`` and ``L_k+1 = [L_k, L_k]`` through the
    memo: a few bytes per level, 2**depth leaves when expanded."""
    out = bytearray(b"\x80\x02}" + _binunicode(key) + b"]" + _binunicode(leaf) + b"aq\x000")
    for k in range(depth):
        out += b"](h" + bytes([k]) + b"h" + bytes([k]) + b"eq" + bytes([k + 1]) + b"0"
    out += b"h" + bytes([depth]) + b"s."
    return bytes(out)


def repeated_string_pickle(n_refs: int, length: int) -> bytes:
    """A list referencing one long string ``n_refs`` times (2 bytes per reference)."""
    out = bytearray(b"\x80\x02}" + _binunicode("train") + b"]" + _binunicode("A" * length) + b"q\x000(")
    out += b"h\x00" * n_refs
    out += b"es."
    return bytes(out)


def nested_pickle(depth: int) -> bytes:
    """``{"train": [[[[...]]]]}`` nested ``depth`` deep."""
    out = bytearray(b"\x80\x02}" + _binunicode("train"))
    out += b"]" * depth
    out += b"a" * (depth - 1)
    out += b"s."
    return bytes(out)


BOMBS = {
    "doubling-24": lambda: doubling_pickle(24),
    "doubling-40": lambda: doubling_pickle(40),
    "doubling-long-leaf": lambda: doubling_pickle(20, "G" * 5000),
    "repeated-string": lambda: repeated_string_pickle(200_000, 50_000),
    "nested-100k": lambda: nested_pickle(100_000),
}


def test_doubling_pickle_is_small() -> None:
    data = doubling_pickle(24)
    assert len(data) < 300
    obj = pickle.loads(data)  # the structure is what it claims (expanding it is what must never happen)
    assert isinstance(obj["train"], list) and obj["train"][0] is obj["train"][1]


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_pickle_bombs_are_refused_quickly(store: tuple[Path, str], tmp_path: Path, bomb: str) -> None:
    root, h = store
    path = tmp_path / f"{bomb}.pkl"
    path.write_bytes(BOMBS[bomb]())
    stored = ArtifactStore(root).datasets.get(h)
    t0 = time.perf_counter()
    with pytest.raises(SplitIntegrityError) as err:
        import_split(stored, "gears-pickle", str(path))
    took = time.perf_counter() - t0
    assert err.value.file and str(path) in err.value.file and err.value.fix
    assert "expands to" in err.value.message or bomb == "nested-100k", err.value.message
    assert took < 10, f"{bomb} took {took:.1f} s"
    record_outcome(f"GEARS pickle bomb {bomb} ({path.stat().st_size} bytes, {took:.2f} s)", 11, "clean_error")


def test_pickle_bomb_through_the_cli(store: tuple[Path, str], tmp_path: Path) -> None:
    root, h = store
    path = tmp_path / "bomb.pkl"
    path.write_bytes(doubling_pickle(24))
    check(attempt("GEARS pickle bomb (CLI)", 11, ["splits", "import", "--dataset", h, "--format", "gears-pickle",
                                                  str(path)],
                  store=root, expect_error=True, must_name=[str(path), "pickle", "fix"], timeout=60))


@pytest.mark.parametrize("value", [[["G0+ctrl"]], [1, 2], "G0+ctrl", {"a": "b"}, [None]])
def test_gears_condition_lists_of_the_wrong_type(store: tuple[Path, str], tmp_path: Path, value: object) -> None:
    root, h = store
    path = tmp_path / "wrong.pkl"
    path.write_bytes(pickle.dumps({"train": ["G0+ctrl"], "test": value}))
    with pytest.raises(SplitIntegrityError) as err:
        import_split(ArtifactStore(root).datasets.get(h), "gears-pickle", str(path))
    assert err.value.file == str(path.resolve()) and err.value.fix
    record_outcome(f"GEARS condition list of type {type(value).__name__}", 13, "clean_error")


# ----------------------------------------------------------------------------- class 13: stored split files
def _stored_split(root: Path, h: str) -> Path:
    from perturbfm.datasets import create_split
    from perturbfm.plugins import PluginRegistry
    from perturbfm.testing.doubles import TestDoublesPlugin

    registry = PluginRegistry(extra_plugins=[("doubles", TestDoublesPlugin())])
    sid, _, _ = create_split(ArtifactStore(root), h, "test-explicit", {"test": ["G0+G1@ctxA"]}, 0, registry=registry)
    return root / "splits" / f"{sid}.json"


def _corrupt(path: Path, how: str) -> None:
    text = path.read_text()
    if how == "json-list":
        path.write_text(json.dumps([json.loads(text)]))
    elif how == "json-null":
        path.write_text("null")
    elif how == "invalid-utf8":
        path.write_bytes(b"\xff\xfe{" + text.encode()[1:])
    elif how == "truncated":
        path.write_text(text[: len(text) // 2])
    elif how == "deep-nesting":
        path.write_text("[" * 200_000 + "]" * 200_000)
    elif how == "wrong-types":
        content = json.loads(text)
        content["assignments"] = list(content["assignments"])
        path.write_text(json.dumps(content))
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif how == "empty":
        path.write_bytes(b"")


CORRUPTIONS = ["json-list", "json-null", "invalid-utf8", "truncated", "deep-nesting", "wrong-types", "directory",
               "fifo", "empty"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_damaged_stored_split_is_a_clean_error_and_the_fix_works(store: tuple[Path, str], how: str) -> None:
    root, h = store
    path = _stored_split(root, h)
    _corrupt(path, how)
    splits = ArtifactStore(root).splits
    with pytest.raises(SplitIntegrityError) as err:
        splits.list()
    assert err.value.file == str(path) and "mv " in (err.value.fix or "")
    record_outcome(f"stored split file: {how}", 13, "clean_error")
    # follow the fix: move it away; the listing works again and the split can be recreated
    shutil.move(path, f"{path}.bak")
    assert splits.list() == []
    assert _stored_split(root, h) == path


@pytest.mark.parametrize("how", ["fifo", "json-list"])
def test_damaged_stored_split_through_the_cli(store: tuple[Path, str], how: str) -> None:
    root, h = store
    path = _stored_split(root, h)
    _corrupt(path, how)
    check(attempt(f"splits list with a stored split that is {how}", 13, ["splits", "list"], store=root,
                  expect_error=True, must_name=[str(path), "mv "], timeout=60))


def _split_input(tmp_path: Path, how: str) -> Path:
    path = tmp_path / f"split-{how}.csv"
    if how == "missing":
        pass
    elif how == "directory":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "invalid-utf8":
        path.write_bytes(b"cell0,train\n\xff\xfe,test\n")
    elif how == "binary":
        path.write_bytes(b"cell0,train\n\x00\x01\x02,test\n")
    elif how == "json-list":
        path.write_text(json.dumps(["cell0", "train"]))
    elif how == "symlink-loop":
        os.symlink(path, path)
    return path


INPUTS = ["missing", "directory", "fifo", "invalid-utf8", "binary", "json-list", "symlink-loop"]


@pytest.mark.parametrize("fmt", ["perturbench-csv", "gears-pickle"])
@pytest.mark.parametrize("how", INPUTS)
def test_split_files_to_import(store: tuple[Path, str], tmp_path: Path, fmt: str, how: str) -> None:
    root, h = store
    path = _split_input(tmp_path, how)
    with pytest.raises(PerturbFMError) as err:
        import_split(ArtifactStore(root).datasets.get(h), fmt, str(path))
    assert err.value.file and path.name in err.value.file and err.value.fix
    record_outcome(f"splits import {fmt}: {how}", 13, "clean_error")


@pytest.mark.parametrize("how", ["fifo", "missing"])
def test_split_files_to_import_through_the_cli(store: tuple[Path, str], tmp_path: Path, how: str) -> None:
    root, h = store
    path = _split_input(tmp_path, how)
    check(attempt(f"splits import of a {how} file", 13, ["splits", "import", "--dataset", h, "--format",
                                                         "gears-pickle", str(path)],
                  store=root, expect_error=True, must_name=[path.name, "fix"], timeout=60))
