"""``pfm-bench data fetch`` and ``data verify``: resumable, hash-checked downloads
of registry datasets, imported through the entry's adapter.

Order of operations: refuse early when no digest is known and the user did not
allow an unverified import; download to ``<dest>/<filename>.part`` (resumed with
an HTTP ``Range`` request when a partial file exists); hash the whole file;
refuse on a mismatch (the bad file is deleted, nothing is imported); rename;
unpack (``.gz`` / zip / tar member); import. The manifest's ``extra.registry``
records the registry name, expected and found digests and the verdict.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from perturbfm.errors import ArtifactIntegrityError, ConfigError, PerturbFMError
from perturbfm.hashing import sha256_file
from perturbfm.jsonable import jsonable
from perturbfm.plugins import get_registry
from perturbfm.store import ArtifactStore, StoredDataset

from perturbfm_bench_adapters.registry import REGISTRY, RegistryEntry, entry_by_sha256, get_entry

BLOCK = 1 << 20
TIMEOUT_S = 60


@dataclass
class FetchResult:
    """What ``fetch`` did."""

    dataset: StoredDataset
    created: bool
    file: Path
    registry: dict[str, Any]
    resumed_from: int


def download(url: str, target: Path, *, timeout: float = TIMEOUT_S) -> int:
    """Download ``url`` to ``target`` via ``target.part``; resumes a partial file
    with ``Range: bytes=<size>-``. Returns the byte offset resumed from (0 when
    the server ignored the range or there was nothing to resume)."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "perturbfm-bench-adapters"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (user-chosen http(s) URL)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already complete
            part.replace(target)
            return offset
        raise PerturbFMError(f"download failed: HTTP {exc.code} {exc.reason}", file=url, field="url",
                             fix="check the URL / --base-url, or retry later") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise PerturbFMError(f"download failed: {exc}", file=url, field="url",
                             fix="check the network, the URL or --base-url; rerun to resume") from exc
    with resp:
        resumed = offset if (offset and resp.status == 206) else 0
        with open(part, "ab" if resumed else "wb") as fh:
            while block := resp.read(BLOCK):
                fh.write(block)
    part.replace(target)
    return resumed


def _unpack(file: Path, entry: RegistryEntry) -> Path:
    """The ``.h5ad`` to import: ``file`` itself, its gunzipped copy or an archive member."""
    if entry.archive_member is None and file.suffix == ".gz" and not file.name.endswith(".tar.gz"):
        out = file.with_suffix("")
        if not out.exists():
            with gzip.open(file, "rb") as src, open(out.with_name(out.name + ".tmp"), "wb") as dst:
                shutil.copyfileobj(src, dst, BLOCK)
            out.with_name(out.name + ".tmp").replace(out)
        return out
    if entry.archive_member is None:
        return file
    out_dir = file.with_name(file.name + ".d")
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as zf:
            member = _member(zf.namelist(), entry.archive_member, file)
            out = out_dir / PurePosixPath(member).name
            if not out.exists():
                out_dir.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as zsrc, open(out, "wb") as dst:
                    shutil.copyfileobj(zsrc, dst, BLOCK)
        return out
    if tarfile.is_tarfile(file):
        with tarfile.open(file) as tf:
            member = _member([m.name for m in tf.getmembers() if m.isfile()], entry.archive_member, file)
            out = out_dir / PurePosixPath(member).name
            if not out.exists():
                out_dir.mkdir(parents=True, exist_ok=True)
                tsrc = tf.extractfile(member)
                if tsrc is None:
                    raise PerturbFMError(f"archive member {member} is not a file", file=str(file),
                                         field="archive_member", fix="check the registry entry")
                with tsrc, open(out, "wb") as dst:
                    shutil.copyfileobj(tsrc, dst, BLOCK)
        return out
    raise PerturbFMError("the download is neither a zip nor a tar archive", file=str(file), field="archive_member",
                         fix="check the registry entry")


def _member(names: list[str], wanted: str, file: Path) -> str:
    if wanted in names:
        return wanted
    base = PurePosixPath(wanted).name
    hits = [n for n in names if PurePosixPath(n).name == base]
    if len(hits) == 1:
        return hits[0]
    raise PerturbFMError(f"archive has {len(hits)} members named {base!r}", file=str(file), field="archive_member",
                         fix=f"members: {', '.join(names[:10])}")


def fetch(
    store: ArtifactStore,
    name: str,
    *,
    dest: str | Path,
    sha256: str | None = None,
    allow_unverified: bool = False,
    base_url: str | None = None,
    options: dict[str, Any] | None = None,
) -> FetchResult:
    """Download registry dataset ``name`` into ``dest``, verify it and import it."""
    entry = get_entry(name)
    expected = (sha256 or entry.sha256 or "").strip().lower() or None
    if sha256 and entry.sha256 and sha256.lower() != entry.sha256:
        raise ConfigError(f"--sha256 differs from the registry's digest for {name}", field="sha256",
                          fix=f"the registry expects {entry.sha256}; drop --sha256 or fix it")
    if expected is not None and (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)):
        raise ConfigError(f"--sha256 {expected!r} is not a hex SHA-256 digest", field="sha256",
                          fix="pass the 64 hex characters of the file's SHA-256")
    if expected is None and not allow_unverified:
        raise ConfigError(
            f"the registry has no sha256 for {name}: the download cannot be verified", field="sha256",
            fix="pass --sha256 HEX (from a source you trust), or --allow-unverified to import it "
                "recorded as unverified")
    if base_url:
        url = base_url.rstrip("/") + "/" + (entry.mirror_path or entry.filename)
    elif entry.url:
        url = entry.url
    else:
        raise ConfigError(f"the registry has no URL for {name}", field="url", fix="pass --base-url of a mirror")
    target = Path(dest).expanduser().resolve() / entry.filename
    resumed = 0
    if not target.exists():
        resumed = download(url, target)
    found = sha256_file(target)
    if expected is not None and found != expected:
        target.unlink()
        raise ArtifactIntegrityError(
            f"checksum mismatch for {name}: expected {expected}, found {found}; nothing was imported "
            "and the download was deleted",
            file=url, field="sha256", fix="retry the download; if it persists the source changed: check the digest")
    record = {
        "name": name, "url": url, "registry_url": entry.url, "expected_sha256": expected, "found_sha256": found,
        "sha256_source": ("registry" if entry.sha256 else "user (--sha256)") if expected else None,
        "verified": expected is not None, "verdict": "verified" if expected else "unverified",
        "citation": entry.citation, "doi": entry.doi,
    }
    h5ad = _unpack(target, entry)
    opts: dict[str, Any] = {**entry.options, "licence": entry.licence, "citation": entry.citation,
                            **(options or {})}
    impl = get_registry().create("dataset_adapter", entry.adapter)
    result = impl.load(str(h5ad), **opts)
    result.extra["registry"] = record
    result.source = {**result.source, "url": url, "download_sha256": found, "registry": name}
    stored, created = store.datasets.put(result, adapter=entry.adapter, options=jsonable(opts))
    return FetchResult(stored, created, target, record, resumed)


def verify_rows(store: ArtifactStore) -> list[dict[str, Any]]:
    """One row per stored dataset: source, citation, expected / found digests and a
    verdict (verified / unverified / MISMATCH / not in registry). The stored
    file is re-hashed against the manifest's ``file_sha256`` too."""
    rows = []
    for d in store.datasets.list():
        m = d.manifest
        reg = (m.get("extra") or {}).get("registry")
        stored_found = sha256_file(d.h5ad) if d.h5ad.exists() else None
        file_ok = stored_found is not None and stored_found == m.get("file_sha256")
        src = m.get("source") or {}
        entry = REGISTRY.get(reg["name"]) if reg else entry_by_sha256(src.get("file_sha256"))
        if not file_ok:
            verdict = "MISMATCH"
        elif reg:
            known = entry.sha256 if entry else None
            if reg.get("expected_sha256") and reg["expected_sha256"] != reg.get("found_sha256"):
                verdict = "MISMATCH"
            elif known and reg.get("found_sha256") != known:
                verdict = "MISMATCH"
            else:
                verdict = "verified" if reg.get("verified") else "unverified"
        elif entry is not None:
            verdict = "verified"  # imported locally from a file whose digest the registry knows
        else:
            verdict = "not in registry"
        rows.append({
            "dataset": d.hash, "adapter": m.get("adapter"),
            "source": src.get("url") or src.get("path") or src.get("simulator"),
            "registry": reg["name"] if reg else (entry.name if entry else None),
            "citation": (entry.citation if entry else None) or m.get("citation"),
            "doi": entry.doi if entry else None,
            "expected_sha256": reg.get("expected_sha256") if reg else (entry.sha256 if entry else None),
            "found_sha256": reg.get("found_sha256") if reg else src.get("file_sha256"),
            "stored_file_sha256": stored_found, "manifest_file_sha256": m.get("file_sha256"),
            "stored_file_ok": file_ok, "verdict": verdict,
        })
    return rows

