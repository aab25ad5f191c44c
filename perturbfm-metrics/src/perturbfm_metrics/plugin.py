"""Entry point of perturbfm-metrics: registers implementations with PerturbFM."""

from perturbfm import hookimpl
