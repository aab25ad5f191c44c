"""Running a study: plan, budget check, resume, execute through an executor
plugin, then write the summary, claims, report and provenance summary.

Layout under ``<store>/studies/<name>/``: ``study.resolved.yaml``,
``plan_filter_report.md``, ``configs/<key>.yaml`` (one config per cell),
``cells/<key>.json`` (worker records), ``study_status.json`` / ``.md``,
``summary.csv`` / ``.json``, ``claims.json``, ``report.html``,
``provenance_summary.md``.

One invocation per study at a time (a file lock; see :mod:`perturbfm.study.status`
for how damaged or untrusted state is handled). While the executor runs, SIGTERM
and SIGHUP (like Ctrl-C) end it: the executor kills its workers and the status
says ``interrupted``; rerunning the same command continues the study.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perturbfm.errors import ConfigError, PerturbFMError
from perturbfm.fsio import atomic_write_json, atomic_write_text, atomic_write_yaml
from perturbfm.plugins import PluginRegistry, get_registry
from perturbfm.store import ArtifactStore
from perturbfm.study.claims import claims_document, evaluate_claims
from perturbfm.study.jobs import STOP_FILE, read_stop, run_cell_job
from perturbfm.study.plan import Plan, build_plan, filter_report_md
from perturbfm.study.provenance import provenance_md
from perturbfm.study.report import write_study_report
from perturbfm.study.spec import StudySpec, load_study
from perturbfm.study.status import (
    STATUS_JSON,
    read_status,
    reconcile,
    run_lock,
    set_aside_damaged_status,
    write_status,
)
from perturbfm.study.summary import write_summary

MAX_RUNS_ENV = "PFM_MAX_RUNS"
DEFAULT_MAX_RUNS = 64
DEFAULT_EXECUTOR = "process"


class StudyBudgetError(PerturbFMError):
    """The grid is larger than the run budget; nothing was started."""


@dataclass
class StudyOutcome:
    """How an invocation of a study ended."""

    study_dir: Path
    phase: str
    ran: int
    status: dict[str, Any] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.phase in ("complete", "partial")


def default_max_runs() -> int:
    """``$PFM_MAX_RUNS``, else 64."""
    raw = os.environ.get(MAX_RUNS_ENV)
    if raw:
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"{MAX_RUNS_ENV}={raw!r} is not an integer", field=MAX_RUNS_ENV,
                              fix=f"export {MAX_RUNS_ENV}=64") from exc
    return DEFAULT_MAX_RUNS


def _resolved(spec: StudySpec, plan: Plan) -> dict[str, Any]:
    return {
        "name": spec.name, "study_file": str(spec.path), "description": spec.description,
        "datasets": {n: {"adapter": d.adapter, "path": d.path, "options": d.options, "hash": plan.datasets.get(n)}
                     for n, d in spec.datasets.items()},
        "splits": {n: {"dataset": s.dataset, "generator": s.generator, "params": s.params, "seed": s.seed,
                       "id": plan.splits.get(n)} for n, s in spec.splits.items()},
        "models": [{"label": v.label, "model": v.model, "set": v.set, "resolved": plan.variant_configs.get(v.label)}
                   for v in spec.variants],
        "seeds": spec.seeds, "panels": spec.panels, "run": spec.run, "claims": spec.claims,
        "cells": [c.describe() for c in plan.cells],
        "excluded": [vars(e) for e in plan.exclusions],
        "inputs": plan.inputs, "plan_hash": plan.hash(),
    }


class StudyInterrupted(BaseException):
    """Raised in the main thread by the study's SIGTERM / SIGHUP handler, so that the
    executor kills its workers and the status says how the invocation ended."""

    def __init__(self, signame: str) -> None:
        self.signame = signame
        super().__init__(signame)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While the executor runs: SIGTERM and SIGHUP raise :class:`StudyInterrupted` in
    the main thread (a second signal takes its default action)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [n for n in ("SIGTERM", "SIGHUP")  # an ignored signal (nohup) stays ignored
             if hasattr(signal, n) and signal.getsignal(getattr(signal, n)) is not signal.SIG_IGN]
    old = {n: signal.getsignal(getattr(signal, n)) for n in names}

    def handler(signum: int, _frame: Any) -> None:
        for n in names:  # a second signal is not caught again
            signal.signal(getattr(signal, n), signal.SIG_DFL)
        raise StudyInterrupted(signal.Signals(signum).name)

    for n in names:
        signal.signal(getattr(signal, n), handler)
    try:
        yield
    finally:
        for n, h in old.items():
            signal.signal(getattr(signal, n), h if h is not None else signal.SIG_DFL)


def _progress_event(cells: dict[str, dict[str, Any]], last: dict[str, str], total: int) -> dict[str, Any]:
    changed = [{k: c.get(k) for k in ("key", "label", "split", "seed", "status", "run_id")}
               for key, c in cells.items() if last.get(key) != c["status"]]
    return {"done": sum(1 for c in cells.values() if c["status"] == "succeeded"), "total": total,
            "running": [f"{c['label']} / {c['split']} / seed {c['seed']}" for c in cells.values()
                        if c["status"] == "running"],
            "changed": changed}


def _monitor(study_dir: Path, plan: Plan, base: dict[str, Any], stop: threading.Event,
             progress: Callable[[dict[str, Any]], None] | None, last: dict[str, str]) -> None:
    """Keep ``study_status.json`` current while the executor runs, and report progress."""
    while not stop.wait(1.0):
        try:
            cells = reconcile(study_dir, plan.cells, base, live=True)
            write_status(study_dir, {**base, "cells": cells})
            if progress is not None:
                ev = _progress_event(cells, last, len(plan.cells))
                if ev["changed"]:
                    last.update({c["key"]: c["status"] for c in ev["changed"]})
                    progress(ev)
        except Exception:  # a status refresh must never break the run  # noqa: BLE001
            pass


def _synthetic_flags(st: ArtifactStore, plan: Plan) -> tuple[dict[str, bool], list[str]]:
    """(split name -> whether its dataset is synthetic, names of the synthetic datasets)."""
    by_hash: dict[str, bool] = {}

    def synthetic(h: str) -> bool:
        if h not in by_hash:
            try:
                by_hash[h] = bool(st.datasets.get(h).synthetic)
            except PerturbFMError:  # unreadable here: the runs' own metrics.json still carry the flag
                by_hash[h] = False
        return by_hash[h]

    splits = {}
    for sname, sid in plan.splits.items():
        try:
            splits[sname] = synthetic(st.splits.get(sid).dataset)
        except PerturbFMError:
            splits[sname] = False
    return splits, sorted(n for n, h in plan.datasets.items() if synthetic(h))


def _prepare_state(study_dir: Path, plan: Plan, rebuild_status: bool,
                   say: Callable[[str], None]) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool]:
    """(previous status, recovery record, whether to look for finished runs in the store)."""
    sr = read_status(study_dir)
    if sr.damaged:
        backup = set_aside_damaged_status(study_dir)
        say(f"{STATUS_JSON} is damaged ({sr.problem}); kept as {backup.name}; rebuilding the study state from "
            "the worker records and the run directories of the store")
        return {"cells": {}}, {"reason": f"{STATUS_JSON} was damaged: {sr.problem}", "backup": str(backup)}, True
    if rebuild_status:
        say(f"rebuilding {STATUS_JSON} from the worker records and the run directories of the store")
        return sr.data or {"cells": {}}, {"reason": f"{STATUS_JSON} rebuilt on request (--rebuild-status)"}, True
    if sr.data is None:
        shutil.rmtree(study_dir / "cells", ignore_errors=True)
    return sr.data, None, False


def run_study(
    study_file: str | Path,
    *,
    store: str | Path | None = None,
    max_runs: int | None = None,
    chunk: int | None = None,
    executor: str = DEFAULT_EXECUTOR,
    workers: int | None = None,
    registry: PluginRegistry | None = None,
    say: Callable[[str], None] = lambda _m: None,
    command_hint: Callable[[int], str] | None = None,
    rebuild_status: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> StudyOutcome:
    """Run (or continue) a study. Raises :class:`StudyBudgetError` before any run
    starts when the pending runs exceed ``max_runs`` and no ``chunk`` is given.

    ``rebuild_status``: rebuild the state from the worker records and the store's
    run directories even when ``study_status.json`` is absent (see
    :mod:`perturbfm.study.status`). ``progress``: called (from a monitor thread)
    with ``{done, total, running, changed}`` whenever cells change state."""
    registry = registry or get_registry()
    spec = load_study(study_file)
    if spec.requires:  # pinned plugins: refuse before anything runs
        from perturbfm.plugins import check_requirements

        check_requirements(registry, spec.requires)
    st = ArtifactStore(store)
    max_runs = default_max_runs() if max_runs is None else max_runs
    if chunk is not None and (chunk < 1 or chunk > max_runs):
        raise ConfigError(f"--chunk {chunk} must be between 1 and the run budget {max_runs}", field="--chunk",
                          fix=f"use --chunk {max_runs} or raise --max-runs / ${MAX_RUNS_ENV}")
    ex = registry.create("executor", executor)
    if workers is not None and hasattr(ex, "workers"):
        ex.workers = workers
    study_dir = st.root / "studies" / spec.name
    study_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(study_dir, str(spec.path)):
        return _run_locked(spec, st, study_dir, ex, executor, registry, max_runs, chunk, say, command_hint,
                           rebuild_status, progress)


def _run_locked(spec: StudySpec, st: ArtifactStore, study_dir: Path, ex: Any, executor: str,
                registry: PluginRegistry, max_runs: int, chunk: int | None, say: Callable[[str], None],
                command_hint: Callable[[int], str] | None, rebuild_status: bool,
                progress: Callable[[dict[str, Any]], None] | None) -> StudyOutcome:
    say(f"planning study {spec.name}")
    plan = build_plan(spec, st, registry, say)
    atomic_write_yaml(study_dir / "study.resolved.yaml", _resolved(spec, plan))
    atomic_write_text(study_dir / "plan_filter_report.md", filter_report_md(spec, plan))
    for e in plan.exclusions:
        say(f"excluded {e.kind} {e.entry} ({e.cells} cells): {e.reason}")
    previous, recovery, scan = _prepare_state(study_dir, plan, rebuild_status, say)
    _clear_stop(study_dir)
    cells = reconcile(study_dir, plan.cells, previous, runs_dir=st.runs_dir, scan=scan)
    if recovery is not None:
        recovery["recovered"] = sum(1 for c in cells.values() if c["status"] == "succeeded")
        say(f"recovered {recovery['recovered']} finished runs of {len(cells)}")
    for c in cells.values():
        if c["status"] == "damaged":
            say(f"cell {c['key']} ({c['label']} / {c['split']} / seed {c['seed']}): {c.get('error')}")
    pending = [c for c in plan.cells if cells[c.key]["status"] != "succeeded"]
    synthetic_splits, synthetic_datasets = _synthetic_flags(st, plan)
    base = {"study": spec.name, "study_file": str(spec.path), "store": str(st.root), "n_excluded":
            sum(e.cells for e in plan.exclusions), "error": None, "synthetic_datasets": synthetic_datasets,
            "synthetic_splits": sorted(k for k, v in synthetic_splits.items() if v),
            "last_artifacts": _strs((previous or {}).get("last_artifacts", []))}
    if recovery is not None:
        base["recovery"] = recovery
    if chunk is None and len(pending) > max_runs:
        k = max_runs
        cmd = command_hint(k) if command_hint else f"pfm-bench study run {spec.path} --chunk {k}"
        msg = (f"study {spec.name!r} has {len(pending)} pending runs, more than the budget of {max_runs} "
               f"(--max-runs / ${MAX_RUNS_ENV}); nothing was started")
        write_status(study_dir, {**base, "phase": "refused", "cells": cells, "error": msg,
                                 "next_step": f"run it in chunks: {cmd} (repeat {math.ceil(len(pending) / k)} times)"})
        raise StudyBudgetError(msg, field="--max-runs", fix=f"run it in chunks of {k}: {cmd}   (repeat "
                               f"{math.ceil(len(pending) / k)} times; each invocation continues where the last stopped)")
    todo = pending[:chunk] if chunk else pending
    jobs = []
    for cell in todo:
        cfg = study_dir / "configs" / f"{cell.key}.yaml"
        atomic_write_yaml(cfg, cell.config)
        jobs.append({"store": str(st.root), "study_dir": str(study_dir), "key": cell.key, "model": cell.model,
                     "split": cell.split_id, "config_file": str(cfg), "label": cell.label})
    inv = {"executor": executor, "workers": getattr(ex, "workers", None), "chunk": chunk, "ran": len(jobs)}
    running = {**base, "phase": "running", "invocation": inv,
               "next_step": "wait; if this invocation dies, rerun the same command to continue"}
    write_status(study_dir, {**running, "cells": cells})
    say(f"{len(plan.cells)} runs planned, {len(plan.cells) - len(pending)} already finished, running {len(jobs)} "
        f"with executor {executor}")
    last = {k: c["status"] for k, c in cells.items()}
    if progress is not None:
        progress({**_progress_event(cells, last, len(plan.cells)), "changed": []})
    stop = threading.Event()
    mon = threading.Thread(target=_monitor, args=(study_dir, plan, {**running, "cells": cells}, stop, progress,
                                                  last), daemon=True)
    mon.start()
    interrupted = None
    try:
        with _signals_interrupt():
            ex.map(run_cell_job, jobs)
    except KeyboardInterrupt:
        interrupted = "interrupted by the user (Ctrl-C)"
    except StudyInterrupted as exc:
        interrupted = f"interrupted by {exc.signame}"
    except Exception as exc:  # the executor itself failed (e.g. a worker died): record, then report
        interrupted = f"executor {executor!r} failed: {type(exc).__name__}: {exc}"
    finally:
        stop.set()
        mon.join()
    out = _finish(spec, st, plan, study_dir, {**base, "_previous": {"cells": cells}}, inv, interrupted,
                  command_hint, say, synthetic_splits)
    if progress is not None:
        progress(_progress_event(out.status["cells"], last, len(plan.cells)))
    return out


def _clear_stop(study_dir: Path) -> None:
    stop = study_dir / STOP_FILE
    try:
        stop.unlink(missing_ok=True)
    except OSError as exc:  # a directory or an unremovable file where the STOP marker goes
        raise PerturbFMError(f"cannot remove the study's stop marker: {exc.strerror or exc}", file=str(stop),
                             field=STOP_FILE, fix=f"remove it (rm -r {stop}) and rerun; the study writes it only "
                                                  "to stop on incomplete metric panels") from exc


def _strs(xs: Any) -> list[str]:
    return [x for x in xs if isinstance(x, str)] if isinstance(xs, list) else []


def _finish(spec: StudySpec, st: ArtifactStore, plan: Plan, study_dir: Path, base: dict[str, Any],
            inv: dict[str, Any], interrupted: str | None, command_hint: Callable[[int], str] | None,
            say: Callable[[str], None], synthetic_splits: dict[str, bool]) -> StudyOutcome:
    previous = base.pop("_previous")
    cells = reconcile(study_dir, plan.cells, previous, runs_dir=st.runs_dir)
    left = [c for c in cells.values() if c["status"] != "succeeded"]
    failed = [c for c in cells.values() if c["status"] == "failed"]
    damaged = [c for c in cells.values() if c["status"] == "damaged"]
    again = command_hint(inv["chunk"]) if command_hint and inv["chunk"] else (
        command_hint(0) if command_hint else f"pfm-bench study run {spec.path}")
    stop_reason = read_stop(study_dir)
    if stop_reason is not None:
        phase, error = "stopped", "the study stopped: " + stop_reason
        nxt = ("fix the metric panel (or its plugin) so that every key gets a value or a declared not-applicable "
               f"reason, then rerun: {again}")
    elif interrupted:
        phase, error, nxt = "interrupted", interrupted, f"rerun to continue: {again}"
    elif failed or damaged:
        phase = "failed"
        bad = failed + damaged
        error = f"{len(bad)} runs failed or damaged: " + "; ".join(
            f"{c['label']}/{c['split']}/seed {c['seed']}: {(str(c.get('error') or '').splitlines() or [''])[0][:200]}"
            for c in bad[:5])
        nxt = f"inspect run_status.json of the failed runs, fix the cause, then rerun to retry them: {again}"
    elif left:
        phase, error = "partial", None
        nxt = f"{len(left)} runs left: rerun to continue: {again}"
    else:
        phase, error, nxt = "complete", None, "nothing to do: every planned run succeeded"
    rows, columns = write_summary(study_dir, cells, synthetic=synthetic_splits)
    lookup_idx = {(c["label"], c["split"], c["seed"]): c for c in cells.values()}

    def lookup(label: str, split: str, seed: int) -> Path | str:
        c = lookup_idx.get((label, split, seed))
        if c is None:
            return "not in the plan (excluded or unknown label/split; see plan_filter_report.md)"
        return Path(c["run_dir"]) if c["status"] == "succeeded" else f"status {c['status']}"

    def labels(split: str) -> dict[str, str] | None:
        sid = plan.splits.get(split)
        return st.splits.get(sid).labels if sid else None

    claims = evaluate_claims(spec.claims, list(plan.splits), spec.seeds, lookup, labels, synthetic=synthetic_splits)
    atomic_write_json(study_dir / "claims.json", claims_document(claims, synthetic_splits))
    status = {**base, "phase": phase, "invocation": inv, "cells": cells, "error": error, "next_step": nxt}
    write_study_report(study_dir / "report.html", spec.name, status, rows, columns, claims, plan.exclusions)
    atomic_write_text(study_dir / "provenance_summary.md", provenance_md(spec, plan, st, cells, claims))
    done_dirs = [c["run_dir"] for c in cells.values() if c["status"] == "succeeded"]
    status["last_artifacts"] = [str(study_dir / f) for f in ("summary.csv", "summary.json", "claims.json",
                                                             "report.html", "provenance_summary.md")] + done_dirs[-3:]
    write_status(study_dir, status)
    say(f"study {spec.name}: {phase}; {len(cells) - len(left)}/{len(cells)} runs succeeded"
        + (f"; SYNTHETIC DATA ({', '.join(base['synthetic_datasets'])})" if base.get("synthetic_datasets") else ""))
    return StudyOutcome(study_dir, phase, inv["ran"], status, claims)
