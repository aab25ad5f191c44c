"""CLI commands this plugin adds (merged into the core's ``data`` and ``splits`` groups):

``pfm-bench data fetch NAME`` / ``data verify`` / ``data registry``, and
``pfm-bench splits import`` / ``splits create-family`` / ``splits families``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
from perturbfm.dataset import group_table
from perturbfm.errors import ConfigError, PerturbFMError
from perturbfm.hashing import sha256_json
from perturbfm.splits import Split
from perturbfm.store import ArtifactStore


def _store(ctx: click.Context) -> ArtifactStore:
    return ArtifactStore((ctx.obj or {}).get("store"))


def _kv(items: Sequence[str], flag: str) -> dict[str, Any]:
    from perturbfm.options import parse_key_values

    return parse_key_values(items, option=flag, example="name=value")


# ----------------------------------------------------------------------------- data
@click.group("data")
def data_group() -> None:
    """Registry datasets: fetch and verify."""


@data_group.command("fetch")
@click.argument("name")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Download folder (default: <store>/downloads).")
@click.option("--sha256", default=None, help="Expected SHA-256 of the download (where the registry has none).")
@click.option("--allow-unverified", is_flag=True, help="Import without a known digest, recorded as unverified.")
@click.option("--base-url", default=None, help="Fetch from this mirror: <base-url>/<entry's mirror path>.")
@click.option("--opt", "opts", multiple=True, help="Override an adapter option key=value.")
@click.pass_context
def data_fetch(ctx: click.Context, name: str, dest: str | None, sha256: str | None, allow_unverified: bool,
               base_url: str | None, opts: Sequence[str]) -> None:
    """Download a registry dataset (resumable), verify its SHA-256, import it; print its hash."""
    from perturbfm_bench_adapters.fetch import fetch

    store = _store(ctx)
    res = fetch(store, name, dest=dest or store.root / "downloads", sha256=sha256,
                allow_unverified=allow_unverified, base_url=base_url, options=_kv(opts, "--opt"))
    r = res.registry
    click.echo(f"{'imported' if res.created else 'already in the store'}: {name} "
               f"({r['verdict']}; sha256 {r['found_sha256'][:16]}"
               + (f"; resumed at byte {res.resumed_from}" if res.resumed_from else "") + ")", err=True)
    if not r["verified"]:
        click.echo("WARNING: no known digest: the data are recorded as UNVERIFIED", err=True)
    click.echo(res.dataset.hash)


@data_group.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def data_verify(ctx: click.Context, as_json: bool) -> None:
    """Provenance and checksum verdict of every stored dataset; exit 1 on a MISMATCH."""
    from perturbfm_bench_adapters.fetch import verify_rows

    rows = verify_rows(_store(ctx))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['dataset'][:12]}  {r['verdict']:<16} {r['registry'] or '-':<28} "
                       f"expected {str(r['expected_sha256'] or '-')[:12]:<12} found {str(r['found_sha256'])[:12]}  "
                       f"{r['citation'] or '-'}" + (f" doi:{r['doi']}" if r["doi"] else ""))
    for r in rows:
        if r["problem"]:
            click.echo(f"{r['dataset']}: {r['problem']}\n  fix: {r['fix']}", err=True)
    if any(r["verdict"] in ("MISMATCH", "MISSING") for r in rows):
        ctx.exit(1)


@data_group.command("repair")
@click.argument("dataset")
@click.option("--from", "source", default=None,
              help="A copy of the stored data.h5ad, or the original source file (default: the recorded source).")
@click.pass_context
def data_repair(ctx: click.Context, dataset: str, source: str | None) -> None:
    """Restore a dataset's missing or damaged data.h5ad (the content must hash to its id); print its hash."""
    from perturbfm.datasets import repair_dataset

    stored, repaired = repair_dataset(_store(ctx), dataset, source)
    click.echo(f"{'repaired' if repaired else 'intact (nothing to repair)'}: dataset {stored.hash[:12]}", err=True)
    click.echo(stored.hash)


@data_group.command("registry")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def data_registry(as_json: bool) -> None:
    """List the datasets ``data fetch`` knows, with URL provenance and digest."""
    from perturbfm_bench_adapters.registry import REGISTRY

    if as_json:
        click.echo(json.dumps([e.to_dict() for e in REGISTRY.values()], indent=2))
        return
    for e in REGISTRY.values():
        click.echo(f"{e.name:<30} sha256 {'known' if e.sha256 else 'UNKNOWN':<8} {e.adapter:<12} {e.url}")


# ----------------------------------------------------------------------------- splits
@click.group("splits")
def splits_group() -> None:
    """Official split import and split families."""


@splits_group.command("import")
@click.option("--dataset", required=True, help="Dataset hash (or unique prefix).")
@click.option("--format", "fmt", required=True, type=click.Choice(["perturbench-csv", "gears-pickle", "obs-column"]))
@click.argument("ref")
@click.option("--seed-name", default=None, help="Name of the official split (e.g. its seed), kept in params.")
@click.option("--subgroup", type=click.Path(dir_okay=False, exists=True), default=None,
              help="GEARS *_subgroup.pkl: test subgroup labels (gears-pickle only).")
@click.pass_context
def splits_import(ctx: click.Context, dataset: str, fmt: str, ref: str, seed_name: str | None,
                  subgroup: str | None) -> None:
    """Import an official split (file PATH, or obs COLUMN for obs-column); print its id."""
    from perturbfm_bench_adapters.official_splits import import_split

    if subgroup and fmt != "gears-pickle":
        raise ConfigError("--subgroup applies to gears-pickle only", field="subgroup", fix="drop --subgroup")
    store = _store(ctx)
    split = import_split(store.datasets.get(dataset), fmt, ref, seed_name=seed_name, subgroup=subgroup)
    sid, created = store.splits.put(split)
    c = split.counts()
    click.echo(f"{'created' if created else 'exists (identical content)'}: "
               + ", ".join(f"{k} {v}" for k, v in c.items() if v) + " groups", err=True)
    click.echo(sid)


def create_family(store: ArtifactStore, dataset: str, generator: str, params: dict[str, Any],
                  seed: int) -> tuple[str, list[tuple[str, bool, Split]]]:
    """Generate and store every fold of ``generator`` with one ``family`` id.

    The family id is the SHA-256 of (dataset, generator, shared params, seed), so
    the same request names the same family on any machine.
    """
    from perturbfm.jsonable import jsonable
    from perturbfm.plugins import get_registry

    stored = store.datasets.get(dataset)
    gen = get_registry().create("split_generator", generator)
    if not hasattr(gen, "family_members"):
        raise ConfigError(f"generator {generator!r} has no folds", field="generator",
                          fix="use a generator with folds: loco, or perturbation-ood with n_folds")
    adata = stored.load(backed=True)
    try:
        groups = {k: v for k, v in group_table(adata).items() if not v.is_control}
    finally:
        if adata.isbacked:
            adata.file.close()
    members = gen.family_members(groups, params)
    family = sha256_json({"dataset": stored.hash, "generator": generator, "params": jsonable(params),
                          "seed": seed, "n": len(members)})[:16]
    out = []
    for p in members:
        res = gen.generate(groups, p, seed)
        if set(res.assignments) != set(groups):
            raise PerturbFMError(f"generator {generator!r} did not assign exactly the dataset's groups",
                                 field="assignments", fix="report this to the generator's authors")
        split = Split(dataset=stored.hash, generator=generator, params=jsonable(p), seed=seed,
                      assignments=dict(res.assignments), ood=res.ood, labels=res.labels, notes=res.notes,
                      family=family)
        sid, created = store.splits.put(split)
        out.append((sid, created, split))
    return family, out


@splits_group.command("create-family")
@click.option("--dataset", required=True, help="Dataset hash (or unique prefix).")
@click.option("--generator", required=True, help="A generator with folds (loco; perturbation-ood with n_folds).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--param", "params", multiple=True, help="Generator parameter key=value shared by all folds.")
@click.pass_context
def splits_create_family(ctx: click.Context, dataset: str, generator: str, seed: int,
                         params: Sequence[str]) -> None:
    """Create every fold (e.g. all k leave-one-context-out folds) under one family id;
    print the family id, then one split id per fold."""
    family, out = create_family(_store(ctx), dataset, generator, _kv(params, "--param"), seed)
    click.echo(f"family {family}: {len(out)} folds", err=True)
    click.echo(family)
    for sid, created, split in out:
        click.echo(f"{sid}  {json.dumps(split.params)}  {'created' if created else 'exists'}")


@splits_group.command("families")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def splits_families(ctx: click.Context, as_json: bool) -> None:
    """List split families with their folds."""
    fams: dict[str, list[dict[str, Any]]] = {}
    for sid, s in _store(ctx).splits.list():
        if s.family:
            fams.setdefault(s.family, []).append({"id": sid, "dataset": s.dataset, "generator": s.generator,
                                                  "params": s.params, "counts": s.counts()})
    if as_json:
        click.echo(json.dumps(fams, indent=2))
        return
    for fam, members in sorted(fams.items()):
        click.echo(f"family {fam}  {members[0]['generator']}  dataset {members[0]['dataset'][:12]}  "
                   f"{len(members)} folds")
        for m in members:
            click.echo(f"  {m['id'][:12]}  {json.dumps(m['params'])}  test {m['counts']['test']}")
