"""The two reference baselines: no change (``control-mean``) and ``train-mean``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from perturbfm.interfaces import Model, Prediction
from perturbfm.options import ConfigModel, defaults_of
from perturbfm.training import TrainingData

from .common import DeltaSummary, require_fitted

if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo


class NoParameters(ConfigModel):
    """A model that reads no parameters: any key given is refused."""


class ControlMeanModel(Model):
    """Predicts no change: every query's delta is zero, i.e. the prediction is
    the query context's control mean."""

    name = "control-mean"
    description = "No-change baseline: predicts the context's control mean (zero delta)."

    def __init__(self) -> None:
        self._n_genes: int | None = None

    config_model: ClassVar[type[ConfigModel]] = NoParameters

    def default_config(self) -> dict[str, Any]:
        """This model reads no parameters."""
        return defaults_of(NoParameters)

    def fit(self, train: TrainingData, val: TrainingData | None, config: Mapping[str, Any]) -> None:
        """Only records the number of genes."""
        self._n_genes = len(train.genes)

    def predict(self, queries: list[GroupInfo]) -> Prediction:
        """Zeros ``[n_queries, n_genes]``."""
        n_genes = require_fitted(self, "_n_genes", self.name)
        return Prediction(
            group_ids=[q.group_id for q in queries],
            mean_delta=np.zeros((len(queries), n_genes), dtype=np.float64),
            info={"prediction": "zero delta for every query (context control mean, no change)"},
        )


class TrainMeanModel(Model):
    """Predicts the mean training delta of the query's context.

    A query whose context has no training groups gets the mean over all training
    groups, with a note saying so.
    """

    name = "train-mean"
    description = "Mean training delta of the query's context (global mean where the context has none)."

    def __init__(self) -> None:
        self._summary: DeltaSummary | None = None

    config_model: ClassVar[type[ConfigModel]] = NoParameters

    def default_config(self) -> dict[str, Any]:
        """This model reads no parameters."""
        return defaults_of(NoParameters)

    def fit(self, train: TrainingData, val: TrainingData | None, config: Mapping[str, Any]) -> None:
        """Compute the per-context and global mean training deltas."""
        self._summary = DeltaSummary(train)

    def predict(self, queries: list[GroupInfo]) -> Prediction:
        """The context's mean training delta for every query."""
        summary: DeltaSummary = require_fitted(self, "_summary", self.name)
        out = np.zeros((len(queries), summary.n_genes), dtype=np.float64)
        notes: dict[str, str] = {}
        for i, q in enumerate(queries):
            out[i], note = summary.mean_for(q.context)
            if note:
                notes[q.group_id] = note
        return Prediction(
            group_ids=[q.group_id for q in queries],
            mean_delta=out,
            notes=notes,
            info={
                "prediction": "mean of the training deltas of the query's context",
                "fallback": "context without training groups -> mean over all training groups (noted)",
                "training_groups_per_context": {
                    c: int(sum(g.context == c for g in summary.groups)) for c in summary.context_mean
                },
            },
        )
