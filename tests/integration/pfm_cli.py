"""Run the installed ``pfm-bench`` in a subprocess (integration-test helper)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def pfm(args: list[str], *, store: Path, pythonpath: Path | None = None, check: bool = True,
        env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``pfm-bench`` in a subprocess."""
    env = {**os.environ, "PFM_HOME": str(store), "COLUMNS": "200", **(env_extra or {})}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([str(BIN / "pfm-bench"), *args], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"pfm-bench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
