"""Guards around plugin code called by a run: observers, time limits, and the
shape of what models return.

Observers (``pfm_run_started`` / ``pfm_run_finished``) are called through
:func:`call_observers`, which catches *every* ``BaseException`` (``sys.exit``,
``KeyboardInterrupt`` raised by the observer, ...) and records it in
``run_status.json``: an observer never stops a run, changes its status or leaves
it ``running``.

Time limit (``run.timeout_s``): fit and predict run in the calling thread; in the
main thread the limit is enforced with ``SIGALRM`` (``setitimer``), whose handler
raises an internal ``BaseException`` that a model's own ``except Exception`` cannot
swallow. A signal, not a watchdog thread, because a thread cannot stop Python code
running in another thread, and running the model in a child process would copy
the dataset and break models holding GPU state. Outside the main thread (an
executor's worker thread) no signal can be used: the limit is then checked when the
call returns, and a call that overran fails the run as timed out.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from perturbfm.errors import ConfigError, PerturbFMError, PluginError, PredictionError

__all__ = ["Deadline", "RunTimeoutError", "call_observers", "check_prediction", "check_timeout", "model_dict",
           "plain_json"]
from perturbfm.interfaces import Prediction
from perturbfm.plain import plain_json


class RunTimeoutError(PerturbFMError):
    """Fitting or predicting ran past ``run.timeout_s``."""


class _Alarm(BaseException):
    """Raised by the SIGALRM handler; a BaseException so ``except Exception`` in plugin code cannot swallow it."""


def call_observers(registry: Any, hook: str, record: Callable[[str], None], **kwargs: Any) -> None:
    """Call every implementation of ``hook``; each failure is passed to ``record`` as
    ``"plugin.hook: Type: message"`` and the next one runs.

    A :class:`perturbfm.plugins.PluginRegistry` calls them through its guarded caller
    (BaseException caught, time-bounded, attributed); a bare pluggy-like registry
    (tests) is called directly with the same guarantee against BaseException."""
    guarded = getattr(registry, "call_observers", None)
    if guarded is not None:
        for failure in guarded(hook, **kwargs):
            record(f"{failure.plugin}.{hook}: {failure.error}")
        return
    for impl in getattr(registry.pm.hook, hook).get_hookimpls():
        try:
            impl.function(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - observers never stop a run; their failure is recorded
            record(f"{impl.plugin_name}.{hook}: {type(exc).__name__}: {exc}")


def check_timeout(value: Any) -> float | None:
    """``run.timeout_s``: None (no limit) or a positive number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"run.timeout_s must be a positive number of seconds or null, got {value!r}",
                          field="run.timeout_s", fix="e.g. --set run.timeout_s=3600, or --set run.timeout_s=null")
    return float(value)


class Deadline:
    """The time left for a run's fit and predict calls."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run the body under the time left; raise :class:`RunTimeoutError` past it."""
        left = self.left()
        if left is None:
            yield
            return
        err = RunTimeoutError(f"{what} did not finish within run.timeout_s = {self.seconds:g} s (timed out)",
                              field="run.timeout_s",
                              fix="raise it (--set run.timeout_s=SECONDS) or make the model faster")
        if left <= 0:
            raise err
        main = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")
        if not main:
            yield
            if self.left() is not None and self.left() < 0:  # type: ignore[operator]
                raise err
            return

        def on_alarm(signum: int, frame: Any) -> None:
            raise _Alarm()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, left)
        try:
            yield
        except _Alarm:
            raise err from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- model outputs
def check_prediction(pred: Any, model: str) -> Prediction:
    """Refuse a ``predict`` result that is not a :class:`Prediction` of numeric arrays,
    naming the model and the field (shapes and finiteness are checked later against
    the queries, by :func:`perturbfm.evaluation.validate_prediction`)."""
    where = f"model {model!r}"
    if not isinstance(pred, Prediction):
        raise PredictionError(f"{where}: predict returned {type(pred).__name__}, expected a Prediction",
                              field="predict", fix="return perturbfm.interfaces.Prediction(group_ids, mean_delta, ...)")
    if not isinstance(pred.group_ids, (list, tuple)) or not all(isinstance(g, str) for g in pred.group_ids):
        raise PredictionError(f"{where}: Prediction.group_ids must be a list of group id strings, "
                              f"got {type(pred.group_ids).__name__}", field="group_ids",
                              fix="return [q.group_id for q in queries]")
    for name in ("mean_delta", "var_delta"):
        arr = getattr(pred, name)
        if arr is None and name == "var_delta":
            continue
        try:
            conv = np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PredictionError(f"{where}: Prediction.{name} is not a numeric array ({exc})", field=name,
                                  fix="return a float array [n_queries, n_genes]") from None
        if conv.ndim != 2:
            raise PredictionError(f"{where}: Prediction.{name} has {conv.ndim} dimensions, expected 2",
                                  field=name, fix="return a float array [n_queries, n_genes]")
        setattr(pred, name, conv)
    if not isinstance(pred.notes, dict) or not all(isinstance(v, str) for v in pred.notes.values()):
        raise PredictionError(f"{where}: Prediction.notes must map group ids to strings", field="notes",
                              fix="return notes as {group_id: 'what the model did'}")
    if not isinstance(pred.info, dict):
        raise PredictionError(f"{where}: Prediction.info must be a dict, got {type(pred.info).__name__}",
                              field="info", fix="return info as a dict of JSON values")
    pred.info = plain_json(pred.info, "Prediction.info", where)
    return pred


def model_dict(model: Any, method: str, name: str) -> dict[str, Any]:
    """``model.<method>()`` (diagnostics, describe) as a plain-JSON dict, or a PluginError naming the field."""
    where = f"model {name!r}"
    value = getattr(model, method)()
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise PluginError(f"{where}: {method}() returned {type(value).__name__}, expected a dict", field=method,
                          fix=f"return a dict of JSON values from {method}()")
    return plain_json(value, f"{method}()", where)
