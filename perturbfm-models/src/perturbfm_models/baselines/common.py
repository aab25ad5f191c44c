"""Helpers shared by the baseline models: typed config reading and training-delta summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np
from perturbfm.options import validate
from perturbfm.training import TrainingData
from pydantic import BaseModel

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def read_model_config(config_cls: type[ConfigT], config: Mapping[str, Any], *, model: str) -> ConfigT:
    """Validate a model's config mapping (missing keys take their defaults).

    Raises:
        ConfigError: an unknown key or a malformed value, naming the key (as the
            field) and a fix built from the field's type, constraint and default.
    """
    return cast(ConfigT, validate(config_cls, dict(config), what=f"model {model!r}"))


class DeltaSummary:
    """Pseudobulk training deltas and their per-context / global means.

    Attributes:
        genes: measured genes, in the dataset's order.
        deltas: ``[n_train_groups, n_genes]`` float64 training deltas.
        context_mean: context -> mean training delta over that context's groups.
        global_mean: mean training delta over all training groups (zeros if none).
    """

    def __init__(self, train: TrainingData) -> None:
        self.genes: list[str] = list(train.genes)
        self.groups = list(train.groups)
        n_genes = len(self.genes)
        self.deltas = (
            np.asarray(train.deltas(), dtype=np.float64) if self.groups else np.zeros((0, n_genes))
        )
        ctx = np.array([g.context for g in self.groups], dtype=object)
        self.context_mean: dict[str, np.ndarray] = {
            c: self.deltas[ctx == c].mean(axis=0) for c in sorted(set(ctx))
        }
        self.global_mean = self.deltas.mean(axis=0) if self.groups else np.zeros(n_genes)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def mean_for(self, context: str) -> tuple[np.ndarray, str | None]:
        """The mean training delta of ``context``, or the global mean with a note
        saying why when ``context`` has no training groups."""
        if context in self.context_mean:
            return self.context_mean[context], None
        if not self.groups:
            return self.global_mean, "no training groups at all: used a zero delta"
        return (
            self.global_mean,
            f"context {context!r} has no training groups: used the mean delta over all "
            f"{len(self.groups)} training groups",
        )


def join_notes(parts: Sequence[str | None]) -> str | None:
    """Join the non-empty notes with ``"; "`` (None when there are none)."""
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None


def require_fitted(obj: Any, attr: str, model: str) -> Any:
    """Return ``obj.<attr>`` or raise a clear error if ``fit`` was not called."""
    value = getattr(obj, attr, None)
    if value is None:
        raise RuntimeError(f"model {model!r}: call fit() before predict()")
    return value
