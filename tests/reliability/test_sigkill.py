"""SIGKILL at random points of ``pfm-bench run`` and ``pfm-bench data import``.

Each victim is a child process running the ``pfm-bench`` command line
(``perturbfm.cli.main``). Most are forked from a warmed-up interpreter so that
a kill lands inside the run rather than in Python's imports; one is the
installed ``pfm-bench`` executable. After every kill: every file of the run
directory is complete (JSON parses, h5ad opens ...), no temporary file is left
anywhere in the store except inside the killed run's own directory, datasets
and splits still match their hashes, and rerunning the same command succeeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
import yaml
from perturbfm import cli
from reliability_helpers import COUNTS, dataset_problems, store_problems, temp_leftovers

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

RUN_KILLS = 20
IMPORT_KILLS = 8
SEED = 20240611
SYNTH = ["--opt", "n_genes=60", "--opt", "n_singles=8", "--opt", "n_doubles=4", "--opt", "cells_per_group=20",
         "--opt", "n_control=40"]


def _main_quiet(args: list[str]) -> int:
    """``pfm-bench ARGS`` in this process, output swallowed."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as out, \
            contextlib.redirect_stderr(io.StringIO()) as err:
        warnings.simplefilter("ignore")
        rc = cli.main(args)
    if rc != 0:
        raise AssertionError(f"pfm-bench {' '.join(args)} exited {rc}\n{out.getvalue()}\n{err.getvalue()}")
    return rc


def _fork(args: list[str]) -> int:
    """Fork a child running ``pfm-bench ARGS``; returns its pid."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        rc = 99
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            warnings.simplefilter("ignore")
            rc = cli.main(args)
        finally:
            os._exit(rc if isinstance(rc, int) else 0)
    return pid


def _timed_child(args: list[str]) -> float:
    t0 = time.perf_counter()
    pid = _fork(args)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, args
    return time.perf_counter() - t0


def _kill_after(pid: int, delay: float) -> bool:
    """SIGKILL ``pid`` after ``delay`` s; True if it was still running (a real kill)."""
    deadline = time.perf_counter() + delay
    while time.perf_counter() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def check_complete(path: Path) -> str | None:
    """None if ``path`` is a complete artifact, else what is wrong with it."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".h5ad":
            ad.read_h5ad(path)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".html":
            if "</html>" not in path.read_text():
                return "truncated html"
        elif path.suffix == ".png" and path.read_bytes()[-8:] != b"\x00\x00\x00\x00IEND\xaeB`\x82"[-8:]:
            return "truncated png"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _run_dir_problems(run_dir: Path) -> tuple[list[str], int]:
    problems, temps = [], 0
    for p in run_dir.rglob("*"):
        if p.is_dir():
            continue
        if p.name.startswith(".") or p.name.endswith(".tmp"):
            temps += 1  # allowed: inside the killed run's own directory
            continue
        why = check_complete(p)
        if why:
            problems.append(f"{p}: {why}")
    status = run_dir / "run_status.json"
    if status.exists() and not problems:
        state = json.loads(status.read_text()).get("status")
        if state not in ("running", "succeeded", "failed"):
            problems.append(f"{status}: unexpected status {state!r}")
    return problems, temps


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store with a synthetic dataset and a split; the interpreter warmed up."""
    root = tmp_path_factory.mktemp("killstore")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as out, \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        assert cli.main(["--store", str(root), "data", "import", "--adapter", "synthetic", *SYNTH]) == 0
        dataset = out.getvalue().strip().splitlines()[-1]
        assert cli.main(["--store", str(root), "splits", "create", "--dataset", dataset, "--generator",
                         "random-groups", "--test-fraction", "0.3", "--seed", "1"]) == 0
        split = out.getvalue().strip().splitlines()[-1]
    _main_quiet(["--store", str(root), "run", "--model", "train-mean", "--split", split,
            "--set", "run.panels=[basic]"])  # warm-up
    return root, split


def test_sigkill_during_runs(prepared: tuple[Path, str]) -> None:
    root, split = prepared
    args = ["--store", str(root), "run", "--model", "train-mean", "--split", split,
            "--set", "run.panels=[basic]"]
    duration = _timed_child(args)
    rng = random.Random(SEED)
    kills = attempts = lost = temps_in_runs = 0
    killed_dirs: list[Path] = []
    while kills < RUN_KILLS:
        attempts += 1
        assert attempts < RUN_KILLS * 4, "runs finish before the kills land"
        before = set((root / "runs").iterdir())
        if not _kill_after(_fork(args), rng.uniform(0.0, 0.95 * duration)):
            continue
        kills += 1
        new = set((root / "runs").iterdir()) - before
        killed_dirs += list(new)
        for run_dir in new:
            problems, temps = _run_dir_problems(run_dir)
            lost += len(problems)
            temps_in_runs += temps
            assert not problems, problems
        problems = store_problems(root, allowed_temp_dirs=tuple(killed_dirs))
        lost += len(problems)
        assert not problems, problems
        if kills % 4 == 0:  # rerunning the same command succeeds
            _main_quiet(args)
    _main_quiet(args)
    COUNTS["sigkill: kills during pfm-bench run"] += kills
    COUNTS["sigkill: artifacts lost or corrupted"] += lost
    COUNTS["sigkill: temp files left inside killed run dirs (allowed)"] += temps_in_runs


def test_sigkill_during_data_import(tmp_path: Path, prepared: tuple[Path, str]) -> None:
    root = tmp_path / "store"
    rng = random.Random(SEED + 1)
    args0 = ["--store", str(root), "data", "import", "--adapter", "synthetic", *SYNTH]
    duration = _timed_child([*args0, "--opt", "seed=999"])
    kills = attempts = lost = 0
    while kills < IMPORT_KILLS:
        attempts += 1
        assert attempts < IMPORT_KILLS * 4
        args = [*args0, "--opt", f"seed={attempts}"]
        if not _kill_after(_fork(args), rng.uniform(0.0, duration)):
            continue
        kills += 1
        problems = dataset_problems(root) + [str(p) for p in temp_leftovers(root / "splits")]
        lost += len(problems)
        assert not problems, problems  # no half-written dataset is ever visible under its hash
        _main_quiet(args)  # the same import then succeeds
        assert not dataset_problems(root)
    hidden = [p for p in (root / "datasets").iterdir() if p.name.startswith(".")]
    COUNTS["sigkill: kills during pfm-bench data import"] += kills
    COUNTS["sigkill: artifacts lost or corrupted"] += lost
    COUNTS["sigkill: hidden temp dirs left by killed imports (invisible, not GC'd)"] += len(hidden)


def test_sigkill_of_the_installed_executable(prepared: tuple[Path, str]) -> None:
    """The real ``pfm-bench`` process, killed once its run directory exists."""
    root, split = prepared
    exe = Path(sys.executable).parent / "pfm-bench"
    if not exe.exists():
        pytest.skip("pfm-bench executable not found beside the interpreter")
    before = set((root / "runs").iterdir())
    proc = subprocess.Popen([str(exe), "--store", str(root), "run", "--model", "train-mean", "--split", split,
            "--set", "run.panels=[basic]"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        new = set((root / "runs").iterdir()) - before
        if new and (next(iter(new)) / "run_status.json").exists():
            break
        time.sleep(0.01)
    time.sleep(random.Random(SEED + 2).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    new = set((root / "runs").iterdir()) - before
    for run_dir in new:
        problems, _ = _run_dir_problems(run_dir)
        assert not problems, problems
    killed = tuple(d for d in (root / "runs").iterdir()  # this one and the earlier tests' killed runs
                   if not (d / "run_status.json").exists()
                   or json.loads((d / "run_status.json").read_text()).get("status") != "succeeded")
    assert not store_problems(root, allowed_temp_dirs=killed)
    if proc.returncode == -signal.SIGKILL:
        COUNTS["sigkill: kills during pfm-bench run"] += 1
    _main_quiet(["--store", str(root), "run", "--model", "train-mean", "--split", split,
            "--set", "run.panels=[basic]"])
