"""`pfm-bench plugins new`: names, refusal to overwrite, file contents, the CLI merge."""

from __future__ import annotations

import contextlib
import io
import tomllib
from pathlib import Path

import pytest
from perturbfm.errors import PerturbFMError
from perturbfm.plugin_kit import KINDS, generate_plugin, plugin_names


@pytest.mark.parametrize("name", ["", "-x", "x-", "my model", "my/model", "../evil", "/abs", "a\u0000b", "ünï",
                                  "x" * 3 + "!", "1abc", "class", "json", "perturbfm-core", "perturbfm_extra",
                                  ".hidden", "pfm..", "con sole"])
def test_invalid_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(PerturbFMError):
        generate_plugin(name, "model", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PerturbFMError, match="kind"):
        generate_plugin("pfm-x", "optimizer", tmp_path)


def test_names_are_derived() -> None:
    n = plugin_names("Pfm.My_Model", "model")
    assert (n.normalized, n.module, n.class_name) == ("pfm-my-model", "pfm_my_model", "PfmMyModelModel")
    assert plugin_names("pfm-x", "split").class_name == "PfmXSplitGenerator"


def test_existing_directory_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "pfm-x").mkdir()
    (tmp_path / "pfm-x" / "keep.txt").write_text("mine")
    with pytest.raises(PerturbFMError, match="already exists"):
        generate_plugin("pfm-x", "model", tmp_path)
    assert (tmp_path / "pfm-x" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pfm-x"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_generated_package_layout(kind: str, tmp_path: Path) -> None:
    out = generate_plugin(f"pfm-kit-{kind}", kind, tmp_path)
    meta = tomllib.loads((out.path / "pyproject.toml").read_text())
    module = out.names.module
    assert meta["project"]["name"] == f"pfm-kit-{kind}"
    assert meta["project"]["entry-points"]["perturbfm"] == {f"pfm-kit-{kind}": f"{module}.plugin"}
    assert any(d.startswith("perturbfm-core") for d in meta["project"]["dependencies"])
    for rel in ("README.md", f"src/{module}/__init__.py", f"src/{module}/plugin.py",
                f"src/{module}/{KINDS[kind].module}.py", f"tests/test_{module}.py"):
        assert (out.path / rel).is_file(), rel
        compile((out.path / rel).read_text(), rel, "exec") if rel.endswith(".py") else None
    test = (out.path / f"tests/test_{module}.py").read_text()
    assert f"({KINDS[kind].suite})" in test and "$" not in test
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_cli_command_is_merged_into_the_core_plugins_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from perturbfm.cli import main

    assert main(["plugins", "new", "pfm-cli-model", "--kind", "model", "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "pfm-cli-model" / "pyproject.toml").exists()
    assert capsys.readouterr().out.strip().endswith("pfm-cli-model")
    # refusals are clean exit-2 errors, no traceback
    assert main(["plugins", "new", "pfm-cli-model", "--kind", "model", "--dest", str(tmp_path)]) == 2
    assert main(["plugins", "new", "bad name", "--kind", "model", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "not a valid distribution name" in err and "Traceback" not in err
    # the core group's own behaviour is intact
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["plugins", "--json"]) == 0
