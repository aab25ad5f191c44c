"""perturbfm-metrics: PerturbFM plugin distribution."""

__version__ = "0.1.0"
