"""Executor plugins: serial, process (spawn-safe) and ray (optional)."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import pytest
from perturbfm.errors import PluginError
from perturbfm.plugins import get_registry
from study_helpers import summary_metrics, tiny_study


def square(x: int) -> dict[str, int]:
    """A picklable module-level job function."""
    return {"x": x, "y": x * x, "pid": os.getpid()}


def test_executors_are_registered_and_keep_order() -> None:
    reg = get_registry()
    assert {"serial", "process", "ray"} <= set(reg.names("executor"))
    assert [r["y"] for r in reg.create("executor", "serial").map(square, range(5))] == [0, 1, 4, 9, 16]
    ex = reg.create("executor", "process")
    ex.workers = 2
    out = ex.map(square, range(6))
    assert [r["y"] for r in out] == [0, 1, 4, 9, 16, 25]
    assert all(r["pid"] != os.getpid() for r in out)


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake(name: str, *a: Any, **k: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(PluginError, match=r"pip install 'perturbfm-core\[ray\]'"):
        get_registry().create("executor", "ray").map(square, [1])


def test_ray_and_process_give_the_same_summary(tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is required under CI=true (python3 scripts/dev.py installs it)")
        pytest.skip("ray not installed")
    from perturbfm.study.runner import run_study

    study = tiny_study(tmp_path / "s.yaml", name="exec", models=["control-mean", "additive", "linear"], seeds=[0])
    a = run_study(study, store=tmp_path / "p", executor="process", workers=2)
    b = run_study(study, store=tmp_path / "r", executor="ray", workers=2)
    assert a.phase == b.phase == "complete"
    ma, mb = summary_metrics(a.study_dir), summary_metrics(b.study_dir)
    assert ma == mb and len(ma) == 3
