"""PerturbFM MLflow observer plugin (see :mod:`perturbfm_mlflow.plugin`)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
