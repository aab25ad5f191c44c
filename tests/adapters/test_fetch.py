"""``data fetch`` / ``data verify`` against a loopback HTTP server serving the shared data."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from adapter_helpers import require_shared, run_cli, shared_data_dir
from perturbfm.errors import ArtifactIntegrityError, ConfigError, PerturbFMError
from perturbfm.store import ArtifactStore
from perturbfm_bench_adapters.fetch import fetch
from perturbfm_bench_adapters.registry import REGISTRY

DEVEL = "perturbench_devel/norman19_mcfaline23_devel.h5ad"
DEVEL_SHA = "220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support; records the ranges asked for."""

    ranges: list[str] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).ranges.append(rng or "")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[str]:
    root = shared_data_dir()
    require_shared(DEVEL)
    _RangeHandler.ranges = []
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.timeout = 10
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_registry_entries():
    assert {"perturbench-devel", "norman2019-gears", "norman2019-perturbench", "replogle2022-k562-essential",
            "adamson2016-gears", "sciplex3-perturbench", "kang2018"} <= set(REGISTRY)
    for e in REGISTRY.values():
        assert e.url and e.url_source and e.citation and e.licence and e.adapter
    assert [e.name for e in REGISTRY.values() if e.sha256] == ["perturbench-devel"]
    assert REGISTRY["perturbench-devel"].sha256 == DEVEL_SHA


def test_fetch_resume_verify(server, tmp_path, capsys):
    store_dir, dest = tmp_path / "store", tmp_path / "dl"
    dest.mkdir()
    full = (shared_data_dir() / DEVEL).read_bytes()
    (dest / "norman19_mcfaline23_devel.h5ad.part").write_bytes(full[: len(full) // 3])
    rc, out, err = run_cli(["--store", str(store_dir), "data", "fetch", "perturbench-devel", "--dest", str(dest),
                            "--base-url", server], capsys)
    assert rc == 0, err
    assert f"resumed at byte {len(full) // 3}" in err and "verified" in err
    assert _RangeHandler.ranges == [f"bytes={len(full) // 3}-"]
    assert (dest / "norman19_mcfaline23_devel.h5ad").read_bytes() == full
    ds = ArtifactStore(store_dir).datasets.get(out.strip())
    reg = ds.manifest["extra"]["registry"]
    assert reg["name"] == "perturbench-devel" and reg["verified"] is True
    assert reg["expected_sha256"] == reg["found_sha256"] == DEVEL_SHA
    assert ds.manifest["adapter"] == "perturbench" and "k562" in ds.manifest["contexts"]
    assert ds.manifest["extra"]["gene_universe"][:1] and ds.manifest["licence"].startswith("BSD-3")
    rc, out, err = run_cli(["--store", str(store_dir), "data", "verify", "--json"], capsys)
    rows = json.loads(out)
    assert rc == 0 and [r["verdict"] for r in rows] == ["verified"] and rows[0]["stored_file_ok"]
    assert rows[0]["doi"] and rows[0]["expected_sha256"] == DEVEL_SHA
    ds.h5ad.chmod(0o644)
    with open(ds.h5ad, "ab") as fh:  # tamper with the stored file
        fh.write(b"x")
    rc, out, _ = run_cli(["--store", str(store_dir), "data", "verify", "--json"], capsys)
    assert rc == 1 and json.loads(out)[0]["verdict"] == "MISMATCH"


def test_fetch_http_error(server, tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(PerturbFMError, match="HTTP 404"):
        fetch(store, "kang2018", dest=tmp_path / "dl", sha256="0" * 64, base_url=server)
    assert store.datasets.list() == []


def test_fetch_mismatch_and_unverified(server, tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store")
    dest = tmp_path / "dl"
    with pytest.raises(ConfigError, match="differs from the registry"):
        fetch(store, "perturbench-devel", dest=dest, sha256="0" * 64, base_url=server)
    from perturbfm_bench_adapters import registry

    entry = registry.REGISTRY["perturbench-devel"]
    unknown = registry.RegistryEntry(**{**entry.to_dict(), "name": "devel-nohash", "sha256": None})
    monkeypatch.setitem(registry.REGISTRY, "devel-nohash", unknown)
    with pytest.raises(ConfigError, match="no sha256"):
        fetch(store, "devel-nohash", dest=dest, base_url=server)
    with pytest.raises(ArtifactIntegrityError, match="checksum mismatch"):
        fetch(store, "devel-nohash", dest=dest, sha256="ab" * 32, base_url=server)
    assert store.datasets.list() == [] and not (dest / entry.filename).exists()
    res = fetch(store, "devel-nohash", dest=dest, allow_unverified=True, base_url=server)
    assert res.registry["verified"] is False and res.registry["expected_sha256"] is None
    from perturbfm_bench_adapters.fetch import verify_rows

    assert [r["verdict"] for r in verify_rows(store)] == ["unverified"]


class _ShortHandler(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends ``cut`` of them (or the rest on a Range request)."""

    body = bytes(range(256)) * 4
    cut = 300

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        rng = self.headers.get("Range")
        start = int(rng[6:].split("-")[0]) if rng else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}")
        self.send_header("Content-Length", str(len(self.body) - start))
        self.end_headers()
        self.wfile.write(self.body[start:] if start else self.body[: self.cut])
        self.close_connection = True


def test_download_detects_a_short_body_and_resumes(tmp_path):
    from perturbfm_bench_adapters.fetch import download

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/f.bin"
    target = tmp_path / "f.bin"
    try:
        with pytest.raises(PerturbFMError, match="interrupted after 300 of 1024 bytes") as err:
            download(url, target)
        assert "resumes f.bin.part from byte 300" in (err.value.fix or "")
        assert (tmp_path / "f.bin.part").read_bytes() == _ShortHandler.body[:300] and not target.exists()
        assert download(url, target) == 300
        assert target.read_bytes() == _ShortHandler.body
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
