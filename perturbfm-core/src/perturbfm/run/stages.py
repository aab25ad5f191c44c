"""The stages of a run, each a function of the :class:`~perturbfm.run.context.RunContext`:

resolve -> create -> setup -> load -> fit -> predict -> evaluate (panels,
references, calibration) -> documents -> report.

Only :func:`resolve` runs before the run directory exists; its errors are raised to
the caller. Every document is written once, by the run's
:class:`~perturbfm.run.writer.RunWriter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from perturbfm import __version__
from perturbfm.calibration import LEVELS, RELIABILITY_LEVELS, bootstrap_groups, combine_ensemble, conformalize
from perturbfm.calibration_metrics import calibrate
from perturbfm.config import ledger_csv, resolve_config
from perturbfm.dataset import control_stats, ensure_group_column, group_table, grouped_moments
from perturbfm.evaluation import CONVENTIONS, build_eval_data, select_panels, validate_prediction
from perturbfm.hashing import sha256_json
from perturbfm.interfaces import Model, Prediction
from perturbfm.options import config_model_of
from perturbfm.provenance import code_git, code_provenance, environment
from perturbfm.references import evaluate_with_references
from perturbfm.run.context import (
    SYNTHETIC_BANNER,
    Progress,
    RunContext,
    check_run_config,
    check_split_groups,
    dataset_verification,
    make_run_id,
    panel_selection,
    predictions_adata,
    slice_prediction,
)
from perturbfm.run.guards import Deadline, check_prediction, check_timeout, model_dict
from perturbfm.run.writer import RunWriter, create_run_dir
from perturbfm.store import utc_now
from perturbfm.training import TrainingData


def resolve(store: Any, registry: Any, *, model: str, split: str, config_file: str | Path | None,
            sets: Sequence[str], say: Progress) -> RunContext:
    """Split, dataset, model, configuration and panels; refuses a bad run before anything is written."""
    split_obj = store.splits.get(split)
    dataset = store.datasets.get(split_obj.dataset)
    model_reg = registry.get("model", model)
    defaults = model_reg.cls().default_config()
    config, ledger = resolve_config(defaults, config_file=config_file, sets=sets, model_name=model,
                                    config_model=config_model_of(model_reg.cls))
    panels = select_panels(registry, config["run"]["panels"], gives_variance=model_reg.cls.gives_variance)
    check_run_config(model_reg.cls, defaults, config, split_obj)
    cfg_hash = sha256_json({"model_name": model, **config})
    return RunContext(store=store, registry=registry, model_name=model, model_reg=model_reg, split=split_obj,
                      dataset=dataset, config=config, ledger=ledger, panels=panels, cfg_hash=cfg_hash,
                      run_id=make_run_id(split_obj.id, model, cfg_hash), say=say,
                      timeout_s=check_timeout(config["run"].get("timeout_s")))


def create(ctx: RunContext) -> None:
    """The run directory (exclusive) and its first status; from here on the run always ends with a status."""
    ctx.run_dir = create_run_dir(Path(ctx.store.runs_dir), ctx.run_id)
    ctx.run_id = ctx.run_dir.name
    ctx.writer = RunWriter(ctx.run_dir, ctx.run_id)


def setup(ctx: RunContext) -> None:
    """The provenance record (written at the end), the resolved config and the parameter ledger."""
    ctx.provenance = _provenance(ctx)
    ctx.writer.yaml("config.resolved.yaml", {"model_name": ctx.model_name, "split": ctx.split.id, **ctx.config},
                    "the resolved configuration")
    ctx.writer.text("parameters.csv", ledger_csv(ctx.ledger), "the parameter ledger")
    ctx.writer.stage("setup", "done")


def _provenance(ctx: RunContext) -> dict[str, Any]:
    ds, sp, reg = ctx.dataset, ctx.split, ctx.registry
    return {
        "run_id": ctx.run_id,
        "synthetic": ctx.synthetic,
        "dataset": {
            "hash": ds.hash,
            "source": ds.manifest.get("source"),
            "adapter": ds.manifest.get("adapter"),
            "licence": ds.manifest.get("licence"),
            "citation": ds.manifest.get("citation"),
            "expression_space": ds.manifest.get("expression_space"),
            "verification": dataset_verification(ds.manifest),
            "integrity": "file sha256 checked against the store manifest at load",
        },
        "split": {"id": sp.id, "generator": sp.generator, "params": sp.params, "seed": sp.seed, "source": sp.source,
                  "counts": sp.counts()},
        "model": {"name": ctx.model_name, "distribution": ctx.model_reg.distribution,
                  "version": ctx.model_reg.version},
        "panels": {p.name: {"version": p.version, "distribution": reg.get("metric_panel", p.name).distribution}
                   for p in ctx.panels},
        "config_hash": ctx.cfg_hash,
        "perturbfm_version": __version__,
        "git": code_git(),  # the commit of the code that ran, not of the current directory
        "plugins": reg.versions(),
        "code": code_provenance(reg.versions()),  # version, location and commit of every distribution
        "environment": environment(),
        "created_at": utc_now(),
    }


def load(ctx: RunContext) -> None:
    """The dataset, its groups and control statistics, and the split's roles."""
    ctx.say("loading dataset")
    adata = ctx.adata = ctx.dataset.load()
    groups = ctx.groups = group_table(adata)
    check_split_groups(list(ctx.split.assignments), groups, ctx.split.id)
    ctrl = ctx.ctrl = control_stats(adata)
    ctx.train = TrainingData(adata, [groups[g] for g in ctx.split.groups("train")], ctrl, synthetic=ctx.synthetic)
    val_ids = ctx.split.groups("val")
    ctx.val = (TrainingData(adata, [groups[g] for g in val_ids], ctrl, synthetic=ctx.synthetic, role="val")
               if val_ids else None)
    ctx.test_groups = [groups[g] for g in ctx.split.groups("test")]
    conformal = bool(ctx.run_cfg["conformal"] or ctx.run_cfg["conformal_mondrian"])
    ctx.cal_groups = [groups[g] for g in ctx.split.groups("calibration")] if conformal else []
    ctx.writer.stage("load", "done", n_train=len(ctx.train.groups), n_test=len(ctx.test_groups),
                     n_calibration=len(ctx.cal_groups))


def fit(ctx: RunContext, deadline: Deadline) -> None:
    """Fit the model (or each member of an ensemble) under the run's time limit."""
    import time

    from perturbfm.envs import IsolatedModel
    from perturbfm.envs.harness import prepare_environment

    model_cls: type[Model] = ctx.model_reg.cls
    binding = prepare_environment(ctx, deadline)  # a model in its own environment: built or reused, not timed
    k_members = int(ctx.run_cfg["ensemble"])
    for k in range(k_members):
        member = model_cls()
        if binding is not None and isinstance(member, IsolatedModel):
            member.bind(binding)
        cfg = dict(ctx.config["model"])
        member_train = ctx.train
        if k_members > 1 and ctx.run_cfg["ensemble_mode"] == "seeds":
            cfg["seed"] = int(cfg["seed"]) + k
        elif k_members > 1:
            ids = bootstrap_groups(ctx.train.group_ids, int(ctx.run_cfg["seed"]) * 1000 + k)
            member_train = TrainingData(ctx.adata, [ctx.groups[g] for g in ids], ctx.ctrl, synthetic=ctx.synthetic)
        ctx.say(f"fitting {model_cls.name} on {len(member_train.groups)} training groups"
                + (f" (member {k + 1}/{k_members})" if k_members > 1 else ""))
        t0 = time.perf_counter()
        with deadline.guard(f"fitting model {ctx.model_name!r}"):
            member.fit(member_train, ctx.val, cfg)
        ctx.timings["fit"] += time.perf_counter() - t0
        ctx.members.append(member)
    ctx.writer.stage("fit", "done", seconds=round(ctx.timings["fit"], 3))


def predict(ctx: RunContext, deadline: Deadline) -> None:
    """Predict the test (and calibration) groups; the model never sees true cell counts."""
    import time

    from perturbfm.envs import IsolatedModel

    queries = [replace(g, n_cells=0) for g in ctx.test_groups + ctx.cal_groups]
    preds: list[Prediction] = []
    for member in ctx.members:
        t0 = time.perf_counter()
        with deadline.guard(f"model {ctx.model_name!r} predicting"):
            out = member.predict(list(queries))
        ctx.timings["predict"] += time.perf_counter() - t0
        preds.append(check_prediction(out, ctx.model_name))
        if isinstance(member, IsolatedModel):
            member.close()  # an isolated model's state folder: its results are in memory now
    combined = combine_ensemble(preds)
    if len(preds) > 1:
        combined.info["ensemble_mode"] = ctx.run_cfg["ensemble_mode"]
    ctx.pred_all = combined
    ctx.pred = slice_prediction(combined, [g.group_id for g in ctx.test_groups]) if ctx.cal_groups else combined
    ctx.writer.stage("predict", "done", seconds=round(ctx.timings["predict"], 3))


def evaluate(ctx: RunContext) -> None:
    """Evaluation inputs, conformal intervals, the core's calibration metrics, then
    every panel with its references (baseline, replicate, indep. controls, training mean)."""
    ctx.say("evaluating")
    run_cfg, adata, ctrl = ctx.run_cfg, ctx.adata, ctx.ctrl
    assert ctx.pred is not None and ctx.pred_all is not None and adata is not None
    data = ctx.data = build_eval_data(adata, ctx.test_groups, ctrl, ctx.pred, seed=int(run_cfg["seed"]),
                                      max_cells=int(run_cfg["max_cells"]), ood=ctx.split.ood)
    if ctx.cal_groups:
        validate_prediction(ctx.pred_all, [*ctx.test_groups, *ctx.cal_groups], data.genes)
        cal_pred = slice_prediction(ctx.pred_all, [g.group_id for g in ctx.cal_groups])
        labels = ensure_group_column(adata).astype(str).to_numpy()
        cal_mean, _, _ = grouped_moments(adata, labels, [g.group_id for g in ctx.cal_groups])
        cal_delta = cal_mean - np.stack([ctrl.mean(g.context) for g in ctx.cal_groups])
        levels = sorted(set(LEVELS) | {round(100 * lv) for lv in RELIABILITY_LEVELS})
        ctx.conformal = conformalize(cal_delta, cal_pred, [g.context for g in ctx.cal_groups], ctx.pred,
                                     [g.context for g in ctx.test_groups],
                                     mondrian=bool(run_cfg["conformal_mondrian"]), levels=levels)
    data.calibration, ctx.calibration = calibrate(data, ctx.conformal, run_cfg)
    ctx.writer.stage("calibration", "done")
    ctx.say("evaluating: references (baseline, split-half replicates, independent controls, training mean)")
    tm_delta, tm_reason = training_mean_reference(ctx.train, ctx.test_groups)
    ctx.panels_out, ctx.references = evaluate_with_references(
        ctx.panels, data, train_mean=tm_delta, train_mean_reason=tm_reason,
        replicate_seeds=int(run_cfg["replicate_seeds"]), say=ctx.say)
    ctx.writer.stage("evaluate", "done")


def training_mean_reference(train: TrainingData, test_groups: Sequence[Any]) -> tuple[np.ndarray | None, str]:
    """The training mean's deltas for the test groups (see
    :meth:`~perturbfm.training.TrainingData.training_mean`), or None and why."""
    if not train.groups:
        return None, "the split has no training groups"
    delta, _ = train.training_mean([replace(g, n_cells=0) for g in test_groups])
    return delta, ""


def documents(ctx: RunContext) -> None:
    """predictions.h5ad, calibration.json, provenance.json and metrics.json, each written once."""
    data, pred, w = ctx.data, ctx.pred, ctx.writer
    assert data is not None and pred is not None
    fitted = ctx.members[0]
    diagnostics = model_dict(fitted, "diagnostics", ctx.model_name)
    ctx.provenance["model"]["spec"] = model_dict(fitted, "describe", ctx.model_name)
    pa = predictions_adata(pred, ctx.test_groups, data.genes, data.ctrl_mean, ctx.synthetic)
    if ctx.conformal is not None:
        for lv in LEVELS:
            pa.layers[f"conformal_lo_{lv}"], pa.layers[f"conformal_hi_{lv}"] = ctx.conformal.intervals[lv]
    est = pa.n_obs * pa.n_vars * 8 * (1 + len(pa.layers))
    w.large("predictions.h5ad", lambda p: pa.write_h5ad(p), est, "the predictions", suffix=".h5ad")
    w.stage("predictions", "done")
    w.json("calibration.json", ctx.calibration, "the calibration metrics")
    w.json("provenance.json", ctx.provenance, "the provenance record")
    split = ctx.split
    ctx.metrics = {
        "schema": 1,
        "run_id": ctx.run_id,
        "synthetic": ctx.synthetic,
        **({"synthetic_note": SYNTHETIC_BANNER} if ctx.synthetic else {}),
        "data_verification": ctx.provenance["dataset"]["verification"],
        "dataset": ctx.dataset.hash,
        "split": split.id,
        "model": ctx.model_name,
        "n_groups": len(ctx.test_groups),
        "n_true_cells": int(data.n_true.sum()),
        "conventions": {
            **CONVENTIONS,
            "predicted_cells": "the model's own cells" if not data.pred_cells_constructed else
            "constructed as the context's control cells + the predicted delta (the model gives no cells)",
            "cell_subsampling": {"max_cells_per_group": data.max_cells, "seed": data.seed},
            "intervals": "conformal (see calibration.json)" if ctx.conformal is not None else
            "Gaussian from the predicted variance" if pred.var_delta is not None else "none (no variance)",
        },
        "model_info": pred.info,
        "model_notes": dict(sorted(pred.notes.items())),
        "model_diagnostics": diagnostics,
        "timing_seconds": {"fit": round(ctx.timings["fit"], 3), "predict": round(ctx.timings["predict"], 3)},
        "groups": [{"group_id": g.group_id, "context": g.context, "n_true_cells": g.n_cells,
                    **({"label": split.labels[g.group_id]} if split.labels and g.group_id in split.labels else {}),
                    **({"ood": split.ood[g.group_id]} if split.ood and g.group_id in split.ood else {})}
                   for g in data.groups],
        "panel_selection": panel_selection(ctx.config, ctx.panels),
        "references": ctx.references,
        "panels": ctx.panels_out,
    }
    w.json("metrics.json", ctx.metrics, "the metrics")
    w.stage("documents", "done")


def report(ctx: RunContext) -> None:
    """report.html, with the model's own sections."""
    from perturbfm.report import write_run_report

    assert ctx.run_dir is not None and ctx.metrics is not None
    sections = ctx.model_reg.cls.report_sections(ctx.metrics.get("model_diagnostics") or {})
    write_run_report(ctx.run_dir, ctx.metrics, ctx.provenance, sections=sections)
    ctx.writer.written.append("report.html")
    ctx.writer.stage("report", "done")
