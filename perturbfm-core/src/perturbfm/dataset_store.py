"""Stored datasets: content identity, verification, import, repair.

A dataset's id is the hash of its content (X, names, canonical obs columns)
and its meta (synthetic flag, expression space); ``data.h5ad`` carries the
meta in ``uns["perturbfm"]``. The id is never taken on trust: the content is
rehashed on ``data verify`` and on the first load after the file changed
(its stat and digest are cached under ``<store>/cache/verified``), so
rewriting the data and its recorded digests makes every load refuse it. A
missing or damaged file is restored by ``pfm-bench data repair ID`` or by
importing the same content again; every read-modify-write of a manifest runs
under the dataset's lock (``<store>/locks``).

Length (over 400 lines on purpose): identity, verification, import and repair share the
locks and the verified-stat cache; splitting them would let one path bypass the checks of another.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perturbfm import __version__
from perturbfm.errors import ArtifactIntegrityError, ArtifactNotFoundError, DatasetFileError, PerturbFMError
from perturbfm.fsio import (
    atomic_write_json,
    check_regular_file,
    ensure_space,
    file_lock,
    guard_write,
    publish_directory,
    read_regular_file,
    write_error,
)
from perturbfm.hashing import dataset_content_hash, sha256_file
from perturbfm.interfaces import AdapterResult
from perturbfm.store_layout import (
    HEX64,
    MAX_STORE_JSON_BYTES,
    check_hex,
    manifest_digest,
    pid_alive,
    store_subdir,
    umask,
    utc_now,
)

if TYPE_CHECKING:
    import anndata as ad

#: Where a stored dataset records its synthetic flag and expression space (hashed into its id).
UNS_KEY = "perturbfm"


def uns_mark(adata: Any) -> dict[str, Any]:
    """The ``uns["perturbfm"]`` mapping of a stored dataset (empty when absent or malformed)."""
    mark = adata.uns.get(UNS_KEY) if hasattr(adata, "uns") else None
    return dict(mark) if isinstance(mark, dict) else {}


def carries_synthetic_mark(adata: Any) -> bool:
    """True when ``adata`` says it holds simulated data: ``uns["synthetic"]``,
    ``uns["perturbfm"]["synthetic"]`` or an ``obs["synthetic"]`` column that is set."""
    uns = getattr(adata, "uns", {}) or {}
    for value in (uns.get("synthetic"), uns_mark(adata).get("synthetic")):
        if _truthy(value):
            return True
    obs = getattr(adata, "obs", None)
    if obs is not None and "synthetic" in obs.columns:
        try:
            return bool(obs["synthetic"].astype(str).str.lower().isin(["true", "1", "yes"]).any())
        except (TypeError, ValueError):
            return False
    return False


def _truthy(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value)
    except (TypeError, ValueError):  # e.g. a numpy array of several values
        return False


def _stringify_object_columns(adata: Any) -> None:
    """h5ad cannot hold object columns of mixed types: store them as strings
    (before hashing, so the id is what the file reads back as)."""
    adata.obs = adata.obs.copy()
    for c in adata.obs.columns:
        if adata.obs[c].dtype == object:
            adata.obs[c] = adata.obs[c].astype(str)


def canonical_columns(adata: Any) -> list[str]:
    """The obs columns hashed into a dataset's id."""
    from perturbfm.dataset import OPTIONAL_COLS, OPTIONAL_NUMERIC_COLS, REQUIRED_COLS

    return list(REQUIRED_COLS) + [c for c in (*OPTIONAL_NUMERIC_COLS, *OPTIONAL_COLS) if c in adata.obs]


def content_hash(adata: Any, *, expression_space: str, synthetic: bool) -> str:
    """A dataset's id: the hash of its canonical content and its meta."""
    from perturbfm.dataset import SYMBOL_COL

    meta: dict[str, Any] = {"expression_space": expression_space, "synthetic": bool(synthetic)}
    if SYMBOL_COL in adata.var:  # recorded gene symbols are content (absent: the id is as before they existed)
        meta["gene_symbols"] = [str(x) for x in adata.var[SYMBOL_COL].tolist()]
    return dataset_content_hash(adata, canonical_columns(adata), meta)


def estimated_h5ad_bytes(adata: Any) -> int:
    """An upper estimate of the size of ``adata`` written as an uncompressed h5ad."""
    import scipy.sparse as sp

    X = adata.X
    if sp.issparse(X):
        x_bytes = int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    else:
        x_bytes = int(getattr(X, "nbytes", 0) or adata.n_obs * adata.n_vars * 8)
    return x_bytes + 512 * int(adata.n_obs) + 256 * int(adata.n_vars) + (1 << 20)


def write_dataset_h5ad(adata: Any, path: Path) -> None:
    """Write ``adata`` to ``path`` after checking free space and ``ulimit -f``;
    any failure of the HDF5 writer is a :class:`StoreWriteError` naming ``path``
    (the writer's file is closed by anndata before the error reaches here)."""
    ensure_space(path.parent, estimated_h5ad_bytes(adata), f"dataset file {path.name}")
    try:
        adata.write_h5ad(path)
    except Exception as exc:  # h5py reports disk errors as OSError, RuntimeError or KeyError
        raise write_error(exc, path) from exc


@dataclass
class StoredDataset:
    """A dataset in the store."""

    hash: str
    path: Path
    manifest: dict[str, Any]
    cache_dir: Path | None = field(default=None, repr=False)

    @property
    def h5ad(self) -> Path:
        return self.path / "data.h5ad"

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))

    def repair_command(self) -> str:
        """The command that restores this dataset's ``data.h5ad``."""
        src = self.manifest.get("source") or {}
        path = src.get("path") if isinstance(src, dict) else None
        return f"pfm-bench data repair {self.hash}" + (f" --from {path}" if path else "")

    def repair_fix(self) -> str:
        cmd = self.repair_command()
        if "--from" in cmd:
            return (f"run `{cmd}` (or pass --from a copy of the stored data.h5ad, or the original source file); "
                    "importing the same source again restores it too")
        return f"run `{cmd}` (it regenerates the data with the recorded adapter and options)"

    def verify(self, *, full: bool = False) -> None:
        """Check ``data.h5ad`` against the dataset's id.

        The file must exist, be a regular file and match the manifest's
        ``file_sha256``; its content (X, names, canonical obs columns, synthetic
        flag and expression space from its ``uns``) must hash to the id and agree
        with the manifest. The content hash is recomputed when ``full`` or when
        the file changed since it was last rehashed (see the module docstring);
        the file digest once per process and file state.
        """
        self._check_present()
        st = os.stat(self.h5ad)
        key = (str(self.h5ad), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns,
               self.manifest.get("file_sha256"), bool(self.manifest.get("synthetic")),
               self.manifest.get("expression_space"))
        if not full and key in _VERIFIED:
            return
        found = sha256_file(self.h5ad)
        if found != self.manifest.get("file_sha256"):
            raise DatasetFileError(
                f"dataset {self.hash[:12]} was modified after it was stored "
                f"(file sha256 {found[:12]} != manifest {str(self.manifest.get('file_sha256'))[:12]})",
                file=str(self.h5ad), field="file_sha256", fix=self.repair_fix())
        stamp = self._stamp(st, found)
        if not full and self._read_stamp() == stamp:
            _VERIFIED.add(key)
            return
        self._check_content()
        self._write_stamp(stamp)
        _VERIFIED.add(key)

    def _check_present(self) -> None:
        if not os.path.lexists(self.h5ad):
            raise DatasetFileError(f"dataset {self.hash[:12]} has no data.h5ad (it was deleted)",
                                   file=str(self.h5ad), field="data.h5ad", fix=self.repair_fix())
        check_regular_file(self.h5ad, what=f"data.h5ad of dataset {self.hash[:12]}", error=DatasetFileError,
                           fix=self.repair_fix())

    def _check_content(self) -> None:
        import anndata as ad

        try:
            adata = ad.read_h5ad(self.h5ad, backed="r")
        except Exception as exc:  # corrupt HDF5 raises many types
            raise DatasetFileError(f"data.h5ad of dataset {self.hash[:12]} cannot be read: {type(exc).__name__}: "
                                   f"{exc}", file=str(self.h5ad), field="data.h5ad", fix=self.repair_fix()) from exc
        try:
            mark = uns_mark(adata)
            synthetic = bool(mark["synthetic"]) if "synthetic" in mark else self.synthetic
            space = str(mark.get("expression_space", self.manifest.get("expression_space")))
            try:
                found = content_hash(adata, expression_space=space, synthetic=synthetic)
            except Exception as exc:  # missing canonical columns, unreadable X
                raise DatasetFileError(f"the content of data.h5ad of dataset {self.hash[:12]} cannot be hashed: "
                                       f"{type(exc).__name__}: {exc}", file=str(self.h5ad), field="data.h5ad",
                                       fix=self.repair_fix()) from exc
        finally:
            if adata.isbacked:
                adata.file.close()
        if found != self.hash:
            raise DatasetFileError(
                f"the content of data.h5ad hashes to {found[:12]}, not to the dataset's id {self.hash[:12]}: "
                "the data were replaced (and their recorded sha256s rewritten)",
                file=str(self.h5ad), field="content hash", fix=self.repair_fix())
        for name, in_file in (("synthetic", synthetic), ("expression_space", space)):
            if self.manifest.get(name) != in_file:
                raise ArtifactIntegrityError(
                    f"the manifest of dataset {self.hash[:12]} says {name}={self.manifest.get(name)!r} but its data "
                    f"(hashed into the id) say {in_file!r}: the manifest was edited",
                    file=str(self.path / "manifest.json"), field=name,
                    fix=f"move the dataset away (mv {self.path} {self.path}.bak) and import it again")

    def _stamp(self, st: os.stat_result, file_sha: str) -> dict[str, Any]:
        return {"hash": self.hash, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
                "ctime_ns": st.st_ctime_ns, "file_sha256": file_sha, "synthetic": self.synthetic,
                "expression_space": self.manifest.get("expression_space")}

    def _stamp_path(self) -> Path | None:
        return self.cache_dir / f"{self.hash}.json" if self.cache_dir is not None else None

    def _read_stamp(self) -> dict[str, Any] | None:
        path = self._stamp_path()
        if path is None:
            return None
        try:
            data = json.loads(read_regular_file(path, max_bytes=1 << 16))
        except (PerturbFMError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_stamp(self, stamp: dict[str, Any]) -> None:
        path = self._stamp_path()
        if path is None:
            return
        try:
            atomic_write_json(path, stamp)
        except OSError:  # a cache: a read-only store just rehashes next time
            pass

    def mark_verified(self) -> None:
        """Record that ``data.h5ad`` was just written from content hashing to the id."""
        st = os.stat(self.h5ad)
        self._write_stamp(self._stamp(st, str(self.manifest.get("file_sha256"))))

    def load(self, *, backed: bool = False, verify: bool = True) -> ad.AnnData:
        """Read the AnnData; with ``verify`` its content must match the id (see :meth:`verify`)."""
        if verify:
            self.verify()
        else:
            self._check_present()
        import anndata as ad

        try:
            return ad.read_h5ad(self.h5ad, backed="r" if backed else None)
        except Exception as exc:  # corrupt HDF5 raises many types
            raise DatasetFileError(f"data.h5ad of dataset {self.hash[:12]} cannot be read: {type(exc).__name__}: "
                                   f"{exc}", file=str(self.h5ad), field="data.h5ad", fix=self.repair_fix()) from exc


#: Files whose content this process has verified: (path, stat, manifest fields).
_VERIFIED: set[tuple[Any, ...]] = set()


class DatasetStore:
    """Content-addressed datasets; imports of equal content are idempotent."""

    def __init__(self, root: Path) -> None:
        self.root = root / "datasets"
        self.locks = root / "locks"
        self.cache_dir = root / "cache" / "verified"

    def _lock(self, h: str) -> Any:
        return file_lock(store_subdir(self.locks) / f"dataset-{h}.lock")

    def put(self, result: AdapterResult, *, adapter: str, options: dict[str, Any]) -> tuple[StoredDataset, bool]:
        """Store an adapter's output. Returns (dataset, created).

        Importing content already stored records the new source; if the stored
        ``data.h5ad`` is missing or damaged it is restored from this import."""
        from perturbfm.dataset import KIND_COL, REQUIRED_COLS, gene_symbols, group_table

        adata = result.adata
        for col in REQUIRED_COLS:
            if col not in adata.obs:
                raise ArtifactIntegrityError(
                    f"adapter {adapter!r} produced no canonical column {col!r}", field=col,
                    fix="the adapter must write every canonical obs column",
                )
        if not result.synthetic and carries_synthetic_mark(adata):
            result.synthetic = True  # simulated data stay labelled whatever adapter re-imports them
        _stringify_object_columns(adata)
        h = content_hash(adata, expression_space=result.expression_space, synthetic=result.synthetic)
        root = store_subdir(self.root)
        final = root / h
        if (final / "manifest.json").exists():
            with self._lock(h):
                return self._record_reimport(h, result, adapter), False
        groups = group_table(adata)
        n_ctrl = int(adata.obs["pfm_is_control"].sum())
        measured = set(map(str, adata.var_names)) | set(gene_symbols(adata))
        perturbed = sorted({g for gi in groups.values() for g in gi.target_genes})  # genetic perturbations only
        kinds = sorted({gi.kind for gi in groups.values() if not gi.is_control})
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
            "groups_by_perturbation_kind": {k: sum(1 for gi in groups.values() if not gi.is_control and gi.kind == k)
                                   for k in kinds} if KIND_COL in adata.obs else None,
            "extra": result.extra,
            "created_at": utc_now(),
            "perturbfm_version": __version__,
        }
        with guard_write(root, "create the datasets folder"):
            root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps()
            tmp = Path(tempfile.mkdtemp(prefix=f".{h[:12]}.{socket.gethostname()}.{os.getpid()}.", dir=root))
            os.chmod(tmp, 0o777 & ~umask())
        try:
            self._write_data(adata, tmp / "data.h5ad", h, result.synthetic, result.expression_space)
            manifest["file_sha256"] = sha256_file(tmp / "data.h5ad")
            # The manifest carries the hash of its own other fields, checked by get() (a naive
            # edit is refused; the synthetic flag and expression space are also in the data's
            # uns, hashed into the id, and checked against the manifest on load).
            # (digest of the JSON round trip, so int dict keys and tuples hash as they are read back)
            manifest["manifest_sha256"] = manifest_digest(json.loads(json.dumps(manifest, allow_nan=False)))
            atomic_write_json(tmp / "manifest.json", manifest)
            with self._lock(h):
                if (final / "manifest.json").exists():  # a concurrent import won: record this one
                    shutil.rmtree(tmp, ignore_errors=True)
                    return self._record_reimport(h, result, adapter), False
                with guard_write(final, "publish"):
                    created = publish_directory(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        stored = self.get(h)
        stored.mark_verified()
        return stored, created

    @staticmethod
    def _write_data(adata: Any, path: Path, h: str, synthetic: bool, expression_space: str) -> None:
        adata.uns[UNS_KEY] = {"dataset_hash": h, "synthetic": bool(synthetic), "expression_space": expression_space}
        write_dataset_h5ad(adata, path)

    def restore(self, stored: StoredDataset, adata: Any, *, synthetic: bool, expression_space: str,
                note: dict[str, Any]) -> StoredDataset:
        """Replace ``stored``'s ``data.h5ad`` with ``adata`` and record ``note`` in the
        manifest. The content with its meta (``synthetic``, ``expression_space``)
        must hash to the id, which proves them: the manifest's copies of both
        are set from them. Call under the dataset's lock."""
        _stringify_object_columns(adata)
        found = content_hash(adata, expression_space=expression_space, synthetic=synthetic)
        if found != stored.hash:
            raise DatasetFileError(
                f"the replacement data hash to {found[:12]}, not to dataset {stored.hash[:12]}: they are other data",
                file=str(note.get("from") or stored.h5ad), field="content hash",
                fix="pass the original source file or a copy of this dataset's data.h5ad")
        tmp = stored.path / f".data.h5ad.{os.getpid()}.tmp"
        try:
            self._write_data(adata, tmp, stored.hash, synthetic, expression_space)
            file_sha = sha256_file(tmp)
            with guard_write(stored.h5ad, "restore"):
                if os.path.isdir(stored.h5ad) and not os.path.islink(stored.h5ad):
                    shutil.rmtree(stored.h5ad)  # a folder in the file's place
                os.replace(tmp, stored.h5ad)
        finally:
            tmp.unlink(missing_ok=True)
        manifest = dict(stored.manifest)
        manifest.update(file_sha256=file_sha, synthetic=bool(synthetic), expression_space=expression_space)
        manifest["repairs"] = [*manifest.get("repairs", []), {"at": utc_now(), **note}]
        self._write_manifest(stored, manifest)
        out = self.get(stored.hash)
        out.mark_verified()
        return out

    def _write_manifest(self, stored: StoredDataset, manifest: dict[str, Any]) -> None:
        manifest = json.loads(json.dumps(manifest, allow_nan=False))
        manifest["manifest_sha256"] = manifest_digest(manifest)
        atomic_write_json(stored.path / "manifest.json", manifest)

    def _remove_stale_temps(self) -> None:
        """Remove temporary import directories left by killed processes of this host."""
        host = socket.gethostname()
        for p in self.root.glob(".*"):
            parts = p.name[1:].split(".")
            if len(parts) < 4 or parts[1] != host or not parts[2].isdigit() or not p.is_dir():
                continue
            if not pid_alive(int(parts[2])):
                shutil.rmtree(p, ignore_errors=True)

    def _record_reimport(self, h: str, result: AdapterResult, adapter: str) -> StoredDataset:
        """Equal content imported again (call under the dataset's lock): a missing or
        damaged ``data.h5ad`` is restored from this import, a new source is recorded,
        and a registry verification upgrades the status."""
        stored = self.get(h)
        try:
            stored.verify()
        except DatasetFileError:
            stored = self.restore(stored, result.adata, synthetic=result.synthetic,
                                  expression_space=result.expression_space,
                                  note={"action": "restored data.h5ad by a re-import", "adapter": adapter,
                                        "source": result.source})
        record = {"at": utc_now(), "adapter": adapter, "source": result.source}
        registry = (result.extra or {}).get("registry")
        if registry is not None:
            record["registry"] = registry
        manifest = dict(stored.manifest)
        records = list(manifest.get("provenance_records", []))
        if any({k: v for k, v in r.items() if k != "at"} == {k: v for k, v in record.items() if k != "at"}
               for r in json.loads(json.dumps(records)) if isinstance(r, dict)):
            return stored
        manifest["provenance_records"] = [*records, record]
        old = (manifest.get("extra") or {}).get("registry")
        if registry is not None and registry.get("verified") and not (old and old.get("verified")):
            manifest["extra"] = {**(manifest.get("extra") or {}), "registry": registry}
        self._write_manifest(stored, manifest)
        return self.get(h)

    def lock(self, ref: str) -> Any:
        """The inter-process lock of dataset ``ref`` (held while its files change)."""
        return self._lock(self.resolve(ref))

    def resolve(self, ref: str) -> str:
        """The full id of dataset ``ref`` (a full id or a unique prefix). Only
        entries named by a 64-hex id that are dataset folders count, so a stray
        copy (``<id>.bak``) never makes a dataset unresolvable."""
        ref = check_hex(ref, "dataset")
        root = store_subdir(self.root)
        if not root.exists():
            raise ArtifactNotFoundError(f"no dataset {ref!r}: the store has no datasets", field="dataset",
                                        fix="import one with `pfm-bench data import`")
        if len(ref) == 64:
            if (root / ref).is_dir():
                return ref
            hits = []
        else:
            hits = [p.name for p in root.iterdir() if p.name.startswith(ref) and _is_dataset_dir(p)]
        if not hits:
            raise ArtifactNotFoundError(f"no dataset {ref!r} in {root}", field="dataset",
                                        fix="see `pfm-bench data list`")
        if len(hits) > 1:
            raise ArtifactNotFoundError(f"dataset prefix {ref!r} is ambiguous: {', '.join(sorted(hits))}",
                                        field="dataset", fix="give more characters of the hash")
        return hits[0]

    def get(self, ref: str) -> StoredDataset:
        h = self.resolve(ref)
        path = self.root / h
        mpath = path / "manifest.json"
        move_away = f"move the dataset away (mv {path} {path}.bak) and import it again"
        try:
            manifest = json.loads(read_regular_file(mpath, what=f"the manifest of dataset {h[:12]}",
                                                    max_bytes=MAX_STORE_JSON_BYTES, error=ArtifactIntegrityError,
                                                    fix=move_away).decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # ValueError: JSON and UTF-8
            raise ArtifactIntegrityError(f"dataset {h[:12]} has an unreadable manifest: {exc}", file=str(mpath),
                                         field="manifest.json", fix=move_away) from exc
        if not isinstance(manifest, dict) or manifest.get("hash") != h:
            found = manifest.get("hash") if isinstance(manifest, dict) else type(manifest).__name__
            raise ArtifactIntegrityError(f"dataset directory {h[:12]} holds a manifest for {found}",
                                         file=str(mpath), field="hash", fix=move_away)
        # Manifests written before manifest_sha256 existed carry no self-hash; all new ones do.
        if "manifest_sha256" in manifest and manifest["manifest_sha256"] != manifest_digest(manifest):
            raise ArtifactIntegrityError(
                f"the manifest of dataset {h[:12]} was modified after it was stored (manifest_sha256 mismatch)",
                file=str(mpath), field="manifest_sha256",
                fix=f"never edit files in the store; {move_away}",
            )
        return StoredDataset(h, path, manifest, cache_dir=self.cache_dir)

    def list(self) -> list[StoredDataset]:
        root = store_subdir(self.root)
        if not root.exists():
            return []
        return [self.get(p.name) for p in sorted(root.iterdir())
                if _is_dataset_dir(p) and (p / "manifest.json").exists()]


def _is_dataset_dir(p: Path) -> bool:
    return bool(HEX64.match(p.name)) and p.is_dir()
