"""PerturbFM core: hook specs, artifact stores, the benchmark run and a Python API.

Python API (AnnData in, data frames out; see ``docs/python-api.md``)::

    import perturbfm as pfm
    ds = pfm.import_adata(adata, perturbation_key="condition", control="control", context_key="cell_type")
    split = pfm.make_split(ds, generator, seed=0, test_fraction=0.25)  # pfm.names("split_generator")
    run = pfm.run(model, split)             # run.metrics, run.predictions, run.report_path
    pfm.evaluate(pred, truth, perturbation_key="condition")

Plugin authors::

    from perturbfm import hookimpl                 # decorate plugin hooks
    from perturbfm.interfaces import Model, MetricPanel, DatasetAdapter, SplitGenerator

The API functions are imported on first use, so ``import perturbfm`` stays cheap.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

from perturbfm.hookspecs import hookimpl  # noqa: E402

_API = ("Dataset", "Run", "compare", "evaluate", "import_adata", "import_data", "list_datasets", "list_runs", "list_splits",
        "load_run", "make_split", "metrics_frame", "names", "run")


class _RunModule(types.ModuleType):
    """The ``perturbfm.run`` module, callable as :func:`perturbfm.api.run` (the pipeline
    module and the API function share the name ``run``)."""

    def __call__(self, model: str, split: Any, **kwargs: Any) -> Any:
        from perturbfm.api import run as run_model

        return run_model(model, split, **kwargs)


class _Package(types.ModuleType):
    """``perturbfm`` itself: ``perturbfm.run`` is the run module, made callable, however
    and whenever it is imported."""

    @property
    def run(self) -> Any:
        mod = sys.modules.get(f"{__name__}.run") or importlib.import_module(f"{__name__}.run")
        if not isinstance(mod, _RunModule):
            mod.__class__ = _RunModule
        return mod

    @run.setter
    def run(self, value: Any) -> None:  # the import system binds the submodule here
        if isinstance(value, types.ModuleType) and not isinstance(value, _RunModule):
            value.__class__ = _RunModule
        self.__dict__["_run_module"] = value


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _API:
        from perturbfm import api

        return getattr(api, name)
    raise AttributeError(f"module 'perturbfm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", "hookimpl", *_API]
