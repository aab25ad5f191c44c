"""Fuzzing ``pfm-bench eval`` with malformed prediction / truth AnnData.

Documented interface: ``pfm-bench eval --pred PRED.h5ad --truth TRUTH.h5ad
--perturbation-key K --control L --context-key C --panels basic --out OUT.json``.
Every malformed input exits 0 (valid) or 2 with a message and no traceback;
``OUT.json`` is either absent or complete JSON; no temporary file is left.
Skipped while the command does not exist.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import pytest
from hypothesis import given
from perturbfm import cli
from reliability_helpers import COUNTS, temp_leftovers
from test_fuzz_adapters import _SCRATCH, _settings, _write, malformed_inputs


def _eval_available() -> bool:
    with contextlib.redirect_stderr(io.StringIO()):
        cli._add_plugin_commands()
    return "eval" in cli.cli.commands


def _valid(n: int = 6) -> ad.AnnData:
    import numpy as np
    import pandas as pd

    obs = pd.DataFrame({"perturbation": ["control", "control", "A", "A", "B", "B"][:n],
                        "cell_type": ["k562"] * n}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(np.abs(np.random.default_rng(0).normal(size=(n, 4))), obs=obs,
                      var=pd.DataFrame(index=[f"G{j}" for j in range(4)]))


def test_eval_survives_malformed_anndata() -> None:
    if not _eval_available():
        pytest.skip("`pfm-bench eval` is not registered yet (being built); fuzz test ready for it")

    @_settings(300)
    @given(case=malformed_inputs(), bad_side=__import__("hypothesis").strategies.sampled_from(["pred", "truth",
                                                                                               "both"]))
    def prop(case: tuple[ad.AnnData, dict[str, Any], list[str]], bad_side: str) -> None:
        adata, options, _ = case
        with tempfile.TemporaryDirectory(dir=_SCRATCH) as tmp:
            d = Path(tmp)
            pred, truth, out = d / "pred.h5ad", d / "truth.h5ad", d / "out" / "metrics.json"
            good = _valid()
            if not (_write(adata if bad_side in ("pred", "both") else good, pred)
                    and _write(adata if bad_side in ("truth", "both") else good, truth)):
                return
            args = ["eval", "--pred", str(pred), "--truth", str(truth),
                    "--perturbation-key", str(options.get("perturbation_key", "perturbation")),
                    "--control", str(options.get("control", "control")), "--context-key", "cell_type",
                    "--panels", "basic", "--out", str(out)]
            err = io.StringIO()
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(err):
                warnings.simplefilter("ignore")
                rc = cli.main(args)  # any exception other than a clean exit fails the property
            assert rc in (0, 1, 2), rc
            assert "Traceback" not in err.getvalue()
            if rc == 2:
                assert err.getvalue().strip()
            if out.exists():
                json.loads(out.read_text())
            assert not temp_leftovers(d / "out") if (d / "out").exists() else True
        COUNTS["fuzz: bad inputs (eval)"] += 1

    prop()
