"""Adversarial attempts run in this process (``perturbfm.cli.main``), classified and
recorded exactly like :func:`harness.attempt`'s fresh-process ones.

The CLI code path is the same; only the interpreter start-up (several seconds of
plugin loading) is saved, so that many generated cases per class stay fast. Each
test file still runs a representative case of each class through
:func:`harness.attempt` in a fresh process.
"""

from __future__ import annotations

import contextlib
import io
import os
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from harness import Attempt, attempt, classify, record


def attempt_here(case: str, issue_class: int, argv: Sequence[str], *, store: Path, expect_error: bool,
                 must_name: Sequence[str] = (), cwd: Path | None = None) -> Attempt:
    """Run ``pfm-bench *argv`` in this process against ``store`` and classify the outcome."""
    from perturbfm.cli import main

    a = Attempt(case, issue_class, [str(x) for x in argv], expect_error)
    out, err = io.StringIO(), io.StringIO()
    old_home, old_cwd = os.environ.get("PFM_HOME"), os.getcwd()
    os.environ["PFM_HOME"] = str(store)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                a.rc = main(a.argv)
            except SystemExit as exc:
                a.rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - an escaping exception is the traceback outcome
                err.write(traceback.format_exc())
                a.rc = 1
    finally:
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("PFM_HOME", None)
        else:
            os.environ["PFM_HOME"] = old_home
    a.stdout, a.stderr = out.getvalue(), err.getvalue()
    a.outcome = classify(a, must_name)
    record(a)
    return a


def attempt_either(fresh: bool, *args: object, **kwargs: object) -> Attempt:
    """:func:`harness.attempt` (fresh process) when ``fresh``, else :func:`attempt_here`."""
    return (attempt if fresh else attempt_here)(*args, **kwargs)  # type: ignore[operator]
