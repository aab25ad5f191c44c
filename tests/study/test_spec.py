"""Study file parsing, variable expansion and the plan filter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from perturbfm.errors import ConfigError
from perturbfm.study.spec import load_study
from study_helpers import tiny_study


def test_variants_labels_and_env_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFM_SHARED_DATA", "/data/shared")
    p = tiny_study(tmp_path / "s.yaml", models=[
        "control-mean", {"model": "additive"},
        {"name": "linear", "variants": [{"label": "lin_a"}, {"label": "lin_b", "set": {"ridge_lambda": 1.0}}]},
    ])
    data = yaml.safe_load(p.read_text())
    data["datasets"]["real"] = {"adapter": "anndata", "path": "${PFM_SHARED_DATA}/x.h5ad",
                                "options": {"note": "${NOT_SET_ANYWHERE:-fallback}"}}
    p.write_text(yaml.safe_dump(data))
    spec = load_study(p)
    assert [v.label for v in spec.variants] == ["control-mean", "additive", "lin_a", "lin_b"]
    assert spec.variants[3].set == {"ridge_lambda": 1.0}
    assert spec.datasets["real"].path == "/data/shared/x.h5ad"
    assert spec.datasets["real"].options["note"] == "fallback"


def test_shared_data_defaults_beside_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PFM_SHARED_DATA", raising=False)
    repo = tmp_path / "proj" / "main"
    (tmp_path / "proj" / "shared" / "data").mkdir(parents=True)
    (repo / "studies").mkdir(parents=True)
    p = tiny_study(repo / "studies" / "s.yaml")
    data = yaml.safe_load(p.read_text())
    data["datasets"]["real"] = {"adapter": "anndata", "path": "${PFM_SHARED_DATA}/x.h5ad"}
    p.write_text(yaml.safe_dump(data))
    assert load_study(p).datasets["real"].path == str((tmp_path / "proj" / "shared" / "data" / "x.h5ad").resolve())


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(bogus=1), "unknown study keys"),
    (lambda d: d.update(models=[{"model": "additive"}, {"model": "additive"}]), "labels must be unique"),
    (lambda d: d.update(seeds=[0, 0]), "seeds must not repeat"),
    (lambda d: d["splits"]["rg"].update(dataset="nope"), "unknown dataset"),
    (lambda d: d["datasets"]["syn"].update(path="${UNSET_VAR_FOR_TEST}"), "UNSET_VAR_FOR_TEST"),
])
def test_bad_study_files_are_refused(tmp_path: Path, mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    p = tiny_study(tmp_path / "s.yaml")
    data = yaml.safe_load(p.read_text())
    mutate(data)
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=needle):
        load_study(p)


def test_pinned_plugins_are_checked_before_any_run(tmp_path) -> None:
    import yaml
    from perturbfm.errors import PluginError
    from perturbfm.study.runner import run_study

    study = tmp_path / "pinned.yaml"
    study.write_text(yaml.safe_dump({
        "name": "pinned",
        "requires": {"perturbfm-models": ">=0.1", "pfm-not-installed": "==1.0", "perturbfm-metrics": "==9.9"},
        "datasets": {"syn": {"adapter": "synthetic", "options": {"n_genes": 40, "n_singles": 4, "n_doubles": 2}}},
        "splits": {"rnd": {"dataset": "syn", "generator": "random-groups", "params": {"test_fraction": 0.3}}},
        "models": ["train-mean"], "seeds": [0], "panels": ["basic"],
    }))
    with pytest.raises(PluginError) as err:
        run_study(study, store=tmp_path / "store")
    assert "pfm-not-installed" in err.value.message and "perturbfm-metrics" in err.value.message
    assert not (tmp_path / "store" / "runs").exists()


# ------------------------------------------------------------------ typed structure and paths
@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(seeds=[0, "1"]), "seeds[1]"),
    (lambda d: d.update(seeds=[0, 1.5]), "seeds[1]"),
    (lambda d: d.update(seeds=[]), "seeds"),
    (lambda d: d.update(panels=[["basic"]]), "panels[0]"),
    (lambda d: d.update(name="bad name/x"), "name"),
    (lambda d: d["splits"]["rg"].update(seed="abc"), "splits.rg.seed"),
    (lambda d: d["splits"]["rg"].update(seed=-1), "splits.rg.seed"),
    (lambda d: d["splits"]["rg"].update(genertor="x"), "splits.rg.genertor"),
    (lambda d: d["datasets"]["syn"].update(path=3), "datasets.syn.path"),
    (lambda d: d["datasets"]["syn"].update(options=[1]), "datasets.syn.options"),
    (lambda d: d.update(models=[{"model": "additive", "sett": {}}]), "models[0].sett"),
    (lambda d: d.update(models=[{"model": "additive", "set": [1]}]), "models[0].set"),
    (lambda d: d.update(run={"max_cells": "many"}), "run.max_cells"),
    (lambda d: d.update(run={"replicate_seeds": 1}), "run.replicate_seeds"),
    (lambda d: d.update(run={"nope": 1}), "run.nope"),
])
def test_typed_study_fields_are_refused_with_their_dotted_path(tmp_path: Path, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    p = tiny_study(tmp_path / "s.yaml")
    data = yaml.safe_load(p.read_text())
    mutate(data)
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_study(p)
    assert err.value.field == field and err.value.file == str(p.resolve()) and err.value.fix


@pytest.mark.parametrize("content, needle", [
    (b"\x00\x00\x00\x01binary", "binary"), (b"name: \xff\xfe\n", "UTF-8"), (b"- name: x\n", "not a list"),
    (b"just a string\n", "not a string"), (b"name: s\nseeds: [.nan]\n", "finite"),
])
def test_unreadable_study_files_are_refused(tmp_path: Path, content: bytes, needle: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as err:
        load_study(p)
    assert err.value.file == str(p.resolve()) and err.value.fix


def test_relative_dataset_paths_are_relative_to_the_study_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "studies").mkdir()
    p = tiny_study(tmp_path / "studies" / "s.yaml")
    data = yaml.safe_load(p.read_text())
    data["datasets"]["real"] = {"adapter": "anndata", "path": "../data/x.h5ad"}
    p.write_text(yaml.safe_dump(data))
    for cwd in (tmp_path, tmp_path / "studies"):
        monkeypatch.chdir(cwd)
        assert load_study("studies/s.yaml" if cwd == tmp_path else "s.yaml").datasets["real"].path == \
            str(tmp_path / "data" / "x.h5ad")


def test_same_study_from_two_cwds_opens_the_same_files_and_plans_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perturbfm.dataset import CONTEXT_COL, PERT_COL
    from perturbfm.hashing import sha256_file
    from perturbfm.plugins import get_registry
    from perturbfm.store import ArtifactStore
    from perturbfm.study.plan import build_plan
    from perturbfm.testing.data import make_canonical_adata

    study_dir, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    for d, seed in ((study_dir, 0), (elsewhere, 1)):  # same relative names, different content
        d.mkdir()
        make_canonical_adata(n_genes=12, cells_per_group=4, n_control=8, seed=seed).write_h5ad(d / "data.h5ad")
        (d / "emb.csv").write_text("gene,e0\n" + "".join(f"G{i},{i * (seed + 1)}.5\n" for i in range(6)))
    p = study_dir / "s.yaml"
    p.write_text(yaml.safe_dump({
        "name": "paths", "seeds": [0], "panels": ["basic"],
        "datasets": {"d": {"adapter": "anndata", "path": "data.h5ad", "options": {
            "perturbation_key": PERT_COL, "control": "control", "context_keys": [CONTEXT_COL]}}},
        "splits": {"rg": {"dataset": "d", "generator": "random-groups", "params": {"test_fraction": 0.3}}},
        "models": [{"model": "linear", "set": {"pert_embedding_file": "emb.csv"}}],
    }))
    plans = []
    for cwd in (elsewhere, tmp_path):
        monkeypatch.chdir(cwd)
        spec = load_study(p.relative_to(tmp_path) if cwd == tmp_path else p)
        plans.append(build_plan(spec, ArtifactStore(tmp_path / "store"), get_registry()))
    a, b = plans
    assert a.hash() == b.hash() and a.datasets == b.datasets and [c.key for c in a.cells] == [c.key for c in b.cells]
    inputs = {(i["kind"], i["parameter"]): i for i in a.inputs}
    assert inputs[("dataset", "path")]["path"] == str(study_dir / "data.h5ad")
    assert inputs[("dataset", "path")]["sha256"] == sha256_file(study_dir / "data.h5ad")
    assert inputs[("model", "pert_embedding_file")]["path"] == str(study_dir / "emb.csv")
    assert inputs[("model", "pert_embedding_file")]["sha256"] == sha256_file(study_dir / "emb.csv")
    assert a.variant_configs["linear"]["model"]["pert_embedding_file"] == str(study_dir / "emb.csv")
    stored = ArtifactStore(tmp_path / "store").datasets.get(a.datasets["d"]).manifest
    assert stored["source"]["path"] in (str(study_dir / "data.h5ad"), str((study_dir / "data.h5ad").resolve()))
