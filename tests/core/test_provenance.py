"""provenance.json records the git commit of the code that ran (the directory the
packages were imported from), never the one of the current directory, plus every
distribution's version and location."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from perturbfm import provenance
from perturbfm.provenance import code_git, code_provenance, distribution_code, git_sha

REPO = Path(__file__).resolve().parents[2]
PFM = Path(sys.executable).parent / "pfm-bench"


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def _repo_head() -> str | None:
    """HEAD of the checkout the core was imported from (None: the core is not a git checkout)."""
    core = Path(provenance.__file__).resolve().parent
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=core, capture_output=True, text=True)
    tracked = subprocess.run(["git", "ls-files", "--", str(core)], cwd=core, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 and tracked.stdout.strip() else None


@pytest.fixture
def other_repo(tmp_path: Path) -> tuple[Path, str]:
    """A different git repository with one commit, to run from."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "elsewhere"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "notes.txt").write_text("not the code\n")
    _git(repo, "add", "notes.txt")
    _git(repo, "commit", "-q", "-m", "unrelated")
    return repo, _git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize("where", ["unrelated-repo", "plain-dir"])
def test_code_git_ignores_the_current_directory(where: str, other_repo: tuple[Path, str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    repo, other_sha = other_repo
    cwd = repo if where == "unrelated-repo" else tmp_path
    monkeypatch.chdir(cwd)
    got = code_git()
    head = _repo_head()
    assert got["sha"] != other_sha
    if head is None:
        assert got["sha"] is None and got["reason"]
    else:
        assert got["sha"] == head and isinstance(got["dirty"], bool)


@pytest.mark.parametrize("layout", ["ignored-venv", "untracked-dir"])
def test_installed_copy_inside_a_checkout_is_not_attributed_to_it(layout: str, other_repo: tuple[Path, str]) -> None:
    """A wheel installed into a venv that lives in a checkout is not that checkout's code."""
    repo, _ = other_repo
    site = repo / ".venv" / "lib" / "site-packages" / "pkg" if layout == "ignored-venv" else repo / "build" / "pkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("x = 1\n")
    if layout == "ignored-venv":
        (repo / ".gitignore").write_text(".venv/\n")
    got = git_sha(site, tracked=site)
    assert got["sha"] is None and "not tracked" in got["reason"]


def test_tracked_directory_reports_commit_and_dirty_state(other_repo: tuple[Path, str]) -> None:
    repo, sha = other_repo
    assert git_sha(repo, tracked=repo / "notes.txt") == {"sha": sha, "dirty": False}
    (repo / "notes.txt").write_text("edited\n")
    assert git_sha(repo, tracked=repo / "notes.txt") == {"sha": sha, "dirty": True}


def test_not_a_checkout_and_missing_directory(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    assert git_sha(tmp_path)["sha"] is None
    missing = git_sha(tmp_path / "nope")
    assert missing["sha"] is None and "not a directory" in missing["reason"]


def test_distribution_code_of_installed_and_missing_distributions() -> None:
    assert distribution_code("pfm-surely-not-installed") == {"version": None, "reason": "not installed"}
    core = distribution_code("perturbfm-core")
    assert core["version"] and core["location"]
    assert Path(core["location"]).resolve() in Path(provenance.__file__).resolve().parents
    if core["editable"] and _repo_head() is not None:
        assert core["git"]["sha"] == _repo_head()
    numpy = distribution_code("numpy")  # a wheel in site-packages: never a commit
    assert numpy["version"] and numpy["git"]["sha"] is None
    prov = code_provenance(["perturbfm-models", "perturbfm-models"])
    assert list(prov) == ["perturbfm-core", "perturbfm-models"]


@pytest.mark.skipif(not PFM.exists(), reason="pfm-bench not installed beside this interpreter")
def test_run_started_in_another_repository_records_the_code_commit(other_repo: tuple[Path, str],
                                                                   tmp_path: Path) -> None:
    repo, other_sha = other_repo
    store = tmp_path / "store"
    env = {**os.environ, "PFM_HOME": str(store)}

    def pfm(*args: str) -> None:
        proc = subprocess.run([str(PFM), "--store", str(store), *args], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    pfm("data", "import", "--adapter", "synthetic", "--opt", "n_genes=30", "--opt", "n_singles=6",
        "--opt", "n_doubles=2", "--opt", "cells_per_group=8", "--opt", "n_control=30")
    (dataset,) = [p.name for p in (store / "datasets").iterdir() if p.is_dir()]
    pfm("splits", "create", "--dataset", dataset, "--generator", "random-groups", "--test-fraction", "0.3")
    (split,) = [p.stem for p in (store / "splits").glob("*.json")]
    pfm("run", "--model", "control-mean", "--split", split, "--set", "run.panels=[basic]")
    (run_dir,) = list((store / "runs").iterdir())
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["git"]["sha"] != other_sha
    assert prov["git"]["sha"] == _repo_head()
    assert {"perturbfm-core", "perturbfm-models", "perturbfm-metrics"} <= set(prov["code"])
    for name, info in prov["code"].items():
        assert info["version"] == prov["plugins"].get(name, info["version"]), name
        assert info["git"]["sha"] != other_sha, name
