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
