"""The artifact store: content-addressed datasets, hash-locked splits, runs.

Layout under the store root::

    datasets/<sha256>/data.h5ad        canonical AnnData
    datasets/<sha256>/manifest.json    hash, source, licence, synthetic flag ...
    splits/<sha256>.json               canonical split content (id = its hash)
    runs/<run id>/                     one directory per run

The root comes from ``--store``, then ``$PFM_HOME``, then
``$XDG_DATA_HOME/perturbfm`` (``~/.local/share/perturbfm``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perturbfm import __version__
from perturbfm.errors import (
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    SplitIntegrityError,
)
from perturbfm.fsio import atomic_write_bytes, atomic_write_json, publish_directory
from perturbfm.hashing import canonical_json, dataset_content_hash, sha256_bytes, sha256_file, sha256_json
from perturbfm.interfaces import AdapterResult
from perturbfm.splits import Split

if TYPE_CHECKING:
    import anndata as ad

HOME_ENV = "PFM_HOME"
_HEX = re.compile(r"^[0-9a-f]{4,64}$")
_RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}_[0-9a-f]{7}_[A-Za-z0-9._-]+_[0-9a-f]{7}(_[0-9]+)?$")


def resolve_store_root(store: str | os.PathLike[str] | None = None) -> Path:
    """``store``, else ``$PFM_HOME``, else ``$XDG_DATA_HOME/perturbfm``."""
    if store:
        return Path(store).expanduser().resolve()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return (Path(xdg) / "perturbfm").resolve()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_hex(ref: str, what: str) -> str:
    ref = ref.strip().lower()
    if not _HEX.match(ref):
        raise ArtifactNotFoundError(
            f"{what} reference {ref!r} is not a hash",
            field=what,
            fix="give the hex hash (at least 4 characters) printed when it was created",
        )
    return ref


@dataclass
class StoredDataset:
    """A dataset in the store."""

    hash: str
    path: Path
    manifest: dict[str, Any]

    @property
    def h5ad(self) -> Path:
        return self.path / "data.h5ad"

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))

    def load(self, *, backed: bool = False, verify: bool = True) -> ad.AnnData:
        """Read the AnnData; with ``verify`` the file must match the manifest's hash."""
        if verify:
            found = sha256_file(self.h5ad)
            if found != self.manifest.get("file_sha256"):
                raise ArtifactIntegrityError(
                    f"dataset {self.hash[:12]} was modified after it was stored "
                    f"(file sha256 {found[:12]} != manifest {str(self.manifest.get('file_sha256'))[:12]})",
                    file=str(self.h5ad),
                    fix="re-import the dataset from its source; never edit files in the store",
                )
        import anndata as ad

        return ad.read_h5ad(self.h5ad, backed="r" if backed else None)


class DatasetStore:
    """Content-addressed datasets; imports of equal content are idempotent."""

    def __init__(self, root: Path) -> None:
        self.root = root / "datasets"

    def put(self, result: AdapterResult, *, adapter: str, options: dict[str, Any]) -> tuple[StoredDataset, bool]:
        """Store an adapter's output. Returns (dataset, created)."""
        from perturbfm.dataset import OPTIONAL_NUMERIC_COLS, REQUIRED_COLS, group_table

        adata = result.adata
        for col in REQUIRED_COLS:
            if col not in adata.obs:
                raise ArtifactIntegrityError(
                    f"adapter {adapter!r} produced no canonical column {col!r}", field=col,
                    fix="the adapter must write every canonical obs column",
                )
        canon_cols = list(REQUIRED_COLS) + [c for c in OPTIONAL_NUMERIC_COLS if c in adata.obs]
        meta = {"expression_space": result.expression_space, "synthetic": result.synthetic}
        h = dataset_content_hash(adata, canon_cols, meta)
        final = self.root / h
        if (final / "manifest.json").exists():
            return self._record_reimport(h, result, adapter), False
        groups = group_table(adata)
        n_ctrl = int(adata.obs["pfm_is_control"].sum())
        measured = set(map(str, adata.var_names))
        perturbed = sorted({g for gi in groups.values() for g in gi.genes})
        manifest = {
            "schema": 1,
            "hash": h,
            "hash_definition": "sha256 over canonical JSON (shape, obs/var names, canonical obs columns, "
            "expression space, synthetic flag) and X as float64 CSR in 8192-row blocks",
            "adapter": adapter,
            "adapter_options": options,
            "source": result.source,
            "synthetic": result.synthetic,
            "expression_space": result.expression_space,
            "processing": result.processing,
            "licence": result.licence,
            "citation": result.citation,
            "n_obs": int(adata.n_obs),
            "n_vars": int(adata.n_vars),
            "n_control_cells": n_ctrl,
            "contexts": sorted({g.context for g in groups.values()}),
            "n_groups": sum(1 for g in groups.values() if not g.is_control),
            "perturbed_genes": perturbed,
            "perturbed_genes_not_measured": [g for g in perturbed if g not in measured],
            "extra": result.extra,
            "created_at": utc_now(),
            "perturbfm_version": __version__,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        tmp = Path(tempfile.mkdtemp(prefix=f".{h[:12]}.{socket.gethostname()}.{os.getpid()}.", dir=self.root))
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            adata.obs = adata.obs.copy()
            for c in adata.obs.columns:  # h5ad cannot hold object columns of mixed types
                if adata.obs[c].dtype == object:
                    adata.obs[c] = adata.obs[c].astype(str)
            adata.uns["perturbfm"] = {"dataset_hash": h, "synthetic": result.synthetic}
            adata.write_h5ad(tmp / "data.h5ad")
            manifest["file_sha256"] = sha256_file(tmp / "data.h5ad")
            # Fix (reliability suite): the manifest itself was not covered by any hash, so an
            # edited manifest (e.g. "synthetic": true -> false, a changed licence) went
            # unnoticed. It now carries the hash of its own other fields, checked by get().
            # (digest of the JSON round trip, so int dict keys and tuples hash as they are read back)
            manifest["manifest_sha256"] = manifest_digest(json.loads(json.dumps(manifest, allow_nan=False)))
            atomic_write_json(tmp / "manifest.json", manifest)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        created = publish_directory(tmp, final)
        return self.get(h), created

    def _remove_stale_temps(self) -> None:
        """Remove temporary import directories left by killed processes of this host."""
        import shutil

        host = socket.gethostname()
        for p in self.root.glob(".*"):
            parts = p.name[1:].split(".")
            if len(parts) < 4 or parts[1] != host or not parts[2].isdigit() or not p.is_dir():
                continue
            if not _pid_alive(int(parts[2])):
                shutil.rmtree(p, ignore_errors=True)

    def _record_reimport(self, h: str, result: AdapterResult, adapter: str) -> StoredDataset:
        """Equal content imported again: the data stay as they are, but a new
        source is recorded, and a registry verification upgrades the status."""
        stored = self.get(h)
        record = {"at": utc_now(), "adapter": adapter, "source": result.source}
        registry = (result.extra or {}).get("registry")
        if registry is not None:
            record["registry"] = registry
        manifest = dict(stored.manifest)
        records = list(manifest.get("provenance_records", []))
        if any({k: v for k, v in r.items() if k != "at"} == {k: v for k, v in record.items() if k != "at"}
               for r in records):
            return stored
        manifest["provenance_records"] = [*records, record]
        old = (manifest.get("extra") or {}).get("registry")
        if registry is not None and registry.get("verified") and not (old and old.get("verified")):
            manifest["extra"] = {**(manifest.get("extra") or {}), "registry": registry}
        manifest = json.loads(json.dumps(manifest, allow_nan=False))
        manifest["manifest_sha256"] = manifest_digest(manifest)
        atomic_write_json(stored.path / "manifest.json", manifest)
        return self.get(h)

    def resolve(self, ref: str) -> str:
        ref = _check_hex(ref, "dataset")
        if not self.root.exists():
            raise ArtifactNotFoundError(f"no dataset {ref!r}: the store has no datasets", field="dataset",
                                        fix="import one with `pfm-bench data import`")
        hits = [p.name for p in self.root.iterdir() if p.name.startswith(ref) and not p.name.startswith(".")]
        if not hits:
            raise ArtifactNotFoundError(f"no dataset {ref!r} in {self.root}", field="dataset",
                                        fix="see `pfm-bench data list`")
        if len(hits) > 1:
            raise ArtifactNotFoundError(f"dataset prefix {ref!r} is ambiguous: {', '.join(sorted(hits))}",
                                        field="dataset", fix="give more characters of the hash")
        return hits[0]

    def get(self, ref: str) -> StoredDataset:
        h = self.resolve(ref)
        path = self.root / h
        mpath = path / "manifest.json"
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactIntegrityError(f"dataset {h[:12]} has an unreadable manifest: {exc}", file=str(mpath),
                                         fix="re-import the dataset") from exc
        if not isinstance(manifest, dict) or manifest.get("hash") != h:
            found = manifest.get("hash") if isinstance(manifest, dict) else manifest
            raise ArtifactIntegrityError(f"dataset directory {h[:12]} holds a manifest for {found}",
                                         file=str(mpath), fix="re-import the dataset")
        # Manifests written before manifest_sha256 existed carry no self-hash; all new ones do.
        if "manifest_sha256" in manifest and manifest["manifest_sha256"] != manifest_digest(manifest):
            raise ArtifactIntegrityError(
                f"the manifest of dataset {h[:12]} was modified after it was stored (manifest_sha256 mismatch)",
                file=str(mpath), fix="re-import the dataset from its source; never edit files in the store",
            )
        return StoredDataset(h, path, manifest)

    def list(self) -> list[StoredDataset]:
        if not self.root.exists():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(".") or not (p / "manifest.json").exists():
                continue
            out.append(self.get(p.name))
        return out


class SplitStore:
    """Immutable splits named by the hash of their canonical content."""

    def __init__(self, root: Path) -> None:
        self.root = root / "splits"

    def put(self, split: Split) -> tuple[str, bool]:
        """Store ``split``. Returns (id, created). Refuses loudly if a file with
        that id exists and holds different content."""
        split.validate()
        sid = split.id
        data = canonical_json(split.content())
        path = self.root / f"{sid}.json"
        if path.exists():
            if path.read_bytes() != data:
                raise SplitIntegrityError(
                    f"split {sid[:12]} already exists with different content; splits are immutable",
                    file=str(path),
                    fix="never edit stored splits; delete the tampered file only if you know why it changed",
                )
            return sid, False
        atomic_write_bytes(path, data)
        return sid, True

    def resolve(self, ref: str) -> str:
        ref = _check_hex(ref, "split")
        hits = sorted(p.stem for p in self.root.glob(f"{ref}*.json")) if self.root.exists() else []
        if not hits:
            raise ArtifactNotFoundError(
                f"unknown split {ref!r}; splits are never generated implicitly",
                field="split",
                fix="create one with `pfm-bench splits create` (see `pfm-bench splits list`)",
            )
        if len(hits) > 1:
            raise ArtifactNotFoundError(f"split prefix {ref!r} is ambiguous: {', '.join(hits)}", field="split",
                                        fix="give more characters of the hash")
        return hits[0]

    def get(self, ref: str) -> Split:
        """Load and verify a split: its content must hash to its id."""
        sid = self.resolve(ref)
        path = self.root / f"{sid}.json"
        raw = path.read_bytes()
        try:
            content = json.loads(raw)
            split = Split.from_content(content)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SplitIntegrityError(f"split {sid[:12]} is unreadable: {exc}", file=str(path),
                                      fix="the file was damaged; recreate the split") from exc
        if sha256_bytes(raw) != sid or split.id != sid:
            raise SplitIntegrityError(
                f"split {sid[:12]} does not match its hash: its content was changed after it was stored",
                file=str(path),
                fix="recreate the split with `pfm-bench splits create` or re-import it; never edit stored splits",
            )
        return split

    def list(self) -> list[tuple[str, Split]]:
        if not self.root.exists():
            return []
        return [(p.stem, self.get(p.stem)) for p in sorted(self.root.glob("*.json")) if not p.name.startswith(".")]


class ArtifactStore:
    """The store root and its three kinds of artifact."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_store_root(root)
        self.datasets = DatasetStore(self.root)
        self.splits = SplitStore(self.root)
        self.runs_dir = self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id):
            raise ArtifactNotFoundError(f"{run_id!r} is not a run id", field="run",
                                        fix="run ids look like 20260101-120000_abcdef1_model_1234abc")
        return self.runs_dir / run_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of a dataset manifest's canonical JSON without its ``manifest_sha256`` field."""
    return sha256_json({k: v for k, v in manifest.items() if k != "manifest_sha256"})


def config_hash(config: dict[str, Any]) -> str:
    return sha256_json(config)
