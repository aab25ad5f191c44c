"""Entry point of perturbfm-bench-adapters: registers implementations with PerturbFM."""

from perturbfm import hookimpl
