"""Adversarial downloads for ``pfm-bench data fetch`` (issue 18 class 5), against a
loopback HTTP server that drops connections, serves truncated or damaged bodies.

* a dropped connection (body shorter than its Content-Length) is a clean error;
  the partial file is kept and the next fetch resumes it with a Range request;
* files left in ``--dest`` (the download, its unpacked copy) are never trusted:
  the download is rehashed and the unpacked file rewritten from it;
* a truncated or damaged ``.gz`` with ``--allow-unverified`` is a clean error and
  leaves nothing that breaks the next fetch;
* leftovers that are FIFOs or folders never hang or crash a fetch.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from harness import attempt, check, record_outcome
from perturbfm.errors import PerturbFMError
from perturbfm.store import ArtifactStore
from perturbfm_bench_adapters import registry
from perturbfm_bench_adapters.fetch import fetch

GZ_NAME = "norman19_preprocessed.h5ad.gz"  # the registry's gz entry (norman2019-perturbench)


def _h5ad_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    labels = ["control"] * 60 + ["A"] * 40 + ["B"] * 40 + ["A+B"] * 40
    obs = pd.DataFrame({"condition": labels, "cell_type": "k562"}, index=[f"c{i}" for i in range(len(labels))])
    X = sp.csr_matrix(rng.integers(0, 30, size=(len(labels), 60)).astype(np.float32))
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(60)]))
    buf = io.BytesIO()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pfm-fetch-{os.getpid()}-{seed}.h5ad"
    adata.write_h5ad(path)
    try:
        buf.write(path.read_bytes())
    finally:
        path.unlink()
    return buf.getvalue()


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    h5ad = _h5ad_bytes(0)
    return {"h5ad": h5ad, "gz": gzip.compress(h5ad, mtime=0), "other": _h5ad_bytes(1)}


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    mode: ClassVar[str] = "ok"  # ok | drop (send cut bytes of a full Content-Length) | nolength
    cut: ClassVar[int] = 0
    ranges: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        data = type(self).files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range") or ""
        type(self).ranges.append(rng)
        start = int(rng[6:].split("-")[0]) if rng.startswith("bytes=") else 0
        if start:
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if type(self).mode == "nolength":
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).mode == "drop":
            body = body[: max(0, type(self).cut - start)]
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server() -> Iterator[type[_Handler]]:
    _Handler.files, _Handler.mode, _Handler.cut, _Handler.ranges = {}, "ok", 0, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield _Handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _entry(monkeypatch: pytest.MonkeyPatch, name: str, filename: str, sha: str | None) -> str:
    base = registry.REGISTRY["norman2019-perturbench"]
    entry = registry.RegistryEntry(**{**base.to_dict(), "name": name, "filename": filename, "sha256": sha,
                                      "mirror_path": None})
    monkeypatch.setitem(registry.REGISTRY, name, entry)
    return name


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.97])
@pytest.mark.parametrize("kind", ["gz", "h5ad"])
def test_dropped_connection_is_kept_and_resumed(server: Any, payloads: dict[str, bytes], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, fraction: float, kind: str) -> None:
    data = payloads[kind]
    filename = GZ_NAME if kind == "gz" else "plain.h5ad"
    name = _entry(monkeypatch, f"t-{kind}", filename, hashlib.sha256(data).hexdigest())
    server.files = {filename: data}
    server.mode, server.cut = "drop", int(len(data) * fraction)
    store, dest = ArtifactStore(tmp_path / "store"), tmp_path / "dl"
    with pytest.raises(PerturbFMError, match="interrupted") as err:
        fetch(store, name, dest=dest, base_url=server.url)
    assert "rerun" in (err.value.fix or "") and err.value.file
    part = dest / f"{filename}.part"
    assert part.read_bytes() == data[: server.cut] and not (dest / filename).exists()
    assert store.datasets.list() == []
    record_outcome(f"dropped connection at {fraction:.0%} ({kind})", 5, "clean_error")
    server.mode = "ok"
    res = fetch(store, name, dest=dest, base_url=server.url)
    assert res.resumed_from == server.cut and res.registry["verified"]
    assert server.ranges[-1] == f"bytes={server.cut}-"
    assert (dest / filename).read_bytes() == data
    record_outcome(f"resume after dropped connection ({kind})", 5, "ok", expect_error=False)


def test_dropped_connection_through_the_cli(server: Any, payloads: dict[str, bytes], tmp_path: Path) -> None:
    data = payloads["gz"]
    sha = hashlib.sha256(data).hexdigest()
    server.files = {GZ_NAME: data}
    server.mode, server.cut = "drop", len(data) // 3
    argv = ["data", "fetch", "norman2019-perturbench", "--dest", str(tmp_path / "dl"), "--base-url", server.url,
            "--sha256", sha]
    check(attempt("fetch: dropped connection", 5, argv, store=tmp_path / "store", expect_error=True,
                  must_name=["interrupted", "rerun", f"byte {server.cut}"]))
    server.mode = "ok"
    a = check(attempt("fetch: resume", 5, argv, store=tmp_path / "store", expect_error=False))
    assert f"resumed at byte {server.cut}" in a.stderr


@pytest.mark.parametrize("leftover", ["other-data", "garbage", "empty", "fifo", "folder"])
def test_unpacked_leftover_is_never_trusted(server: Any, payloads: dict[str, bytes], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, leftover: str) -> None:
    data = payloads["gz"]
    name = _entry(monkeypatch, "t-gz", GZ_NAME, hashlib.sha256(data).hexdigest())
    server.files = {GZ_NAME: data}
    store, dest = ArtifactStore(tmp_path / "store"), tmp_path / "dl"
    first = fetch(store, name, dest=dest, base_url=server.url)
    out = dest / GZ_NAME.removesuffix(".gz")
    out.unlink()
    if leftover == "other-data":
        out.write_bytes(payloads["other"])
    elif leftover == "garbage":
        out.write_bytes(os.urandom(1000))
    elif leftover == "empty":
        out.write_bytes(b"")
    elif leftover == "fifo":
        os.mkfifo(out)
    else:
        out.mkdir()
    if leftover == "folder":
        with pytest.raises(PerturbFMError) as err:
            fetch(store, name, dest=dest, base_url=server.url)
        assert str(out) in (err.value.file or "") and "mv " in (err.value.fix or "")
        record_outcome("fetch: unpacked path is a folder", 5, "clean_error")
        out.rename(f"{out}.bak")  # follow the fix
    again = fetch(store, name, dest=dest, base_url=server.url)
    assert again.dataset.hash == first.dataset.hash and not again.created
    assert out.read_bytes() == payloads["h5ad"]
    record_outcome(f"fetch: unpacked leftover ({leftover}) rewritten", 5, "ok", expect_error=False)


@pytest.mark.parametrize("leftover", ["replaced", "truncated"])
def test_downloaded_leftover_is_rehashed(server: Any, payloads: dict[str, bytes], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, leftover: str) -> None:
    data = payloads["gz"]
    name = _entry(monkeypatch, "t-gz", GZ_NAME, hashlib.sha256(data).hexdigest())
    server.files = {GZ_NAME: data}
    store, dest = ArtifactStore(tmp_path / "store"), tmp_path / "dl"
    dest.mkdir()
    (dest / GZ_NAME).write_bytes(gzip.compress(payloads["other"]) if leftover == "replaced" else data[:-100])
    with pytest.raises(PerturbFMError, match="checksum mismatch"):
        fetch(store, name, dest=dest, base_url=server.url)
    assert store.datasets.list() == []
    res = fetch(store, name, dest=dest, base_url=server.url)  # the fix: rerun
    assert res.registry["verified"]
    record_outcome(f"fetch: downloaded leftover {leftover}", 5, "clean_error")


def test_truncated_gz_unverified_is_resumed(server: Any, payloads: dict[str, bytes], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = payloads["gz"]
    name = _entry(monkeypatch, "t-gz-nohash", GZ_NAME, None)
    server.files = {GZ_NAME: data[: len(data) // 2]}  # the server's copy is cut short (a complete response)
    store, dest = ArtifactStore(tmp_path / "store"), tmp_path / "dl"
    with pytest.raises(PerturbFMError, match="ends early") as err:
        fetch(store, name, dest=dest, allow_unverified=True, base_url=server.url)
    assert "rerun" in (err.value.fix or "")
    assert not (dest / GZ_NAME).exists() and (dest / f"{GZ_NAME}.part").exists()
    assert not [p for p in dest.rglob("*.tmp")]
    record_outcome("fetch: truncated .gz, unverified", 5, "clean_error")
    server.files = {GZ_NAME: data}
    res = fetch(store, name, dest=dest, allow_unverified=True, base_url=server.url)
    assert res.resumed_from == len(data) // 2 and not res.registry["verified"]


@pytest.mark.parametrize("damage", ["garbage", "flipped-bytes", "not-gzip"])
def test_damaged_gz_unverified_leaves_nothing_that_breaks(server: Any, payloads: dict[str, bytes], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    data = payloads["gz"]
    name = _entry(monkeypatch, "t-gz-nohash", GZ_NAME, None)
    bad = bytearray(data)
    if damage == "garbage":
        bad = bytearray(data[:20] + os.urandom(len(data) - 20))
    elif damage == "flipped-bytes":
        for i in range(100, len(bad) - 100, 97):
            bad[i] ^= 0x5A
    else:
        bad = bytearray(b"<html>not found</html>")
    server.files = {GZ_NAME: bytes(bad)}
    store, dest = ArtifactStore(tmp_path / "store"), tmp_path / "dl"
    with pytest.raises(PerturbFMError) as err:
        fetch(store, name, dest=dest, allow_unverified=True, base_url=server.url)
    assert err.value.fix and err.value.file
    record_outcome(f"fetch: damaged .gz ({damage}), unverified", 5, "clean_error")
    server.files = {GZ_NAME: data}
    for p in dest.glob("*.part"):  # an "ends early" error keeps the part; its fix says to delete it if it repeats
        p.unlink()
    res = fetch(store, name, dest=dest, allow_unverified=True, base_url=server.url)
    assert res.dataset.manifest["n_obs"] == 180


def test_truncated_gz_through_the_cli(server: Any, payloads: dict[str, bytes], tmp_path: Path) -> None:
    data = payloads["gz"]
    server.files = {GZ_NAME: data[: len(data) // 2]}
    argv = ["data", "fetch", "norman2019-perturbench", "--dest", str(tmp_path / "dl"), "--base-url", server.url,
            "--allow-unverified"]
    a = check(attempt("fetch: truncated .gz --allow-unverified", 5, argv, store=tmp_path / "store",
                      expect_error=True, must_name=[GZ_NAME, "rerun"]))
    assert a.rc not in (0, 130)
    server.files = {GZ_NAME: data}
    check(attempt("fetch after truncated .gz", 5, argv, store=tmp_path / "store", expect_error=False))


@pytest.mark.parametrize("what", ["part-fifo", "part-folder", "target-fifo", "target-folder"])
def test_leftovers_that_are_not_files(server: Any, payloads: dict[str, bytes], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    data = payloads["gz"]
    name = _entry(monkeypatch, "t-gz", GZ_NAME, hashlib.sha256(data).hexdigest())
    server.files = {GZ_NAME: data}
    dest = tmp_path / "dl"
    dest.mkdir()
    path = dest / (f"{GZ_NAME}.part" if what.startswith("part") else GZ_NAME)
    os.mkfifo(path) if what.endswith("fifo") else path.mkdir()
    with pytest.raises(PerturbFMError) as err:
        fetch(ArtifactStore(tmp_path / "store"), name, dest=dest, base_url=server.url)
    assert str(path) in (err.value.file or "") and "rm " in (err.value.fix or "")
    record_outcome(f"fetch: leftover {what}", 5, "clean_error")
    os.unlink(path) if what.endswith("fifo") else path.rmdir()  # follow the fix
    assert fetch(ArtifactStore(tmp_path / "store"), name, dest=dest, base_url=server.url).registry["verified"]
