"""PerturbFM hook specifications.

Plugins are Python modules (or objects) exposed through the entry-point group
``perturbfm``. Each may implement any of the hooks below, decorated with
:data:`perturbfm.hookimpl`.

The ``pfm_register_*`` hooks return a list of *classes*; every class has a
class attribute ``name`` (unique within its kind) and subclasses the matching
base class in :mod:`perturbfm.interfaces`. The core registry rejects a
missing name and a name registered twice (naming both distributions); lookups
never depend on hook call order.

How the core calls these hooks (:mod:`perturbfm.plugins`): every
implementation is called on its own and its result is attributed to its
plugin (``pfm-bench plugins --hook NAME`` shows them). A hookimpl whose name
is not one of the hooks below (a misspelling) or whose arguments are not the
hook's is reported against its plugin by pluggy's validation. Anything a
plugin raises — ``SystemExit`` and ``KeyboardInterrupt`` included — and a call
that runs past its time limit (``PFM_PLUGIN_HOOK_TIMEOUT``, default 60 s;
``PFM_OBSERVER_TIMEOUT``, default 300 s, for the observers) is recorded
against that plugin and never stops the command; a malformed result (not a
list, an item that is not a class, a class without ``name``) is reported the
same way while the plugin's well-formed classes are still registered.

Example::

    from perturbfm import hookimpl

    @hookimpl
    def pfm_register_models():
        from .model import MyModel
        return [MyModel]
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "perturbfm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pfm_register_dataset_adapters() -> list[type]:
    """Return dataset adapter classes (subclasses of
    :class:`perturbfm.interfaces.DatasetAdapter`).

    An adapter turns a source (a file, a simulator) into the canonical
    dataset AnnData: ``.obs`` columns ``pfm_perturbation``, ``pfm_is_control``,
    ``pfm_context`` and optional covariates, ``X`` in log1p-normalised space.
    """
    raise NotImplementedError  # a specification: pluggy calls the implementations, never this body


@hookspec
def pfm_register_split_generators() -> list[type]:
    """Return split generator classes (subclasses of
    :class:`perturbfm.interfaces.SplitGenerator`).

    A generator assigns each (perturbation, context) group of a dataset to
    ``train``/``val``/``test``/``calibration``; the core hashes and stores the
    result immutably.
    """
    raise NotImplementedError  # a specification: pluggy calls the implementations, never this body


@hookspec
def pfm_register_models() -> list[type]:
    """Return model classes (subclasses of :class:`perturbfm.interfaces.Model`).

    A model is fitted on training groups and predicts, per held-out group, the
    mean (and optionally the variance) of the expression change against the
    context's control mean.
    """
    raise NotImplementedError  # a specification: pluggy calls the implementations, never this body


@hookspec
def pfm_register_metric_panels() -> list[type]:
    """Return metric panel classes (subclasses of
    :class:`perturbfm.interfaces.MetricPanel`).

    A panel declares its metric keys with their definitions; a run writes
    ``metrics.json`` only if every declared key has a finite value or a declared
    not-applicable reason.
    """
    raise NotImplementedError  # a specification: pluggy calls the implementations, never this body


@hookspec
def pfm_register_executors() -> list[type]:
    """Return executor classes (subclasses of
    :class:`perturbfm.interfaces.Executor`) that run lists of jobs (for example
    the runs of an ablation grid)."""
    raise NotImplementedError  # a specification: pluggy calls the implementations, never this body


@hookspec
def pfm_register_commands(cli: Any) -> None:
    """Add sub-commands to the ``pfm-bench`` click group ``cli``.

    Implementations call ``cli.add_command(...)``; a command whose name is
    already taken is refused by the core.
    """


@hookspec
def pfm_run_started(run_dir: str, run_info: dict[str, Any]) -> None:
    """Observer: a run started. ``run_info`` holds the run id, model, split id,
    dataset hash, resolved configuration and the synthetic flag (``provenance.json``
    is written once, when the run ends). Called through
    :meth:`perturbfm.plugins.PluginRegistry.call_observers`: whatever an
    implementation raises (``SystemExit`` included) is recorded in the run's
    status with the plugin's name and never aborts the run."""


@hookspec
def pfm_run_finished(run_dir: str, run_info: dict[str, Any], status: str) -> None:
    """Observer: a run ended with ``status`` (``succeeded`` or ``failed``).
    Called through :meth:`perturbfm.plugins.PluginRegistry.call_observers`:
    failures are recorded against the plugin, never propagated."""
