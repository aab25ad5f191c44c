"""Hostile study state (issue 18, class 10) and synthetic marks (class 3).

One small study is run to completion once; every case copies its store, damages
one thing (truncates each kind of file at several offsets, writes garbage or
values of the wrong type, points run dirs outside the store or at another cell's
run) and runs the study again. Each must end cleanly, never lose a finished
result silently (a damaged status is rebuilt from the store with nothing rerun),
rerun exactly the cells whose results no longer read back, and give the same
summary as the undamaged study. The generated cases run in this process through
:func:`perturbfm.study.runner.run_study` (recorded with ``record_outcome``);
one case of each kind also runs through ``pfm-bench study run --json`` in a fresh
process. Kills of ``study run`` with the process executor at several points must
leave no worker alive, and the study must continue afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import BIN, attempt, check, record_outcome
from perturbfm.errors import PerturbFMError

STUDY = {
    "name": "hostile",
    "datasets": {"syn": {"adapter": "synthetic", "options": {"seed": 0, "n_genes": 30, "n_singles": 6,
                                                              "n_doubles": 3, "cells_per_group": 8,
                                                              "n_control": 20, "n_contexts": 2}}},
    "splits": {"rg": {"dataset": "syn", "generator": "random-groups", "params": {"test_fraction": 0.3}, "seed": 0}},
    "models": [{"model": "control-mean"}, {"model": "additive"}],
    "seeds": [0],
    "panels": ["basic"],
    "claims": [{"id": "add", "statement": "additive beats control-mean", "better": "additive",
                "worse": "control-mean", "metric": "basic.pcc_delta", "n_boot": 200}],
}
CLASS = 10


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A study run to completion once: its file, store and reference summary."""
    from perturbfm.study.runner import run_study

    root = tmp_path_factory.mktemp("finished")
    study = root / "hostile.yaml"
    study.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    out = run_study(study, store=root / "store", executor="serial")
    assert out.phase == "complete", out.status
    return {"study": study, "store": root / "store", "summary": _summary(out.study_dir),
            "cells": out.status["cells"]}


def _summary(study_dir: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads((study_dir / "summary.json").read_text())["rows"]
    return {r["key"]: {k: v for k, v in r.items() if k not in ("run_id",)} for r in rows}


def _copy(finished: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "store"
    shutil.copytree(finished["store"], store, symlinks=True)
    return store, store / "studies" / "hostile"


def _run(case: str, store: Path, study: Path, *extra: str, expect_error: bool = False,
         must_name: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    a = check(attempt(case, CLASS, ["--store", str(store), "study", "run", str(study), "--executor", "serial",
                                    "--json", *extra], store=store, expect_error=expect_error,
                      must_name=must_name, timeout=240))
    return a, (json.loads(a.stdout) if a.stdout.strip().startswith("{") else {})


def _api(case: str, store: Path, study: Path, **kw: Any) -> tuple[list[str], dict[str, Any]]:
    """Run the study in this process; (messages said, an outcome dict like ``--json``'s)."""
    from perturbfm.study.runner import run_study

    said: list[str] = []
    try:
        out = run_study(study, store=store, executor="serial", say=said.append, **kw)
    except PerturbFMError:
        record_outcome(case, CLASS, "unexpected_error", expect_error=False)
        raise
    except BaseException:
        record_outcome(case, CLASS, "traceback", expect_error=False)
        raise
    record_outcome(case, CLASS, "ok" if out.ok else "unexpected_error", expect_error=False)
    return said, {"phase": out.phase, "ran": out.ran, "recovery": out.status.get("recovery"),
                  "cells": out.status["cells"]}


def _run_dirs(finished: dict[str, Any], store: Path) -> list[Path]:
    return [store / "runs" / c["run_id"] for c in finished["cells"].values()]


def _truncate(path: Path, where: str) -> None:
    data = path.read_bytes()
    cut = {"empty": 0, "one": 1, "third": len(data) // 3, "half": len(data) // 2, "last": len(data) - 2}[where]
    path.write_bytes(data[:cut])


def _edit_json(path: Path, fn: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text())), allow_nan=True))


def _assert_same_results(finished: dict[str, Any], study_dir: Path, out: dict[str, Any], ran: int) -> None:
    assert out["phase"] == "complete" and out["ran"] == ran, out
    assert _summary(study_dir) == finished["summary"]


# --- a finished cell whose run files no longer read back: the cell is damaged and runs again ------------------------

RUN_FILES = ("metrics.json", "run_status.json", "provenance.json")
OFFSETS = ("empty", "third", "last")


@pytest.mark.parametrize("where", OFFSETS)
@pytest.mark.parametrize("name", RUN_FILES)
def test_truncated_run_file_reruns_only_that_cell(finished: dict[str, Any], tmp_path: Path, name: str,
                                                  where: str) -> None:
    store, study_dir = _copy(finished, tmp_path)
    victim = _run_dirs(finished, store)[0]
    _truncate(victim / name, where)
    said, out = _api(f"truncated {name} at {where}", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=1)
    assert victim.is_dir(), "a damaged run dir must be kept, not deleted"
    st = json.loads((study_dir / "study_status.json").read_text())
    damaged = [d for c in st["cells"].values() for d in c.get("damaged", [])]
    assert damaged and damaged[0]["run_id"] == victim.name and damaged[0]["file"].endswith(name), damaged
    assert victim.name in (study_dir / "study_status.md").read_text()
    assert any("damaged" in m for m in said), said


def _set_global(value: Any) -> Callable[[Any], Any]:
    def fn(m: Any) -> Any:
        m["panels"]["basic"]["metrics"]["pcc_delta"]["global"] = value
        return m
    return fn


def _set(path: tuple[str, ...], value: Any) -> Callable[[Any], Any]:
    def fn(m: Any) -> Any:
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        return m
    return fn


METRICS_EDITS: dict[str, Callable[[Any], Any]] = {
    "global is a string": _set_global("0.5abc"),
    "global is null": _set_global(None),
    "global is a list": _set_global([0.5]),
    "global is true": _set_global(True),
    "global is NaN": _set_global(float("nan")),
    "global is infinite": _set_global(float("inf")),
    "panels is a list": _set(("panels",), [1, 2]),
    "metrics is a string": _set(("panels", "basic", "metrics"), "mse"),
    "metric entry is a number": _set(("panels", "basic", "metrics", "mse"), 0.1),
    "per-group value is text": lambda m: _set(("panels", "basic", "metrics", "pcc_delta", "per_group"),
                                              {g: "x" for g in m["panels"]["basic"]["metrics"]["pcc_delta"]
                                               ["per_group"]})(m),
    "calibrated is a string": _set(("panels", "basic", "metrics", "mse", "calibrated"), "high"),
    "document is a list": lambda m: [m],
    "synthetic is a string": _set(("synthetic",), "no"),
}


@pytest.mark.parametrize("case", sorted(METRICS_EDITS))
def test_wrong_types_in_metrics_rerun_the_cell(finished: dict[str, Any], tmp_path: Path, case: str) -> None:
    store, study_dir = _copy(finished, tmp_path)
    victim = _run_dirs(finished, store)[-1]
    _edit_json(victim / "metrics.json", METRICS_EDITS[case])
    _, out = _api(f"metrics.json: {case}", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=1)


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00garbage", b"{\"panels\": {", b"null", b"[]", b"\"text\""])
def test_garbage_metrics_rerun_the_cell(finished: dict[str, Any], tmp_path: Path, garbage: bytes) -> None:
    store, study_dir = _copy(finished, tmp_path)
    (_run_dirs(finished, store)[0] / "metrics.json").write_bytes(garbage)
    _, out = _api(f"metrics.json holds {garbage!r}", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=1)


# --- a damaged study_status.json: the state is rebuilt from the store, nothing reruns ------------------------------

STATUS_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated to nothing": lambda p: _truncate(p, "empty"),
    "truncated to one byte": lambda p: _truncate(p, "one"),
    "truncated at a third": lambda p: _truncate(p, "third"),
    "truncated at half": lambda p: _truncate(p, "half"),
    "truncated before the end": lambda p: _truncate(p, "last"),
    "binary garbage": lambda p: p.write_bytes(os.urandom(512)),
    "a JSON list": lambda p: p.write_text("[1, 2, 3]"),
    "cells is a list": lambda p: _edit_json(p, _set(("cells",), [])),
    "a cell entry is a string": lambda p: _edit_json(p, lambda s: {**s, "cells": {k: "x" for k in s["cells"]}}),
    "run ids are numbers": lambda p: _edit_json(p, lambda s: {**s, "cells": {k: {**c, "run_id": 7}
                                                                             for k, c in s["cells"].items()}}),
    "attempts is a string": lambda p: _edit_json(p, lambda s: {**s, "cells": {k: {**c, "attempts": "none"}
                                                                              for k, c in s["cells"].items()}}),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
}


@pytest.mark.parametrize("case", sorted(STATUS_DAMAGE))
def test_damaged_status_is_rebuilt_without_rerunning(finished: dict[str, Any], tmp_path: Path, case: str) -> None:
    store, study_dir = _copy(finished, tmp_path)
    STATUS_DAMAGE[case](study_dir / "study_status.json")
    said, out = _api(f"study_status.json {case}", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=0)
    assert out["recovery"]["recovered"] == len(finished["cells"]) and "damaged" in out["recovery"]["reason"]
    assert Path(out["recovery"]["backup"]).exists(), "the damaged status must be kept for inspection"
    assert any("rebuilding the study state" in m for m in said), said


@pytest.mark.parametrize("also_records", ["records intact", "records truncated", "records deleted"])
def test_status_and_worker_records_damaged_together(finished: dict[str, Any], tmp_path: Path,
                                                    also_records: str) -> None:
    store, study_dir = _copy(finished, tmp_path)
    _truncate(study_dir / "study_status.json", "half")
    for rec in (study_dir / "cells").glob("*.json"):
        if also_records == "records truncated":
            _truncate(rec, "third")
        elif also_records == "records deleted":
            rec.unlink()
    _, out = _api(f"status truncated, {also_records}", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=0)


def test_deleted_status_with_rebuild_flag_keeps_finished_runs(finished: dict[str, Any], tmp_path: Path) -> None:
    store, study_dir = _copy(finished, tmp_path)
    (study_dir / "study_status.json").unlink()
    _, out = _api("deleted status, rebuild_status", store, finished["study"], rebuild_status=True)
    _assert_same_results(finished, study_dir, out, ran=0)


def test_status_command_fix_for_a_damaged_status_works(finished: dict[str, Any], tmp_path: Path) -> None:
    store, study_dir = _copy(finished, tmp_path)
    _truncate(study_dir / "study_status.json", "half")
    a = check(attempt("study status on a damaged status", CLASS, ["--store", str(store), "study", "status",
                                                                  str(finished["study"])],
                      store=store, expect_error=True, must_name=("study_status.json", "not valid JSON",
                                                                 "--rebuild-status")))
    fix = a.stderr.split("fix:", 1)[1].split("(", 1)[0].split()
    assert fix[:3] == ["pfm-bench", "study", "run"], fix
    _, out = _run("following the fix of study status", store, finished["study"], "--rebuild-status")
    _assert_same_results(finished, study_dir, out, ran=0)
    a = check(attempt("study status --json after the fix", CLASS, ["--store", str(store), "study", "status",
                                                                   "hostile", "--json"], store=store,
                      expect_error=False))
    st = json.loads(a.stdout)
    assert st["phase"] == "complete" and st["counts"] == {"succeeded": len(finished["cells"])}


# --- run dirs the status or a worker record points at are not trusted blindly ---------------------------------------

def _fake_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    _edit_json(dest / "metrics.json", _set_global(0.999))
    return dest


UNTRUSTED: dict[str, Callable[[Path, Path, list[Path]], tuple[str | None, str | None]]] = {
    # (run_id, run_dir) written into the status (and the worker record) of the first cell
    "run_dir outside the store": lambda tmp, store, runs: (
        runs[0].name, str(_fake_run(runs[0], tmp / "elsewhere" / runs[0].name))),
    "run_id with ..": lambda tmp, store, runs: (
        f"../../{tmp.name}/evil", str(_fake_run(runs[0], tmp / "evil"))),
    "run_id of another cell": lambda tmp, store, runs: (runs[1].name, str(runs[1])),
    "run_id absolute path": lambda tmp, store, runs: (str(_fake_run(runs[0], tmp / "abs")), None),
    "symlink in runs/ to outside": lambda tmp, store, runs: (
        "linked", (os.symlink(_fake_run(runs[0], tmp / "target"), store / "runs" / "linked"),
                   str(store / "runs" / "linked"))[1]),
    "run_dir is the store root": lambda tmp, store, runs: (runs[0].name, str(store)),
}


@pytest.mark.parametrize("where", ["status", "worker record"])
@pytest.mark.parametrize("case", sorted(UNTRUSTED))
def test_untrusted_run_dirs_are_not_used(finished: dict[str, Any], tmp_path: Path, case: str, where: str) -> None:
    store, study_dir = _copy(finished, tmp_path)
    runs = _run_dirs(finished, store)
    run_id, run_dir = UNTRUSTED[case](tmp_path, store, runs)
    key = next(k for k, c in finished["cells"].items() if c["run_id"] == runs[0].name)
    if where == "status":
        _edit_json(study_dir / "study_status.json", lambda s: {**s, "cells": {
            **s["cells"], key: {**s["cells"][key], "run_id": run_id, "run_dir": run_dir}}})
    else:
        _edit_json(study_dir / "cells" / f"{key}.json", lambda r: {**r, "run_id": run_id, "run_dir": run_dir})
    _, out = _api(f"{case} ({where})", store, finished["study"])
    # the cell's own run is found in the store by its config hash: nothing reruns, no 0.999 slips in
    _assert_same_results(finished, study_dir, out, ran=0)
    assert out["cells"][key]["run_dir"] == str(runs[0])
    assert 0.999 not in [v for r in _summary(study_dir).values() for v in r.values()]


CLI_CASES: dict[str, tuple[Callable[[dict[str, Any], Path, Path], None], int]] = {
    "metrics.json truncated": (lambda f, store, sd: _truncate(_run_dirs(f, store)[0] / "metrics.json", "half"), 1),
    "study_status.json garbage": (lambda f, store, sd: (sd / "study_status.json").write_bytes(b"\x00{garbage"), 0),
    "run_dir outside the store": (lambda f, store, sd: _edit_json(sd / "study_status.json", lambda s: {
        **s, "cells": {k: {**c, "run_dir": str(_fake_run(Path(c["run_dir"]), store.parent / "out" / k))}
                       for k, c in s["cells"].items()}}), 0),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_study_run_survives_damage(finished: dict[str, Any], tmp_path: Path, case: str) -> None:
    store, study_dir = _copy(finished, tmp_path)
    damage, ran = CLI_CASES[case]
    damage(finished, store, study_dir)
    _, out = _run(f"CLI: {case}", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=ran)
    assert 0.999 not in [v for r in _summary(study_dir).values() for v in r.values()]


# --- every other file of a finished study is rewritten, never trusted -----------------------------------------------

STUDY_FILES = ("summary.csv", "summary.json", "claims.json", "report.html", "provenance_summary.md",
               "study.resolved.yaml", "study_status.md", "plan_filter_report.md", "compare/leaderboards.json")


@pytest.mark.parametrize("where", ["empty", "half"])
@pytest.mark.parametrize("name", STUDY_FILES)
def test_truncated_study_outputs_are_rewritten(finished: dict[str, Any], tmp_path: Path, name: str,
                                               where: str) -> None:
    store, study_dir = _copy(finished, tmp_path)
    _truncate(study_dir / name, where)
    _, out = _api(f"truncated {name} at {where}", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=0)
    json.loads((study_dir / "claims.json").read_text())
    assert (study_dir / "report.html").read_text().rstrip().endswith("</html>")


def test_truncated_config_and_worker_record_files(finished: dict[str, Any], tmp_path: Path) -> None:
    store, study_dir = _copy(finished, tmp_path)
    for p in [*(study_dir / "configs").glob("*.yaml"), *(study_dir / "cells").glob("*.json")]:
        _truncate(p, "third")
    _, out = _api("truncated configs/ and cells/", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=0)


def test_stop_marker_that_is_a_directory(finished: dict[str, Any], tmp_path: Path) -> None:
    store, study_dir = _copy(finished, tmp_path)
    (study_dir / "STOP").mkdir()
    (study_dir / "STOP" / "x").write_text("x")
    a, _ = _run("STOP is a directory", store, finished["study"], expect_error=True,
                must_name=(str(study_dir / "STOP"), "field: STOP", "rm -r"))
    shutil.rmtree(study_dir / "STOP")  # the fix
    _, out = _run("STOP removed as told", store, finished["study"])
    _assert_same_results(finished, study_dir, out, ran=0)


def test_second_invocation_is_refused_while_the_first_holds_the_lock(finished: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    from filelock import FileLock

    store, study_dir = _copy(finished, tmp_path)
    lock = FileLock(str(study_dir / ".study_run.lock"))
    with lock:
        a, _ = _run("concurrent study run", store, finished["study"], expect_error=True,
                    must_name=("another `study run`", ".study_run.lock", "wait for it to finish"))
    _, out = _run("after the lock is released", store, finished["study"])  # following the fix
    _assert_same_results(finished, study_dir, out, ran=0)


# --- synthetic marks everywhere (class 3) ----------------------------------------------------------------------------

def test_synthetic_marks_on_rows_claims_and_report(finished: dict[str, Any], tmp_path: Path) -> None:
    store, study_dir = _copy(finished, tmp_path)
    import csv

    rows = list(csv.DictReader((study_dir / "summary.csv").open()))
    assert rows and all(r["synthetic"] == "True" for r in rows), rows
    claims = json.loads((study_dir / "claims.json").read_text())
    assert claims["synthetic"] is True and claims["synthetic_splits"] == ["rg"] and "SYNTHETIC" in \
        claims["synthetic_note"]
    assert claims["claims"] and all(c["synthetic"] is True and "SYNTHETIC" in c["synthetic_note"]
                                    for c in claims["claims"])
    html = (study_dir / "report.html").read_text()
    assert "SYNTHETIC DATA: dataset syn of this study is simulated" in html
    assert html.count("<td>SYNTHETIC</td>") >= 2 * len(finished["cells"]) + len(claims["claims"])
    # rows of runs that have not succeeded carry the mark too: two damaged runs, one rerun (--chunk 1)
    for victim in _run_dirs(finished, store):
        _truncate(victim / "metrics.json", "half")
    check(attempt("synthetic mark on unfinished rows", 3, ["--store", str(store), "study", "run",
                                                           str(finished["study"]), "--executor", "serial",
                                                           "--chunk", "1"], store=store, expect_error=True))
    rows = list(csv.DictReader((study_dir / "summary.csv").open()))
    assert sorted(r["status"] for r in rows) == ["damaged", "succeeded"], rows
    assert all(r["synthetic"] == "True" for r in rows), rows


# --- kills of study run with the process executor (class 10) ---------------------------------------------------------

def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] != "Z":
                    out.add(pid)
        except OSError:
            continue
    return out


def _descendants(pid: int) -> set[int]:
    kids: set[int] = set()
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for c in map(int, children):
            if c not in kids:
                kids.add(c)
                frontier.append(c)
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
@pytest.mark.parametrize(("sig", "when", "resume"), [
    ("SIGKILL", "planning", False), ("SIGKILL", "first cell running", False), ("SIGKILL", "cells finishing", False),
    ("SIGTERM", "first cell running", True), ("SIGINT", "cells finishing", False),
])
def test_killed_study_leaves_no_worker(tmp_path: Path, sig: str, when: str, resume: bool) -> None:
    study = tmp_path / "kill.yaml"
    spec = {**STUDY, "name": "kill", "seeds": [0, 1, 2], "models": [{"model": "linear"}, {"model": "additive"}]}
    spec.pop("claims")
    study.write_text(yaml.safe_dump(spec, sort_keys=False))
    store = tmp_path / "store"
    proc = subprocess.Popen([str(BIN / "pfm-bench"), "--store", str(store), "study", "run", str(study),
                             "--executor", "process", "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, text=True)
    cells = store / "studies" / "kill" / "cells"
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and proc.poll() is None:
        workers |= _descendants(proc.pid)
        recs = [p.read_text() for p in cells.glob("*.json")] if cells.exists() else []
        ready = {"planning": (store / "studies" / "kill").exists(),
                 "first cell running": any('"running"' in r for r in recs),
                 "cells finishing": any('"succeeded"' in r for r in recs)}[when]
        if ready and (when == "planning" or workers):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the study ended before the kill point {when!r}: {proc.communicate()}"
    workers |= _descendants(proc.pid)
    os.kill(proc.pid, getattr(signal, sig))  # the parent only, as a supervisor or the OOM killer would
    try:
        out, err = proc.communicate(timeout=30)  # returns only once every holder of stdout/stderr is gone
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{sig} at {when!r}: stdout/stderr still held open 30 s later by {_alive(workers)}")
    t_end = time.time() + 5
    while _alive(workers) and time.time() < t_end:
        time.sleep(0.1)
    assert not _alive(workers), f"{sig} at {when!r}: workers {_alive(workers)} outlived their parent"
    assert "Traceback" not in err, err
    if sig != "SIGKILL" and when != "planning":
        st = json.loads((store / "studies" / "kill" / "study_status.json").read_text())
        assert st["phase"] == "interrupted", st
        assert (sig in st["error"]) if sig == "SIGTERM" else ("Ctrl-C" in st["error"]), st
    if not resume:
        return
    # and the study continues where it stopped
    a = check(attempt(f"resume after {sig} at {when}", CLASS, ["--store", str(store), "study", "run", str(study),
                                                                "--executor", "process", "--workers", "2",
                                                                "--json"], store=store, expect_error=False,
                      timeout=300))
    assert json.loads(a.stdout)["phase"] == "complete"
