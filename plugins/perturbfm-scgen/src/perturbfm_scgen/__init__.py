"""PerturbFM scGen model plugin (see :mod:`perturbfm_scgen.model`)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
