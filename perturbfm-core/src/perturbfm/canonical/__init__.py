"""Canonicalisation shared by dataset adapters and the evaluator.

* :mod:`perturbfm.canonical.expression`: checks of an expression matrix and its
  normalisation to log1p space (counts -> log1p CP10k, or log1p as provided).
* :mod:`perturbfm.canonical.obs`: perturbation and context labels from ``.obs``
  columns in the canonical form of :mod:`perturbfm.dataset`.

Public so that every package (adapters, the ``eval`` command, third-party
adapters) canonicalises the same way.
"""
