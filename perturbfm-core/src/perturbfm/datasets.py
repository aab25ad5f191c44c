"""Operations behind ``pfm-bench data`` and ``pfm-bench splits``: run an adapter
or a generator through the registry and store the result."""

from __future__ import annotations

from typing import Any

from perturbfm.dataset import group_table
from perturbfm.errors import DatasetFileError, PerturbFMError
from perturbfm.fsio import check_regular_file
from perturbfm.jsonable import jsonable
from perturbfm.plugins import PluginRegistry, get_registry
from perturbfm.splits import Split
from perturbfm.store import (
    ArtifactStore,
    StoredDataset,
    canonical_columns,
    carries_synthetic_mark,
    content_hash,
    uns_mark,
)


def import_dataset(
    store: ArtifactStore,
    adapter: str,
    path: str | None,
    options: dict[str, Any],
    *,
    registry: PluginRegistry | None = None,
) -> tuple[StoredDataset, bool]:
    """Run dataset adapter ``adapter`` and store its output (idempotent)."""
    reg = registry or get_registry()
    impl = reg.create("dataset_adapter", adapter)
    result = impl.load(path, **options)
    return store.datasets.put(result, adapter=adapter, options=jsonable(options))


def repair_dataset(
    store: ArtifactStore,
    dataset: str,
    source: str | None = None,
    *,
    registry: PluginRegistry | None = None,
) -> tuple[StoredDataset, bool]:
    """Restore the missing or damaged ``data.h5ad`` of ``dataset``. Returns (dataset, repaired).

    ``source`` is a copy of the stored ``data.h5ad`` or the original source file
    (imported again with the recorded adapter and options); without it the
    recorded source path is used (none for simulated data). The restored
    content must hash to the dataset's id, so nothing else can be put in its
    place. An intact dataset is left as it is.
    """
    stored = store.datasets.get(dataset)
    with store.datasets.lock(stored.hash):
        stored = store.datasets.get(stored.hash)
        try:
            stored.verify(full=True)
            return stored, False
        except DatasetFileError:
            pass
        src = stored.manifest.get("source") or {}
        path = source if source is not None else (src.get("path") if isinstance(src, dict) else None)
        copy = _stored_copy(stored, path) if path is not None else None
        note = {"action": "pfm-bench data repair", "from": path}
        if copy is not None:
            adata, synthetic, space = copy
        else:
            reg = registry or get_registry()
            impl = reg.create("dataset_adapter", str(stored.manifest.get("adapter")))
            result = impl.load(path, **dict(stored.manifest.get("adapter_options") or {}))
            adata, space = result.adata, result.expression_space
            synthetic = bool(result.synthetic or carries_synthetic_mark(adata))
        return store.datasets.restore(stored, adata, synthetic=synthetic, expression_space=space, note=note), True


def _stored_copy(stored: StoredDataset, path: str) -> tuple[Any, bool, str] | None:
    """``path`` read as a copy of ``stored``'s canonical file, with its synthetic flag
    and expression space, when its content hashes to the id (None when it is
    another kind of file, e.g. the original source)."""
    import anndata as ad

    check_regular_file(path, what="the file passed to --from", fix="pass a copy of the stored data.h5ad or the "
                       "original source file of the dataset")
    try:
        adata = ad.read_h5ad(path)
    except Exception:  # not an h5ad: maybe a source another adapter reads
        return None
    if not all(c in adata.obs for c in canonical_columns(adata)[:4]):
        return None
    mark = uns_mark(adata)
    space = str(mark.get("expression_space", stored.manifest.get("expression_space")))
    synthetic = bool(mark["synthetic"]) if "synthetic" in mark else carries_synthetic_mark(adata)
    found = content_hash(adata, expression_space=space, synthetic=synthetic)
    return (adata, synthetic, space) if found == stored.hash else None


def create_split(
    store: ArtifactStore,
    dataset: str,
    generator: str,
    params: dict[str, Any],
    seed: int,
    *,
    registry: PluginRegistry | None = None,
) -> tuple[str, bool, Split]:
    """Generate a split of ``dataset`` with ``generator`` and store it.

    The same inputs give the same id; nothing is regenerated behind the user's
    back: an existing identical split is reported as existing.
    """
    reg = registry or get_registry()
    stored = store.datasets.get(dataset)
    gen = reg.create("split_generator", generator)
    adata = stored.load(backed=True)
    try:
        groups = {k: v for k, v in group_table(adata).items() if not v.is_control}
    finally:
        if adata.isbacked:
            adata.file.close()
    out = gen.generate(groups, params, seed)
    unknown = sorted(set(out.assignments) - set(groups))
    if unknown:
        raise PerturbFMError(f"generator {generator!r} assigned unknown groups: {', '.join(unknown[:10])}",
                             field="assignments", fix="report this to the generator's authors")
    unassigned = sorted(set(groups) - set(out.assignments))
    if unassigned:
        raise PerturbFMError(f"generator {generator!r} left {len(unassigned)} groups unassigned: "
                             f"{', '.join(unassigned[:10])}", field="assignments",
                             fix="every perturbed group must get a role")
    split = Split(
        dataset=stored.hash,
        generator=generator,
        params=jsonable(params),
        seed=seed,
        assignments=dict(out.assignments),
        ood=out.ood,
        labels=out.labels,
        notes=out.notes,
    )
    sid, created = store.splits.put(split)
    return sid, created, split

