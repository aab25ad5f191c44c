"""Parity of the basic and vcc panels with cell-eval (1e-6 relative where conventions
coincide), and the verdict logic of ``pfm-bench validate-metrics``."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from perturbfm.cli import main
from perturbfm_metrics import parity
from perturbfm_metrics.parity import MISMATCH, NOT_INSTALLED, PASS, ParityRow, failed


@pytest.fixture(scope="module")
def cell_eval_rows():
    if importlib.util.find_spec("cell_eval") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("cell-eval is not installed: parity cannot be checked (pip install cell-eval)")
        pytest.skip("cell-eval not installed")
    return parity.cell_eval_rows(parity.make_inputs(seed=0))


def test_cell_eval_parity_1e6(cell_eval_rows):
    got = {r.metric: r for r in cell_eval_rows}
    assert set(got) == {f"{p}.{k}" for p, k in parity.CELL_EVAL_KEYS}
    for name, r in got.items():
        assert r.verdict == PASS, (name, r)
        assert r.rel_diff is not None and r.rel_diff <= 1e-6, (name, r.rel_diff)
    # the input is informative: scores are neither trivial nor degenerate
    assert got["vcc.discrimination_score_l1"].ours < 1.0
    assert 0.0 < got["vcc.overlap_at_N"].ours < 1.0


def _row(verdict: str) -> ParityRow:
    return ParityRow("m", 1.0, 1.0, "peer 1", 0.0, 0.0, 1e-6, verdict)


def test_failed_rules():
    rows = [_row(PASS), _row(NOT_INSTALLED)]
    assert failed(rows) == []
    assert failed(rows, require_peers=True) == [rows[1]]
    assert failed([_row(MISMATCH)]) and failed([_row("error")])


def test_validate_metrics_cli(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(parity, "run_parity", lambda seed=0: [_row(PASS), _row(NOT_INSTALLED)])
    assert main(["validate-metrics", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and [r["verdict"] for r in out["rows"]] == [PASS, NOT_INSTALLED]
    assert main(["validate-metrics", "--require-peers"]) == 1
    monkeypatch.setattr(parity, "run_parity", lambda seed=0: [_row(MISMATCH)])
    assert main(["validate-metrics"]) == 1


def test_distance_parity_rows_scperturb_and_pot():
    """validate-metrics checks E-distance against scperturb and Sinkhorn against POT."""
    from perturbfm_metrics.parity import parity_rows

    inputs = parity.make_inputs(seed=0)
    rows = parity.distance_rows(inputs, seed=0)
    assert callable(parity_rows)
    by = {r.metric: r for r in rows}
    assert set(by) == {"distances.edistance_squared", "distances.wasserstein"}
    for name, peer in (("distances.edistance_squared", "scperturb"), ("distances.wasserstein", "ot")):
        r = by[name]
        if importlib.util.find_spec(peer) is None:
            assert r.verdict == NOT_INSTALLED
            continue
        assert r.verdict == PASS, r
        assert r.rel_diff is not None and r.rel_diff <= 1e-6 and r.ours > 0
    assert not any(r.verdict == parity.NO_CHECK for r in rows)


def test_no_import_cycle_between_distances_and_parity():
    """parity imports distances; distances imports nothing of parity, at import time or lazily."""
    import ast
    import subprocess
    import sys

    from perturbfm_metrics import distances

    tree = ast.parse(open(distances.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("parity" in m for m in imported), imported
    proc = subprocess.run([sys.executable, "-c", "import sys, perturbfm_metrics.distances as d; "
                           "assert 'perturbfm_metrics.parity' not in sys.modules; assert not hasattr(d, 'parity_rows')"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
