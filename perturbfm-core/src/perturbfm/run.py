"""``pfm-bench run``: fit -> predict -> evaluate -> check panels -> write the run.

A run directory (see DESIGN.md) holds ``config.resolved.yaml``,
``parameters.csv``, ``predictions.h5ad``, ``metrics.json`` (only when every
panel is complete), ``run_status.json``, ``report.html`` and
``provenance.json``. Every file is written atomically.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from perturbfm import __version__
from perturbfm.config import ledger_csv, resolve_config
from perturbfm.dataset import control_stats, group_table
from perturbfm.errors import PanelIncompleteError, PerturbFMError, SplitIntegrityError
from perturbfm.evaluation import CONVENTIONS, build_eval_data, evaluate_panels
from perturbfm.fsio import atomic_write_json, atomic_write_text, atomic_write_with, atomic_write_yaml
from perturbfm.hashing import sha256_json
from perturbfm.interfaces import MetricPanel, Model, Prediction
from perturbfm.plugins import PluginRegistry, get_registry
from perturbfm.provenance import environment, git_sha
from perturbfm.store import ArtifactStore, utc_now
from perturbfm.training import TrainingData

SYNTHETIC_BANNER = "SYNTHETIC DATA: these results come from simulated data, not from a real screen"

Progress = Callable[[str], None]


@dataclass
class RunResult:
    """Where a run went and how it ended."""

    run_id: str
    run_dir: Path
    status: str
    metrics: dict[str, Any] | None = None
    error: PerturbFMError | None = None


def make_run_id(split_id: str, model: str, config_hash: str, when: datetime | None = None) -> str:
    """``<UTCYYYYMMDD-HHMMSS>_<split7>_<model>_<config7>``."""
    when = when or datetime.now(UTC)
    safe_model = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in model)
    return f"{when:%Y%m%d-%H%M%S}_{split_id[:7]}_{safe_model}_{config_hash[:7]}"


class RunWriter:
    """Writes the files of one run directory, atomically, and its status."""

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.dir = run_dir
        self.run_id = run_id
        self.status: dict[str, Any] = {"run_id": run_id, "status": "running", "stages": {}, "started_at": utc_now()}

    def stage(self, name: str, state: str, **info: Any) -> None:
        self.status["stages"][name] = {"state": state, "at": utc_now(), **info}
        self.status["current_stage"] = name
        atomic_write_json(self.dir / "run_status.json", self.status)

    def finish(self, status: str, **info: Any) -> None:
        self.status.update(status=status, finished_at=utc_now(), **info)
        atomic_write_json(self.dir / "run_status.json", self.status)


def _check_split_groups(split_groups: Sequence[str], groups: dict[str, Any], split_id: str) -> None:
    missing = sorted(set(split_groups) - set(groups))
    if missing:
        raise SplitIntegrityError(
            f"split {split_id[:12]} names {len(missing)} groups that the dataset does not have: "
            + ", ".join(missing[:10]),
            field="assignments",
            fix="the split belongs to another dataset version; create or import the split again",
        )


def predictions_adata(pred: Prediction, queries: Sequence[Any], genes: Sequence[str],
                      ctrl_mean: np.ndarray, synthetic: bool) -> ad.AnnData:
    """Group-level predictions: X = control mean + predicted delta."""
    obs = pd.DataFrame(
        {
            "perturbation": [q.perturbation for q in queries],
            "context": [q.context for q in queries],
            "covariates": [q.covariates for q in queries],
            "model_note": [pred.notes.get(q.group_id, "") for q in queries],
            "synthetic": [synthetic] * len(queries),
        },
        index=[q.group_id for q in queries],
    )
    out = ad.AnnData(X=ctrl_mean + pred.mean_delta, obs=obs, var=pd.DataFrame(index=list(genes)))
    out.layers["delta"] = np.asarray(pred.mean_delta, dtype=np.float64)
    if pred.var_delta is not None:
        out.layers["var"] = np.asarray(pred.var_delta, dtype=np.float64)
    out.uns["synthetic"] = synthetic
    out.uns["x_definition"] = "predicted mean expression = true control mean of the context + predicted delta"
    return out


def _observe(registry: PluginRegistry, hook: str, writer: RunWriter, **kwargs: Any) -> None:
    caller = getattr(registry.pm.hook, hook)
    for impl in caller.get_hookimpls():
        try:
            impl.function(**kwargs)
        except Exception as exc:  # observers never abort a run; their failure is recorded
            writer.status.setdefault("observer_errors", []).append(f"{impl.plugin_name}.{hook}: {exc}")


def execute_run(
    store: ArtifactStore,
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
    exists (unknown split, model or panel, bad config). Later failures are
    recorded in ``run_status.json`` and returned with ``status="failed"``.
    """
    say = progress or (lambda _msg: None)
    registry = registry or get_registry()
    split_obj = store.splits.get(split)
    split_id = split_obj.id
    dataset = store.datasets.get(split_obj.dataset)
    model_reg = registry.get("model", model)
    model_obj: Model = model_reg.cls()
    config, ledger = resolve_config(model_obj.default_config(), config_file=config_file, sets=sets, model_name=model)
    panels: list[MetricPanel] = []
    for p in config["run"]["panels"]:
        panels.append(registry.create("metric_panel", p))
    if not panels:
        raise PerturbFMError("no metric panels requested", field="run.panels", fix="set run.panels, e.g. [basic]")
    cfg_hash = sha256_json(config)
    run_id = make_run_id(split_id, model, cfg_hash)
    run_dir = store.runs_dir / run_id
    n = 2
    while run_dir.exists():
        run_dir = store.runs_dir / f"{run_id}_{n}"
        n += 1
    run_id = run_dir.name
    run_dir.mkdir(parents=True)
    writer = RunWriter(run_dir, run_id)
    synthetic = dataset.synthetic
    provenance: dict[str, Any] = {
        "run_id": run_id,
        "synthetic": synthetic,
        "dataset": {
            "hash": dataset.hash,
            "source": dataset.manifest.get("source"),
            "adapter": dataset.manifest.get("adapter"),
            "licence": dataset.manifest.get("licence"),
            "citation": dataset.manifest.get("citation"),
            "expression_space": dataset.manifest.get("expression_space"),
            "verification": "file sha256 checked against the store manifest at load",
        },
        "split": {"id": split_id, "generator": split_obj.generator, "params": split_obj.params,
                  "seed": split_obj.seed, "source": split_obj.source, "counts": split_obj.counts()},
        "model": {"name": model, "distribution": model_reg.distribution, "version": model_reg.version},
        "panels": {p.name: {"version": p.version, "distribution": registry.get("metric_panel", p.name).distribution}
                   for p in panels},
        "config_hash": cfg_hash,
        "perturbfm_version": __version__,
        "git": git_sha(Path.cwd()),
        "plugins": registry.versions(),
        "environment": environment(),
        "created_at": utc_now(),
    }
    atomic_write_yaml(run_dir / "config.resolved.yaml", {"model_name": model, "split": split_id, **config})
    atomic_write_text(run_dir / "parameters.csv", ledger_csv(ledger))
    atomic_write_json(run_dir / "provenance.json", provenance)
    run_info = {"run_id": run_id, "model": model, "split": split_id, "config": config, "synthetic": synthetic}
    writer.stage("setup", "done")
    _observe(registry, "pfm_run_started", writer, run_dir=str(run_dir), run_info=run_info)
    try:
        metrics = _fit_predict_evaluate(store, dataset, split_obj, model_obj, panels, config, writer, say)
    except PanelIncompleteError as exc:
        writer.finish("failed", error=exc.render(), missing=[list(p) for p in exc.problems])
        _observe(registry, "pfm_run_finished", writer, run_dir=str(run_dir), run_info=run_info, status="failed")
        return RunResult(run_id, run_dir, "failed", error=exc)
    except PerturbFMError as exc:
        writer.finish("failed", error=exc.render())
        _observe(registry, "pfm_run_finished", writer, run_dir=str(run_dir), run_info=run_info, status="failed")
        return RunResult(run_id, run_dir, "failed", error=exc)
    except Exception as exc:
        writer.finish("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        _observe(registry, "pfm_run_finished", writer, run_dir=str(run_dir), run_info=run_info, status="failed")
        raise
    from perturbfm.report import write_run_report

    write_run_report(run_dir, metrics, provenance)
    writer.stage("report", "done")
    writer.finish("succeeded")
    _observe(registry, "pfm_run_finished", writer, run_dir=str(run_dir), run_info=run_info, status="succeeded")
    say(f"run {run_id} succeeded")
    return RunResult(run_id, run_dir, "succeeded", metrics=metrics)


def _fit_predict_evaluate(
    store: ArtifactStore,
    dataset: Any,
    split: Any,
    model: Model,
    panels: Sequence[MetricPanel],
    config: dict[str, Any],
    writer: RunWriter,
    say: Progress,
) -> dict[str, Any]:
    run_dir = writer.dir
    say("loading dataset")
    adata = dataset.load()
    groups = group_table(adata)
    _check_split_groups(list(split.assignments), groups, split.id)
    ctrl = control_stats(adata)
    synthetic = dataset.synthetic
    train = TrainingData(adata, [groups[g] for g in split.groups("train")], ctrl, synthetic=synthetic)
    val_ids = split.groups("val")
    val = TrainingData(adata, [groups[g] for g in val_ids], ctrl, synthetic=synthetic, role="val") if val_ids else None
    test_groups = [groups[g] for g in split.groups("test")]
    writer.stage("load", "done", n_train=len(train.groups), n_test=len(test_groups))

    say(f"fitting {model.name} on {len(train.groups)} training groups")
    t0 = time.perf_counter()
    model.fit(train, val, dict(config["model"]))
    fit_s = time.perf_counter() - t0
    writer.stage("fit", "done", seconds=round(fit_s, 3))

    say(f"predicting {len(test_groups)} held-out groups")
    queries = [replace(g, n_cells=0) for g in test_groups]  # the model never sees the true cell counts
    t0 = time.perf_counter()
    pred = model.predict(queries)
    predict_s = time.perf_counter() - t0
    writer.stage("predict", "done", seconds=round(predict_s, 3))

    say("evaluating")
    data = build_eval_data(
        adata, test_groups, ctrl, pred,
        seed=int(config["run"]["seed"]), max_cells=int(config["run"]["max_cells"]), ood=split.ood,
    )
    genes = data.genes
    pa = predictions_adata(pred, test_groups, genes, data.ctrl_mean, synthetic)
    atomic_write_with(run_dir / "predictions.h5ad", lambda p: pa.write_h5ad(p), suffix=".h5ad")
    writer.stage("predictions", "done")
    panels_out = evaluate_panels(panels, data)
    metrics = {
        "schema": 1,
        "run_id": writer.run_id,
        "synthetic": synthetic,
        **({"synthetic_note": SYNTHETIC_BANNER} if synthetic else {}),
        "dataset": dataset.hash,
        "split": split.id,
        "model": model.name,
        "n_groups": len(test_groups),
        "n_true_cells": int(data.n_true.sum()),
        "conventions": {
            **CONVENTIONS,
            "predicted_cells": "the model's own cells" if not data.pred_cells_constructed else
            "constructed as the context's control cells + the predicted delta (the model gives no cells)",
            "cell_subsampling": {"max_cells_per_group": data.max_cells, "seed": data.seed},
        },
        "model_info": pred.info,
        "model_notes": dict(sorted(pred.notes.items())),
        "model_diagnostics": model.diagnostics(),
        "timing_seconds": {"fit": round(fit_s, 3), "predict": round(predict_s, 3)},
        "groups": [{"group_id": g.group_id, "context": g.context, "n_true_cells": g.n_cells} for g in data.groups],
        "panels": panels_out,
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    writer.stage("evaluate", "done")
    return metrics
