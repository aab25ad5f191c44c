"""Adversarial attempts against ``pfm-bench`` (issue classes of the reliability issue).

Each attempt runs the installed CLI in a fresh process with a time limit and
classifies what happened:

* ``ok``: exit 0 where success was expected;
* ``clean_error``: a non-zero exit, no traceback, and the message names every
  string in ``must_name`` (the file or option, the field, a fix);
* ``unclear_error``: a non-zero exit whose message lacks one of ``must_name``;
* ``silent_wrong``: exit 0 where the input must be refused;
* ``unexpected_error``: a non-zero exit where success was expected;
* ``traceback``: a Python traceback on stdout/stderr, or death by a signal
  (segfault, abort);
* ``hang``: the time limit ran out.

Every attempt is appended as one JSON line to ``$PFM_ADVERSARIAL_LOG`` when it
is set; ``python tests/reliability/adversarial/tally.py LOG`` prints the counts
per class and outcome (the figures of the closing note). A test asserts with
:func:`check`, which fails with the whole output of the attempt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
GOOD = ("ok", "clean_error")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Attempt:
    case: str
    issue_class: int
    argv: list[str]
    expect_error: bool
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    outcome: str = ""
    missing: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"[{self.issue_class}] {self.case}: {self.outcome} (rc={self.rc})"
                f"{' missing ' + repr(self.missing) if self.missing else ''}\n"
                f"$ pfm-bench {' '.join(self.argv)}\n--- stdout\n{self.stdout[-4000:]}\n"
                f"--- stderr\n{self.stderr[-4000:]}")


def classify(a: Attempt, must_name: Sequence[str]) -> str:
    text = a.stdout + a.stderr
    if a.rc is None:
        return "hang"
    if TRACEBACK in text or a.rc < 0:
        return "traceback"
    if a.expect_error:
        if a.rc == 0:
            return "silent_wrong"
        low = text.lower()
        a.missing = [s for s in must_name if s.lower() not in low]
        return "unclear_error" if a.missing else "clean_error"
    return "ok" if a.rc == 0 else "unexpected_error"


def record(a: Attempt) -> None:
    log = os.environ.get("PFM_ADVERSARIAL_LOG")
    if not log:
        return
    row = {k: v for k, v in asdict(a).items() if k not in ("stdout", "stderr")}
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def attempt(case: str, issue_class: int, argv: Sequence[str], *, store: Path, expect_error: bool,
            must_name: Sequence[str] = (), timeout: float = 120, cwd: Path | None = None,
            env: dict[str, str] | None = None, stdin: str | None = None) -> Attempt:
    """Run ``pfm-bench *argv`` against ``store`` and classify the outcome."""
    full_env = {**os.environ, "PFM_HOME": str(store), "COLUMNS": "200", **(env or {})}
    a = Attempt(case, issue_class, [str(x) for x in argv], expect_error)
    try:
        proc = subprocess.run([str(BIN / "pfm-bench"), *a.argv], capture_output=True, text=True,
                              env=full_env, timeout=timeout, cwd=cwd, input=stdin,
                              errors="replace")
        a.rc, a.stdout, a.stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        a.stdout = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        a.stderr = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode(errors="replace")
    a.outcome = classify(a, must_name)
    record(a)
    return a


def record_outcome(case: str, issue_class: int, outcome: str, *, expect_error: bool = True) -> None:
    """Record an attempt made through the Python API rather than the CLI."""
    record(Attempt(case, issue_class, [], expect_error, rc=0, outcome=outcome))


def check(a: Attempt) -> Attempt:
    """Fail the test unless the attempt ended as expected (``ok`` or ``clean_error``)."""
    assert a.outcome in GOOD, a.describe()
    return a
