"""Calibrated scores: the mean-response baseline scores 0 and a split-half replicate 1,
per group and for every metric of every standard panel, on the real subsets; noise
added to the truth lowers the calibrated score; a default run has every standard panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from perturbfm.dataset import control_stats, ensure_group_column, group_table
from perturbfm.evaluation import build_eval_data, select_panels
from perturbfm.interfaces import MetricValue, Prediction
from perturbfm.plugins import get_registry
from perturbfm.references import (
    MIN_REPLICATE_CELLS,
    baseline_data,
    evaluate_with_references,
    replicate_data,
)
from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter

DEVEL = "perturbench_devel/norman19_mcfaline23_devel.h5ad"
PAPALEXI = "papalexi2021_thp1/papalexi2021_thp1_lowmoi.h5ad"
# metrics of the predictions' spread across groups, not of their error: noise adds spread
SPREAD_METRICS = {"pred_var_ratio", "collapsed_gene_frac"}
STANDARD = {"basic", "scperturbench", "perturbench", "vcc", "vcc2026", "deg_weighted"}


def _load(shared: Path, which: str, max_per_group: int = 120) -> Any:
    """The real subset, at most ``max_per_group`` cells per group (seeded), to keep the test fast."""
    if which == "devel":
        adata = AnnDataAdapter().load(str(shared / DEVEL), perturbation_key="condition", control="control",
                                      context_keys=["cell_type"]).adata
    else:
        adata = AnnDataAdapter().load(str(shared / PAPALEXI), perturbation_key="perturbation", control="control",
                                      expression="counts").adata
    labels = ensure_group_column(adata).astype(str).to_numpy()
    is_ctrl = adata.obs["pfm_is_control"].to_numpy(dtype=bool)
    labels = np.where(is_ctrl, "control@" + adata.obs["pfm_context"].astype(str).to_numpy(), labels)
    rng = np.random.default_rng(0)
    keep = []
    for u in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == u))
        keep.append(rows[: (4 if u.startswith("control@") else 1) * max_per_group])
    return adata[np.sort(np.concatenate(keep))].copy()


def _eval_data(adata: Any, delta: np.ndarray | None = None, max_cells: int = 200, context: str | None = None) -> Any:
    groups = [g for g in group_table(adata).values() if not g.is_control and context in (None, g.context)]
    ctrl = control_stats(adata)
    d = np.zeros((len(groups), adata.n_vars)) if delta is None else delta
    return build_eval_data(adata, groups, ctrl, Prediction([g.group_id for g in groups], d), max_cells=max_cells)


def _per_group(v: Any) -> dict[str, float]:
    assert isinstance(v, MetricValue)
    return dict(v.per_group if v.per_group is not None else v.per_context or {})


@pytest.mark.parametrize("which", ["devel", "papalexi"])
def test_baseline_scores_0_and_replicate_scores_1_per_group(shared_data: Path, which: str) -> None:
    adata = _load(shared_data, which)
    # devel: the K562 context (singles and doubles, CRISPRa); papalexi: every knock-out
    data = _eval_data(adata, max_cells=100, context="k562" if which == "devel" else None)
    panels = select_panels(get_registry(), "standard", gives_variance=False)
    # the model under test IS the mean-response baseline
    base = baseline_data(data)
    out, info = evaluate_with_references(panels, base)
    assert info["replicate_seeds"] == 5
    reps, _ = replicate_data(data, 5)
    n_checked = 0
    for panel in panels:
        rep_vals = [panel.compute(rd) for rd in reps]
        for key, entry in out[panel.name]["metrics"].items():
            if "not_applicable" in entry or "not_applicable" in entry["calibrated"]:
                continue
            cal = entry["calibrated"]
            level = "per_group" if "per_group" in entry else "per_context"
            b = entry["baseline"][level]
            r = entry["replicate"][level]
            # baseline -> 0 on every resolved group
            for gid, c in cal[level].items():
                assert abs(c) <= 1e-9, (panel.name, key, gid, c)
            # a replicate half (averaged over the same seeds) -> 1 on every resolved group
            for gid in cal[level]:
                u = np.mean([_per_group(rv[key])[gid] for rv in rep_vals if gid in _per_group(rv[key])])
                assert abs((u - b[gid]) / (r[gid] - b[gid]) - 1.0) <= 1e-9, (panel.name, key, gid)
                n_checked += 1
            # the excluded groups are listed and counted, never silently dropped
            declared = set(cal["unresolvable"]) | set(cal["not_calibrated"])
            assert set(cal[level]) | declared == set(entry[level])
            assert cal["n_unresolvable"] == len(cal["unresolvable"])
    assert n_checked > 50


def test_calibrated_score_falls_with_noise(tiny_truth: Any) -> None:
    """Prediction = true delta + Gaussian noise of growing size: every directed metric's
    calibrated score does not rise with the noise, and falls from no noise to most noise."""
    adata = tiny_truth
    data0 = _eval_data(adata)
    truth = data0.true_delta
    panels = select_panels(get_registry(), "standard", gives_variance=False)
    rng = np.random.default_rng(0)
    z = rng.standard_normal(truth.shape)
    scale = float(np.std(truth))
    series: dict[tuple[str, str], list[float]] = {}
    for sigma in (0.0, 0.3, 1.0, 3.0):
        out, _ = evaluate_with_references(panels, _eval_data(adata, truth + sigma * scale * z))
        for pname, p in out.items():
            for key, e in p["metrics"].items():
                g = e.get("calibrated", {}).get("global")
                if e.get("higher_is_better") is None or g is None:
                    continue
                series.setdefault((pname, key), []).append(g)
    checked = 0
    for (pname, key), vals in series.items():
        if len(vals) < 4:
            continue
        if key in SPREAD_METRICS:
            continue
        checked += 1
        for a, b in zip(vals, vals[1:]):
            assert b <= a + 0.05 * max(1.0, abs(a)), (pname, key, vals)
        assert vals[-1] < vals[0], (pname, key, vals)
    assert checked >= 10


def test_replicate_declares_groups_too_small_to_split(tiny_truth: Any) -> None:
    data = _eval_data(tiny_truth)
    gid = data.groups[0].group_id
    labels = ensure_group_column(tiny_truth).astype(str).to_numpy()
    drop = np.flatnonzero(labels == gid)[MIN_REPLICATE_CELLS - 1:]
    adata = tiny_truth[np.setdiff1d(np.arange(tiny_truth.n_obs), drop)].copy()
    data = _eval_data(adata)
    reps, unsplit = replicate_data(data, 2)
    assert gid in unsplit and "cannot be split" in unsplit[gid]
    assert len(reps) == 2 and all(gid not in rd.group_ids for rd in reps)
    out, info = evaluate_with_references(select_panels(get_registry(), ["basic"], gives_variance=False), data)
    assert gid in info["unsplittable_groups"]
    entry = out["basic"]["metrics"]["mse"]
    assert gid in entry["calibrated"]["not_calibrated"] and gid not in entry["calibrated"]["per_group"]
    assert gid in entry["per_group"]  # the raw value is still reported


def test_indep_ctrl_exposes_shared_control_inflation(tiny_truth: Any) -> None:
    """A prediction that carries the control mean's noise (every training-mean delta
    does) scores lower once prediction and truth use disjoint control halves."""
    data = _eval_data(tiny_truth)
    out, _ = evaluate_with_references(select_panels(get_registry(), ["basic"], gives_variance=False),
                                      _eval_data(tiny_truth, np.repeat(data.true_delta.mean(0, keepdims=True),
                                                                       len(data.groups), axis=0)))
    e = out["basic"]["metrics"]["pcc_delta"]
    assert "indep_ctrl" in e and e["indep_ctrl"]["global"] is not None
    assert "indep_ctrl" not in out["basic"]["metrics"].get("rmse_average", {}) or \
        out["basic"]["metrics"]["rmse_average"].get("delta_based")


def test_default_panels_are_every_standard_panel() -> None:
    reg = get_registry()
    names = {p.name for p in select_panels(reg, "standard", gives_variance=False)}
    installed = {n for n in reg.names("metric_panel") if getattr(reg.get("metric_panel", n).cls, "standard", False)}
    assert names == installed and {"basic", "scperturbench", "perturbench", "vcc"} <= names
    assert names <= STANDARD | installed
    with_var = {p.name for p in select_panels(reg, "standard", gives_variance=True)}
    assert with_var == names | {"uncertainty"}


@pytest.fixture
def tiny_truth() -> Any:
    """A small canonical truth (SYNTHETIC) with enough cells per group to split."""
    from perturbfm.testing import make_canonical_adata

    return make_canonical_adata(n_genes=40, contexts=("ctxA", "ctxB"), singles=("G1", "G2", "G3", "G4", "G5"),
                                doubles=(("G1", "G2"),), cells_per_group=30, n_control=60, seed=3)


def test_fewer_than_two_replicate_seeds_is_a_config_error(tiny_truth: Any) -> None:
    from perturbfm.errors import ConfigError

    with pytest.raises(ConfigError, match="replicate_seeds"):
        evaluate_with_references(select_panels(get_registry(), ["basic"], gives_variance=False),
                                 _eval_data(tiny_truth), replicate_seeds=1)
