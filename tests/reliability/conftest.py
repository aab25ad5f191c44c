"""Reliability suite: fuzzing, concurrent writers, SIGKILLs, tampering.

Counts (bad inputs, kills, concurrent trials, artifacts lost or corrupted) are
printed in the terminal summary at the end of the session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from reliability_helpers import COUNTS  # noqa: E402


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the reliability counters collected by the tests."""
    if not COUNTS:
        return
    terminalreporter.section("perturbfm reliability summary")
    for key in sorted(COUNTS):
        terminalreporter.write_line(f"{key}: {COUNTS[key]}")
