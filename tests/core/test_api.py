"""The Python API (perturbfm.api, re-exported from perturbfm) and its docs page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import perturbfm as pfm
import pytest
from perturbfm.errors import ArtifactNotFoundError, ConfigError, DatasetValidationError, PerturbFMError
from perturbfm.testing import make_canonical_adata

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def _user_adata(seed: int = 0) -> ad.AnnData:
    src = make_canonical_adata(n_genes=30, cells_per_group=15, n_control=30, seed=seed, sparse=False)
    obs = pd.DataFrame({"condition": src.obs["pfm_perturbation"].astype(str).to_numpy(),
                        "cell_type": src.obs["pfm_context"].astype(str).to_numpy()}, index=src.obs_names)
    out = ad.AnnData(X=np.asarray(src.X, dtype=np.float64), obs=obs, var=pd.DataFrame(index=list(src.var_names)))
    out.layers["counts"] = np.round(np.expm1(out.X) * 5)
    return out


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_page_runs_and_each_step_is_short(tmp_path, monkeypatch):
    blocks = _code_blocks(DOC.read_text())
    assert len(blocks) >= 6
    for block in blocks:
        assert len([ln for ln in block.splitlines() if ln.strip()]) <= 5, block
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for block in blocks:  # (speed is a benchmark's business, never a timed assertion here)
        exec(compile(block, str(DOC), "exec"), ns)  # noqa: S102 - the docs' own code
    assert ns["linear"].status == "succeeded" and ns["additive"].status == "succeeded"
    assert set(ns["linear"].metrics["panel"]) == {"basic", "vcc"}
    assert set(ns["board"]["raw_verdict"].dropna()) <= {"better", "worse", "tie", "reference", "undefined", "n/a"}
    assert "better" in set(ns["board"]["raw_verdict"])
    scores = ns["scores"]
    assert set(scores["panel"]) == {"basic", "vcc"} and scores["raw"].notna().any()
    assert scores.attrs["metrics"]["kind"] == "eval"


def test_import_adata_in_memory_and_layer_leaves_input_unchanged():
    a = _user_adata()
    before = a.copy()
    ds = pfm.import_adata(a, perturbation_key="condition", control="control", context_key="cell_type")
    assert ds.manifest["expression_space"] == "log1p (as provided)" and ds.manifest["n_groups"] == 16
    assert ds.manifest["source"]["kind"] == "in-memory AnnData"
    again = pfm.import_adata(a, perturbation_key="condition", control="control", context_key="cell_type")
    assert again.id == ds.id and not again.created
    counts = pfm.import_adata(a, perturbation_key="condition", control="control", context_key="cell_type",
                              layer="counts", expression="counts")
    assert counts.id != ds.id and counts.manifest["expression_space"] == "log1p_cp10k"
    assert counts.manifest["source"]["layer"] == "counts"
    assert any("layers['counts']" in line for line in counts.manifest["processing"])
    np.testing.assert_array_equal(a.X, before.X)
    assert list(a.obs.columns) == ["condition", "cell_type"]
    stored = counts.to_adata()
    assert stored.n_obs == a.n_obs and "pfm_perturbation" in stored.obs


def test_import_adata_path_and_unknown_layer(tmp_path):
    a = _user_adata()
    a.write_h5ad(tmp_path / "screen.h5ad")
    ds = pfm.import_adata(tmp_path / "screen.h5ad", perturbation_key="condition", control="control",
                          context_key="cell_type")
    assert ds.manifest["source"]["path"] == str((tmp_path / "screen.h5ad").resolve())
    with pytest.raises(DatasetValidationError) as exc:
        pfm.import_adata(a, perturbation_key="condition", control="control", layer="spliced")
    assert "counts" in exc.value.fix and exc.value.field == "layer"
    with pytest.raises(ConfigError):
        pfm.import_adata(42, perturbation_key="condition", control="control")  # type: ignore[arg-type]


def test_make_split_run_load_and_list(tmp_path):
    ds = pfm.import_adata(_user_adata(), perturbation_key="condition", control="control", context_key="cell_type")
    split = pfm.make_split(ds, "random-groups", seed=1, test_fraction=0.25)
    assert split.counts()["test"] == 4 and split.dataset == ds.id
    assert pfm.make_split(ds.id, "random-groups", seed=1, test_fraction=0.25).id == split.id
    r = pfm.run("linear", split.id[:10], config={"run": {"panels": ["basic"]}}, model__ridge_lambda=2.5)
    assert r.status == "succeeded" and r.report_path.is_file()
    assert list(r.metrics.columns[:4]) == ["panel", "metric", "raw", "calibrated"]
    assert (r.run_dir / "parameters.csv").read_text().count("model.ridge_lambda,2.5,") == 1
    assert isinstance(r.predictions, ad.AnnData) and r.predictions.n_obs == 4
    same = pfm.load_run(r.run_id)
    assert same.run_dir == r.run_dir and pfm.load_run(r.run_dir).run_id == r.run_id
    listed = pfm.list_runs()
    assert listed["run_id"].tolist() == [r.run_id] and listed["status"].tolist() == ["succeeded"]
    r.report_path.unlink()
    assert r.report() == r.report_path and r.report_path.is_file()
    with pytest.raises(ArtifactNotFoundError):
        pfm.load_run("20990101-000000_abcdef1_linear_1234567")


def test_failed_run_says_why_metrics_are_missing(monkeypatch):
    from perturbfm_models.baselines.linear import LinearModel

    ds = pfm.import_adata(_user_adata(), perturbation_key="condition", control="control", context_key="cell_type")
    split = pfm.make_split(ds, "random-groups", seed=0, test_fraction=0.25)

    def boom(self, *a, **k):
        raise PerturbFMError("model exploded", field="model", fix="none")

    monkeypatch.setattr(LinearModel, "fit", boom)
    r = pfm.run("linear", split, panels=["basic"])
    assert r.status == "failed" and "exploded" in r.error.message
    with pytest.raises(ArtifactNotFoundError, match="exploded"):
        _ = r.metrics


def test_run_is_callable_however_the_module_was_imported():
    import perturbfm.run
    from perturbfm.run import execute_run

    assert callable(pfm.run) and pfm.run.execute_run is execute_run
    assert perturbfm.run is pfm.run
    import perturbfm.compare
    from perturbfm.compare import compare_runs

    assert callable(pfm.compare) and pfm.compare.compare_runs is compare_runs


def test_override_sets():
    from perturbfm.api import _override_sets

    got = _override_sets({"model": {"alpha": 0.5}}, {"ensemble": 3, "n_components": 4, "model__seed": 1,
                                                     "panels": ["basic", "vcc"]})
    assert got == ["model.alpha=0.5", "run.ensemble=3", "model.n_components=4", "model.seed=1",
                   "run.panels=[basic, vcc]"]
    with pytest.raises(ConfigError):
        _override_sets({"training": {"x": 1}}, {})


def test_list_runs_when_runs_is_a_file(_isolated_store):
    _isolated_store.mkdir(parents=True)
    (_isolated_store / "runs").write_text("not a folder")
    from perturbfm.errors import StoreLayoutError

    with pytest.raises(StoreLayoutError, match="is a file, not the store's 'runs' folder") as err:
        pfm.list_runs()
    assert err.value.fix and "mv " in err.value.fix  # the store names the fix: move the file away
    (_isolated_store / "runs").rename(_isolated_store / "runs.bak")  # follow it
    assert len(pfm.list_runs()) == 0


def test_evaluate_in_memory_equals_files_and_out_is_guarded(tmp_path):
    truth = _user_adata()
    pred = truth[truth.obs["condition"] != "control"].copy()
    pred.X = pred.X * 0.8
    mem = pfm.evaluate(pred, truth, perturbation_key="condition", context_key="cell_type", panels="basic")
    truth.write_h5ad(tmp_path / "t.h5ad")
    pred.write_h5ad(tmp_path / "p.h5ad")
    out = tmp_path / "m.json"
    files = pfm.evaluate(tmp_path / "p.h5ad", tmp_path / "t.h5ad", perturbation_key="condition",
                         context_key="cell_type", panels=["basic"], out=out)
    pd.testing.assert_series_equal(mem["raw"], files["raw"])
    assert json.loads(out.read_text())["truth"]["sha256"]
    with pytest.raises(ConfigError, match="would be overwritten"):
        pfm.evaluate(tmp_path / "p.h5ad", tmp_path / "t.h5ad", perturbation_key="condition",
                     context_key="cell_type", panels="basic", out=tmp_path / "t.h5ad")
    # counts in a layer: expression="counts" with layer/pred_layer
    pred.layers["counts"] = np.round(np.expm1(pred.X) * 5)
    got = pfm.evaluate(pred, truth, perturbation_key="condition", context_key="cell_type", panels="basic",
                       expression="counts", layer="counts", pred_layer="counts")
    assert got.attrs["metrics"]["conventions"]["expression"]["mode"] == "counts"
    auto = pfm.evaluate(pred, truth, perturbation_key="condition", context_key="cell_type", panels="basic",
                        expression="auto", layer="counts", pred_layer="counts")
    pd.testing.assert_series_equal(got["raw"], auto["raw"])


def test_names_lists_installed_plugins():
    assert "linear" in pfm.names("model") and "random-groups" in pfm.names("split_generator")
    with pytest.raises(ConfigError):
        pfm.names("spaceship")
