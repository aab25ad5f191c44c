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
from perturbfm.calibration import (
    LEVELS,
    RELIABILITY_LEVELS,
    bootstrap_groups,
    combine_ensemble,
    conformalize,
    reliability,
)
from perturbfm.config import ledger_csv, resolve_config
from perturbfm.dataset import control_stats, ensure_group_column, group_table, grouped_moments
from perturbfm.errors import PanelIncompleteError, PerturbFMError, SplitIntegrityError
from perturbfm.evaluation import CONVENTIONS, EvalData, aggregate, build_eval_data, select_panels, validate_prediction
from perturbfm.fsio import atomic_write_json, atomic_write_text, atomic_write_with, atomic_write_yaml
from perturbfm.hashing import sha256_json
from perturbfm.interfaces import MetricPanel, Model, NotApplicable, Prediction
from perturbfm.plugins import PluginRegistry, get_registry
from perturbfm.provenance import code_git, code_provenance, environment
from perturbfm.references import evaluate_with_references
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
            atomic_write_json(writer.dir / "run_status.json", writer.status)


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
    panels = select_panels(registry, config["run"]["panels"], gives_variance=model_reg.cls.gives_variance)
    check_run_config(model_reg.cls, model_obj.default_config(), config, split_obj)
    cfg_hash = sha256_json({"model_name": model, **config})
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
            "verification": dataset_verification(dataset.manifest),
            "integrity": "file sha256 checked against the store manifest at load",
        },
        "split": {"id": split_id, "generator": split_obj.generator, "params": split_obj.params,
                  "seed": split_obj.seed, "source": split_obj.source, "counts": split_obj.counts()},
        "model": {"name": model, "distribution": model_reg.distribution, "version": model_reg.version},
        "panels": {p.name: {"version": p.version, "distribution": registry.get("metric_panel", p.name).distribution}
                   for p in panels},
        "config_hash": cfg_hash,
        "perturbfm_version": __version__,
        "git": code_git(),  # the commit of the code that ran, not of the current directory
        "plugins": registry.versions(),
        "code": code_provenance(registry.versions()),  # version, location and commit of every distribution
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
        metrics = _fit_predict_evaluate(store, dataset, split_obj, model_obj, panels, config, writer, say,
                                        registry, provenance)
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

    try:
        write_run_report(run_dir, metrics, provenance)
    except Exception as exc:  # metrics.json stands; the run is not complete without its report
        err = PerturbFMError(f"the run's metrics were written but its report failed: {type(exc).__name__}: {exc}",
                             file=str(run_dir / "report.html"),
                             fix="regenerate it with perturbfm.report.render_run_report_from_dir after fixing the cause")
        writer.finish("failed", error=err.render(), traceback=traceback.format_exc())
        _observe(registry, "pfm_run_finished", writer, run_dir=str(run_dir), run_info=run_info, status="failed")
        return RunResult(run_id, run_dir, "failed", metrics=metrics, error=err)
    writer.stage("report", "done")
    writer.finish("succeeded")
    _observe(registry, "pfm_run_finished", writer, run_dir=str(run_dir), run_info=run_info, status="succeeded")
    say(f"run {run_id} succeeded")
    return RunResult(run_id, run_dir, "succeeded", metrics=metrics)


def _slice_prediction(pred: Prediction, ids: Sequence[str]) -> Prediction:
    pos = {g: i for i, g in enumerate(pred.group_ids)}
    rows = [pos[g] for g in ids]
    return Prediction(
        group_ids=list(ids),
        mean_delta=np.asarray(pred.mean_delta)[rows],
        var_delta=None if pred.var_delta is None else np.asarray(pred.var_delta)[rows],
        notes={g: pred.notes[g] for g in ids if g in pred.notes},
        info=pred.info,
        cells=None if pred.cells is None else {g: pred.cells[g] for g in ids if g in pred.cells},
    )


def dataset_verification(manifest: dict[str, Any]) -> dict[str, Any]:
    """How far the data behind a run were verified against a published checksum."""
    if manifest.get("synthetic"):
        return {"status": "synthetic", "detail": "simulated by PerturbFM; there is no published file to verify"}
    reg = (manifest.get("extra") or {}).get("registry")
    if reg and reg.get("verified"):
        return {"status": "verified", "detail": f"file sha256 matched registry entry {reg.get('name')!r}"}
    if reg:
        return {"status": "unverified", "detail": f"registry entry {reg.get('name')!r} has no matching checksum"}
    return {"status": "unverified", "detail": "imported from a local file; no published checksum to compare with"}


def check_run_config(model_cls: type[Model], model_defaults: dict[str, Any], config: dict[str, Any],
                     split: Any) -> None:
    """Refuse uncertainty settings that cannot work, before anything is written."""
    from perturbfm.config import ENSEMBLE_MODES
    from perturbfm.errors import ConfigError

    run = config["run"]
    if run["ensemble"] < 1:
        raise ConfigError("run.ensemble must be at least 1", field="run.ensemble", fix="--set run.ensemble=5")
    if run["ensemble_mode"] not in ENSEMBLE_MODES:
        raise ConfigError(f"unknown run.ensemble_mode {run['ensemble_mode']!r}", field="run.ensemble_mode",
                          fix=f"use one of {', '.join(ENSEMBLE_MODES)}")
    if run["ensemble"] > 1 and run["ensemble_mode"] == "seeds" and "seed" not in model_defaults:
        raise ConfigError(
            f"model {model_cls.name!r} has no seed parameter, so a seed ensemble would repeat one model",
            field="run.ensemble_mode", fix="use --set run.ensemble_mode=bootstrap (resampled training groups)",
        )
    if (run["conformal"] or run["conformal_mondrian"]) and not split.groups("calibration"):
        raise ConfigError(
            f"split {split.id[:12]} has no calibration groups, so conformal intervals cannot be calibrated",
            field="run.conformal",
            fix="create a split with a calibration fold (e.g. --param calibration_fraction=0.2)",
        )


def _fit_members(model_cls: type[Model], train: TrainingData, val: TrainingData | None, groups: dict[str, Any],
                 ctrl: Any, config: dict[str, Any], queries: list[Any], say: Progress) -> tuple[Prediction, Model, float, float]:
    run = config["run"]
    k_members = int(run["ensemble"])
    preds, fit_s, pred_s = [], 0.0, 0.0
    first: Model | None = None
    for k in range(k_members):
        member = model_cls()
        cfg = dict(config["model"])
        member_train = train
        if k_members > 1 and run["ensemble_mode"] == "seeds":
            cfg["seed"] = int(cfg["seed"]) + k
        elif k_members > 1:
            ids = bootstrap_groups(train.group_ids, int(run["seed"]) * 1000 + k)
            member_train = TrainingData(train._adata, [groups[g] for g in ids], ctrl, synthetic=train.synthetic)
        say(f"fitting {model_cls.name} on {len(member_train.groups)} training groups"
            + (f" (member {k + 1}/{k_members})" if k_members > 1 else ""))
        t0 = time.perf_counter()
        member.fit(member_train, val, cfg)
        fit_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        preds.append(member.predict(queries))
        pred_s += time.perf_counter() - t0
        first = first or member
    assert first is not None
    combined = combine_ensemble(preds)
    if k_members > 1:
        combined.info["ensemble_mode"] = run["ensemble_mode"]
    return combined, first, fit_s, pred_s


def _fit_predict_evaluate(
    store: ArtifactStore,
    dataset: Any,
    split: Any,
    model: Model,
    panels: Sequence[MetricPanel],
    config: dict[str, Any],
    writer: RunWriter,
    say: Progress,
    registry: PluginRegistry,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    run_dir = writer.dir
    run_cfg = config["run"]
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
    conformal = bool(run_cfg["conformal"] or run_cfg["conformal_mondrian"])
    cal_groups = [groups[g] for g in split.groups("calibration")] if conformal else []
    writer.stage("load", "done", n_train=len(train.groups), n_test=len(test_groups), n_calibration=len(cal_groups))

    queries = [replace(g, n_cells=0) for g in test_groups + cal_groups]  # the model never sees true cell counts
    pred_all, fitted, fit_s, predict_s = _fit_members(type(model), train, val, groups, ctrl, config, queries, say)
    writer.stage("fit", "done", seconds=round(fit_s, 3))
    writer.stage("predict", "done", seconds=round(predict_s, 3))
    provenance["model"]["spec"] = fitted.describe()
    atomic_write_json(run_dir / "provenance.json", provenance)
    pred = _slice_prediction(pred_all, [g.group_id for g in test_groups]) if cal_groups else pred_all

    say("evaluating")
    data = build_eval_data(
        adata, test_groups, ctrl, pred,
        seed=int(run_cfg["seed"]), max_cells=int(run_cfg["max_cells"]), ood=split.ood,
    )
    conformal_result = None
    if cal_groups:
        validate_prediction(pred_all, [*test_groups, *cal_groups], data.genes)
        cal_pred = _slice_prediction(pred_all, [g.group_id for g in cal_groups])
        labels = ensure_group_column(adata).astype(str).to_numpy()
        cal_mean, _, _ = grouped_moments(adata, labels, [g.group_id for g in cal_groups])
        cal_delta = cal_mean - np.stack([ctrl.mean(g.context) for g in cal_groups])
        levels = sorted(set(LEVELS) | {round(100 * lv) for lv in RELIABILITY_LEVELS})
        conformal_result = conformalize(cal_delta, cal_pred, [g.context for g in cal_groups], pred,
                                        [g.context for g in test_groups], mondrian=bool(run_cfg["conformal_mondrian"]),
                                        levels=levels)
        data.extra["intervals"] = {lv: conformal_result.intervals[lv] for lv in LEVELS}
        data.extra["interval_source"] = "conformal"
    genes = data.genes
    pa = predictions_adata(pred, test_groups, genes, data.ctrl_mean, synthetic)
    if conformal_result is not None:
        for lv in LEVELS:
            pa.layers[f"conformal_lo_{lv}"], pa.layers[f"conformal_hi_{lv}"] = conformal_result.intervals[lv]
    atomic_write_with(run_dir / "predictions.h5ad", lambda p: pa.write_h5ad(p), suffix=".h5ad")
    writer.stage("predictions", "done")
    say("evaluating: references (baseline, split-half replicates, independent controls, train-mean)")
    tm_delta, tm_reason = _train_mean_reference(registry, train, val, test_groups, model.name)
    panels_out, references = evaluate_with_references(
        panels, data, train_mean=tm_delta, train_mean_reason=tm_reason,
        replicate_seeds=int(run_cfg["replicate_seeds"]), say=say)
    calibration = build_calibration(data, registry, conformal_result, config)
    atomic_write_json(run_dir / "calibration.json", calibration)
    writer.stage("calibration", "done")
    metrics = {
        "schema": 1,
        "run_id": writer.run_id,
        "synthetic": synthetic,
        **({"synthetic_note": SYNTHETIC_BANNER} if synthetic else {}),
        "data_verification": provenance["dataset"]["verification"],
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
            "intervals": "conformal (see calibration.json)" if conformal_result is not None else
            "Gaussian from the predicted variance" if pred.var_delta is not None else "none (no variance)",
        },
        "model_info": pred.info,
        "model_notes": dict(sorted(pred.notes.items())),
        "model_diagnostics": fitted.diagnostics(),
        "timing_seconds": {"fit": round(fit_s, 3), "predict": round(predict_s, 3)},
        "groups": [{"group_id": g.group_id, "context": g.context, "n_true_cells": g.n_cells,
                    **({"label": split.labels[g.group_id]} if split.labels and g.group_id in split.labels else {}),
                    **({"ood": split.ood[g.group_id]} if split.ood and g.group_id in split.ood else {})}
                   for g in data.groups],
        "panel_selection": panel_selection(config, panels),
        "references": references,
        "panels": panels_out,
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    writer.stage("evaluate", "done")
    return metrics


def _train_mean_reference(registry: PluginRegistry, train: TrainingData, val: TrainingData | None,
                          test_groups: Sequence[Any], model_name: str) -> tuple[np.ndarray | None, str]:
    """The ``train-mean`` model's predicted deltas for the test groups, or None and why."""
    from perturbfm.errors import PluginError

    if not train.groups:
        return None, "the split has no training groups"
    try:
        reg = registry.get("model", "train-mean")
    except PluginError:
        return None, "the train-mean model is not installed (pip install perturbfm-models)"
    ref: Model = reg.cls()
    try:
        ref.fit(train, val, ref.default_config())
        pred = ref.predict([replace(g, n_cells=0) for g in test_groups])
    except Exception as exc:  # the reference is reported unavailable, the run goes on
        return None, f"the train-mean reference failed: {type(exc).__name__}: {exc}"
    return np.asarray(pred.mean_delta, dtype=np.float64), ""


def panel_selection(config: dict[str, Any], panels: Sequence[MetricPanel]) -> dict[str, Any]:
    """Which panels were computed and whether that is the standard set."""
    requested = config["run"].get("panels")
    return {"panels": [p.name for p in panels],
            "selection": "standard (every installed standard panel)" if requested in (None, "standard") else
            "narrower set requested (run.panels)" if isinstance(requested, list) else str(requested)}


def _panel_summary(values: dict[str, Any], data: EvalData) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in values.items():
        if isinstance(v, NotApplicable):
            out[key] = {"not_applicable": v.reason}
        else:
            agg = aggregate(v, data.groups)
            out[key] = {"global": agg["global"], "per_context": agg["per_context"], **(
                {"extra": agg["extra"]} if "extra" in agg else {})}
    return out


def build_calibration(data: EvalData, registry: PluginRegistry, conformal: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The calibration contract of a run (``calibration.json``)."""
    from perturbfm.errors import PluginError

    run_cfg = config["run"]
    out: dict[str, Any] = {
        "schema": 1,
        "levels": list(LEVELS),
        "ensemble": {"members": int(run_cfg["ensemble"]), "mode": run_cfg["ensemble_mode"]},
        "variance_available": data.pred_var is not None,
    }
    try:
        panel = registry.create("metric_panel", "uncertainty")
    except PluginError as exc:
        out["not_applicable"] = f"the uncertainty panel is not installed: {exc.message}"
        return out
    intervals = data.extra.pop("intervals", None)
    try:
        gauss = _panel_summary(panel.compute(data), data)
    finally:
        if intervals is not None:
            data.extra["intervals"] = intervals
    cov = {str(lv): gauss.get(f"coverage@{lv}") for lv in LEVELS}
    if data.pred_var is not None:
        out["gaussian"] = {"coverage": {k: v["global"] for k, v in cov.items() if v and "global" in v},
                           "coverage_detail": cov,
                           "reliability": reliability(data.true_delta, data.pred_delta, data.pred_var)}
    else:
        out["gaussian"] = {"not_applicable": "the model gives no predictive variance"}
    if conformal is not None:
        conf = _panel_summary(panel.compute(data), data)
        out["conformal"] = {
            "coverage": {str(lv): conf[f"coverage@{lv}"].get("global") for lv in LEVELS},
            "coverage_detail": {str(lv): conf[f"coverage@{lv}"] for lv in LEVELS},
            "reliability": reliability(data.true_delta, data.pred_delta, None,
                                       intervals_at=lambda lv: conformal.intervals[round(100 * lv)]),
            "mondrian": bool(run_cfg["conformal_mondrian"]),
            **conformal.summary(),
        }
    else:
        out["conformal"] = {"not_applicable": "conformal intervals were not requested (run.conformal=false)"}
    for key in ("nll", "aurc", "ood_auroc"):
        entry = gauss.get(key, {"not_applicable": "not computed by the uncertainty panel"})
        out[key] = entry.get("global", entry) if "not_applicable" not in entry else entry
        if key == "aurc" and "extra" in entry:
            out["risk_coverage"] = entry["extra"].get("risk_coverage")
            out["aurc_random_reference"] = entry["extra"].get("random_reference")
    return out
