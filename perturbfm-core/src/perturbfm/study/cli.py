"""``pfm-bench study run STUDY.yaml``: registered by the core's builtin plugin
through ``pfm_register_commands``."""

from __future__ import annotations

import shlex

import click


@click.group()
def study() -> None:
    """Config-driven ablation grids: models x variants x splits x seeds."""


@study.command("run")
@click.argument("study_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--max-runs", type=int, default=None,
              help="Refuse grids with more pending runs than this (default $PFM_MAX_RUNS, else 64).")
@click.option("--chunk", type=int, default=None, help="Run at most K pending runs in this invocation.")
@click.option("--executor", default="process", show_default=True, help="Executor plugin: process, serial, ray ...")
@click.option("--workers", type=int, default=None, help="Parallel workers (default: CPU count, at most 8).")
@click.pass_context
def study_run(ctx: click.Context, study_file: str, max_runs: int | None, chunk: int | None, executor: str,
              workers: int | None) -> None:
    """Run (or continue) a study; finished runs are skipped, failed or interrupted ones rerun."""
    from perturbfm.console import EXIT_RUN_FAILED, err_console
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

    out = run_study(study_file, store=store, max_runs=max_runs, chunk=chunk, executor=executor, workers=workers,
                    say=lambda m: err_console.print(m, soft_wrap=True, markup=False), command_hint=hint)
    st = out.status
    colour = "green" if out.phase == "complete" else "yellow" if out.phase == "partial" else "red"
    err_console.print(f"[{colour}]study {st['study']}: {out.phase}[/{colour}]")
    if st.get("error"):
        err_console.print(str(st["error"]), soft_wrap=True, markup=False)
    for c in out.claims:
        err_console.print(f"claim {c['id']}: {c['status']} ({c.get('reason', '')})", soft_wrap=True, markup=False)
    err_console.print(f"next step: {st.get('next_step')}", soft_wrap=True, markup=False)
    click.echo(str(out.study_dir))
    if not out.ok:
        ctx.exit(EXIT_RUN_FAILED)
