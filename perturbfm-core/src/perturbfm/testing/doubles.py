"""Test doubles: a minimal split generator and metric panel, so the conformance
suites can run a model through the harness without other plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np

from perturbfm.hookspecs import hookimpl
from perturbfm.interfaces import (
    AdapterResult,
    MetricPanel,
    MetricSpec,
    MetricValue,
    NotApplicable,
    SplitAssignment,
    SplitGenerator,
)


class ExplicitTestSplit(SplitGenerator):
    """Holds out ``params["test"]``; all else trains."""

    name = "test-explicit"

    def generate(self, groups: Mapping[str, Any], params: Mapping[str, Any], seed: int) -> SplitAssignment:
        test = set(params["test"])
        return SplitAssignment({g: "test" if g in test else "train" for g in groups})


class MeanErrorPanel(MetricPanel):
    """Mean absolute error of the predicted delta (a test double)."""

    name = "test-mean-error"
    metrics = {"mean_abs_error": MetricSpec("mean_g |pred delta - true delta| (test double)", "", False)}

    def compute(self, data: Any) -> dict[str, MetricValue | NotApplicable]:
        err = np.abs(data.pred_delta - data.true_delta).mean(axis=1)
        return {"mean_abs_error": MetricValue(per_group=dict(zip(data.group_ids, err.tolist())))}


class TestDoublesPlugin:
    """A plugin object registering the doubles (and optionally a model)."""

    __test__ = False  # not a pytest test class

    def __init__(self, *models: type) -> None:
        self._models = list(models)

    @hookimpl
    def pfm_register_split_generators(self) -> list[type]:
        return [ExplicitTestSplit]

    @hookimpl
    def pfm_register_metric_panels(self) -> list[type]:
        return [MeanErrorPanel]

    @hookimpl
    def pfm_register_models(self) -> list[type]:
        return self._models


def canonical_result(adata: ad.AnnData) -> AdapterResult:
    """Wrap a canonical test AnnData as an adapter result (marked synthetic)."""
    return AdapterResult(adata=adata, source={"test": "perturbfm.testing"}, synthetic=True,
                         expression_space="synthetic test values")
