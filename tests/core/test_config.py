"""Config resolution and the parameter ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from perturbfm.config import ledger_csv, resolve_config
from perturbfm.errors import ConfigError


def test_precedence_and_ledger(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  ridge_lambda: 0.5\n  n_components: 5\nrun:\n  seed: 3\n")
    resolved, ledger = resolve_config({"ridge_lambda": 0.1, "n_components": 10, "emb": None},
                                      config_file=cfg, sets=["model.n_components=7", "seed=4"], model_name="linear")
    assert resolved["model"] == {"ridge_lambda": 0.5, "n_components": 7, "emb": None}
    assert resolved["run"]["seed"] == 4
    src = {r.parameter: r.source for r in ledger}
    assert src["model.ridge_lambda"] == f"config file {cfg}"
    assert src["model.n_components"] == "CLI --set"
    assert src["model.emb"] == "default (linear)"
    assert src["run.seed"] == "CLI --set"
    assert src["run.max_cells"] == "default"
    csv = ledger_csv(ledger)
    assert csv.splitlines()[0] == "parameter,value,source"
    assert len(csv.splitlines()) == len(ledger) + 1


@pytest.mark.parametrize(
    "sets, match",
    [
        (["model.nope=1"], "unknown model parameter"),
        (["nope=1"], "unknown parameter"),
        (["model.n_components=abc"], "must be a number"),
        (["model.n_components=1.5"], "must be an integer"),
        (["novalue"], "is not key=value"),
        (["zzz.seed=1"], "unknown section"),
    ],
)
def test_bad_values_are_refused(sets: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_config({"n_components": 10}, sets=sets)


def test_bad_config_file_names_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("modle:\n  x: 1\n")
    with pytest.raises(ConfigError) as err:
        resolve_config({}, config_file=cfg)
    assert err.value.file == str(cfg) and err.value.field == "modle" and err.value.fix
