"""Test helpers for PerturbFM and for plugin authors.

* :func:`make_canonical_adata` — a small canonical dataset with known effects.
* :func:`training_and_queries` — split it into :class:`TrainingData` and held-out queries.
* :mod:`perturbfm.testing.conformance` — conformance suites to subclass.
"""

from perturbfm.testing.data import make_canonical_adata, training_and_queries

__all__ = ["make_canonical_adata", "training_and_queries"]
