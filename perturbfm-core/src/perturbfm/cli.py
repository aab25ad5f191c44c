"""The ``pfm-bench`` command line: thin wrappers over :mod:`perturbfm.api`.

Conventions: results go to stdout (an id or a path, or JSON with ``--json``);
tables, progress and notes go to stderr; text that comes from users, data or
plugins is escaped before Rich prints it (``[red]`` stays ``[red]``).

Length: one module holds every core command so that `--help` and the registry-driven
help epilogues stay in one place; each command is a few lines over :mod:`perturbfm.api`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.table import Table

from perturbfm import __version__
from perturbfm.console import EXIT_RUN_FAILED, EXIT_USER_ERROR, console, err_console, escape, progress_reporter
from perturbfm.errors import PanelIncompleteError, PerturbFMError, PluginError
from perturbfm.plugins import get_registry
from perturbfm.store import ArtifactStore


def _store(ctx: click.Context) -> ArtifactStore:
    return ArtifactStore(ctx.obj["store"])


def _parse_kv(items: Sequence[str], flag: str) -> dict[str, Any]:
    from perturbfm.options import parse_key_values

    return parse_key_values(items, option=flag, example="name=value")


def _echo_json(data: Any) -> None:
    from perturbfm.jsonable import jsonable

    click.echo(json.dumps(jsonable(data), indent=2, allow_nan=False))


def _frame_records(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records (full precision; missing values as null)."""
    from perturbfm.api import frame_records

    return frame_records(frame)


def _plain(value: Any) -> str:
    """A table cell from user/data/plugin text, with Rich markup escaped."""
    return escape(str(value))


class _ListsInstalled(click.Command):
    """A command whose ``--help`` ends with the installed names of some plugin kinds
    (read from the registry when help is shown; nothing is hard-coded)."""

    def __init__(self, *args: Any, kinds: Sequence[tuple[str, str]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kinds = tuple(kinds)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        try:
            reg = get_registry()
            rows = [(label, ", ".join(reg.names(kind)) or "none installed") for kind, label in self.kinds]
        except Exception as exc:  # help must print even when the registry cannot load
            rows = [("installed plugins", f"unavailable ({type(exc).__name__}: {exc})")]
        if rows:
            with formatter.section("Installed"):
                formatter.write_dl(rows)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", type=click.Path(file_okay=False), default=None, envvar=None,
              help="Artifact store root (default: $PFM_HOME, else ~/.local/share/perturbfm).")
@click.version_option(__version__, prog_name="pfm-bench")
@click.pass_context
def cli(ctx: click.Context, store: str | None) -> None:
    """PerturbFM: reproducible benchmarks of single-cell perturbation-response models."""
    ctx.ensure_object(dict)
    ctx.obj["store"] = store


# ----------------------------------------------------------------------------- plugins
@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--hook", "hook", default=None, metavar="NAME",
              help="Show which plugins implement hook NAME and what each returned or registered.")
@click.option("--options", "options_of", default=None, metavar="NAME",
              help="Show the options of one plugin (name, type, default, constraint, description); "
                   "KIND:NAME when several kinds share the name.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool, hook: str | None, options_of: str | None) -> None:
    """List installed plugins, what they register, and load errors."""
    if ctx.invoked_subcommand is not None:
        return
    reg = get_registry()
    if hook is not None:
        _show_hook(reg, hook, as_json)
        return
    if options_of is not None:
        _show_plugin_options(reg, options_of, as_json)
        return
    from perturbfm.envs.manage import environment_status

    rows = [p.to_dict() for p in reg.plugins]
    envs = environment_status(reg, ctx.obj["store"])
    for p in rows:  # each model's own environment (absent: the model runs in-process)
        p["environments"] = {m: envs[m] for m in p["registers"].get("model", []) if m in envs}
    conflicts = [{"kind": k, "name": n, "distributions": d} for (k, n), d in reg.conflicts().items()]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "conflicts": conflicts}, indent=2))
        return
    t = Table(title="PerturbFM plugins (entry-point group 'perturbfm')")
    for col in ("distribution", "version", "entry point", "registers", "environment", "status"):
        t.add_column(col)
    for p in rows:
        regs = "\n".join(f"{k}: {', '.join(v)}" for k, v in p["registers"].items()) or "-"
        status = (f"[red]{escape(p['error'])}[/red]" + (f"\nfix: {escape(p['fix'])}" if p["fix"] else "")
                  if p["error"] else "[green]ok[/green]")
        env_col = "\n".join(f"{m}: {e['environment']} {e['spec_hash'][:12]} "
                             + ("built" if e["built"] else "not built (built on first run)")
                             for m, e in p["environments"].items()) or "-"
        t.add_row(escape(p["distribution"]), escape(p["version"]), escape(p["entry_point"]), escape(regs),
                  escape(env_col), status)
    console.print(t)
    for c in conflicts:
        console.print(f"[red]conflict:[/red] {c['kind']} {escape(repr(c['name']))} registered by "
                      f"{escape(', '.join(c['distributions']))}; only one of them can be installed")


def _show_hook(reg: Any, hook: str, as_json: bool) -> None:
    """``plugins --hook NAME``: implementations of one hook and what each gave. Registration
    hooks show what was recorded at load; commands are collected on a scratch group;
    observer hooks are listed, never called."""
    impls = reg.hook_impls(hook)
    recorded = {r["plugin"]: r for r in reg.registrations.get(hook, [])}
    rows = []
    for impl in impls:
        row = recorded.get(impl.plugin_name)
        if row is None:
            row = {"hook": hook, "plugin": impl.plugin_name, "returned": [], "registered": [], "problems": []}
            info = reg._info_for(impl.plugin_name)
            row.update(distribution=info.distribution, version=info.version)
            if hook == "pfm_register_commands":
                probe = click.Group()
                call = reg.call_impl(impl, hook, {"cli": probe})
                row.update(call.to_dict())
                row["registered"] = sorted(probe.commands)
                if call.failure is not None:
                    row["problems"].append(call.failure.describe())
            else:
                row["note"] = "observer: not called here"
        rows.append(row)
    if as_json:
        click.echo(json.dumps({"hook": hook, "implementations": rows}, indent=2))
        return
    if not rows:
        console.print(f"no installed plugin implements {hook}")
        return
    t = Table(title=f"implementations of {hook}")
    for col in ("distribution", "version", "plugin", "returned / registered", "problems"):
        t.add_column(col)
    for r in rows:
        got = ", ".join(r.get("registered") or []) or r.get("note", "-")
        t.add_row(escape(r["distribution"]), escape(r["version"]), escape(r["plugin"]), escape(got),
                  "[red]" + escape("; ".join(r["problems"])) + "[/red]" if r["problems"] else "-")
    console.print(t)


def _show_plugin_options(reg: Any, spec: str, as_json: bool) -> None:
    from rich.markup import escape

    from perturbfm.interfaces import PLUGIN_KINDS
    from perturbfm.options import plugin_options, render_options_table

    kind, _, name = spec.rpartition(":")
    kinds = [kind] if kind else [k for k in PLUGIN_KINDS if name in reg.names(k)]
    if kind and kind not in PLUGIN_KINDS:
        raise PerturbFMError(f"--options {spec}: unknown plugin kind {kind!r}", field="--options",
                             fix=f"use one of {', '.join(PLUGIN_KINDS)}, e.g. --options model:{name}")
    if not kinds or (kind and name not in reg.names(kind)):
        listing = "; ".join(f"{k}: {', '.join(reg.names(k))}" for k in PLUGIN_KINDS if reg.names(k))
        raise PerturbFMError(f"--options {spec}: no plugin named {name!r}", field="--options",
                             fix=f"use a registered name ({listing})")
    if len(kinds) > 1:
        raise PerturbFMError(f"--options {name}: several kinds register {name!r} ({', '.join(kinds)})",
                             field="--options", fix="say which: " + " or ".join(f"--options {k}:{name}" for k in kinds))
    info = plugin_options(reg.get(kinds[0], name).cls, kinds[0])
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    console.print(escape(f"{info['kind']} {info['name']} ({info['class']})"
                         + ("" if info["typed"] else ": no typed config declared")))
    console.print(escape(render_options_table(info["options"]) if info["options"] else "(no options)"),
                  soft_wrap=True)


# ----------------------------------------------------------------------------- envs
@cli.group()
def envs() -> None:
    """Model environments: models that run in their own Python environment (built with uv under <store>/envs)."""


@envs.command("list")
@click.option("--sizes", is_flag=True, help="Also measure each environment's size on disk (slower).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (full hashes).")
@click.pass_context
def envs_list(ctx: click.Context, sizes: bool, as_json: bool) -> None:
    """Every installed model's environment (built or not) and every environment folder on disk."""
    from perturbfm.envs.manage import environment_rows

    rows = environment_rows(get_registry(), ctx.obj["store"], sizes=sizes)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        err_console.print("no model environments (no installed model declares one, and none is on disk)")
        return
    t = Table(title="model environments")
    for col in ("hash", "name", "models", "status", "python", "packages", "built at", *(["MB"] if sizes else [])):
        t.add_column(col)
    for r in rows:
        pk = r.get("packages")
        t.add_row(r["spec_hash"][:12], escape(str(r.get("name") or "-")), escape(", ".join(r["models"]) or "-"),
                  escape(r["status"]), escape(str(r.get("python") or "-")), str(pk) if pk is not None else "-",
                  escape(str(r.get("built_at") or "-")),
                  *([f"{r.get('bytes', 0) / 1e6:.1f}"] if sizes else []))
    console.print(t)


@envs.command("build")
@click.argument("models", nargs=-1)
@click.option("--force", is_flag=True, help="Rebuild even when built (replaces it atomically).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def envs_build(ctx: click.Context, models: Sequence[str], force: bool, as_json: bool) -> None:
    """Build the environments of MODELS (default: every installed model that declares one)."""
    from perturbfm.envs.manage import build_model_environments

    out = build_model_environments(get_registry(), list(models), store=ctx.obj["store"], force=force,
                                   say=lambda msg: err_console.print(escape(msg), soft_wrap=True))
    if as_json:
        _echo_json(out)
        return
    for r in out:
        how = "reused (already built)" if r["reused"] else f"built in {r['build_seconds']:.1f} s"
        err_console.print(escape(f"{r['model']}: environment {r['name']} {r['spec_hash'][:12]} {how}, "
                                 f"{len(r['packages'])} packages"))
        click.echo(r["path"])


@envs.command("remove")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def envs_remove(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Remove an environment: REF is a model name, a hash (prefix) or 'incomplete' (every killed build)."""
    from perturbfm.envs.manage import remove_environments

    removed = remove_environments(get_registry(), ref, store=ctx.obj["store"])
    if as_json:
        _echo_json({"removed": removed})
        return
    for h in removed:
        click.echo(h)
    if not removed:
        err_console.print("nothing to remove")


# ----------------------------------------------------------------------------- data
@cli.group()
def data() -> None:
    """Import, list and inspect datasets."""


@data.command("import", cls=_ListsInstalled, kinds=[("dataset_adapter", "adapters")])
@click.argument("path", required=False, type=click.Path())
@click.option("--adapter", default=None, help="Dataset adapter name (default: the import adapter of defaults.yaml).")
@click.option("--perturbation-key", default=None, help="obs column holding the perturbation label.")
@click.option("--control", default=None, help="Label of control cells.")
@click.option("--combo-delimiter", default=None, help="Delimiter joining the genes of a combination.")
@click.option("--context-key", "context_keys", multiple=True, help="obs column(s) defining the context.")
@click.option("--covariate-key", "covariate_keys", multiple=True, help="obs column(s) of covariates.")
@click.option("--layer", default=None, help="Layer holding the expression values (default: X).")
@click.option("--expression", type=click.Choice(["auto", "counts", "log1p"]), default=None,
              help="X holds raw counts (normalised + log1p at import) or log1p values.")
@click.option("--perturbation-kind", type=click.Choice(["genetic", "chemical", "other"], case_sensitive=False),
              default=None, help="Kind of every perturbation: genetic (gene sets; the default of most adapters), "
              "chemical (drugs, compounds) or other (stimuli). Hashed into the dataset id.")
@click.option("--perturbation-kind-key", default=None,
              help="obs column holding each cell's perturbation kind (genetic / chemical / other).")
@click.option("--gene-symbol-key", default=None,
              help="var column of gene symbols (var names stay the gene ids); graphs and GO are keyed by symbol.")
@click.option("--opt", "opts", multiple=True, help="Extra adapter option key=value.")
@click.option("--json", "as_json", is_flag=True, help="Print the dataset (id and manifest) as JSON.")
@click.pass_context
def data_import(ctx: click.Context, path: str | None, adapter: str | None, opts: Sequence[str], as_json: bool,
                **named: Any) -> None:
    """Import a dataset into the store and print its content hash."""
    from perturbfm.api import import_data

    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in named.items() if v not in (None, ())}
    options.update(_parse_kv(opts, "--opt"))
    ds = import_data(path, adapter=adapter, store=_store(ctx), **options)
    m = ds.manifest
    err_console.print(
        escape(f"{'imported' if ds.created else 'already in the store'}: {m['n_obs']} cells x {m['n_vars']} genes, "
               f"{m['n_groups']} groups, contexts {', '.join(m['contexts'])}")
        + (" [bold red](SYNTHETIC)[/bold red]" if m.get("synthetic") else "")
    )
    if m.get("perturbed_genes_not_measured"):  # genetic perturbations only: a drug is not a gene
        nm = m["perturbed_genes_not_measured"]
        err_console.print(f"{len(nm)} of {len(m['perturbed_genes'])} perturbed genes (genetic perturbations) are "
                          "not measured" + (" (if these perturbations are drugs or stimuli, not genes, import with "
                                            "--perturbation-kind chemical or other)"
                                            if len(nm) == len(m["perturbed_genes"]) else ""))
    other = {k: v for k, v in (m.get("groups_by_perturbation_kind") or {}).items() if k != "genetic" and v}
    if other:
        err_console.print(escape("perturbation kinds: " + ", ".join(f"{v} {k} group(s)" for k, v in other.items())
                                 + " (not genes: no gene graph or 'unmeasured gene' applies to them)"))
    hint = next((p for p in m.get("processing") or [] if "Ensembl gene ids" in str(p)), None)
    if hint:
        err_console.print(escape(str(hint)))
    if as_json:
        _echo_json({"id": ds.id, "created": ds.created, "manifest": m})
    else:
        click.echo(ds.id)


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (full ids).")
@click.pass_context
def data_list(ctx: click.Context, as_json: bool) -> None:
    """List datasets in the store."""
    from perturbfm.api import list_datasets

    frame = list_datasets(store=_store(ctx))
    if as_json:
        _echo_json(_frame_records(frame))
        return
    _print_frame(frame, {"id": "hash", "n_obs": "cells", "n_vars": "genes", "n_groups": "groups"})


@data.command("show")
@click.argument("dataset")
@click.pass_context
def data_show(ctx: click.Context, dataset: str) -> None:
    """Print a dataset's manifest (JSON)."""
    click.echo(json.dumps(_store(ctx).datasets.get(dataset).manifest, indent=2))


def _print_frame(frame: Any, rename: dict[str, str] | None = None, *, title: str | None = None) -> None:
    """A frame as a Rich table on a terminal (ids never truncated: they fold), else as
    tab-separated lines with full values (for pipes, files and narrow consoles)."""
    rename = rename or {}
    headers = [rename.get(c, c) for c in frame.columns]
    rows = [["" if v is None or v != v else str(v) for v in row] for row in frame.itertuples(index=False)]
    if not console.is_terminal:
        click.echo("\t".join(headers))
        for row in rows:
            click.echo("\t".join(v.replace("\t", " ").replace("\n", " ") for v in row))
        return
    t = Table(title=title)
    for h in headers:
        t.add_column(h, overflow="fold", no_wrap=False)
    for row in rows:
        t.add_row(*[_plain(v) for v in row])
    console.print(t)


# ----------------------------------------------------------------------------- splits
@cli.group()
def splits() -> None:
    """Create, list and inspect hash-locked splits."""


@splits.command("create", cls=_ListsInstalled, kinds=[("split_generator", "generators")])
@click.option("--dataset", required=True, help="Dataset hash (or unique prefix).")
@click.option("--generator", required=True, help="Split generator name (installed ones are listed below).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--param", "params", multiple=True,
              help="Generator parameter key=value (repeatable), e.g. --param test_fraction=0.2; see "
              "`pfm-bench plugins` for each generator's parameters.")
@click.option("--test", "test", default=None, help="Shorthand for --param test=... (comma-separated group ids).")
@click.option("--val", "val", default=None, help="Shorthand for --param val=... (comma-separated group ids).")
@click.option("--context", default=None, help="Shorthand for --param context=...")
@click.option("--test-fraction", type=float, default=None, help="Shorthand for --param test_fraction=...")
@click.option("--val-fraction", type=float, default=None, help="Shorthand for --param val_fraction=...")
@click.option("--json", "as_json", is_flag=True, help="Print the split id, counts and parameters as JSON.")
@click.pass_context
def splits_create(ctx: click.Context, dataset: str, generator: str, seed: int, params: Sequence[str],
                  as_json: bool, **named: Any) -> None:
    """Generate a split, store it immutably, and print its id."""
    from perturbfm.datasets import create_split

    p = {k: v for k, v in named.items() if v is not None}
    given = _parse_kv(params, "--param")
    clash = sorted(k for k in given if k in p and given[k] != p[k])
    if clash:
        raise PerturbFMError(f"--param {clash[0]} contradicts --{clash[0].replace('_', '-')}", field="--param",
                             fix=f"give {clash[0]} once")
    p.update(given)
    sid, created, split = create_split(_store(ctx), dataset, generator, p, seed)
    c = split.counts()
    err_console.print(escape(f"{'created' if created else 'exists (identical content)'}: "
                             + ", ".join(f"{k} {v}" for k, v in c.items() if v) + " groups"))
    if as_json:
        _echo_json({"id": sid, "created": created, "counts": c, "generator": generator, "params": split.params,
                    "seed": seed, "dataset": split.dataset})
    else:
        click.echo(sid)


@splits.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def splits_list(ctx: click.Context, as_json: bool) -> None:
    """List stored splits (full ids; tab-separated when stdout is not a terminal)."""
    from perturbfm.api import list_splits

    frame = list_splits(store=_store(ctx))
    if as_json:
        _echo_json(_frame_records(frame))
        return
    _print_frame(frame, {"calibration": "calib"})


@splits.command("show")
@click.argument("split")
@click.pass_context
def splits_show(ctx: click.Context, split: str) -> None:
    """Print a split (verified against its hash) as JSON."""
    s = _store(ctx).splits.get(split)
    click.echo(json.dumps({"id": s.id, **s.content()}, indent=2))


# ----------------------------------------------------------------------------- run
@cli.command("run", cls=_ListsInstalled, kinds=[("model", "models"), ("metric_panel", "panels")])
@click.option("--model", required=True, help="Model name (installed ones are listed below).")
@click.option("--split", "split", required=True, help="Split id (or unique prefix).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML config file.")
@click.option("--set", "sets", multiple=True, help="Override a parameter: section.key=value.")
@click.option("--ensemble", type=int, default=None, help="Train K members (same as --set run.ensemble=K).")
@click.option("--conformal", is_flag=True, help="Split-conformal intervals on the split's calibration groups.")
@click.option("--mondrian", is_flag=True, help="Conformal calibration per context (implies --conformal).")
@click.option("--quiet", "--print-path", "quiet", is_flag=True,
              help="Print only the run directory on stdout (no table, no progress).")
@click.option("--json", "as_json", is_flag=True, help="Print the run (id, directory, status, metrics rows) as JSON.")
@click.pass_context
def run_cmd(ctx: click.Context, model: str, split: str, config_file: str | None, sets: Sequence[str],
            ensemble: int | None, conformal: bool, mondrian: bool, quiet: bool, as_json: bool) -> None:
    """Fit, predict, evaluate and write a run directory; its path goes to stdout."""
    from perturbfm.run import execute_run

    sets = list(sets)
    if ensemble is not None:
        sets.append(f"run.ensemble={ensemble}")
    if conformal or mondrian:
        sets.append("run.conformal=true")
    if mondrian:
        sets.append("run.conformal_mondrian=true")
    with progress_reporter(model, enabled=False if quiet else None) as say:
        result = execute_run(_store(ctx), model=model, split=split, config_file=config_file, sets=sets,
                             progress=say)
    _print_run_result(result, quiet=quiet, as_json=as_json)
    if result.status != "succeeded":
        ctx.exit(EXIT_RUN_FAILED)


def metrics_table(m: dict[str, Any]) -> Table:
    """Raw and calibrated global values beside the references, one row per metric."""
    from perturbfm.references import fmt, metric_rows

    t = Table(title=escape(f"{m['model']} on split {m['split'][:7]} ({m['n_groups']} held-out groups); "
                           "calibrated = (raw - baseline) / (replicate - baseline): 0 baseline, 1 replicate"))
    for col in ("panel", "metric", "raw", "calibrated", "baseline", "replicate", "indep. ctrl", "train mean",
                "unresolv."):
        t.add_column(col, justify="left" if col in ("panel", "metric") else "right")
    for r in metric_rows(m):
        if r["raw"] is None:
            t.add_row(_plain(r["panel"]), _plain(r["metric"]), "n/a", "", "", "", "", "", "", style="dim")
            continue
        arrow = {True: " ↑", False: " ↓"}.get(r["higher_is_better"], "")
        t.add_row(_plain(r["panel"]), _plain(r["metric"]) + arrow, fmt(r["raw"]), fmt(r["calibrated"], 3),
                  fmt(r["baseline"]), fmt(r["replicate"]), fmt(r["indep_ctrl"]), fmt(r["train_mean"]),
                  "" if r["n_unresolvable"] is None else str(r["n_unresolvable"]))
    return t


def _run_json(result: Any) -> dict[str, Any]:
    from perturbfm.api import metrics_frame

    out: dict[str, Any] = {"run_id": result.run_id, "run_dir": str(result.run_dir), "status": result.status}
    if result.metrics is not None:
        out["synthetic"] = bool(result.metrics.get("synthetic"))
        out["metrics"] = _frame_records(metrics_frame(result.metrics))
    if result.error is not None:
        out["error"] = result.error.render()
    return out


def _print_run_result(result: Any, *, quiet: bool = False, as_json: bool = False) -> None:
    if result.status == "succeeded":
        m = result.metrics
        if not quiet:
            if m.get("synthetic"):
                err_console.print("[bold red]SYNTHETIC DATA[/bold red]: results come from simulated data")
            err_console.print(metrics_table(m))
            sel = m.get("panel_selection", {}).get("selection", "")
            if sel.startswith("narrower"):
                err_console.print(escape(f"note: {sel}; the standard panels are: run.panels=standard"))
        if as_json:
            _echo_json(_run_json(result))
        else:
            click.echo(str(result.run_dir))
        return
    err = result.error
    if isinstance(err, PanelIncompleteError):
        err_console.print("[red]metric panels are incomplete: metrics.json was NOT written[/red]", soft_wrap=True)
        t = Table()
        for col in ("panel", "key", "problem"):
            t.add_column(col)
        for row in err.problems:
            t.add_row(*[_plain(c) for c in row])
        err_console.print(t)
    elif err is not None:
        err_console.print(f"[red]run failed:[/red] {escape(err.render())}", soft_wrap=True)
    err_console.print(f"run directory (status: failed): {escape(str(result.run_dir))}")
    if as_json:
        _echo_json(_run_json(result))


# ----------------------------------------------------------------------------- runs
@cli.group()
def runs() -> None:
    """List runs, show one, regenerate its report."""


@runs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def runs_list(ctx: click.Context, as_json: bool) -> None:
    """Every run directory of the store, newest first."""
    from perturbfm.api import list_runs

    frame = list_runs(store=_store(ctx))
    if as_json:
        _echo_json(_frame_records(frame))
        return
    _print_frame(frame.drop(columns=["run_dir"]))


@runs.command("show")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (summary and metrics rows).")
@click.pass_context
def runs_show(ctx: click.Context, run: str, as_json: bool) -> None:
    """A run's summary and metrics table (RUN: run id or directory)."""
    from perturbfm.api import load_run

    r = load_run(run, store=_store(ctx))
    info = r.info()
    metrics = r.metrics_json if info["has_metrics"] else None
    if as_json:
        from perturbfm.api import metrics_frame

        _echo_json({**info, "report": str(r.report_path) if r.report_path.exists() else None,
                    "metrics": _frame_records(metrics_frame(metrics)) if metrics is not None else None})
        return
    for key, value in info.items():
        err_console.print(f"{key:>12}: {escape(str(value))}")
    if metrics is not None:
        err_console.print(metrics_table(metrics))
    else:
        err_console.print("no metrics.json (the run did not succeed); see run_status.json")
    click.echo(info["run_dir"])


@runs.command("report")
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="Print {run_id, report} as JSON.")
@click.pass_context
def runs_report(ctx: click.Context, run: str, as_json: bool) -> None:
    """Regenerate a run's report.html from its files and print its path."""
    from perturbfm.api import load_run

    r = load_run(run, store=_store(ctx))
    path = r.report()
    if as_json:
        _echo_json({"run_id": r.run_id, "report": str(path)})
    else:
        click.echo(str(path))


# ----------------------------------------------------------------------------- demo
@cli.command("demo", cls=_ListsInstalled, kinds=[("model", "models")])
@click.option("--seed", type=int, default=0, show_default=True, help="Simulator and split seed.")
@click.option("--models", default=None,
              help="Comma-separated models (default: demo.models of perturbfm/defaults.yaml or $PFM_DEFAULTS).")
@click.option("--json", "as_json", is_flag=True, help="Print the runs and the leaderboard path as JSON.")
@click.pass_context
def demo(ctx: click.Context, seed: int, models: str | None, as_json: bool) -> None:
    """The main job: a benchmark on the embedded SYNTHETIC dataset, end to end.

    Simulates the default dataset, holds out perturbation groups with the
    default generator (hash-locked split), runs each model, and writes reports.
    Models, generator and its parameters come from the defaults file.
    """
    from perturbfm.datasets import create_split, import_dataset
    from perturbfm.defaults import demo_models, load_defaults
    from perturbfm.run import execute_run

    cfg = load_defaults()["demo"]
    names = [m.strip() for m in models.split(",") if m.strip()] if models is not None else demo_models()
    if not names:
        raise PerturbFMError(f"--models {models!r} names no model", field="--models",
                             fix="omit --models for the default models, or name them: --models a,b")
    store = _store(ctx)
    err_console.print("[bold red]SYNTHETIC DATA[/bold red]: the embedded simulator stands in for a real screen")
    stored, _ = import_dataset(store, str(cfg["adapter"]), None, {"seed": seed})
    sid, _, _ = create_split(store, stored.hash, str(cfg["generator"]), dict(cfg.get("generator_params") or {}), seed)
    err_console.print(f"dataset {stored.hash[:12]}  split {sid[:12]}")
    results = []
    run_metrics: list[dict[str, Any]] = []
    for name in names:
        with progress_reporter(name) as say:
            res = execute_run(store, model=name, split=sid, progress=say)
        if res.status != "succeeded":
            _print_run_result(res)
            ctx.exit(EXIT_RUN_FAILED)
        results.append(res)
        assert res.metrics is not None  # a run that succeeded carries its metrics
        run_metrics.append(res.metrics)
    from perturbfm.compare import compare_runs

    board = compare_runs([r.run_dir for r in results], store.root / "reports" / f"demo_{sid[:7]}",
                         reference=load_defaults()["compare"]["reference"])
    path = board["files"]["html"]
    from perturbfm.references import fmt, metric_rows

    t = Table(title=f"SYNTHETIC benchmark: split {sid[:7]}, raw / calibrated (0 = mean-response baseline, "
                    "1 = split-half replicate)")
    t.add_column("panel")
    t.add_column("metric")
    for m in run_metrics:
        t.add_column(_plain(m["model"]), justify="right")
    table = [metric_rows(m) for m in run_metrics]
    for k, row in enumerate(table[0]):
        t.add_row(_plain(row["panel"]), _plain(row["metric"]) + {True: " ↑", False: " ↓"}.get(row["higher_is_better"], ""),
                  *[f"{fmt(rows[k]['raw'])} / {fmt(rows[k]['calibrated'], 2)}" for rows in table])
    (err_console if as_json else console).print(t)
    for r in results:
        err_console.print(f"run: {escape(str(r.run_dir))}")
    if as_json:
        _echo_json({"dataset": stored.hash, "split": sid, "synthetic": True, "leaderboard": path,
                    "runs": [{"model": m["model"], "run_id": r.run_id, "run_dir": str(r.run_dir)}
                             for r, m in zip(results, run_metrics)]})
    else:
        click.echo(str(path))


# ----------------------------------------------------------------------------- compare
@cli.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: <store>/reports/compare_<hash of the runs>).")
@click.option("--reference", default=None,
              help="Model (label) the verdicts compare against (default: compare.reference of defaults.yaml).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard rows and file paths as JSON.")
@click.pass_context
def compare_cmd(ctx: click.Context, runs: Sequence[str], out_dir: str | None, reference: str | None, seed: int,
                as_json: bool) -> None:
    """Leaderboard of RUN... (run dirs or run ids; LABEL=RUN names a row) on the same split(s):
    raw and calibrated values with paired 95% intervals over held-out groups and
    better / worse / tie vs the reference. Writes compare.html, compare.json, compare.csv."""
    from pathlib import Path

    from perturbfm.compare import compare_runs, parse_run_arg
    from perturbfm.defaults import load_defaults
    from perturbfm.hashing import sha256_json

    store = _store(ctx)
    parsed = [parse_run_arg(r) for r in runs]
    dirs = [p if Path(p).exists() else str(store.run_dir(p)) for _, p in parsed]
    out = Path(out_dir) if out_dir else store.root / "reports" / f"compare_{sha256_json(sorted(dirs))[:12]}"
    ref = reference or load_defaults()["compare"]["reference"]
    res = compare_runs(dirs, out, reference=ref, labels=[lbl for lbl, _ in parsed], seed=seed)
    if as_json:
        import pandas as pd

        _echo_json({"files": res["files"], "rows": _frame_records(pd.read_csv(res["files"]["csv"]))})
    else:
        click.echo(res["files"]["html"])


_PLUGIN_COMMANDS_ADDED = False


def _add_plugin_commands() -> None:
    """Add the commands plugins register. A plugin group named like a core group
    (``data``, ``splits``) is merged into it; a name already taken is refused.
    Plugins that failed to load are reported once on stderr, with the fix."""
    global _PLUGIN_COMMANDS_ADDED
    if _PLUGIN_COMMANDS_ADDED:
        return
    _PLUGIN_COMMANDS_ADDED = True
    reg = get_registry()
    for p in reg.broken():
        err_console.print(f"[yellow]plugin {escape(p.distribution)} (entry point {escape(p.entry_point)}) is not "
                          f"usable: {escape(p.error or '')}; fix: {escape(p.fix or '')}[/yellow]", soft_wrap=True)
    for impl in reg.hook_impls("pfm_register_commands"):
        probe = click.Group()
        call = reg.call_impl(impl, "pfm_register_commands", {"cli": probe})
        if call.failure is not None:  # a broken plugin's commands are skipped, not fatal
            err_console.print(f"[yellow]plugin {escape(call.distribution)} ({escape(impl.plugin_name)}) failed to "
                              f"add commands: {escape(call.failure.describe())}[/yellow]", soft_wrap=True)
            continue
        for name, cmd in probe.commands.items():
            existing = cli.commands.get(name)
            if existing is None:
                cli.add_command(cmd, name)
            elif isinstance(existing, click.Group) and isinstance(cmd, click.Group):
                for sub_name, sub in cmd.commands.items():
                    if sub_name in existing.commands:
                        err_console.print(f"[yellow]plugin {escape(impl.plugin_name)}: command "
                                          f"'{escape(name)} {escape(sub_name)}' already exists; ignored[/yellow]")
                    else:
                        existing.add_command(sub, sub_name)
            else:
                err_console.print(f"[yellow]plugin {escape(impl.plugin_name)}: command {escape(repr(name))} already "
                                  "exists; ignored[/yellow]")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors become short messages and exit code 2."""
    try:
        _add_plugin_commands()
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="pfm-bench", standalone_mode=False)
        if isinstance(rv, int):
            return rv
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except PerturbFMError as exc:
        label = "plugin error" if isinstance(exc, PluginError) else "error"
        err_console.print(f"[bold red]{label}:[/bold red] {escape(exc.render())}", soft_wrap=True)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
