"""Operations behind ``pfm-bench data`` and ``pfm-bench splits``: run an adapter
or a generator through the registry and store the result."""

from __future__ import annotations

from typing import Any

from perturbfm.dataset import group_table
from perturbfm.errors import PerturbFMError
from perturbfm.jsonable import jsonable
from perturbfm.plugins import PluginRegistry, get_registry
from perturbfm.splits import Split
from perturbfm.store import ArtifactStore, StoredDataset


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

