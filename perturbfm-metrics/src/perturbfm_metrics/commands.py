"""The ``pfm-bench eval`` and ``pfm-bench validate-metrics`` commands.

``eval`` is a thin wrapper over :func:`perturbfm.api.evaluate` (the scoring
itself lives in :mod:`perturbfm.scoring`): it parses the options, writes
``metrics.json`` atomically (only when every panel is complete) and prints the
table on stderr and the path of ``metrics.json`` on stdout (or JSON with ``--json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from perturbfm.errors import PanelIncompleteError
from perturbfm.evaluation import DEFAULT_MAX_CELLS
from perturbfm.scoring import evaluate_metrics

DEFAULT_PANELS = "standard"


def evaluate_files(pred: str, truth: str, **options: Any) -> dict[str, Any]:
    """Score ``pred`` against ``truth``; returns the content of ``metrics.json``
    (kept for scripts; see :func:`perturbfm.scoring.evaluate_metrics`)."""
    return evaluate_metrics(pred, truth, **options)


def _print_incomplete(err: PanelIncompleteError) -> None:
    from perturbfm.console import err_console, escape
    from rich.table import Table

    t = Table(title="incomplete metric panels: metrics.json was NOT written")
    for col in ("panel", "key", "problem"):
        t.add_column(col)
    for row in err.problems:
        t.add_row(*[escape(str(c)) for c in row])
    err_console.print(t)


@click.command("eval")
@click.option("--pred", "pred", required=True, type=click.Path(), help="Predicted cells (.h5ad).")
@click.option("--truth", "truth", required=True, type=click.Path(), help="True cells (.h5ad).")
@click.option("--perturbation-key", default="perturbation", show_default=True, help="obs column of perturbations.")
@click.option("--control", default="control", show_default=True, help="Label of control cells.")
@click.option("--context-key", "context_keys", multiple=True, help="obs column(s) defining the context.")
@click.option("--panels", default=DEFAULT_PANELS, show_default=True,
              help="standard (every installed standard panel) or comma-separated panel names.")
@click.option("--out", default="metrics.json", show_default=True, type=click.Path(),
              help="Where metrics.json is written (never over --pred or --truth).")
@click.option("--seed", type=int, default=0, show_default=True, help="Cell-subsampling seed (>= 0).")
@click.option("--max-cells", type=int, default=DEFAULT_MAX_CELLS, show_default=True,
              help="Cells per group used by the cell-based metrics (>= 1).")
@click.option("--counts", is_flag=True,
              help="Both files hold raw counts (normalised to 1e4 per cell and log1p'd); default: both log1p. "
              "Raw counts without --counts, or files in different spaces, are refused.")
@click.option("--layer", default=None, help="Read the truth's values from this layer instead of X.")
@click.option("--pred-layer", default=None, help="Read the prediction's values from this layer instead of X.")
@click.option("--backed", is_flag=True,
              help="Read both files backed (anndata backed='r'): chunked moments, cells read per group "
              "(bounded memory for large files; X must be log1p).")
@click.option("--executor", default=None,
              help="Evaluate the panels in shards on this executor (serial, process, ray; default: unsharded). "
              "Workers read both files backed (log1p X); the result equals the unsharded one.")
@click.option("--workers", type=int, default=None, help="Workers of --executor (default: CPUs, at most 8).")
@click.option("--shard-by", type=click.Choice(["context", "group"]), default="context", show_default=True,
              help="With --executor: one shard per context, or chunks of --group-chunk groups for the panels "
              "scored group by group (context-level panels still get whole contexts).")
@click.option("--group-chunk", type=int, default=None, help="Groups per shard with --shard-by group (default 256).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON rows on stdout.")
@click.pass_context
def eval_cmd(ctx: click.Context, pred: str, truth: str, perturbation_key: str, control: str,
             context_keys: tuple[str, ...], panels: str, out: str, seed: int, max_cells: int, counts: bool,
             layer: str | None, pred_layer: str | None, backed: bool, executor: str | None, workers: int | None,
             shard_by: str, group_chunk: int | None, as_json: bool) -> None:
    """Score a prediction .h5ad against a truth .h5ad and write metrics.json."""
    from perturbfm.api import evaluate, frame_records
    from perturbfm.console import EXIT_RUN_FAILED, err_console, escape, progress_reporter
    from perturbfm.references import fmt

    try:
        with progress_reporter("eval") as say:
            frame = evaluate(pred, truth, perturbation_key=perturbation_key, control=control,
                             context_keys=context_keys, panels=panels, seed=seed,
                             expression="counts" if counts else "log1p", max_cells=max_cells, backed=backed,
                             layer=layer, pred_layer=pred_layer, out=out, progress=say, executor=executor,
                             workers=workers, shard_by=shard_by, group_chunk=group_chunk)
    except PanelIncompleteError as err:
        _print_incomplete(err)
        ctx.exit(EXIT_RUN_FAILED)
        return
    metrics = frame.attrs["metrics"]
    path = str(Path(out).resolve())
    if metrics.get("synthetic"):
        err_console.print(f"[bold red]{escape(metrics['synthetic_note'])}[/bold red]")
    if as_json:
        click.echo(json.dumps({"metrics_path": path, "synthetic": bool(metrics.get("synthetic")),
                               "rows": frame_records(frame)}, indent=2, allow_nan=False))
        return
    err_console.print(f"{'panel':>13} {'metric':<40} {'raw':>10} {'calibrated':>10} {'baseline':>10} "
                      f"{'replicate':>10} {'indep.ctrl':>10}", markup=False)
    for r in frame.to_dict(orient="records"):
        if r["raw"] is None or r["raw"] != r["raw"]:
            err_console.print(f"{r['panel']:>13} {r['metric']:<40} n/a ({r['note']})", soft_wrap=True, markup=False)
            continue
        err_console.print(f"{r['panel']:>13} {r['metric']:<40} {fmt(r['raw']):>10} {fmt(_num(r['calibrated']), 3):>10} "
                          f"{fmt(_num(r['baseline'])):>10} {fmt(_num(r['replicate'])):>10} "
                          f"{fmt(_num(r['indep_ctrl'])):>10}", soft_wrap=True, markup=False)
    click.echo(path)


def _num(v: Any) -> float | None:
    return None if v is None or v != v else float(v)


@click.command("validate-metrics")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic input.")
@click.option("--require-peers", is_flag=True, default=None,
              help="A peer that is not installed fails the check (default: on when CI=true).")
@click.pass_context
def validate_metrics(ctx: click.Context, as_json: bool, seed: int, require_peers: bool | None) -> None:
    """Compare PerturbFM's metrics with installed peers on one synthetic input."""
    from perturbfm.console import EXIT_RUN_FAILED, console
    from rich.table import Table

    from perturbfm_metrics.parity import failed, run_parity

    rows = run_parity(seed)
    strict = require_peers if require_peers is not None else os.environ.get("CI") == "true"
    bad = failed(rows, require_peers=bool(strict))
    if as_json:
        click.echo(json.dumps({"seed": seed, "rows": [r.to_dict() for r in rows], "ok": not bad}, indent=2))
    else:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.6g}"

        t = Table(title=f"metric parity on a SYNTHETIC input (seed {seed})")
        for col in ("metric", "ours", "peer", "peer package", "abs diff", "rel diff", "tolerance", "verdict"):
            t.add_column(col)
        for r in rows:
            t.add_row(r.metric, f(r.ours), f(r.peer), r.peer_package, f(r.abs_diff), f(r.rel_diff), f(r.tolerance),
                      r.verdict + (f" ({r.note})" if r.note and r.verdict != "pass" else ""))
        console.print(t)
    if bad:
        ctx.exit(EXIT_RUN_FAILED)


def register(cli: click.Group) -> None:
    """Add the commands to ``cli``."""
    cli.add_command(eval_cmd, "eval")
    cli.add_command(validate_metrics, "validate-metrics")
