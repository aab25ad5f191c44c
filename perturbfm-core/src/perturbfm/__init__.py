"""PerturbFM core: hook specs, artifact stores and the benchmark run.

Public API::

    from perturbfm import hookimpl                 # decorate plugin hooks
    from perturbfm.interfaces import Model, MetricPanel, DatasetAdapter, SplitGenerator
    from perturbfm.store import ArtifactStore
"""

__version__ = "0.1.0"

from perturbfm.hookspecs import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl"]
