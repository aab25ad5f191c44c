"""PerturbFM GEARS model plugin (see :mod:`perturbfm_gears.model`).

``import perturbfm_gears`` does not import ``gears``/``torch``; they are imported,
with their global side effects contained, when the model is fitted.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
