"""``pfm-bench envs list / build / remove`` and the environment column of ``pfm-bench plugins``,
with the fake isolated model (a test double) registered and a real uv build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from envs_support import load_fake
from perturbfm.cli import main
from perturbfm.plugins import PluginRegistry
from perturbfm.testing.doubles import TestDoublesPlugin

FAKE = load_fake()


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    # installed peer plugins (scgen, cpa, biolord) declare heavy environments: the fake one only here
    monkeypatch.setenv("PFM_DISABLE_PLUGINS", "perturbfm-scgen,perturbfm-cpa,perturbfm-biolord")
    reg = PluginRegistry(extra_plugins=[("test-doubles", TestDoublesPlugin(FAKE.FakeIsolatedModel))])
    monkeypatch.setattr("perturbfm.cli.get_registry", lambda: reg)
    monkeypatch.setattr("perturbfm.plugins.get_registry", lambda: reg)
    monkeypatch.delenv("PFM_ENVS_DIR", raising=False)  # the per-test store's envs/ folder
    return reg


def _json(capsys: pytest.CaptureFixture[str], argv: list[str], rc: int = 0) -> Any:
    assert main(argv) == rc
    return json.loads(capsys.readouterr().out)


def test_envs_list_build_remove(registry: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = FAKE.FakeIsolatedModel.environment
    h = spec.spec_hash()
    rows = _json(capsys, ["envs", "list", "--json"])
    assert rows == [{"spec_hash": h, "name": "fake-isolated", "models": ["fake-isolated"], "status": "not built",
                     "path": str(tmp_path / "pfm-home" / "envs" / h), "python": FAKE.PYTHON,
                     "requirements": [FAKE.NUMPY_PIN]}]
    plugins = _json(capsys, ["plugins", "--json"])["plugins"]
    envs = {m: e for p in plugins for m, e in p["environments"].items()}
    assert envs == {"fake-isolated": {"environment": "fake-isolated", "spec_hash": h, "built": False}}

    assert main(["envs", "build", "fake-isolated"]) == 0
    cap = capsys.readouterr()
    if "could not reach" in cap.err:
        pytest.skip("uv cannot reach a package index")
    assert cap.out.strip() == str(tmp_path / "pfm-home" / "envs" / h) and "built in" in cap.err
    again = _json(capsys, ["envs", "build", "--json"])  # every model with an environment; already built
    assert [(r["model"], r["reused"], r["packages"]) for r in again] == [("fake-isolated", True, [FAKE.NUMPY_PIN])]
    rows = _json(capsys, ["envs", "list", "--json", "--sizes"])
    assert [(r["status"], r["packages"], r["python"][:4]) for r in rows] == [("built", 1, FAKE.PYTHON[:4])]
    assert rows[0]["bytes"] > 1_000_000
    assert main(["plugins"]) == 0
    assert "built" in capsys.readouterr().out
    plugins = _json(capsys, ["plugins", "--json"])["plugins"]
    assert [e["built"] for p in plugins for e in p["environments"].values()] == [True]

    assert _json(capsys, ["envs", "remove", "fake-isolated", "--json"]) == {"removed": [h]}
    assert [r["status"] for r in _json(capsys, ["envs", "list", "--json"])] == ["not built"]
    assert not (tmp_path / "pfm-home" / "envs" / h).exists()


def test_envs_errors_are_short_and_clear(registry: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs", "remove", "fake-isolated"]) == 2
    assert "is not built" in capsys.readouterr().err
    assert main(["envs", "remove", "zz"]) == 2
    assert "not an environment hash" in capsys.readouterr().err
    assert main(["envs", "build", "train-mean"]) == 2  # an in-process model
    assert "declares no environment" in capsys.readouterr().err
    assert _json(capsys, ["envs", "remove", "incomplete", "--json"]) == {"removed": []}


def test_api_functions(registry: Any, tmp_path: Path) -> None:
    import perturbfm as pfm

    frame = pfm.list_environments()
    assert list(frame["status"]) == ["not built"] and list(frame["models"]) == [["fake-isolated"]]
    with pytest.raises(Exception, match="declares no environment"):
        pfm.build_environments("train-mean")
