"""The ``pfm-bench eval`` and ``pfm-bench validate-metrics`` commands.

``eval`` scores a prediction file against a truth file outside the store:
control cells come from the truth (the true control mean of each context is
the reference for both sides), predicted groups are the prediction's
non-control cells grouped by (perturbation, context). ``metrics.json`` is
written atomically and only when every panel is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import scipy.sparse as sp
from perturbfm.dataset import control_stats, group_id, group_table
from perturbfm.errors import DatasetValidationError, PanelIncompleteError, PerturbFMError, PredictionError
from perturbfm.evaluation import CONVENTIONS, DEFAULT_MAX_CELLS, build_eval_data, select_panels
from perturbfm.fsio import atomic_write_json
from perturbfm.hashing import sha256_file
from perturbfm.interfaces import Prediction
from perturbfm.references import evaluate_with_references

DEFAULT_PANELS = "standard"


def _check_group_coverage(want: set[str], have: set[str], pred_file: str, perturbation_key: str) -> None:
    """Refuse predictions that miss groups of the truth or add groups it lacks."""
    if want - have:
        missing = sorted(want - have)
        raise PredictionError(f"{len(missing)} group(s) of the truth have no predicted cells: {_head(missing)}",
                              file=pred_file, field=perturbation_key,
                              fix="predict cells for every perturbation (and context) of the truth")
    if have - want:
        extra = sorted(have - want)
        raise PredictionError(f"{len(extra)} predicted group(s) are not in the truth: {_head(extra)}",
                              file=pred_file, field=perturbation_key,
                              fix="predict only the truth's groups (same labels, control label and context keys)")


def _head(items: Sequence[Any], n: int = 10) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _nonfinite(X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the non-finite entries of a dense or sparse matrix."""
    if sp.issparse(X):
        coo = sp.coo_matrix(X)
        bad = ~np.isfinite(coo.data)
        return coo.row[bad], coo.col[bad]
    return np.nonzero(~np.isfinite(np.asarray(X, dtype=np.float64)))


def load_prediction(path: str, *, perturbation_key: str, control: str, context_keys: list[str],
                    expression: str) -> tuple[Any, np.ndarray, np.ndarray, list[str]]:
    """Read and canonicalise a prediction file with the anndata adapter's own steps.

    Unlike a truth file it may hold no control cells (any it holds are ignored).

    Returns:
        ``(X float64 CSR, group id per cell ("" for controls), is_control, genes)``.
    """
    import anndata as ad
    from perturbfm.canonical.expression import prepare_expression
    from perturbfm.canonical.obs import canonical_labels, context_labels

    file = str(Path(path).resolve())
    if not Path(file).is_file():
        raise DatasetValidationError("prediction file does not exist", file=file, field="--pred",
                                     fix="check the path of the .h5ad file")
    try:
        src = ad.read_h5ad(file)
    except Exception as exc:  # anndata/h5py raise many types for corrupt files
        raise DatasetValidationError(f"cannot read the file as AnnData (.h5ad): {type(exc).__name__}: {exc}",
                                     file=file, field="--pred", fix="pass an .h5ad written by anndata") from exc
    for what, names in (("obs", src.obs_names), ("var", src.var_names)):
        dup = names[names.duplicated()]
        if len(dup):
            raise DatasetValidationError(f"{len(dup)} duplicate {what} name(s), e.g. {_head(list(dup), 5)}",
                                         file=file, field=f"{what}_names", fix=f"make the {what} names unique")
    for key, role in [(perturbation_key, "--perturbation-key")] + [(k, "--context-key") for k in context_keys]:
        if key not in src.obs.columns:
            raise DatasetValidationError(f"obs has no column {key!r} (given as {role})", file=file, field=key,
                                         fix=f"pass {role} naming one of: {_head(list(src.obs.columns), 30)}")
    pert, is_ctrl = canonical_labels(src.obs[perturbation_key], control, "+", file, perturbation_key)
    ctx = context_labels(src.obs, context_keys, file)
    gids = np.array(["" if c else group_id(p, x) for p, c, x in zip(pert, is_ctrl, ctx)], dtype=object)
    genes = [str(g) for g in src.var_names]
    rows, cols = _nonfinite(src.X)
    if rows.size:
        bad_groups = sorted({gids[r] or "control" for r in rows})
        bad_genes = sorted({genes[c] for c in cols})
        raise PredictionError(
            f"the prediction holds {rows.size} NaN or infinite value(s) in groups {_head(bad_groups)} "
            f"at genes {_head(bad_genes)}",
            file=file, field="X", fix="predict finite values for every cell and gene",
        )
    X, _, _ = prepare_expression(src.X, expression, file=file, source_label="X")
    return X, gids, np.asarray(is_ctrl, dtype=bool), genes


def _align_genes(X: Any, pred_genes: list[str], truth_genes: list[str], pred_file: str) -> tuple[Any, bool]:
    """Reorder the prediction's columns to the truth's genes; refuse differing gene sets."""
    if pred_genes == truth_genes:
        return X, False
    only_t = sorted(set(truth_genes) - set(pred_genes))
    only_p = sorted(set(pred_genes) - set(truth_genes))
    if only_t or only_p:
        raise PredictionError(
            "the prediction's genes differ from the truth's: "
            + (f"{len(only_t)} only in the truth ({_head(only_t)})" if only_t else "")
            + ("; " if only_t and only_p else "")
            + (f"{len(only_p)} only in the prediction ({_head(only_p)})" if only_p else ""),
            file=pred_file, field="var_names", fix="predict exactly the truth's genes (their order does not matter)",
        )
    pos = {g: j for j, g in enumerate(pred_genes)}
    return X[:, [pos[g] for g in truth_genes]], True


def evaluate_files(pred: str, truth: str, *, perturbation_key: str = "perturbation", control: str = "control",
                   context_keys: Sequence[str] = (), panels: Sequence[str] | str = "standard", seed: int = 0,
                   expression: str = "log1p", max_cells: int = DEFAULT_MAX_CELLS,
                   backed: bool = False) -> dict[str, Any]:
    """Score ``pred`` against ``truth``; returns the content of ``metrics.json``.

    With ``backed=True`` both files are opened with anndata ``backed="r"`` and never
    read whole: group and control moments are computed in row chunks, and the panels
    that need cells (scperturbench's distribution keys, vcc ``overlap_at_N``) read one
    group (or one bounded batch of groups) at a time from the files. ``X`` must
    already be log1p (``expression="log1p"``).

    Raises:
        PerturbFMError subclasses for bad input; PanelIncompleteError when a panel is incomplete.
    """
    if backed:
        return _evaluate_backed(pred, truth, perturbation_key=perturbation_key, control=control,
                                context_keys=context_keys, panels=panels, seed=seed, expression=expression,
                                max_cells=max_cells)
    from perturbfm.plugins import get_registry
    from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter

    registry = get_registry()
    panel_objs = select_panels(registry, panels, gives_variance=False)
    keys = list(context_keys)
    res = AnnDataAdapter().load(truth, perturbation_key=perturbation_key, control=control,
                                context_keys=keys, expression=expression)
    tad = res.adata
    truth_genes = [str(g) for g in tad.var_names]
    X, gids, is_ctrl, pred_genes = load_prediction(pred, perturbation_key=perturbation_key, control=control,
                                                   context_keys=keys, expression=expression)
    pred_file = str(Path(pred).resolve())
    X, reordered = _align_genes(X, pred_genes, truth_genes, pred_file)
    groups = [g for g in group_table(tad).values() if not g.is_control]
    want, have = {g.group_id for g in groups}, set(gids[~is_ctrl])
    _check_group_coverage(want, have, pred_file, perturbation_key)
    ctrl = control_stats(tad)
    ids = [g.group_id for g in groups]
    rows_of = _rows_by_label(gids.astype(str))
    rows_of = {g: rows_of[g] for g in ids}
    # predicted cells stay in the (sparse) prediction matrix: dense rows are made per group on access
    cells = _LazyCells(X, rows_of, None)
    pos = {g: k for k, g in enumerate(ids)}
    code = np.array([pos.get(g, -1) for g in gids.astype(str)], dtype=np.int64)
    keep = np.flatnonzero(code >= 0)
    ind = sp.csr_matrix((np.ones(keep.size), (code[keep], keep)), shape=(len(ids), X.shape[0]))
    sums = ind @ X
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    n_pred = np.array([rows_of[g].size for g in ids], dtype=np.float64)
    prediction = Prediction(
        group_ids=ids,
        mean_delta=sums / n_pred[:, None] - np.stack([ctrl.mean(g.context) for g in groups]),
        cells=cells,  # type: ignore[arg-type]
    )
    data = build_eval_data(tad, groups, ctrl, prediction, seed=seed, max_cells=max_cells)
    panels_out, references = evaluate_with_references(panel_objs, data)
    return {
        "schema": 1,
        "kind": "eval",
        "prediction": {"path": pred_file, "sha256": sha256_file(pred_file)},
        "truth": {"path": res.source["path"], "sha256": res.source["file_sha256"],
                  "expression_space": res.expression_space, "processing": res.processing},
        "n_groups": len(groups),
        "n_true_cells": int(data.n_true.sum()),
        "conventions": {
            **CONVENTIONS,
            "predicted_cells": "the prediction file's cells, grouped by (perturbation, context); its control "
            f"cells ({int(is_ctrl.sum())}) are ignored",
            "predicted_delta": "mean of the predicted cells - the true control mean of the context",
            "gene_order": "prediction columns reordered by name to the truth's order" if reordered
            else "same genes in the same order",
            "cell_subsampling": {"max_cells_per_group": max_cells, "seed": seed},
        },
        "groups": [{"group_id": g.group_id, "context": g.context, "n_true_cells": g.n_cells,
                    "n_pred_cells": int(rows_of[g.group_id].size)} for g in data.groups],
        "panel_selection": {"panels": [p.name for p in panel_objs],
                            "selection": "standard (every installed standard panel)" if panels == "standard"
                            else "narrower set requested (--panels)"},
        "references": references,
        "panels": panels_out,
    }


class _LazyCells(Mapping):
    """Group id -> that group's predicted cells (dense float64, truth's gene order), read on
    access from a (sparse, or backed) matrix; nothing is cached."""

    def __init__(self, X: Any, rows: dict[str, np.ndarray], col_order: list[int] | None) -> None:
        self._X, self._rows, self._cols = X, rows, col_order

    def __getitem__(self, gid: str) -> np.ndarray:
        idx = self._rows[gid]
        M = self._X[idx]
        M = M.toarray() if hasattr(M, "toarray") else np.asarray(M)
        M = np.asarray(M, dtype=np.float64)
        return M if self._cols is None else M[:, self._cols]

    def __iter__(self):  # noqa: ANN204
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _rows_by_label(labels: np.ndarray) -> dict[str, np.ndarray]:
    import pandas as pd

    codes, uniq = pd.factorize(labels)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(uniq)))])
    return {str(u): order[bounds[k]:bounds[k + 1]] for k, u in enumerate(uniq)}


def _open_backed(path: str, role: str, perturbation_key: str, control: str, context_keys: list[str]
                 ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, str]:
    """Open ``path`` backed; return (adata, canonical perturbation, is_control, context, file)."""
    import anndata as ad
    from perturbfm.canonical.obs import canonical_labels, context_labels

    file = str(Path(path).resolve())
    if not Path(file).is_file():
        raise DatasetValidationError(f"{role} file does not exist", file=file, field=f"--{role}",
                                     fix="check the path of the .h5ad file")
    try:
        src = ad.read_h5ad(file, backed="r")
    except Exception as exc:  # anndata/h5py raise many types for corrupt files
        raise DatasetValidationError(f"cannot read the file as AnnData (.h5ad): {type(exc).__name__}: {exc}",
                                     file=file, field=f"--{role}", fix="pass an .h5ad written by anndata") from exc
    for key, opt in [(perturbation_key, "--perturbation-key")] + [(k, "--context-key") for k in context_keys]:
        if key not in src.obs.columns:
            raise DatasetValidationError(f"obs has no column {key!r} (given as {opt})", file=file, field=key,
                                         fix=f"pass {opt} naming one of: {_head(list(src.obs.columns), 30)}")
    pert, is_ctrl = canonical_labels(src.obs[perturbation_key], control, "+", file, perturbation_key)
    ctx = context_labels(src.obs, context_keys, file)
    return src, np.asarray(pert, dtype=object), np.asarray(is_ctrl, dtype=bool), np.asarray(ctx, dtype=object), file


def _evaluate_backed(pred: str, truth: str, *, perturbation_key: str, control: str, context_keys: Sequence[str],
                     panels: Sequence[str] | str, seed: int, expression: str, max_cells: int) -> dict[str, Any]:
    """:func:`evaluate_files` on backed files (see there)."""
    import pandas as pd
    from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, COVARIATES_COL, PERT_COL, grouped_moments
    from perturbfm.plugins import get_registry

    if expression != "log1p":
        raise DatasetValidationError("backed mode reads X as stored and needs log1p values", field="--counts",
                                     fix="drop --backed, or store log1p-normalised X")
    registry = get_registry()
    panel_objs = select_panels(registry, panels, gives_variance=False)
    keys = list(context_keys)
    tad, tpert, tctrl, tctx, tfile = _open_backed(truth, "truth", perturbation_key, control, keys)
    pad, ppert, pctrl, pctx, pred_file = _open_backed(pred, "pred", perturbation_key, control, keys)
    try:
        obs = pd.DataFrame(index=tad.obs_names)
        obs[PERT_COL], obs[CONTROL_COL], obs[CONTEXT_COL], obs[COVARIATES_COL] = tpert, tctrl, tctx, ""
        tad.obs = obs  # canonical columns, in memory (the file is not written)
        truth_genes = [str(g) for g in tad.var_names]
        pred_genes = [str(g) for g in pad.var_names]
        cols: list[int] | None = None
        if pred_genes != truth_genes:
            _align_genes(np.zeros((0, len(pred_genes))), pred_genes, truth_genes, pred_file)  # refuses differing sets
            pos = {g: j for j, g in enumerate(pred_genes)}
            cols = [pos[g] for g in truth_genes]
        gids = np.array(["" if c else group_id(p, x) for p, c, x in zip(ppert, pctrl, pctx)], dtype=object)
        groups = [g for g in group_table(tad).values() if not g.is_control]
        want, have = {g.group_id for g in groups}, set(gids[~pctrl])
        _check_group_coverage(want, have, pred_file, perturbation_key)
        ctrl = control_stats(tad)
        ids = [g.group_id for g in groups]
        pmean, _, pcount = grouped_moments(pad, gids.astype(str), ids)  # chunked, bounded memory
        if cols is not None:
            pmean = pmean[:, cols]
        rows = _rows_by_label(gids.astype(str))
        cells = _LazyCells(pad.X, {g: rows[g] for g in ids}, cols)
        prediction = Prediction(group_ids=ids, mean_delta=pmean - np.stack([ctrl.mean(g.context) for g in groups]),
                                cells=cells)  # type: ignore[arg-type]
        data = build_eval_data(tad, groups, ctrl, prediction, seed=seed, max_cells=max_cells)
        panels_out, references = evaluate_with_references(panel_objs, data)
    finally:
        for a in (tad, pad):
            if getattr(a, "file", None) is not None:
                a.file.close()
    return {
        "schema": 1,
        "kind": "eval",
        "prediction": {"path": pred_file, "sha256": sha256_file(pred_file)},
        "truth": {"path": tfile, "sha256": sha256_file(tfile), "expression_space": "log1p (as stored, backed mode)",
                  "processing": ["read in backed mode (anndata backed='r'); moments in row chunks; cells read "
                                 "per group from the file"]},
        "n_groups": len(groups),
        "n_true_cells": int(data.n_true.sum()),
        "conventions": {
            **CONVENTIONS,
            "predicted_cells": "the prediction file's cells, grouped by (perturbation, context), read per group "
            f"from the backed file; its control cells ({int(pctrl.sum())}) are ignored",
            "predicted_delta": "mean of the predicted cells - the true control mean of the context",
            "gene_order": "prediction columns reordered by name to the truth's order" if cols is not None
            else "same genes in the same order",
            "cell_subsampling": {"max_cells_per_group": max_cells, "seed": seed},
            "backed": True,
        },
        "groups": [{"group_id": g.group_id, "context": g.context, "n_true_cells": g.n_cells,
                    "n_pred_cells": int(n)} for g, n in zip(data.groups, pcount)],
        "panel_selection": {"panels": [p.name for p in panel_objs],
                            "selection": "standard (every installed standard panel)" if panels == "standard"
                            else "narrower set requested (--panels)"},
        "references": references,
        "panels": panels_out,
    }


def _print_incomplete(err: PanelIncompleteError) -> None:
    from perturbfm.console import err_console
    from rich.table import Table

    t = Table(title="incomplete metric panels: metrics.json was NOT written")
    for col in ("panel", "key", "problem"):
        t.add_column(col)
    for row in err.problems:
        t.add_row(*row)
    err_console.print(t)


@click.command("eval")
@click.option("--pred", "pred", required=True, type=click.Path(dir_okay=False), help="Predicted cells (.h5ad).")
@click.option("--truth", "truth", required=True, type=click.Path(dir_okay=False), help="True cells (.h5ad).")
@click.option("--perturbation-key", default="perturbation", show_default=True, help="obs column of perturbations.")
@click.option("--control", default="control", show_default=True, help="Label of control cells.")
@click.option("--context-key", "context_keys", multiple=True, help="obs column(s) defining the context.")
@click.option("--panels", default=DEFAULT_PANELS, show_default=True, help="standard (every installed standard panel) or comma-separated panel names.")
@click.option("--out", default="metrics.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Cell-subsampling seed.")
@click.option("--max-cells", type=int, default=DEFAULT_MAX_CELLS, show_default=True)
@click.option("--counts", is_flag=True, help="X holds raw counts (normalised to 1e4 and log1p'd); default log1p.")
@click.option("--backed", is_flag=True,
              help="Read both files backed (anndata backed='r'): chunked moments, cells read per group "
              "(bounded memory for large files; X must be log1p).")
@click.pass_context
def eval_cmd(ctx: click.Context, pred: str, truth: str, perturbation_key: str, control: str,
             context_keys: tuple[str, ...], panels: str, out: str, seed: int, max_cells: int, counts: bool,
             backed: bool) -> None:
    """Score a prediction .h5ad against a truth .h5ad and write metrics.json."""
    from perturbfm.console import EXIT_RUN_FAILED, err_console

    names: list[str] | str = [p.strip() for p in panels.split(",") if p.strip()]
    if names == ["standard"]:
        names = "standard"
    elif not names:
        raise PerturbFMError(f"--panels {panels!r} names no panel", field="--panels",
                             fix="omit --panels for every standard panel, or name them: --panels basic,vcc")
    try:
        metrics = evaluate_files(pred, truth, perturbation_key=perturbation_key, control=control,
                                 context_keys=context_keys, panels=names, seed=seed,
                                 expression="counts" if counts else "log1p", max_cells=max_cells,
                                 backed=backed)
    except PanelIncompleteError as err:
        _print_incomplete(err)
        ctx.exit(EXIT_RUN_FAILED)
        return
    atomic_write_json(out, metrics)
    from perturbfm.references import fmt, metric_rows

    err_console.print(f"{'panel':>13} {'metric':<40} {'raw':>10} {'calibrated':>10} {'baseline':>10} "
                      f"{'replicate':>10} {'indep.ctrl':>10}")
    for r in metric_rows(metrics):
        if r["raw"] is None:
            err_console.print(f"{r['panel']:>13} {r['metric']:<40} n/a ({r['note']})", soft_wrap=True)
            continue
        err_console.print(f"{r['panel']:>13} {r['metric']:<40} {fmt(r['raw']):>10} {fmt(r['calibrated'], 3):>10} "
                          f"{fmt(r['baseline']):>10} {fmt(r['replicate']):>10} {fmt(r['indep_ctrl']):>10}",
                          soft_wrap=True)
    click.echo(str(Path(out).resolve()))


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
