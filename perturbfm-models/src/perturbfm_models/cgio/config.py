"""CGIO's configuration: defaults, validation and parsed form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from perturbfm.errors import ConfigError

from perturbfm_models.baselines.common import config_number, config_value

MODEL = "cgio"
GRAPH_KINDS = ("go", "coexpr", "edges")

DEFAULTS: dict[str, Any] = {
    "graphs": ["go", "coexpr"],
    "use_graphs": True,
    "gating": True,
    "context_conditioning": True,
    "additive_prior": True,
    "residual": True,
    "stacking": True,
    "denoise": True,
    "self_effect": True,
    "cv_folds": 3,
    "shrinkage": True,
    "go_table": None,
    "go_k": 20,
    "go_min_jaccard": 0.1,
    "go_hops": 1,
    "max_nodes": 3000,
    "coexpr_k": 20,
    "coexpr_min_abs_r": 0.1,
    "coexpr_source": "cells",
    "edge_list": None,
    "steps": 2,
    "hidden": 32,
    "rank": 8,
    "dropout": 0.1,
    "context_dropout": 0.1,
    "epochs": 200,
    "lr": 0.01,
    "weight_decay": 0.0001,
    "patience": 30,
    "val_fraction": 0.2,
    "refit_full": True,
    "seed": 0,
    "device": "cpu",
}


def _bool(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, DEFAULTS[key])
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "on", "off", "1", "0"):
        return value.strip().lower() in ("true", "on", "1")
    if not isinstance(value, bool):
        raise ConfigError(f"model {MODEL!r}: {key} must be true or false, got {value!r}", field=key,
                          fix=f"set {key} to true or false")
    return value


def _graphs(config: Mapping[str, Any]) -> list[str]:
    value = config.get("graphs", DEFAULTS["graphs"])
    if isinstance(value, str):
        value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(v in GRAPH_KINDS for v in value):
        raise ConfigError(f"model {MODEL!r}: graphs must be a list drawn from {list(GRAPH_KINDS)}, got {value!r}",
                          field="graphs", fix="e.g. --set model.graphs=[go,coexpr]")
    return list(dict.fromkeys(value))


@dataclass
class CGIOConfig:
    """Parsed and checked CGIO settings (see :data:`DEFAULTS` for the keys)."""

    graphs: list[str]
    use_graphs: bool
    gating: bool
    context_conditioning: bool
    additive_prior: bool
    residual: bool
    stacking: bool
    denoise: bool
    self_effect: bool
    cv_folds: int
    shrinkage: bool
    go_table: str | None
    go_k: int
    go_min_jaccard: float
    go_hops: int
    max_nodes: int
    coexpr_k: int
    coexpr_min_abs_r: float
    coexpr_source: str
    edge_list: str | None
    steps: int
    hidden: int
    rank: int
    dropout: float
    context_dropout: float
    epochs: int
    lr: float
    weight_decay: float
    patience: int
    val_fraction: float
    refit_full: bool
    seed: int
    device: str

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> CGIOConfig:
        """Validate ``config`` (merged over :data:`DEFAULTS`).

        Raises:
            ConfigError: an unknown key or a malformed value, naming the key and the fix.
        """
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"model {MODEL!r}: unknown config key(s) {unknown}", field=unknown[0],
                              fix=f"use only: {', '.join(DEFAULTS)}")

        def num(key: str, integer: bool = False, minimum: float | None = None) -> Any:
            return config_number(config, DEFAULTS, key, model=MODEL, integer=integer, minimum=minimum)

        for key in ("go_table", "edge_list"):
            v = config.get(key, DEFAULTS[key])
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"model {MODEL!r}: {key} must be a path or null", field=key,
                                  fix=f"set {key} to a file path or null")
        return cls(
            graphs=_graphs(config), use_graphs=_bool(config, "use_graphs"), gating=_bool(config, "gating"),
            context_conditioning=_bool(config, "context_conditioning"),
            additive_prior=_bool(config, "additive_prior"),
            residual=_bool(config, "residual"), stacking=_bool(config, "stacking"),
            denoise=_bool(config, "denoise"), self_effect=_bool(config, "self_effect"),
            cv_folds=num("cv_folds", True, 0),
            shrinkage=_bool(config, "shrinkage"),
            go_table=config.get("go_table", None), go_k=num("go_k", True, 1),
            go_min_jaccard=num("go_min_jaccard", minimum=0.0), go_hops=num("go_hops", True, 0),
            max_nodes=num("max_nodes", True, 1), coexpr_k=num("coexpr_k", True, 1),
            coexpr_min_abs_r=num("coexpr_min_abs_r", minimum=0.0),
            coexpr_source=config_value(config, DEFAULTS, "coexpr_source", model=MODEL, choices=("cells", "groups")),
            edge_list=config.get("edge_list", None), steps=num("steps", True, 0),
            hidden=num("hidden", True, 1), rank=num("rank", True, 1), dropout=num("dropout", minimum=0.0),
            context_dropout=num("context_dropout", minimum=0.0), epochs=num("epochs", True, 1),
            lr=num("lr", minimum=0.0), weight_decay=num("weight_decay", minimum=0.0),
            patience=num("patience", True, 1), val_fraction=num("val_fraction", minimum=0.0),
            refit_full=_bool(config, "refit_full"), seed=num("seed", True),
            device=config_value(config, DEFAULTS, "device", model=MODEL, choices=("auto", "cpu", "cuda")),
        )
