"""CGIO: gene-set interventions through uncertain graph priors, with a
context-conditioned low-rank operator (needs the ``cgio`` extra: torch)."""

from .wrapper import CGIOModel

__all__ = ["CGIOModel"]
