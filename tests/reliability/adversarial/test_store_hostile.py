"""Adversarial attempts on the dataset store (issue 18 classes 2, 3, 7, 8, 9, 13).

* class 2: data.h5ad rewritten (X, labels, cells, synthetic flag, expression
  space) together with its recorded sha256s, or the manifest alone: every load
  and ``data verify`` refuse it; following the fix restores a working dataset.
* class 3: re-importing a file that carries the synthetic mark keeps it synthetic.
* class 7: concurrent re-imports lose no provenance record.
* class 8: a deleted, truncated, emptied or replaced data.h5ad is a clean error
  giving ``pfm-bench data repair``; following it makes the dataset usable again;
  re-importing the same source restores it too; stray entries never make a
  dataset unresolvable.
* class 9: disk full, ``ulimit -f`` and a read-only store give clean errors naming
  the path, and leave nothing half-written.
* class 13: ``datasets``/``splits``/``runs`` being a file, a symlink loop as the store.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import re
import resource
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
from harness import BIN, Attempt, attempt, check, classify, record, record_outcome
from perturbfm.datasets import import_dataset
from perturbfm.errors import ArtifactIntegrityError, DatasetFileError, PerturbFMError, StoreWriteError
from perturbfm.hashing import sha256_file
from perturbfm.store import ArtifactStore, manifest_digest
from perturbfm.testing import make_canonical_adata
from perturbfm.testing.doubles import canonical_result

ANNDATA_OPTS = {"perturbation_key": "pfm_perturbation", "control": "control", "context_keys": ["pfm_context"]}


def _small() -> ad.AnnData:
    return make_canonical_adata(n_genes=12, cells_per_group=5, n_control=10)


@pytest.fixture
def sourced(tmp_path: Path) -> tuple[Path, Path, str]:
    """A store holding one dataset imported by the anndata adapter from a file."""
    src = tmp_path / "src.h5ad"
    _small().write_h5ad(src)
    root = tmp_path / "store"
    ds, _ = import_dataset(ArtifactStore(root), "anndata", str(src), dict(ANNDATA_OPTS))
    return root, src, ds.hash


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, Path, str]:
    """A store holding one synthetic dataset, and a pristine copy of its data.h5ad."""
    root = tmp_path / "store"
    ds, _ = ArtifactStore(root).datasets.put(canonical_result(_small()), adapter="t", options={})
    assert ds.synthetic
    copy = tmp_path / "copy.h5ad"
    shutil.copy2(ds.h5ad, copy)
    return root, copy, ds.hash


def _rehash_manifest(root: Path, h: str, **fields: Any) -> None:
    mpath = root / "datasets" / h / "manifest.json"
    m = json.loads(mpath.read_text())
    m.update(fields)
    m["file_sha256"] = sha256_file(root / "datasets" / h / "data.h5ad")
    m["manifest_sha256"] = manifest_digest(m)
    mpath.write_text(json.dumps(m, indent=2))


def _rewrite(root: Path, h: str, how: str) -> None:
    """Rewrite data.h5ad as an adversary would, and its recorded digests with it."""
    path = root / "datasets" / h / "data.h5ad"
    before = os.stat(path)
    adata = ad.read_h5ad(path)
    fields: dict[str, Any] = {}
    if how == "scale-X":
        adata.X = adata.X * 2
    elif how == "one-value":
        X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.array(adata.X)
        X[0, 0] += 0.5
        adata.X = X
    elif how == "relabel":
        ctx = adata.obs["pfm_context"].astype(str).to_numpy()
        adata.obs["pfm_context"] = np.where(ctx == "ctxA", "ctxB", np.where(ctx == "ctxB", "ctxA", ctx))
    elif how == "drop-cells":
        adata = adata[:-3].copy()
    elif how == "drop-synthetic":
        adata.uns["perturbfm"] = {**adata.uns["perturbfm"], "synthetic": False}
        adata.uns.pop("synthetic", None)
        fields["synthetic"] = False
    elif how == "expression-space":
        adata.uns["perturbfm"] = {**adata.uns["perturbfm"], "expression_space": "counts"}
        fields["expression_space"] = "counts"
    elif how == "same-mtime":
        adata.X = adata.X * 3
    adata.write_h5ad(path)
    if how == "same-mtime":  # an adversary restoring the timestamps
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    _rehash_manifest(root, h, **fields)


REWRITES = ["scale-X", "one-value", "relabel", "drop-cells", "drop-synthetic", "expression-space", "same-mtime"]


def _follow(argv: list[str], root: Path) -> None:
    """Follow a fix: run the command it names (in this process, to keep the suite fast)."""
    from perturbfm.cli import main

    assert main(["--store", str(root), *argv]) == 0, argv


def _repair_cmd(a: Attempt) -> list[str]:
    text = re.sub(r"\s+", " ", a.stdout + a.stderr)
    m = re.search(r"`pfm-bench (data repair [^`]+)`", text)
    assert m, a.describe()
    return shlex.split(m.group(1))


@pytest.mark.parametrize("how", REWRITES)
def test_rewritten_data_and_digests_are_refused_then_repaired(synthetic: tuple[Path, Path, str], how: str) -> None:
    root, copy, h = synthetic
    ArtifactStore(root).datasets.get(h).load(backed=True).file.close()  # verified once: a cache exists
    _rewrite(root, h, how)
    a = check(attempt(f"rewritten data.h5ad + digests ({how})", 2,
                      ["splits", "create", "--dataset", h, "--generator", "random-groups"],
                      store=root, expect_error=True, must_name=["data.h5ad", "data repair", h]))
    assert "repair" in a.stderr
    from perturbfm_bench_adapters.fetch import verify_rows

    (row,) = verify_rows(ArtifactStore(root))
    assert row["verdict"] == "MISMATCH" and "data repair" in row["fix"], row
    # follow the fix, with a copy of the stored file (this dataset has no source file)
    _follow([*_repair_cmd(a)[:3], "--from", str(copy)], root)
    stored = ArtifactStore(root).datasets.get(h)
    stored.verify(full=True)
    assert stored.synthetic
    (row,) = verify_rows(ArtifactStore(root))
    assert row["verdict"] != "MISMATCH", row


def test_data_verify_cli_refuses_rewritten_content(synthetic: tuple[Path, Path, str]) -> None:
    root, _, h = synthetic
    _rewrite(root, h, "scale-X")
    check(attempt("data verify after rewrite", 2, ["data", "verify"], store=root, expect_error=True,
                  must_name=["MISMATCH", "data repair", h]))


def test_rewritten_data_is_refused_by_a_run(synthetic: tuple[Path, Path, str]) -> None:
    root, _, h = synthetic
    sid = check(attempt("split before tamper", 2, ["splits", "create", "--dataset", h, "--generator",
                                                   "random-groups"], store=root, expect_error=False)).stdout.strip()
    _rewrite(root, h, "scale-X")
    check(attempt("run on rewritten data", 2, ["run", "--model", "train-mean", "--split", sid, "--set",
                                               "run.panels=[basic]"],
                  store=root, expect_error=True, must_name=["data.h5ad", "data repair"]))


@pytest.mark.parametrize("field,value", [("synthetic", False), ("expression_space", "counts"),
                                         ("expression_space", "log1p_cp10k (as provided)")])
def test_manifest_rehashed_alone_is_refused(synthetic: tuple[Path, Path, str], field: str, value: Any) -> None:
    root, _, h = synthetic
    store = ArtifactStore(root)
    store.datasets.get(h).load(backed=True).file.close()
    _rehash_manifest(root, h, **{field: value})
    with pytest.raises(ArtifactIntegrityError) as err:
        ArtifactStore(root).datasets.get(h).load(backed=True)
    assert field in str(err.value) and err.value.fix
    record_outcome(f"manifest {field} rewritten and rehashed", 2, "clean_error")
    # follow the fix: move the dataset away and import it again
    d = root / "datasets" / h
    shutil.move(d, Path(f"{d}.bak"))
    again, created = store.datasets.put(canonical_result(_small()), adapter="t", options={})
    assert created and again.hash == h and again.synthetic
    again.load(backed=True).file.close()


# ----------------------------------------------------------------------------- class 3
@pytest.mark.parametrize("mark", ["stored-copy", "uns-synthetic", "uns-perturbfm", "uns-string", "obs-column"])
def test_reimport_of_a_synthetic_file_stays_synthetic(tmp_path: Path, synthetic: tuple[Path, Path, str],
                                                      mark: str) -> None:
    root, copy, _ = synthetic
    if mark == "stored-copy":
        path = copy
    else:
        adata = _small()
        adata.uns.pop("synthetic", None)
        if mark == "uns-synthetic":
            adata.uns["synthetic"] = True
        elif mark == "uns-perturbfm":
            adata.uns["perturbfm"] = {"synthetic": True}
        elif mark == "uns-string":
            adata.uns["synthetic"] = "true"
        else:
            adata.obs["synthetic"] = True
        path = tmp_path / f"{mark}.h5ad"
        adata.write_h5ad(path)
    a = check(attempt(f"re-import synthetic file ({mark})", 3,
                      ["data", "import", str(path), "--perturbation-key", "pfm_perturbation", "--control", "control",
                       "--context-key", "pfm_context"], store=root, expect_error=False))
    ds = ArtifactStore(root).datasets.get(a.stdout.strip())
    assert ds.synthetic, f"{mark}: re-import lost the synthetic flag"


# ----------------------------------------------------------------------------- class 8
def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif how == "flipped-byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


DAMAGE = ["deleted", "truncated", "empty", "random-bytes", "directory", "fifo", "flipped-byte"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_data_file_gives_a_repair_command_that_works(sourced: tuple[Path, Path, str], how: str) -> None:
    root, src, h = sourced
    h5ad = root / "datasets" / h / "data.h5ad"
    _damage(h5ad, how)
    a = check(attempt(f"data.h5ad {how}", 8, ["splits", "create", "--dataset", h[:10], "--generator",
                                              "random-groups"],
                      store=root, expect_error=True, must_name=["data.h5ad", "data repair", str(src)], timeout=60))
    _follow(_repair_cmd(a), root)
    ArtifactStore(root).datasets.get(h).load(backed=True).file.close()


def test_repair_through_the_cli(sourced: tuple[Path, Path, str]) -> None:
    root, src, h = sourced
    (root / "datasets" / h / "data.h5ad").unlink()
    check(attempt("data repair (deleted file)", 8, ["data", "repair", h[:8], "--from", str(src)], store=root,
                  expect_error=False))
    check(attempt("split after repair", 8, ["splits", "create", "--dataset", h, "--generator", "random-groups"],
                  store=root, expect_error=False))


@pytest.mark.parametrize("how", ["deleted", "truncated", "flipped-byte"])
def test_reimport_of_the_same_source_restores_the_file(sourced: tuple[Path, Path, str], how: str) -> None:
    root, src, h = sourced
    store = ArtifactStore(root)
    _damage(store.datasets.get(h).h5ad, how)
    with pytest.raises(DatasetFileError):
        store.datasets.get(h).load()
    ds, created = import_dataset(store, "anndata", str(src), dict(ANNDATA_OPTS))
    assert ds.hash == h and not created
    ds.verify(full=True)
    assert ds.manifest["repairs"] and ds.manifest["repairs"][-1]["action"].startswith("restored")
    record_outcome(f"re-import restores data.h5ad ({how})", 8, "ok", expect_error=False)


def test_repair_refuses_other_data(sourced: tuple[Path, Path, str], tmp_path: Path) -> None:
    root, _, h = sourced
    (root / "datasets" / h / "data.h5ad").unlink()
    other = tmp_path / "other.h5ad"
    make_canonical_adata(n_genes=12, cells_per_group=5, n_control=10, seed=7).write_h5ad(other)
    from perturbfm.datasets import repair_dataset

    store = ArtifactStore(root)
    with pytest.raises(DatasetFileError, match="not to dataset"):
        repair_dataset(store, h, str(other))
    with pytest.raises(PerturbFMError, match="does not exist"):
        repair_dataset(store, h, str(tmp_path / "nope.h5ad"))
    for case in ("other data", "missing file"):
        record_outcome(f"repair from {case}", 8, "clean_error")


@pytest.mark.parametrize("stray", ["{h}.bak", "{h}.bak/", "{p}-old/", "{h}0/", "{p}", ".{h}", "{h}.json"])
def test_stray_entries_never_hide_a_dataset(sourced: tuple[Path, Path, str], stray: str) -> None:
    root, _, h = sourced
    ds_dir = root / "datasets"
    name = stray.format(h=h, p=h[:8]).rstrip("/")
    if stray.endswith("/"):
        shutil.copytree(ds_dir / h, ds_dir / name)
    else:
        shutil.copy2(ds_dir / h / "data.h5ad", ds_dir / name)
    store = ArtifactStore(root)
    assert store.datasets.get(h).hash == h
    assert store.datasets.get(h[:8]).hash == h
    assert [d.hash for d in store.datasets.list()] == [h]
    record_outcome(f"stray entry {stray}", 8, "ok", expect_error=False)


def test_stray_copy_through_the_cli(sourced: tuple[Path, Path, str]) -> None:
    root, _, h = sourced
    shutil.copytree(root / "datasets" / h, root / "datasets" / f"{h}.bak")
    check(attempt("data show with a .bak copy", 8, ["data", "show", h], store=root, expect_error=False))


# ----------------------------------------------------------------------------- class 7
def _reimporter(root: str, src: str, i: int, barrier: Any, out: Any) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from perturbfm.store import ArtifactStore
    from perturbfm.testing import make_canonical_adata
    from perturbfm.testing.doubles import canonical_result

    result = canonical_result(make_canonical_adata(n_genes=12, cells_per_group=5, n_control=10))
    result.source = {"path": f"{src}#{i}"}
    barrier.wait(timeout=120)
    try:
        ArtifactStore(root).datasets.put(result, adapter="t", options={})
        out.put((i, None))
    except Exception as exc:  # reported to the parent
        out.put((i, f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("existing", [True, False])
def test_concurrent_reimports_keep_every_provenance_record(tmp_path: Path, existing: bool) -> None:
    root = tmp_path / "store"
    if existing:
        ArtifactStore(root).datasets.put(canonical_result(_small()), adapter="t", options={})
    n = 4
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_reimporter, args=(str(root), "src", i, barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(err is None for _, err in results), results
    (ds,) = ArtifactStore(root).datasets.list()
    sources = {ds.manifest["source"].get("path")} | {r["source"]["path"] for r in ds.manifest.get(
        "provenance_records", [])}
    lost = {f"src#{i}" for i in range(n)} - sources
    record_outcome(f"concurrent re-imports (existing={existing})", 7, "ok" if not lost else "silent_wrong",
                   expect_error=False)
    assert not lost, f"provenance records lost: {lost}"
    ds.verify(full=True)


# ----------------------------------------------------------------------------- class 9
def _no_half_written(root: Path) -> None:
    ds_dir = root / "datasets"
    if ds_dir.exists():
        assert [p.name for p in ds_dir.iterdir()] == [], list(ds_dir.iterdir())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO])
def test_write_failures_are_clean_and_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    code: int) -> None:
    root = tmp_path / "store"

    def fail(self: Any, *a: Any, **k: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ad.AnnData, "write_h5ad", fail)
    with pytest.raises(StoreWriteError) as err:
        ArtifactStore(root).datasets.put(canonical_result(_small()), adapter="t", options={})
    assert "data.h5ad" in str(err.value) and err.value.fix and isinstance(err.value, OSError)
    _no_half_written(root)
    record_outcome(f"write failure errno {errno.errorcode[code]}", 9, "clean_error")


def test_hdf5_runtime_error_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: Any, *a: Any, **k: Any) -> None:
        raise RuntimeError("Can't decrement id ref count (unable to extend file properly, errno = 27, "
                           "error message = 'File too large')")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", fail)
    with pytest.raises(StoreWriteError, match="file-size limit") as err:
        ArtifactStore(tmp_path / "s").datasets.put(canonical_result(_small()), adapter="t", options={})
    assert "ulimit -f" in (err.value.fix or "")
    record_outcome("HDF5 RuntimeError errno 27", 9, "clean_error")


def test_free_space_is_checked_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perturbfm.fsio as fsio

    monkeypatch.setattr(fsio.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1024))
    with pytest.raises(StoreWriteError, match="not enough free space") as err:
        ArtifactStore(tmp_path / "s").datasets.put(canonical_result(_small()), adapter="t", options={})
    assert "free disk space" in (err.value.fix or "")
    _no_half_written(tmp_path / "s")
    record_outcome("disk full before writing", 9, "clean_error")


def test_read_only_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    root = tmp_path / "store"
    (root / "datasets").mkdir(parents=True)

    def ro(*a: Any, **k: Any) -> str:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", ro)
    with pytest.raises(StoreWriteError, match="read-only") as err:
        ArtifactStore(root).datasets.put(canonical_result(_small()), adapter="t", options={})
    assert "--store" in (err.value.fix or "")
    record_outcome("read-only store", 9, "clean_error")


@pytest.mark.parametrize("limit_kib", [8, 64])
def test_ulimit_f_during_import(tmp_path: Path, limit_kib: int) -> None:
    root = tmp_path / "store"
    argv = ["data", "import", "--adapter", "synthetic"]
    a = Attempt(f"ulimit -f {limit_kib} KiB during import", 9, argv, True)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, limit_kib * 1024))

    proc = subprocess.run([str(BIN / "pfm-bench"), *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PFM_HOME": str(root), "COLUMNS": "200"}, preexec_fn=limit)
    a.rc, a.stdout, a.stderr = proc.returncode, proc.stdout, proc.stderr
    a.outcome = classify(a, ["ulimit -f", str(root)])
    record(a)
    check(a)
    _no_half_written(root)


# ----------------------------------------------------------------------------- class 13
@pytest.mark.parametrize("entry", ["datasets", "splits", "runs", "locks"])
def test_store_folder_that_is_a_file(sourced: tuple[Path, Path, str], entry: str) -> None:
    root, _, h = sourced
    store = ArtifactStore(root)
    sid = None
    if entry == "runs":
        sid = check(attempt("split for runs", 13, ["splits", "create", "--dataset", h, "--generator",
                                                   "random-groups"], store=root, expect_error=False)).stdout.strip()
    target = root / entry
    if target.exists():
        shutil.move(target, root / f"{entry}.orig")
    target.write_text("not a folder")
    argv = {"datasets": ["data", "list"], "splits": ["splits", "list"], "locks": ["data", "import", "--adapter",
                                                                                  "synthetic"],
            "runs": ["run", "--model", "train-mean", "--split", str(sid), "--set", "run.panels=[basic]"]}[entry]
    check(attempt(f"store {entry} is a file", 13, argv, store=root, expect_error=True,
                  must_name=[str(target), "mv "]))
    # follow the fix: move the file away
    shutil.move(target, root / f"{entry}.bak")
    if (root / f"{entry}.orig").exists():
        shutil.move(root / f"{entry}.orig", target)
    assert store.datasets.get(h).hash == h


@pytest.mark.parametrize("kind", ["loop", "self-loop", "file"])
def test_unusable_store_root(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "store"
    if kind == "loop":
        os.symlink(tmp_path / "other", root)
        os.symlink(root, tmp_path / "other")
    elif kind == "self-loop":
        os.symlink(root, root)
    else:
        root.write_text("x")
    check(attempt(f"store root is a {kind}", 13, ["data", "list"], store=root, expect_error=True,
                  must_name=[str(root), "--store"]))
    with pytest.raises(PerturbFMError):
        ArtifactStore(root)
