"""The artifact store: content-addressed datasets, hash-locked splits, runs.

Layout under the store root::

    datasets/<sha256>/data.h5ad        canonical AnnData (its uns["perturbfm"] holds the
                                       synthetic flag and expression space, both hashed into the id)
    datasets/<sha256>/manifest.json    hash, source, licence, synthetic flag ...
    splits/<sha256>.json               canonical split content (id = its hash)
    runs/<run id>/                     one directory per run
    locks/                             inter-process locks (read-modify-write of manifests)
    cache/verified/<sha256>.json       when a data.h5ad's content was last rehashed (a cache)

A dataset's id is never taken on trust: the content hash is recomputed from
``data.h5ad`` on ``data verify`` and on the first load after the file changed
(stat and file digest cached under ``cache/verified``), so rewriting the data
and its recorded digests makes every load refuse it. A missing or damaged file
is restored by ``pfm-bench data repair ID`` or by importing the same content
again.

The root comes from ``--store``, then ``$PFM_HOME``, then
``$XDG_DATA_HOME/perturbfm`` (``~/.local/share/perturbfm``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from perturbfm.dataset_store import (  # noqa: F401 (re-exported: the store's public names)
    _VERIFIED,
    UNS_KEY,
    DatasetStore,
    StoredDataset,
    canonical_columns,
    carries_synthetic_mark,
    content_hash,
    uns_mark,
    write_dataset_h5ad,
)
from perturbfm.errors import ArtifactNotFoundError, PerturbFMError, SplitIntegrityError
from perturbfm.fsio import atomic_write_bytes, read_regular_file
from perturbfm.hashing import canonical_json, sha256_bytes, sha256_json
from perturbfm.splits import Split
from perturbfm.store_layout import (  # noqa: F401 (re-exported)
    HEX64,
    HOME_ENV,
    MAX_STORE_JSON_BYTES,
    check_hex,
    manifest_digest,
    resolve_store_root,
    store_subdir,
    utc_now,
)

_RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}_[0-9a-f]{7}_[A-Za-z0-9._-]+_[0-9a-f]{7}(_[0-9]+)?$")


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
        path = store_subdir(self.root) / f"{sid}.json"
        if os.path.lexists(path):
            if self._read(path, sid) != data:
                raise SplitIntegrityError(
                    f"split {sid[:12]} already exists with different content; splits are immutable",
                    file=str(path),
                    field="content",
                    fix=f"never edit stored splits; if you know why it changed, move it away (mv {path} "
                        f"{path}.bak) and store the split again",
                )
            return sid, False
        atomic_write_bytes(path, data)
        return sid, True

    @staticmethod
    def _read(path: Path, sid: str) -> bytes:
        return read_regular_file(path, what=f"split {sid[:12]}", max_bytes=MAX_STORE_JSON_BYTES,
                                 error=SplitIntegrityError, fix=_damaged_split_fix(path))

    def resolve(self, ref: str) -> str:
        """The full id of split ``ref``; only ``<64-hex id>.json`` entries count."""
        ref = check_hex(ref, "split")
        root = store_subdir(self.root)
        if not root.exists():
            hits: list[str] = []
        elif len(ref) == 64:
            hits = [ref] if os.path.lexists(root / f"{ref}.json") else []
        else:
            hits = sorted(p.stem for p in root.glob(f"{ref}*.json") if HEX64.match(p.stem))
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
        raw = self._read(path, sid)
        try:
            content = json.loads(raw.decode("utf-8"))
            split = Split.from_content(content)
        except (ValueError, KeyError, TypeError, RecursionError, SplitIntegrityError) as exc:  # ValueError: JSON, UTF-8
            why = exc.message if isinstance(exc, PerturbFMError) else f"{type(exc).__name__}: {exc}"
            raise SplitIntegrityError(f"split {sid[:12]} is unreadable: {why}", file=str(path),
                                      field=getattr(exc, "field", None) or "content",
                                      fix=_damaged_split_fix(path)) from exc
        if sha256_bytes(raw) != sid or split.id != sid:
            raise SplitIntegrityError(
                f"split {sid[:12]} does not match its hash: its content was changed after it was stored",
                file=str(path),
                field="content",
                fix=_damaged_split_fix(path),
            )
        return split

    def list(self) -> list[tuple[str, Split]]:
        root = store_subdir(self.root)
        if not root.exists():
            return []
        return [(p.stem, self.get(p.stem)) for p in sorted(root.glob("*.json")) if HEX64.match(p.stem)]


def _damaged_split_fix(path: Path) -> str:
    return (f"never edit stored splits: move the file away (mv {path} {path}.bak), then recreate the split with "
            "`pfm-bench splits create` or `pfm-bench splits import` (same options give the same id)")


class ArtifactStore:
    """The store root and its three kinds of artifact."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_store_root(root)
        self.datasets = DatasetStore(self.root)
        self.splits = SplitStore(self.root)

    @property
    def runs_dir(self) -> Path:
        """``<root>/runs`` (a file in its place is a clean error)."""
        return store_subdir(self.root / "runs")

    def run_dir(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id):
            raise ArtifactNotFoundError(f"{run_id!r} is not a run id", field="run",
                                        fix="run ids look like 20260101-120000_abcdef1_model_1234abc")
        return self.runs_dir / run_id


def config_hash(config: dict[str, Any]) -> str:
    return sha256_json(config)
