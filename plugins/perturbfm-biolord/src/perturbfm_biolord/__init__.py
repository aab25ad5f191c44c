"""PerturbFM biolord model plugin (see :mod:`perturbfm_biolord.model`)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
