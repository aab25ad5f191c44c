"""The explicit state a run's stages pass along (:class:`RunContext`), what a run
returns (:class:`RunResult`) and the small pure helpers the stages share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from perturbfm.errors import ConfigError, PerturbFMError, SplitIntegrityError
from perturbfm.interfaces import MetricPanel, Model, Prediction

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


@dataclass
class RunContext:
    """Everything the stages of one run share; each stage reads what earlier stages set.

    Set by *resolve*: store, registry, model_name, model_reg, split, dataset, config,
    ledger, panels, cfg_hash, run_id, timeout. By *create*: run_dir, writer. By *load*:
    adata, groups, ctrl, train, val, test_groups, cal_groups. By *fit*: members.
    By *predict*: pred_all, pred. By *evaluate*: data, conformal, calibration,
    panels_out, references. By *documents*: metrics.
    """

    store: Any
    registry: Any
    model_name: str
    model_reg: Any
    split: Any
    dataset: Any
    config: dict[str, Any]
    ledger: list[Any]
    panels: list[MetricPanel]
    cfg_hash: str
    run_id: str
    say: Progress
    timeout_s: float | None = None
    run_dir: Path | None = None
    writer: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)
    # load
    adata: ad.AnnData | None = None
    groups: dict[str, Any] = field(default_factory=dict)
    ctrl: Any = None
    train: Any = None
    val: Any = None
    test_groups: list[Any] = field(default_factory=list)
    cal_groups: list[Any] = field(default_factory=list)
    # fit / predict
    members: list[Model] = field(default_factory=list)
    pred_all: Prediction | None = None
    pred: Prediction | None = None
    # evaluate
    data: Any = None
    conformal: Any = None
    calibration: dict[str, Any] | None = None
    panels_out: dict[str, Any] | None = None
    references: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"fit": 0.0, "predict": 0.0})
    notes: list[str] = field(default_factory=list)

    @property
    def run_cfg(self) -> dict[str, Any]:
        return self.config["run"]

    @property
    def synthetic(self) -> bool:
        return bool(self.dataset.synthetic)

    @property
    def run_info(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model": self.model_name, "split": self.split.id,
                "dataset": self.dataset.hash, "config": self.config, "synthetic": self.synthetic}


def make_run_id(split_id: str, model: str, config_hash: str, when: datetime | None = None) -> str:
    """``<UTCYYYYMMDD-HHMMSS>_<split7>_<model>_<config7>``."""
    when = when or datetime.now(UTC)
    safe_model = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in model)
    return f"{when:%Y%m%d-%H%M%S}_{split_id[:7]}_{safe_model}_{config_hash[:7]}"


def check_split_groups(split_groups: Sequence[str], groups: dict[str, Any], split_id: str) -> None:
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


def slice_prediction(pred: Prediction, ids: Sequence[str]) -> Prediction:
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
    """Refuse run settings that cannot work, before anything is written."""
    from perturbfm.config import ENSEMBLE_MODES
    from perturbfm.envs.harness import check_declaration
    from perturbfm.evaldata import check_sampling
    from perturbfm.run.guards import check_timeout

    run = config["run"]
    check_declaration(model_cls)
    check_sampling(run["max_cells"], run["seed"])
    check_timeout(run.get("timeout_s"))
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


def panel_selection(config: dict[str, Any], panels: Sequence[MetricPanel]) -> dict[str, Any]:
    """Which panels were computed and whether that is the standard set."""
    requested = config["run"].get("panels")
    return {"panels": [p.name for p in panels],
            "selection": "standard (every installed standard panel)" if requested in (None, "standard") else
            "narrower set requested (run.panels)" if isinstance(requested, list) else str(requested)}
