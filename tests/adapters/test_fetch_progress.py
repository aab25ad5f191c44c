"""The download progress bar: shown on a terminal, silent otherwise, and it never
changes what is written."""

from __future__ import annotations

import io

from perturbfm import console as pfm_console
from rich.console import Console


def test_byte_progress_counts_resumed_and_new_bytes(monkeypatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(pfm_console, "err_console", Console(file=buf, force_terminal=True, width=120))
    seen = []
    with pfm_console.byte_progress("downloading x.h5ad", 1000, completed=400, enabled=True) as advance:
        for n in (100, 200, 300):
            advance(n)
            seen.append(n)
    assert seen == [100, 200, 300]
    assert "downloading x.h5ad" in buf.getvalue()


def test_byte_progress_is_silent_off_a_terminal(monkeypatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(pfm_console, "err_console", Console(file=buf, force_terminal=False))
    with pfm_console.byte_progress("downloading x", None) as advance:
        advance(10)
    assert buf.getvalue() == ""
