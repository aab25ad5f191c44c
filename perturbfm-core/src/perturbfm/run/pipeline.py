"""``execute_run``: the stages in order, and how a run ends.

A run that got a directory always ends with a ``run_status.json`` saying
``succeeded`` or ``failed`` (with the reason; on stderr when even that cannot be
written), and a failed run never keeps a ``metrics.json``.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perturbfm.errors import PanelIncompleteError, PerturbFMError, PluginError
from perturbfm.plugins import PluginRegistry, get_registry
from perturbfm.run import stages
from perturbfm.run.context import Progress, RunContext, RunResult
from perturbfm.run.guards import Deadline, call_observers


def execute_run(
    store: Any,
    *,
    model: str,
    split: str,
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    registry: PluginRegistry | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run ``model`` on ``split`` and write the run directory.

    Raises :class:`PerturbFMError` for problems found before the run directory
    exists (unknown split, model or panel, bad config, an unwritable store). Later
    failures are recorded in ``run_status.json`` and returned with
    ``status="failed"``; a ``KeyboardInterrupt`` is recorded, then re-raised.
    """
    say = progress or (lambda _msg: None)
    registry = registry or get_registry()
    ctx = stages.resolve(store, registry, model=model, split=split, config_file=config_file, sets=sets, say=say)
    stages.create(ctx)
    assert ctx.run_dir is not None
    try:
        stages.setup(ctx)
        _observe(ctx, "pfm_run_started")
        deadline = Deadline(ctx.timeout_s)
        stages.load(ctx)
        stages.fit(ctx, deadline)
        stages.predict(ctx, deadline)
        stages.evaluate(ctx)
        stages.documents(ctx)
        stages.report(ctx)
    except PanelIncompleteError as exc:
        return _fail(ctx, exc, missing=[list(p) for p in exc.problems])
    except PerturbFMError as exc:
        return _fail(ctx, exc, **_timed_out(exc))
    except KeyboardInterrupt:
        _fail(ctx, PerturbFMError("the run was interrupted (KeyboardInterrupt)", fix="rerun it"),
              traceback=traceback.format_exc())
        raise
    except BaseException as exc:  # noqa: BLE001 - plugin code (sys.exit included) fails the run, with a record
        stage = _next_stage(ctx)
        culprit = _CULPRIT.get(stage, "the run").format(model=ctx.model_name)
        err = PluginError(f"the run failed in stage {stage!r} ({culprit}): {type(exc).__name__}: {exc}",
                          field=culprit, fix="see the traceback in run_status.json; fix or uninstall the plugin at "
                          "fault, then rerun")
        return _fail(ctx, err, traceback=traceback.format_exc())
    finally:
        _close_backed(ctx)
    ctx.writer.finish("succeeded")
    _observe(ctx, "pfm_run_finished", status="succeeded")
    say(f"run {ctx.run_id} succeeded")
    return RunResult(ctx.run_id, ctx.run_dir, "succeeded", metrics=ctx.metrics)


def _close_backed(ctx: RunContext) -> None:
    """Close the dataset's HDF5 file when the run read it backed (large datasets), so repeated
    runs in one process hold no file handles."""
    adata = getattr(ctx, "adata", None)
    if adata is not None and getattr(adata, "isbacked", False):
        try:
            adata.file.close()
        except (OSError, ValueError, RuntimeError):  # already closed: nothing to release
            pass


_ORDER = ("setup", "load", "fit", "predict", "calibration", "evaluate", "documents", "report")
_CULPRIT = {"load": "the dataset", "fit": "model {model!r} (fit)", "predict": "model {model!r} (predict)",
            "calibration": "the calibration metrics", "evaluate": "a metric panel",
            "documents": "model {model!r} (diagnostics/describe) or a document of the run",
            "report": "the report"}


def _next_stage(ctx: RunContext) -> str:
    done = ctx.writer.status.get("stages", {})
    return next((s for s in _ORDER if s not in done), "report")


def _timed_out(exc: PerturbFMError) -> dict[str, Any]:
    from perturbfm.run.guards import RunTimeoutError

    # RunTimeoutError, or an error that says it is a time limit (perturbfm.envs.EnvTimeoutError)
    return {"timed_out": True} if isinstance(exc, RunTimeoutError) or getattr(exc, "timed_out", False) is True else {}


def _fail(ctx: RunContext, exc: PerturbFMError, **info: Any) -> RunResult:
    """Record the failure (status first, then a provenance record if none was written), run the observers."""
    assert ctx.run_dir is not None
    ctx.writer.finish("failed", error=exc.render(), failed_stage=_next_stage(ctx), **info)
    if "provenance.json" not in ctx.writer.written and ctx.provenance:
        try:
            ctx.writer.json("provenance.json", ctx.provenance, "the provenance record")
        except PerturbFMError as perr:
            ctx.writer.note("write_errors", perr.render())
    _observe(ctx, "pfm_run_finished", status="failed")
    ctx.writer.withdraw_metrics()  # an observer may have written a metrics.json: a failed run keeps none
    return RunResult(ctx.run_id, ctx.run_dir, "failed", error=exc)


def _observe(ctx: RunContext, hook: str, **extra: Any) -> None:
    """Call the observers of ``hook``; their failures (any BaseException) go to ``observer_errors``."""
    call_observers(ctx.registry, hook, lambda msg: ctx.writer.note("observer_errors", msg),
                   run_dir=str(ctx.run_dir), run_info=ctx.run_info, **extra)
