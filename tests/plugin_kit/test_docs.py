"""docs/write-a-model-plugin.md cannot rot: its ``bash`` and ``python`` blocks
run in order, in a temporary directory, against a fresh venv.

A ``python`` block whose first line is ``# file: PATH`` is written to PATH
(relative to the work directory); other ``python`` blocks are executed with the
fresh venv's interpreter; ``bash`` blocks run with ``bash -euo pipefail``.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO, FreshVenv

DOC = REPO / "docs" / "write-a-model-plugin.md"
_BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def doc_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every ``bash`` and ``python`` block, in order."""
    return [(lang, code) for lang, code in _BLOCK.findall(text) if lang in ("bash", "python")]


def test_doc_has_the_steps() -> None:
    blocks = doc_blocks(DOC.read_text())
    text = "\n".join(code for _, code in blocks)
    for step in ("pfm-bench plugins new", "# file:", "pip install", "pytest", "pfm-bench plugins --json",
                 "pfm-bench run --model"):
        assert step in text, step


def test_doc_runs_step_by_step(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for i, (lang, code) in enumerate(doc_blocks(DOC.read_text())):
        first = code.splitlines()[0] if code.strip() else ""
        if lang == "python" and first.startswith("# file:"):
            target = work / first.split(":", 1)[1].strip()
            assert target.resolve().is_relative_to(work.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code)
            continue
        script = work / f"step{i:02d}.{'sh' if lang == 'bash' else 'py'}"
        script.write_text(code)
        cmd = ["bash", "-euo", "pipefail", str(script)] if lang == "bash" else [str(fresh_venv.python), str(script)]
        res = fresh_venv.run(cmd, cwd=work, check=False)
        assert res.returncode == 0, f"doc block {i} ({lang}) failed:\n{code}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
