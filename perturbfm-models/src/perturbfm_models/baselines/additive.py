"""The additive baseline: a combination's delta is the sum of its singles' deltas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from perturbfm.interfaces import Model, Prediction
from perturbfm.options import ConfigModel, defaults_of
from perturbfm.training import TrainingData
from pydantic import Field

from .common import DeltaSummary, join_notes, read_model_config, require_fitted

if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo

MISSING_POLICIES = ("zero", "train-mean")


class AdditiveConfig(ConfigModel):
    """The ``additive`` model's parameters."""

    missing_single: Literal["zero", "train-mean"] = Field(
        "zero", description="a single missing from training counts as a zero delta (zero) or as the context's "
        "mean training delta (train-mean); noted per group either way")


class AdditiveModel(Model):
    """ctrl + Σ single deltas.

    For a query with perturbed genes ``g1..gk`` in context ``c`` (and covariates
    ``v``) the prediction is ``Σ_i delta(gi @ c @ v)``, the training deltas of the
    single-gene groups of the same context and covariates. A single query is its
    own training delta where present. A single missing from training is handled by
    ``missing_single``: ``"zero"`` (its delta counts as 0) or ``"train-mean"`` (the
    context's mean training delta stands in for it). Every group where something
    was missing gets a note naming the genes and the rule.
    """

    name = "additive"
    description = "Sum of the single-gene training deltas of the same context (ctrl + sum of single deltas)."

    def __init__(self) -> None:
        self._summary: DeltaSummary | None = None
        self._singles: dict[tuple[str, str, str], np.ndarray] = {}
        self._policy: str = "zero"

    config_model: ClassVar[type[ConfigModel]] = AdditiveConfig

    def default_config(self) -> dict[str, Any]:
        """``missing_single``: ``"zero"`` or ``"train-mean"`` (see :class:`AdditiveConfig`)."""
        return defaults_of(AdditiveConfig)

    def fit(self, train: TrainingData, val: TrainingData | None, config: Mapping[str, Any]) -> None:
        """Index the single-gene training deltas by (gene, context, covariates)."""
        self._policy = read_model_config(AdditiveConfig, config, model=self.name).missing_single
        self._summary = DeltaSummary(train)
        self._singles = {}
        for g, delta in zip(self._summary.groups, self._summary.deltas):
            if len(g.genes) == 1:
                self._singles[(g.genes[0], g.context, g.covariates)] = delta

    def _missing_stand_in(self, context: str) -> tuple[np.ndarray, str | None]:
        """What replaces one missing single under the configured policy."""
        assert self._summary is not None
        if self._policy == "zero":
            return np.zeros(self._summary.n_genes), None
        return self._summary.mean_for(context)

    def predict(self, queries: list[GroupInfo]) -> Prediction:
        """Sum of single deltas per query, with notes for every missing single."""
        summary: DeltaSummary = require_fitted(self, "_summary", self.name)
        out = np.zeros((len(queries), summary.n_genes), dtype=np.float64)
        notes: dict[str, str] = {}
        n_missing_groups = 0
        for i, q in enumerate(queries):
            genes = q.genes
            if not genes:
                notes[q.group_id] = "query has no perturbed genes: predicted zero delta"
                continue
            missing: list[str] = []
            for gene in genes:
                delta = self._singles.get((gene, q.context, q.covariates))
                if delta is None:
                    missing.append(gene)
                else:
                    out[i] += delta
            if not missing:
                continue
            n_missing_groups += 1
            stand_in, extra = self._missing_stand_in(q.context)
            out[i] += len(missing) * stand_in
            where = f"context {q.context!r}" + (f", covariates {q.covariates!r}" if q.covariates else "")
            rule = (
                "missing_single='zero': each missing single's delta counted as 0"
                if self._policy == "zero"
                else "missing_single='train-mean': the context's mean training delta used for each missing single"
            )
            parts: list[str | None] = [f"single(s) not in training for {where}: {', '.join(missing)} ({rule})"]
            if len(missing) == len(genes):
                parts.append(
                    "none of this group's singles is available; the prediction is "
                    + ("a zero delta" if self._policy == "zero" else f"{len(missing)} x the context mean delta")
                )
            parts.append(extra)
            notes[q.group_id] = join_notes(parts) or ""
        return Prediction(
            group_ids=[q.group_id for q in queries],
            mean_delta=out,
            notes=notes,
            info={
                "prediction": "sum of the single-gene training deltas of the query's context and covariates",
                "missing_single": self._policy,
                "missing_single_policy": (
                    "a single absent from training counts as a zero delta"
                    if self._policy == "zero"
                    else "a single absent from training is replaced by the context's mean training delta "
                    "(global mean where the context has no training groups)"
                ),
                "n_singles_available": len(self._singles),
                "n_groups_with_missing_singles": n_missing_groups,
            },
        )
