"""``pfm-bench run``: resolve -> create -> load -> fit -> predict -> evaluate -> documents -> report.

A run directory (see DESIGN.md) holds ``config.resolved.yaml``,
``parameters.csv``, ``predictions.h5ad``, ``calibration.json``, ``metrics.json``
(only when every panel is complete and the run succeeded), ``run_status.json``,
``report.html`` and ``provenance.json``. Every file is written atomically, once,
by :class:`~perturbfm.run.writer.RunWriter`.

Modules: :mod:`.context` (the run's state and pure helpers), :mod:`.stages` (one
function per stage), :mod:`.guards` (observers, time limit, checks of what models
return), :mod:`.writer` (the run directory), :mod:`.pipeline` (:func:`execute_run`).
"""

from __future__ import annotations

from perturbfm.run.context import (
    SYNTHETIC_BANNER,
    Progress,
    RunContext,
    RunResult,
    check_run_config,
    dataset_verification,
    make_run_id,
    panel_selection,
    predictions_adata,
)
from perturbfm.run.guards import RunTimeoutError, call_observers
from perturbfm.run.pipeline import execute_run
from perturbfm.run.writer import RunWriteError, RunWriter

__all__ = ["SYNTHETIC_BANNER", "Progress", "RunContext", "RunResult", "RunTimeoutError", "RunWriteError", "RunWriter",
           "call_observers", "check_run_config", "dataset_verification", "execute_run", "make_run_id",
           "panel_selection", "predictions_adata"]
