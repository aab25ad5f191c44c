"""``EnvSpec.overrides`` (added for cpa-tools 0.8.8, whose metadata caps torch at 2.0.1): hashed only
when set, validated as PEP 508, passed to ``uv pip install --override``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from perturbfm.envs import EnvSpec
from perturbfm.errors import ConfigError


def _spec(**kw: Any) -> EnvSpec:
    return EnvSpec(name="x", requirements=["numpy==2.2.6"], worker="w.py", **kw)


def test_overrides_are_hashed_only_when_set() -> None:
    assert "overrides" not in _spec().content()  # specs without overrides keep their hashes
    a, b = _spec(overrides=["torch==2.13.0"]), _spec(overrides=["torch==2.12.0"])
    assert len({_spec().spec_hash(), a.spec_hash(), b.spec_hash()}) == 3
    assert _spec(overrides=["a==1", "b==2"]).spec_hash() == _spec(overrides=["b==2", "a==1"]).spec_hash()


def test_bad_override_names_the_field() -> None:
    with pytest.raises(ConfigError, match="overrides entry 'torch>>1' is not a PEP 508"):
        _spec(overrides=["torch>>1"])


def test_overrides_reach_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perturbfm.envs import store

    calls: list[list[str]] = []

    def fake_uv(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
        calls.append(list(args))
        if args[:2] == ["pip", "install"]:
            assert (cwd / "overrides.txt").read_text().splitlines() == ["torch==2.13.0", 'torchaudio; python_version < "0"']
            return subprocess.CompletedProcess(args, 1, "", "stop here")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(store, "_uv", fake_uv)
    spec = _spec(overrides=["torch==2.13.0", 'torchaudio; python_version < "0"'])
    with pytest.raises(Exception, match="could not be built"):
        store.build_env(spec, tmp_path)
    install = next(c for c in calls if c[:2] == ["pip", "install"])
    assert install[install.index("--override") + 1] == "overrides.txt"
