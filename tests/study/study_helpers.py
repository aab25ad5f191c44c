"""Helpers for study tests (imported as ``study_helpers``): tiny synthetic study files and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: A very small synthetic dataset: runs take about a second.
TINY = {"seed": 0, "n_genes": 30, "n_singles": 6, "n_doubles": 3, "cells_per_group": 8, "n_control": 20,
        "n_contexts": 2}


def tiny_study(path: Path, *, name: str = "tiny", models: list[Any] | None = None, seeds: list[int] | None = None,
               splits: dict[str, Any] | None = None, claims: list[dict[str, Any]] | None = None,
               panels: list[str] | None = None, **extra: Any) -> Path:
    """Write a study on the tiny synthetic dataset and return its path."""
    data = {
        "name": name,
        "datasets": {"syn": {"adapter": "synthetic", "options": dict(TINY)}},
        "splits": splits or {"rg": {"dataset": "syn", "generator": "random-groups",
                                    "params": {"test_fraction": 0.3}, "seed": 0}},
        "models": models or [{"model": "control-mean"}, {"model": "additive"}],
        "seeds": seeds or [0, 1],
        "panels": panels or ["basic"],
        **({"claims": claims} if claims else {}),
        **extra,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pfm(args: list[str], *, store: Path, check: bool = True, timeout: int = 300,
        env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pfm-bench --store STORE ARGS`` in a subprocess."""
    env = {**os.environ, "COLUMNS": "200", **(env_extra or {})}
    proc = subprocess.run([str(BIN / "pfm-bench"), "--store", str(store), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pfm-bench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def succeeded_runs(store: Path) -> list[Path]:
    """Run dirs whose run_status.json says succeeded and that hold metrics.json."""
    out = []
    for d in sorted((store / "runs").glob("*")) if (store / "runs").exists() else []:
        try:
            st = json.loads((d / "run_status.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if st.get("status") == "succeeded" and (d / "metrics.json").is_file():
            out.append(d)
    return out


def summary_metrics(study_dir: Path) -> dict[str, dict[str, Any]]:
    """key -> {label, split, seed, metric columns} from summary.json."""
    rows = json.loads((study_dir / "summary.json").read_text())["rows"]
    drop = {"run_id", "key", "split_id"}
    return {r["key"]: {k: v for k, v in r.items() if k not in drop} for r in rows}
