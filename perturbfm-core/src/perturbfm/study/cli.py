"""``pfm-bench study run STUDY.yaml`` and ``pfm-bench study status STUDY``:
registered by the core's builtin plugin through ``pfm_register_commands``.

Progress goes to stderr: a Rich progress bar (cells done / total, the cells
running now) when stderr is a terminal, one plain line per finished cell
otherwise. ``--json`` prints one JSON object on stdout (and nothing else there).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click


@click.group()
def study() -> None:
    """Config-driven ablation grids: models x variants x splits x seeds."""


class _Progress:
    """Shows the progress events of :func:`perturbfm.study.runner.run_study`."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("study"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.description}"), console=self.console, transient=False)
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, ev: dict[str, Any]) -> None:
        running = ev.get("running") or []
        if self.bar is not None:
            desc = ("running " + "; ".join(running[:3]) + (f" (+{len(running) - 3})" if len(running) > 3 else "")
                    if running else "")
            if self.task is None:
                self.task = self.bar.add_task(desc, total=ev["total"], completed=ev["done"])
            self.bar.update(self.task, completed=ev["done"], description=desc)
            return
        for c in ev.get("changed", []):
            if c["status"] in ("pending",):
                continue
            self.console.print(f"[{ev['done']}/{ev['total']}] {c['status']}: {c['label']} / {c['split']} / seed "
                               f"{c['seed']}" + (f" (run {c['run_id']})" if c.get("run_id") else ""),
                               soft_wrap=True, markup=False, highlight=False)


def _outcome_json(out: Any) -> dict[str, Any]:
    from perturbfm.study.status import status_counts

    st = out.status
    cells = st.get("cells", {})
    return {"study": st.get("study"), "study_dir": str(out.study_dir), "phase": out.phase, "ok": out.ok,
            "ran": out.ran, "total": len(cells), "counts": status_counts(cells), "error": st.get("error"),
            "next_step": st.get("next_step"), "synthetic_datasets": st.get("synthetic_datasets", []),
            "recovery": st.get("recovery"),
            "artifacts": {f: str(out.study_dir / f) for f in ("study_status.json", "summary.csv", "summary.json",
                                                                "claims.json", "report.html",
                                                                "provenance_summary.md")},
            "claims": [{k: c.get(k) for k in ("id", "statement", "status", "reason", "n", "synthetic")}
                       for c in out.claims],
            "cells": cells}


@study.command("run")
@click.argument("study_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--max-runs", type=int, default=None,
              help="Refuse grids with more pending runs than this (default $PFM_MAX_RUNS, else 64).")
@click.option("--chunk", type=int, default=None, help="Run at most K pending runs in this invocation.")
@click.option("--executor", default="process", show_default=True, help="Executor plugin: process, serial, ray ...")
@click.option("--workers", type=int, default=None, help="Parallel workers (default: CPU count, at most 8).")
@click.option("--rebuild-status", is_flag=True,
              help="Rebuild study_status.json from the worker records and the store's run directories (finished "
                   "runs of the study's cells are kept) instead of starting afresh when it is missing.")
@click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON object on stdout.")
@click.pass_context
def study_run(ctx: click.Context, study_file: str, max_runs: int | None, chunk: int | None, executor: str,
              workers: int | None, rebuild_status: bool, as_json: bool) -> None:
    """Run (or continue) a study; finished runs are skipped, failed, interrupted or damaged ones rerun."""
    from perturbfm.console import EXIT_RUN_FAILED, err_console
    from perturbfm.errors import PerturbFMError
    from perturbfm.study.runner import run_study

    store = (ctx.find_root().obj or {}).get("store")

    def hint(k: int) -> str:
        parts = ["pfm-bench"] + (["--store", store] if store else []) + ["study", "run", study_file]
        if max_runs is not None:
            parts += ["--max-runs", str(max_runs)]
        if k:
            parts += ["--chunk", str(k)]
        if executor != "process":
            parts += ["--executor", executor]
        if workers is not None:
            parts += ["--workers", str(workers)]
        return shlex.join(parts)

    def say(m: str) -> None:
        err_console.print(m, soft_wrap=True, markup=False)

    try:
        with _Progress(err_console) as progress:
            out = run_study(study_file, store=store, max_runs=max_runs, chunk=chunk, executor=executor,
                            workers=workers, say=say, command_hint=hint, rebuild_status=rebuild_status,
                            progress=progress)
    except PerturbFMError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "phase": "refused", "error": {
                "type": type(exc).__name__, "message": exc.message, "file": exc.file, "field": exc.field,
                "fix": exc.fix}}, indent=2))
        raise
    st = out.status
    colour = "green" if out.phase == "complete" else "yellow" if out.phase == "partial" else "red"
    err_console.print(f"[{colour}]study {st['study']}: {out.phase}[/{colour}]")
    if st.get("synthetic_datasets"):
        err_console.print(f"SYNTHETIC DATA: {', '.join(st['synthetic_datasets'])} (simulated; every row and claim "
                          "on it is marked synthetic)", soft_wrap=True, markup=False)
    if st.get("error"):
        err_console.print(str(st["error"]), soft_wrap=True, markup=False)
    for c in out.claims:
        err_console.print(f"claim {c['id']}: {c['status']} ({c.get('reason', '')})"
                          + (" [SYNTHETIC DATA]" if c.get("synthetic") else ""), soft_wrap=True, markup=False)
    err_console.print(f"next step: {st.get('next_step')}", soft_wrap=True, markup=False)
    if as_json:
        click.echo(json.dumps(_outcome_json(out), indent=2, default=str))
    else:
        click.echo(str(out.study_dir))
    if not out.ok:
        ctx.exit(EXIT_RUN_FAILED)


@study.command("status")
@click.argument("study")
@click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON object on stdout.")
@click.pass_context
def study_status(ctx: click.Context, study: str, as_json: bool) -> None:
    """Where a study stands: STUDY is its study file or its name in the store."""
    from perturbfm.errors import ConfigError
    from perturbfm.store import ArtifactStore
    from perturbfm.study.status import STATUS_JSON, read_status, status_json, status_md

    name = study
    if Path(study).is_file():
        from perturbfm.study.spec import load_study

        name = load_study(study).name
    root = ArtifactStore((ctx.find_root().obj or {}).get("store")).root
    study_dir = root / "studies" / name
    if not study_dir.is_dir() or "/" in name or name in (".", ".."):
        known = sorted(p.name for p in (root / "studies").iterdir()) if (root / "studies").is_dir() else []
        raise ConfigError(f"no study {name!r} in the store {root}", field="STUDY",
                          fix="give the study file or one of: " + (", ".join(known) or "(no study has run yet)"))
    if as_json:
        click.echo(json.dumps(status_json(study_dir), indent=2, default=str))
        return
    sr = read_status(study_dir)
    if sr.data is None:
        why = f"{STATUS_JSON} is damaged: {sr.problem}" if sr.damaged else f"the study has no {STATUS_JSON} yet"
        raise ConfigError(why, file=str(study_dir / STATUS_JSON), field=STATUS_JSON,
                          fix=f"pfm-bench study run STUDY_FILE --rebuild-status   (rebuilds it from the run "
                              f"directories; the study file of {name!r} is the one it was run from)")
    click.echo(status_md(sr.data), nl=False)
