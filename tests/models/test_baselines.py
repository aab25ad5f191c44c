"""Tests of the baseline models of perturbfm-models on small synthetic data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from perturbfm.errors import ConfigError
from perturbfm.interfaces import Model, Prediction
from perturbfm.testing.data import make_canonical_adata, training_and_queries
from perturbfm_models.baselines import AdditiveModel, ControlMeanModel, LinearModel, TrainMeanModel

HELD_OUT = ["G0+G1@ctxA", "G5@ctxB"]


def _rows(adata: ad.AnnData, perturbation: str, context: str) -> np.ndarray:
    obs = adata.obs
    mask = (obs["pfm_perturbation"].astype(str) == perturbation).to_numpy() & (
        obs["pfm_context"].astype(str) == context
    ).to_numpy()
    X = adata.X[np.flatnonzero(mask)]
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)


def true_delta(adata: ad.AnnData, perturbation: str, context: str) -> np.ndarray:
    """Group mean minus the context's control mean, computed from X directly."""
    return _rows(adata, perturbation, context).mean(axis=0) - _rows(adata, "control", context).mean(axis=0)


def fit_predict(model: Model, adata: ad.AnnData, held_out: list[str], **config) -> Prediction:
    train, queries = training_and_queries(adata, held_out)
    cfg = {**model.default_config(), **config}
    model.fit(train, None, cfg)
    pred = model.predict(queries)
    assert pred.group_ids == held_out
    assert pred.mean_delta.shape == (len(held_out), len(train.genes))
    assert np.all(np.isfinite(pred.mean_delta))
    return pred


@pytest.fixture()
def adata() -> ad.AnnData:
    return make_canonical_adata()


def rename_perturbation(adata: ad.AnnData, old: str, new: str) -> ad.AnnData:
    """A copy of ``adata`` with perturbation label ``old`` renamed to the canonical ``new``."""
    out = adata.copy()
    labels = out.obs["pfm_perturbation"].astype(str).to_numpy()
    out.obs["pfm_perturbation"] = np.where(labels == old, new, labels)
    if "pfm_group" in out.obs:
        del out.obs["pfm_group"]
    return out


# ------------------------------------------------------------------ registration / config
def test_plugin_registers_all_baselines() -> None:
    from perturbfm_models.plugin import pfm_register_models

    names = {cls.name for cls in pfm_register_models()}
    assert names == {"control-mean", "train-mean", "additive", "linear", "cgio"}
    for cls in pfm_register_models():
        assert issubclass(cls, Model) and cls.description
        assert isinstance(cls().default_config(), dict)


# ------------------------------------------------------------------ control-mean / train-mean
def test_control_mean_predicts_zero(adata: ad.AnnData) -> None:
    pred = fit_predict(ControlMeanModel(), adata, HELD_OUT)
    assert np.all(pred.mean_delta == 0.0)
    assert "zero" in pred.info["prediction"]


def test_train_mean_is_context_mean_of_training_deltas(adata: ad.AnnData) -> None:
    pred = fit_predict(TrainMeanModel(), adata, HELD_OUT)
    perts = {c: sorted(set(adata.obs.loc[adata.obs["pfm_context"] == c, "pfm_perturbation"])) for c in ("ctxA", "ctxB")}
    for i, gid in enumerate(HELD_OUT):
        ctx = gid.split("@")[1]
        expected = np.mean(
            [true_delta(adata, p, ctx) for p in perts[ctx] if p != "control" and f"{p}@{ctx}" not in HELD_OUT],
            axis=0,
        )
        np.testing.assert_allclose(pred.mean_delta[i], expected, atol=1e-10)
    assert pred.notes == {}


def test_train_mean_unknown_context_falls_back_with_note() -> None:
    a = make_canonical_adata(contexts=("ctxA", "ctxB", "ctxC"))
    ctx_c = [f"{p}@ctxC" for p in ("G0", "G1", "G2", "G3", "G4", "G5", "G0+G1", "G2+G3")]
    pred = fit_predict(TrainMeanModel(), a, ctx_c)
    train, _ = training_and_queries(a, ctx_c)
    np.testing.assert_allclose(pred.mean_delta[0], train.deltas().mean(axis=0), atol=1e-10)
    assert set(pred.notes) == set(ctx_c)
    assert "no training groups" in pred.notes["G0@ctxC"]


# ------------------------------------------------------------------ additive
def test_additive_recovers_double_and_beats_train_mean(adata: ad.AnnData) -> None:
    held = ["G0+G1@ctxA"]
    truth = true_delta(adata, "G0+G1", "ctxA")
    add = fit_predict(AdditiveModel(), adata, held)
    expected = true_delta(adata, "G0", "ctxA") + true_delta(adata, "G1", "ctxA")
    np.testing.assert_allclose(add.mean_delta[0], expected, atol=1e-10)
    assert add.notes == {} and add.info["missing_single"] == "zero"
    mse_add = float(np.mean((add.mean_delta[0] - truth) ** 2))
    mse_tm = float(np.mean((fit_predict(TrainMeanModel(), adata, held).mean_delta[0] - truth) ** 2))
    assert np.corrcoef(add.mean_delta[0], truth)[0, 1] > 0.95
    assert np.max(np.abs(add.mean_delta[0] - truth)) < 0.5
    assert mse_add < 0.05
    assert mse_add < mse_tm / 5


def test_additive_missing_single_policies(adata: ad.AnnData) -> None:
    held = ["G0+G1@ctxA", "G0@ctxA"]
    d1 = true_delta(adata, "G1", "ctxA")
    zero = fit_predict(AdditiveModel(), adata, held, missing_single="zero")
    np.testing.assert_allclose(zero.mean_delta[0], d1, atol=1e-10)
    np.testing.assert_allclose(zero.mean_delta[1], 0.0, atol=1e-12)
    note = zero.notes["G0+G1@ctxA"]
    assert "not in training for context 'ctxA': G0 (" in note and "missing_single='zero'" in note
    assert "none of this group's singles" in zero.notes["G0@ctxA"]
    assert "none of this group's singles" not in note
    assert zero.info["missing_single"] == "zero" and "zero" in zero.info["missing_single_policy"]

    tm = fit_predict(AdditiveModel(), adata, held, missing_single="train-mean")
    ctx_perts = ["G1", "G2", "G3", "G4", "G5", "G2+G3"]
    ctx_mean = np.mean([true_delta(adata, p, "ctxA") for p in ctx_perts], axis=0)
    np.testing.assert_allclose(tm.mean_delta[0], d1 + ctx_mean, atol=1e-10)
    np.testing.assert_allclose(tm.mean_delta[1], ctx_mean, atol=1e-10)
    assert "G0" in tm.notes["G0+G1@ctxA"] and "missing_single='train-mean'" in tm.notes["G0+G1@ctxA"]
    assert "none of this group's singles" in tm.notes["G0@ctxA"]
    assert tm.info["missing_single"] == "train-mean"


def test_additive_rejects_unknown_policy(adata: ad.AnnData) -> None:
    train, _ = training_and_queries(adata, HELD_OUT)
    with pytest.raises(ConfigError) as exc:
        AdditiveModel().fit(train, None, {"missing_single": "bogus"})
    assert exc.value.field == "missing_single"


# ------------------------------------------------------------------ linear
def test_linear_runs_on_measured_genes(adata: ad.AnnData) -> None:
    pred = fit_predict(LinearModel(), adata, HELD_OUT)
    assert pred.info["n_components_used"] <= 10
    assert pred.info["excluded_training_perturbations_without_embedding"] == []
    assert pred.notes == {}
    truth = true_delta(adata, "G0+G1", "ctxA")
    assert np.corrcoef(pred.mean_delta[0], truth)[0, 1] > 0.5


def test_linear_notes_genes_without_embedding(adata: ad.AnnData) -> None:
    a = rename_perturbation(rename_perturbation(adata, "G4", "NOTMEASURED"), "G2+G3", "G2+NOTMEASURED")
    held = ["NOTMEASURED@ctxA", "G2+NOTMEASURED@ctxA", "G0+G1@ctxA"]
    pred = fit_predict(LinearModel(), a, held)
    train, _ = training_and_queries(a, held)
    assert pred.info["excluded_training_perturbations_without_embedding"] == ["NOTMEASURED@ctxB"]
    note = pred.notes["NOTMEASURED@ctxA"]
    assert "NOTMEASURED" in note and "predicted b (the train-mean)" in note
    ctx_mean = train.deltas()[[g.context == "ctxA" for g in train.groups]].mean(axis=0)
    np.testing.assert_allclose(pred.mean_delta[0], ctx_mean, atol=1e-10)
    partial = pred.notes["G2+NOTMEASURED@ctxA"]
    assert "NOTMEASURED" in partial and "used only the embedded gene(s) G2" in partial
    assert "G0+G1@ctxA" not in pred.notes


def test_linear_with_embedding_file(adata: ad.AnnData, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "emb.csv"
    lines = ["gene,e0,e1,e2,e3"] + [
        f"G{i}," + ",".join(f"{x:.5f}" for x in rng.standard_normal(4)) for i in range(1, 6)
    ]
    path.write_text("\n".join(lines) + "\n")
    held = ["G0+G1@ctxA", "G0@ctxB", "G5@ctxB"]
    pred = fit_predict(LinearModel(), adata, held, pert_embedding_file=str(path))
    assert "file" in pred.info["embedding_source"]
    assert "not in the embedding file" in pred.notes["G0@ctxB"]
    assert "used only the embedded gene(s) G1" in pred.notes["G0+G1@ctxA"]
    assert "G5@ctxB" not in pred.notes
    # TSV without a header works too
    tsv = tmp_path / "emb.tsv"
    tsv.write_text("\n".join(line.replace(",", "\t") for line in lines[1:]) + "\n")
    fit_predict(LinearModel(), adata, held, pert_embedding_file=str(tsv))


@pytest.mark.parametrize(
    "content,name",
    [
        ("gene,e0\nG0,0.1\nG1,abc\n", "bad.csv"),
        ("G0\nG1\n", "onecol.csv"),
        ("gene,e0\nG0,0.1\nG0,0.2\n", "dup.csv"),
        ("gene,e0,e1\n", "empty.csv"),
        (None, "missing.csv"),
    ],
)
def test_linear_malformed_embedding_raises(adata: ad.AnnData, tmp_path: Path, content: str | None, name: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    train, _ = training_and_queries(adata, HELD_OUT)
    with pytest.raises(ConfigError) as exc:
        LinearModel().fit(train, None, {**LinearModel().default_config(), "pert_embedding_file": str(path)})
    err = exc.value
    assert err.file == str(path)
    assert err.field and "pert_embedding_file" in err.field
    assert err.fix


def test_linear_rejects_bad_numbers(adata: ad.AnnData) -> None:
    train, _ = training_and_queries(adata, HELD_OUT)
    for key, value in (("n_components", 0), ("n_components", 2.5), ("ridge_lambda", -1.0), ("ridge_lambda", "x")):
        with pytest.raises(ConfigError) as exc:
            LinearModel().fit(train, None, {**LinearModel().default_config(), key: value})
        assert exc.value.field == key
