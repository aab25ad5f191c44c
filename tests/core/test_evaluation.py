"""Panel completeness: metrics.json is guarded by evaluate_panels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from perturbfm.dataset import control_stats, group_table
from perturbfm.errors import PanelIncompleteError, PredictionError
from perturbfm.evaluation import aggregate, build_eval_data, evaluate_panels
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable, Prediction
from perturbfm.testing import make_canonical_adata

TEST = ["G0+G1@ctxA", "G2@ctxA", "G4@ctxB"]


def _data(pred_delta=None):
    adata = make_canonical_adata(cells_per_group=20)
    groups = group_table(adata)
    test = [groups[g] for g in TEST]
    delta = np.zeros((3, 40)) if pred_delta is None else pred_delta
    return build_eval_data(adata, test, control_stats(adata), Prediction(TEST, delta))


class _Panel(MetricPanel):
    name = "p"
    metrics = {"a": MetricSpec("a"), "b": MetricSpec("b"), "c": MetricSpec("c")}

    def __init__(self, values):
        self.values = values

    def compute(self, data):
        return self.values(data)


def test_complete_panel_aggregates_three_levels() -> None:
    data = _data()
    vals = {"G0+G1@ctxA": 1.0, "G2@ctxA": 3.0, "G4@ctxB": 5.0}
    panel = _Panel(lambda d: {"a": MetricValue(per_group=vals),
                              "b": MetricValue(per_context={"ctxA": 2.0, "ctxB": 4.0}),
                              "c": NotApplicable("no OOD labels in this split")})
    out = evaluate_panels([panel], data)["p"]["metrics"]
    assert out["a"]["per_group"] == vals
    assert out["a"]["per_context"] == {"ctxA": 2.0, "ctxB": 5.0}
    assert math.isclose(out["a"]["global"], (20 * 1 + 20 * 3 + 20 * 5) / 60)
    assert math.isclose(out["b"]["global"], (40 * 2 + 20 * 4) / 60)
    assert out["c"]["not_applicable"] == "no OOD labels in this split"


def test_weighting_uses_true_cell_counts() -> None:
    data = _data()
    data.groups[0] = type(data.groups[0])(**{**data.groups[0].__dict__, "n_cells": 60})
    agg = aggregate(MetricValue(per_group={"G0+G1@ctxA": 1.0, "G2@ctxA": 0.0, "G4@ctxB": 0.0}), data.groups)
    assert math.isclose(agg["global"], 60 / 100)


@pytest.mark.parametrize(
    "values, problem",
    [
        (lambda d: {"a": MetricValue(per_group=dict.fromkeys(TEST, 1.0))}, "missing"),
        (lambda d: {"a": MetricValue(per_group=dict.fromkeys(TEST, float("nan"))), "b": NotApplicable("x"),
                    "c": NotApplicable("x")}, "non-finite"),
        (lambda d: {"a": MetricValue(per_group={"G2@ctxA": 1.0}), "b": NotApplicable("x"),
                    "c": NotApplicable("x")}, "no value for groups"),
        (lambda d: {"a": NotApplicable(" "), "b": NotApplicable("x"), "c": NotApplicable("x")}, "without a reason"),
        (lambda d: 1 / 0, "panel raised ZeroDivisionError"),
    ],
)
def test_incomplete_panels_are_refused(values, problem: str) -> None:
    with pytest.raises(PanelIncompleteError) as err:
        evaluate_panels([_Panel(values)], _data())
    assert any(problem in p[2] for p in err.value.problems), err.value.problems
    assert "metrics.json was not written" in err.value.message


def test_non_finite_predictions_name_groups_and_genes() -> None:
    bad = np.zeros((3, 40))
    bad[1, 7] = np.inf
    with pytest.raises(PredictionError) as err:
        _data(bad)
    assert "G2@ctxA" in err.value.message and "G7" in err.value.message


def test_prediction_for_other_groups_is_refused() -> None:
    adata = make_canonical_adata()
    groups = group_table(adata)
    with pytest.raises(PredictionError, match="missing: G4@ctxB"):
        build_eval_data(adata, [groups[g] for g in TEST], control_stats(adata),
                        Prediction(TEST[:2], np.zeros((2, 40))))


def test_constructed_cells_are_control_plus_delta() -> None:
    delta = np.ones((3, 40))
    data = _data(delta)
    assert data.pred_cells_constructed
    ctrl = data.control_cells("ctxA")
    np.testing.assert_allclose(data.pred_cells(0), ctrl + 1.0)
    assert data.true_cells(0).shape == (20, 40)
