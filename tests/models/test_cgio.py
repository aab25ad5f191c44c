"""Tests of the CGIO model (perturbfm_models.cgio) on small synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from perturbfm.dataset import GroupInfo, control_stats, group_table  # noqa: E402
from perturbfm.errors import ConfigError  # noqa: E402
from perturbfm.testing.conformance import ModelConformance  # noqa: E402
from perturbfm.testing.data import make_canonical_adata, training_and_queries  # noqa: E402
from perturbfm.training import TrainingData  # noqa: E402
from perturbfm_models.cgio import CGIOModel  # noqa: E402
from perturbfm_models.cgio import graphs as G  # noqa: E402

FAST = {"graphs": ["coexpr"], "epochs": 15, "hidden": 8, "rank": 4, "patience": 5, "cv_folds": 2}
HELD_OUT = ["G0+G1@ctxA", "G5@ctxB"]


class TestCGIOConformance(ModelConformance):
    model_class = CGIOModel
    config = FAST


def _edge_file(tmp_path: Path) -> str:
    p = tmp_path / "edges.csv"
    rows = ["src,dst,weight"] + [f"G{i},G{i + 1},1.0" for i in range(0, 39)] + ["X1,G3,0.5"]
    p.write_text("\n".join(rows) + "\n")
    return str(p)


def _fit(tmp_path: Path, **cfg) -> tuple[CGIOModel, list[GroupInfo]]:
    adata = make_canonical_adata()
    train, queries = training_and_queries(adata, HELD_OUT)
    model = CGIOModel()
    model.fit(train, None, {**model.default_config(), **FAST, "edge_list": _edge_file(tmp_path), **cfg})
    return model, queries


# ------------------------------------------------------------------ graphs
def test_go_jaccard_and_topk_on_handmade_table(tmp_path: Path) -> None:
    table = tmp_path / "go.tsv"
    rows = [("A", "t1"), ("A", "t2"), ("B", "t2"), ("B", "t3"), ("C", "t1"), ("C", "t2"), ("C", "t3"),
            ("C", "t3"), ("D", "t9")]  # duplicate (C, t3) as under two evidence codes
    table.write_text("SYMBOL\tGO\tONTOLOGY\tEVIDENCE\n" + "".join(f"{g}\t{t}\tBP\tIDA\n" for g, t in rows))
    go = G.load_go_table(table)
    sim = G.jaccard(go, ["A", "B", "C", "D", "E"], ["A", "B", "C", "D"])
    expected = np.array([[1, 1 / 3, 2 / 3, 0], [1 / 3, 1, 2 / 3, 0], [2 / 3, 2 / 3, 1, 0], [0, 0, 0, 1],
                         [0, 0, 0, 0]])  # E has no annotation
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    graph = G.go_graph(go, ["A", "B", "C", "D"], k=1, min_sim=0.1)
    edges = {(graph.genes[s], graph.genes[d], round(float(w), 4)) for s, d, w in zip(graph.src, graph.dst,
                                                                                       graph.weight)}
    assert edges == {("A", "C", 0.6667), ("B", "C", 0.6667), ("C", "A", 0.6667)}
    assert graph.provenance["sha256"] and graph.provenance["n_edges"] == 3
    # universe expansion adds the nearest annotated genes of the seeds
    assert G.expand_universe(go, ["A"], hops=1, k=1, min_sim=0.1, max_nodes=10) == ["A", "C"]


def test_missing_go_table_is_a_config_error(tmp_path: Path) -> None:
    adata = make_canonical_adata()
    train, _ = training_and_queries(adata, HELD_OUT)
    missing = tmp_path / "nope" / "gene2go.tsv.gz"
    with pytest.raises(ConfigError) as err:
        CGIOModel().fit(train, None, {**FAST, "graphs": ["go"], "go_table": str(missing)})
    assert str(missing) in str(err.value) and "fix" in str(err.value)


def test_coexpr_graph_reads_training_groups_only() -> None:
    adata = make_canonical_adata()
    groups, ctrl = group_table(adata), control_stats(adata)
    train_groups = [g for gid, g in groups.items() if not g.is_control and gid not in HELD_OUT]
    # the same training data, but the held-out groups' cells replaced by garbage
    tampered = adata.copy()
    rows = np.flatnonzero(tampered.obs["pfm_group"].astype(str).isin(HELD_OUT).to_numpy())
    X = tampered.X.toarray()
    X[rows] = 100.0 * np.random.default_rng(0).random((rows.size, X.shape[1]))
    tampered.X = X
    for source in ("cells", "groups"):
        a = G.coexpr_graph(TrainingData(adata, train_groups, ctrl), k=5, min_abs_r=0.1, source=source)
        b = G.coexpr_graph(TrainingData(tampered, train_groups, ctrl), k=5, min_abs_r=0.1, source=source)
        np.testing.assert_array_equal(a.src, b.src)
        np.testing.assert_array_equal(a.dst, b.dst)
        np.testing.assert_allclose(a.weight, b.weight, rtol=1e-5)


# ------------------------------------------------------------------ model behaviour
def test_unreachable_perturbed_gene_is_reported(tmp_path: Path) -> None:
    model, queries = _fit(tmp_path, graphs=["coexpr", "edges"])
    lonely = GroupInfo("NOPATH@ctxA", "NOPATH", "ctxA", "", 10)
    bridged = GroupInfo("X1@ctxA", "X1", "ctxA", "", 10)  # edge-list gene one hop from G3
    pred = model.predict([*queries, lonely, bridged])
    assert "NOPATH" in pred.notes["NOPATH@ctxA"] and "no path" in pred.notes["NOPATH@ctxA"]
    assert "no path" not in pred.notes.get("X1@ctxA", "") and "hops" not in pred.notes.get("X1@ctxA", "")
    assert "NOPATH" in pred.info["genes_attached_at_predict_time"]
    assert np.isfinite(pred.mean_delta).all()


def test_unseen_context_is_noted(tmp_path: Path) -> None:
    model, _ = _fit(tmp_path)
    pred = model.predict([GroupInfo("G2@ctxZ", "G2", "ctxZ", "", 10)])
    assert "unknown" in pred.notes["G2@ctxZ"]


def test_variance_is_positive(tmp_path: Path) -> None:
    model, queries = _fit(tmp_path)
    pred = model.predict(queries)
    assert pred.var_delta is not None and (pred.var_delta > 0).all()


def test_gating_off_gives_constant_gates(tmp_path: Path) -> None:
    off, _ = _fit(tmp_path, graphs=["coexpr", "edges"], gating=False)
    for gates in off.diagnostics()["gates"].values():
        assert gates == pytest.approx({"coexpr": 0.5, "edges": 0.5})
    on, _ = _fit(tmp_path, graphs=["coexpr", "edges"], gating=True)
    values = [v for g in on.diagnostics()["gates"].values() for v in g.values()]
    assert all(0 < v < 1 for v in values) and not np.allclose(values, 0.5)


def _raw_correction(model: CGIOModel, queries: list[GroupInfo]) -> np.ndarray:
    """The network members' mean output (the correction before the out-of-fold gate)."""
    import torch

    model.predict(queries)  # attaches predict-time genes
    b = model._batch(queries, None)
    with torch.no_grad():
        return np.mean([m(b.x, b.ctx, b.cov, b.sig)[0].numpy() for m in model._nets], axis=0)


def test_ablation_switches_change_the_model(tmp_path: Path) -> None:
    # the network's switches change its output; whether that output is applied is decided out of
    # fold (and on this tiny set it may not be), so they are checked on the raw correction
    base, queries = _fit(tmp_path, shrinkage=False)
    ref_raw = _raw_correction(base, queries)
    for switch in ({"context_conditioning": False}, {"use_graphs": False}, {"residual": False}):
        model, _ = _fit(tmp_path, shrinkage=False, **switch)
        assert not np.allclose(_raw_correction(model, queries), ref_raw), switch
    # the closed-form base's switches change the prediction itself
    ref = base.predict(queries).mean_delta
    for switch in ({"additive_prior": False}, {"denoise": False}):
        model, _ = _fit(tmp_path, shrinkage=False, **switch)
        assert not np.allclose(model.predict(queries).mean_delta, ref), switch
    # stacking: weights are fitted and checked out of fold (here they may lose to the rule-based
    # base, and are then not used); off, nothing is fitted
    on = base.diagnostics()["base_weights"]
    off = _fit(tmp_path, shrinkage=False, stacking=False)[0].diagnostics()["base_weights"]
    assert any(w["n"] for w in on.values()) and not any(w["n"] for w in off.values())
    assert all(w["fitted"] or w.get("reason") for w in on.values() if w["n"])
    assert _fit(tmp_path, use_graphs=False)[0].diagnostics()["graphs"] == []


def test_additive_prior_uses_measured_singles(tmp_path: Path) -> None:
    model, queries = _fit(tmp_path)
    pred = model.predict(queries)
    assert pred.info["n_groups_with_additive_prior"] == 1  # G0+G1@ctxA: both singles trained
    diag = model.diagnostics()
    assert diag["training_curve"]["epochs_run"] > 0 and diag["graphs"][0]["name"] == "coexpr"


def test_bad_config_is_rejected() -> None:
    adata = make_canonical_adata()
    train, _ = training_and_queries(adata, HELD_OUT)
    for bad in ({"graphs": ["kegg"]}, {"gating": "maybe"}, {"rank": 0}, {"not_a_key": 1}):
        with pytest.raises(ConfigError):
            CGIOModel().fit(train, None, {**FAST, **bad})


def test_gene_sets_of_any_size_give_correct_shapes(tmp_path: Path) -> None:
    model, _ = _fit(tmp_path)
    queries = [GroupInfo(f"{'+'.join(gs)}@ctxA", "+".join(gs), "ctxA", "", 10)
               for gs in (["G2"], ["G2", "G3"], ["G2", "G3", "G4"], ["G0", "G1", "G2", "G3", "G4"])]
    pred = model.predict(queries)
    n_genes = len(model._genes)
    assert pred.mean_delta.shape == (4, n_genes) and pred.var_delta.shape == (4, n_genes)
    assert pred.group_ids == [q.group_id for q in queries]
    assert np.isfinite(pred.mean_delta).all() and (pred.var_delta > 0).all()


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a, queries = _fit(tmp_path, seed=3)
    b, _ = _fit(tmp_path, seed=3)
    np.testing.assert_array_equal(a.predict(queries).mean_delta, b.predict(queries).mean_delta)
    assert a.diagnostics()["shrinkage"] == b.diagnostics()["shrinkage"]


def test_residual_base_and_shrinkage_are_reported(tmp_path: Path) -> None:
    model, queries = _fit(tmp_path)
    diag = model.diagnostics()
    assert diag["ensemble_members"] == FAST["cv_folds"] and set(diag["shrinkage"]) >= {"additive", "context_mean"}
    assert diag["shrinkage"]["additive"]["lambda"] == 1.0
    for k in diag["shrinkage"].values():
        assert 0.0 <= k["s"] <= 1.0 and 0.05 <= k["lambda"] <= 1.0
    info = model.predict(queries).info
    # G0+G1@ctxA: its singles are trained in ctxA, and G0+G1 itself in ctxB
    assert info["residual_base"]["additive+transfer"] == 1
    assert set(info["base_weights"]) == set(diag["shrinkage"]) and diag["base_weights"] == info["base_weights"]


def test_residual_base_rules() -> None:
    from perturbfm_models.cgio.residual import BaseIndex

    gs = [GroupInfo("A@c1", "A", "c1", "", 5), GroupInfo("B@c1", "B", "c1", "", 5),
          GroupInfo("A+B@c2", "A+B", "c2", "", 5), GroupInfo("C@c2", "C", "c2", "", 5)]
    d = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0], [1.0, 1.0]])
    idx = BaseIndex(gs, d, stack=False)  # rule-based defaults: A alone, else T alone, else M alone
    base, kinds = idx.bases([GroupInfo("A+B@c1", "A+B", "c1", "", 5), GroupInfo("C@c1", "C", "c1", "", 5),
                             GroupInfo("D@c1", "D", "c1", "", 5), GroupInfo("D@c9", "D", "c9", "", 5),
                             gs[0]], 2)
    assert kinds == ["additive+transfer", "transfer", "context_mean", "global_mean", "context_mean"]
    np.testing.assert_allclose(base, [[1, 2], [1, 1], [0.5, 1], [7 / 4, 2], [0, 2]])  # last: leave-self-out
    f, kind = idx.features(GroupInfo("A+B@c1", "A+B", "c1", "", 5), 2)
    assert kind == "additive+transfer" and set(f) == {"A", "T", "M"}
    np.testing.assert_allclose(f["T"], [5, 5])


def test_stacking_weights_are_fitted_leave_self_out() -> None:
    """Each context's combination = 0.5 · (sum of its singles) + 0.5 · (its delta elsewhere): the
    stacked weights of the ``additive+transfer`` kind recover it; too few groups keep the default."""
    from perturbfm_models.cgio.residual import BaseIndex

    rng = np.random.default_rng(0)
    singles = {(g, c): rng.normal(size=6) for g in "ABCD" for c in ("c1", "c2")}
    shared = {p: rng.normal(size=6) for p in ("A+B", "A+C", "B+D", "C+D")}
    gs, d = [], []
    for (g, c), v in singles.items():
        gs.append(GroupInfo(f"{g}@{c}", g, c, "", 5)), d.append(v)
    for p, v in shared.items():
        for c in ("c1", "c2"):
            a, b = p.split("+")
            gs.append(GroupInfo(f"{p}@{c}", p, c, "", 5))
            d.append(0.5 * (singles[(a, c)] + singles[(b, c)]) + 0.5 * v)
    idx = BaseIndex(gs, np.array(d))
    w = idx.weights["additive+transfer"]
    assert w["fitted"] and w["n"] == 8 and w["M"] < 0.1
    # T (the same combination in the other context) = 0.5 Σ singles there + 0.5 v: A and T both carry weight
    assert 0.2 < w["A"] < 0.8 and 0.2 < w["T"] < 1.5
    assert idx.weights["additive"] == {"A": 1.0, "T": 0.0, "M": 0.0, "n": 0, "fitted": False}
    q = GroupInfo("A+B@c1", "A+B", "c1", "", 5)
    f, kind = idx.features(q, 6)
    np.testing.assert_allclose(idx.base(q, 6)[0], sum(w[s] * f[s] for s in f))


def test_cgio_beats_additive_on_synthetic_non_additive_doubles() -> None:
    """The embedded simulator's non-additive doubles in one context, held out (their singles
    and the same doubles in the other contexts train): CGIO is ahead of ``additive`` on mean
    Pearson delta and on mean L2, for three simulator seeds."""
    from perturbfm.builtin.synthetic import SyntheticAdapter
    from perturbfm.dataset import ensure_group_column, grouped_moments
    from perturbfm_models.baselines import AdditiveModel

    for seed in (0, 1, 2):
        res = SyntheticAdapter().load(None, n_genes=100, n_contexts=3, n_singles=12, n_doubles=16,
                                      cells_per_group=40, n_control=100, interaction_fraction=0.5, seed=seed)
        adata = res.adata
        groups, ctrl = group_table(adata), control_stats(adata)
        test = [f"{p}@ctx0" for p in res.extra["non_additive_doubles"]]
        assert len(test) == 8
        train = TrainingData(adata, [g for gid, g in groups.items() if not g.is_control and gid not in test], ctrl)
        labels = ensure_group_column(adata).astype(str).to_numpy()
        truth = grouped_moments(adata, labels, test)[0] - np.stack([ctrl.mean("ctx0")] * len(test))
        queries = [groups[g] for g in test]
        scores = {}
        for model, cfg in ((AdditiveModel(), {}), (CGIOModel(), FAST)):
            model.fit(train, None, {**model.default_config(), **cfg})
            pred = model.predict(queries).mean_delta
            scores[model.name] = (np.mean([np.corrcoef(p, t)[0, 1] for p, t in zip(pred, truth)]),
                                  np.mean(np.linalg.norm(pred - truth, axis=1)))
        assert scores["cgio"][0] > scores["additive"][0] + 0.05, (seed, scores)
        assert scores["cgio"][1] < scores["additive"][1], (seed, scores)


def test_new_context_weights_are_fitted_leave_context_out() -> None:
    """Responses that do not carry over between contexts: for a query from a context without
    training groups the fitted weights (each training group's whole context left out of its
    predictors) shrink the transferred delta toward zero, instead of copying it."""
    from perturbfm_models.cgio.residual import BaseIndex

    rng = np.random.default_rng(1)
    gs, d = [], []
    for c in ("c1", "c2", "c3"):
        for p in "ABCDEF":
            gs.append(GroupInfo(f"{p}@{c}", p, c, "", 5)), d.append(rng.normal(size=8))
    idx = BaseIndex(gs, np.array(d))
    w = idx.weights["transfer_new_context"]
    assert w["fitted"] and w["n"] == 18 and w["T"] < 0.5
    q = GroupInfo("A@c9", "A", "c9", "", 5)
    f, kind = idx.features(q, 8)
    assert kind == "transfer_new_context"
    np.testing.assert_allclose(f["T"], np.mean([d[0], d[6], d[12]], axis=0))
    assert np.linalg.norm(idx.base(q, 8)[0]) < 0.5 * np.linalg.norm(f["T"])


def test_variance_is_calibrated_to_out_of_fold_error(tmp_path: Path) -> None:
    """Each kind's variance factor is fitted on the out-of-fold squared error, so a kind whose
    correction gate is 0 (the base alone) still gets a variance of the size of its error."""
    from perturbfm_models.cgio.residual import fit_variance_scale

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(12, 5)) * np.array([1, 2, 3, 4, 5])
    pred = np.zeros_like(truth)
    net_var = np.full_like(truth, 0.01)
    kinds = ["context_mean"] * 10 + ["additive"] * 2
    a = fit_variance_scale(pred, net_var, truth, kinds)
    np.testing.assert_allclose(a["context_mean"] * 0.01, (truth[:10] ** 2).mean(axis=0))
    np.testing.assert_allclose(a["additive"] * 0.01, (truth ** 2).mean(axis=0))  # < 3 groups: pooled
    model, queries = _fit(tmp_path)
    pred = model.predict(queries)
    assert model.diagnostics()["variance_calibration"] and "out-of-fold" in pred.info["variance"]
    assert (pred.var_delta > 1e-5).all()


def test_training_data_mean_se2_is_cell_variance_over_count() -> None:
    adata = make_canonical_adata()
    train, _ = training_and_queries(adata, HELD_OUT)
    se2 = train.mean_se2()
    assert se2.shape == (len(train.groups), len(train.genes))
    g = train.groups[0]
    cells = train.cells(g.group_id)
    np.testing.assert_allclose(se2[0], cells.var(axis=0, ddof=1) / len(cells), rtol=1e-10, atol=1e-14)


def test_eb_shrink_removes_noise_and_keeps_strong_effects() -> None:
    """Sparse true effects + known sampling noise: the posterior means are closer to the truth
    than the measured deltas, noise-only genes go to ~0, strong-effect genes barely move."""
    from perturbfm_models.cgio.residual import eb_shrink

    rng = np.random.default_rng(0)
    n_groups, n_genes = 40, 60
    theta = np.zeros((n_groups, n_genes))
    theta[:, :10] = rng.normal(0, 2.0, size=(n_groups, 10))  # strong-effect genes
    se2 = np.full((n_groups, n_genes), 0.05)
    d = theta + rng.normal(size=theta.shape) * np.sqrt(se2)
    ctx = ["c1"] * 20 + ["c2"] * 20
    shrunk, factors = eb_shrink(d, se2, ctx)
    assert np.mean((shrunk - theta) ** 2) < 0.5 * np.mean((d - theta) ** 2)
    ratio = shrunk[:, :10] / d[:, :10]
    assert ratio.min() > 0.9
    assert np.abs(shrunk[:, 10:]).mean() < 0.3 * np.abs(d[:, 10:]).mean()
    assert set(factors) == {"c1", "c2"} and all(0 < f < 1 for f in factors.values())
    # no noise → nothing moves; a shape mismatch is refused
    np.testing.assert_allclose(eb_shrink(d, np.zeros_like(d), ctx)[0], d)
    with pytest.raises(ValueError, match="shape"):
        eb_shrink(d, se2[:, :5], ctx)


def test_denoised_additive_base_is_the_sum_of_shrunk_singles(tmp_path: Path) -> None:
    from perturbfm_models.cgio.residual import BaseIndex, eb_shrink

    adata = make_canonical_adata()
    train, queries = training_and_queries(adata, HELD_OUT)
    d, se2 = train.deltas(), train.mean_se2()
    idx = BaseIndex(train.groups, d, se2=se2)
    shrunk, _ = eb_shrink(d, se2, [g.context for g in train.groups])
    pos = {g.group_id: i for i, g in enumerate(train.groups)}
    q = next(q for q in queries if q.group_id == "G0+G1@ctxA")
    base, kind = idx.base(q, d.shape[1])
    w = idx.weights[kind]
    assert kind.startswith("additive") and not w["fitted"] and (w["A"], w["T"], w["M"]) == (1.0, 0.0, 0.0)
    np.testing.assert_allclose(base, shrunk[pos["G0@ctxA"]] + shrunk[pos["G1@ctxA"]])
    assert not np.allclose(base, d[pos["G0@ctxA"]] + d[pos["G1@ctxA"]])
    model, _ = _fit(tmp_path)
    assert set(model.diagnostics()["denoise_mean_factor_per_context"]) == {g.context for g in train.groups}


def test_self_effect_is_fitted_out_of_fold_and_added_at_the_target_gene() -> None:
    """Every perturbation raises its own (measured) gene by 2 on top of the usual effects. In
    one context a held-out single has a context-mean base, which lacks that rise: the fitted κ
    recovers it and the prediction at the target gene is up; switched off, it is not. A
    double whose singles are measured carries the rise in its additive base: no κ added."""
    adata = make_canonical_adata(contexts=("ctxA",))
    X = adata.X.toarray()
    pert = adata.obs["pfm_perturbation"].astype(str).to_numpy()
    genes = list(adata.var_names)
    for i, p in enumerate(pert):
        for g in p.split("+"):
            if g in genes:
                X[i, genes.index(g)] += 2.0
    adata.X = X
    train, queries = training_and_queries(adata, ["G5@ctxA", "G0+G1@ctxA"])
    ctrl = adata.obs["pfm_is_control"].to_numpy(bool)
    truth = X[pert == "G5", 5].mean() - X[ctrl, 5].mean()
    out, add = {}, {}
    for on in (True, False):
        model = CGIOModel()
        model.fit(train, None, {**model.default_config(), **FAST, "self_effect": on})
        pred = model.predict(queries)
        by_id = dict(zip(pred.group_ids, pred.mean_delta))
        out[on], add[on] = by_id["G5@ctxA"][5], by_id["G0+G1@ctxA"]
        assert ("self-effect" in pred.notes.get("G5@ctxA", "")) is on
        assert "self-effect" not in pred.notes.get("G0+G1@ctxA", "")
        eff = model.diagnostics()["self_effect_per_context"]
        if on:
            assert set(eff) == {"ctxA"} and 1.2 < eff["ctxA"]["kappa"] < 2.8 and eff["ctxA"]["n"] >= 3
        else:
            assert eff == {}
    assert abs(out[True] - truth) < 0.6 < abs(out[False] - truth)
    np.testing.assert_allclose(add[True], add[False])
