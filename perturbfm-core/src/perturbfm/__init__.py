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
        "load_run", "make_split", "metrics_frame", "names", "run",
        "build_environments", "list_environments", "remove_environment")


class _CallableModule(types.ModuleType):
    """A submodule that shares its name with an API function (``perturbfm.run``,
    ``perturbfm.compare``) and, called, is that function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from perturbfm import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def _shared_name(name: str) -> property:
    """``perturbfm.<name>``: the submodule, made callable, however and whenever it is imported."""

    def get(self: types.ModuleType) -> Any:
        mod = sys.modules.get(f"{__name__}.{name}") or importlib.import_module(f"{__name__}.{name}")
        if not isinstance(mod, _CallableModule):
            mod.__class__ = _CallableModule
        return mod

    def set_(self: types.ModuleType, value: Any) -> None:  # the import system binds the submodule here
        if isinstance(value, types.ModuleType) and not isinstance(value, _CallableModule):
            value.__class__ = _CallableModule
        self.__dict__[f"_{name}_module"] = value

    return property(get, set_)


class _Package(types.ModuleType):
    """``perturbfm`` itself, where ``run`` and ``compare`` are both modules and API functions."""

    run = _shared_name("run")
    compare = _shared_name("compare")


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _API:
        from perturbfm import api

        return getattr(api, name)
    raise AttributeError(f"module 'perturbfm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", "hookimpl", *_API]
