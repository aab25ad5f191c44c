"""Entry point of perturbfm-models: registers implementations with PerturbFM."""

from perturbfm import hookimpl
