"""CGIO's configuration: a typed model (defaults, constraints, descriptions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from perturbfm.options import Bool, ConfigModel, FilePath, Float, Int, Names, defaults_of, file_field, validate
from pydantic import AfterValidator, BeforeValidator, Field

MODEL = "cgio"
GRAPH_KINDS = ("go", "coexpr", "edges")


def _graph_kinds(value: list[str]) -> list[str]:
    bad = [v for v in value if v not in GRAPH_KINDS]
    if bad:
        raise ValueError(f"graph kind(s) {bad} unknown; use a list drawn from {list(GRAPH_KINDS)}")
    return list(dict.fromkeys(value))


def _int_or_none(value: Any) -> Any:
    """None for null / none / an empty string (from the CLI), else the value as an integer where it is one."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return value


def _probability(description: str, default: float) -> Any:
    return Field(default, ge=0.0, le=1.0, description=description)


class CGIOConfig(ConfigModel):
    """Parsed and checked CGIO settings."""

    graphs: Annotated[Names, AfterValidator(_graph_kinds)] = Field(
        ["go", "coexpr"], description="gene graphs to propagate over, drawn from go, coexpr, edges",
        json_schema_extra={"type_label": "a list drawn from go, coexpr, edges"})
    use_graphs: Bool = Field(True, description="use the gene graphs at all (off: an MLP over the additive prior)")
    gating: Bool = Field(True, description="gate each graph's message by a learned per-gene weight")
    context_conditioning: Bool = Field(True, description="condition on the context (cell line) embedding")
    additive_prior: Bool = Field(True, description="start from the sum of the measured single deltas")
    residual: Bool = Field(True, description="learn a residual on top of the prior")
    stacking: Bool = Field(True, description="stack the network over the baselines with cross-validated weights")
    denoise: Bool = Field(True, description="shrink noisy training deltas before fitting")
    self_effect: Bool = Field(True, description="model the perturbed gene's own change separately")
    cv_folds: Int = Field(3, ge=0, description="folds of the cross-fitting (0: none, so no network correction); "
                                               "with fewer than 2 x cv_folds groups: leave-one-group-out")
    network: Bool = Field(True, description="train the network correction (off: the closed-form base only)")
    context_transfer: Bool = Field(True, description="transfer a perturbation to a context from what that "
                                   "context's control cells show (validated leave-one-context-out)")
    floor: Bool = Field(True, description="keep the predicted mean >= 0 (delta >= -control mean) where the "
                        "training data are non-negative")
    shrinkage: Bool = Field(True, description="empirical-Bayes shrinkage of per-group deltas")
    go_table: FilePath = file_field(None, description="GO annotation TSV (null: the packaged table)")
    go_k: Int = Field(20, ge=1, description="GO graph: neighbours kept per gene")
    go_min_jaccard: Float = Field(0.1, ge=0.0, description="GO graph: minimum Jaccard similarity of an edge")
    go_hops: Int = Field(1, ge=0, description="GO graph: hops of neighbourhood expansion")
    max_nodes: Int = Field(3000, ge=1, description="largest gene graph (nodes) built")
    coexpr_k: Int = Field(20, ge=1, description="co-expression graph: neighbours kept per gene")
    coexpr_min_abs_r: Float = Field(0.1, ge=0.0, description="co-expression graph: minimum |r| of an edge")
    coexpr_source: Literal["cells", "groups"] = Field(
        "cells", description="co-expression computed over control cells or over group means")
    coexpr_max_cells: Annotated[int | None, BeforeValidator(_int_or_none)] = Field(
        20000, ge=3, description="co-expression from cells: at most this many cells, a seeded uniform sample "
        "(null: all cells; recorded in the graph's provenance)")
    edge_list: FilePath = file_field(None, description="TSV of gene pairs for the edges graph (null: none)")
    steps: Int = Field(2, ge=0, description="message-passing steps")
    hidden: Int = Field(32, ge=1, description="hidden width")
    rank: Int = Field(8, ge=1, description="rank of the low-rank output layer")
    dropout: Float = _probability("dropout rate", 0.1)
    context_dropout: Float = _probability("dropout rate of the context embedding", 0.1)
    epochs: Int = Field(200, ge=1, description="most training epochs")
    lr: Float = Field(0.01, ge=0.0, description="Adam learning rate")
    weight_decay: Float = Field(0.0001, ge=0.0, description="Adam weight decay")
    patience: Int = Field(30, ge=1, description="early-stopping patience (epochs)")
    val_fraction: Float = Field(0.2, ge=0.0, lt=1.0, description="training groups held out for early stopping")
    refit_full: Bool = Field(True, description="refit on all training groups after early stopping")
    seed: Int = Field(0, description="seed of initialisation and data order")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="torch device")

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> CGIOConfig:
        """Validate ``config`` (missing keys take their defaults).

        Raises:
            ConfigError: an unknown key or a malformed value, naming the key and the fix.
        """
        return validate(cls, dict(config), what=f"model {MODEL!r}")


#: Every key with its default (a plain mapping that remembers :class:`CGIOConfig`).
DEFAULTS: dict[str, Any] = defaults_of(CGIOConfig)
