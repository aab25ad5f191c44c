"""Studies: config-driven ablation grids over models x config variants x splits x
seeds, run through an executor plugin with a budget, resumable, and summarised
(``summary.csv``, ``claims.json``, ``report.html``, ``provenance_summary.md``).

Entry point: :func:`perturbfm.study.runner.run_study`, or ``pfm-bench study run``.
"""

from __future__ import annotations

from perturbfm.study.spec import StudySpec, load_study

__all__ = ["StudySpec", "load_study"]
