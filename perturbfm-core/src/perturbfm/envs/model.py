""":class:`IsolatedModel`: a :class:`~perturbfm.interfaces.Model` whose ``fit`` and
``predict`` run in its own environment, through the file protocol.

A plugin subclasses it, sets ``name``, ``environment`` (an :class:`EnvSpec` whose
``worker`` is the env-side file) and ``default_config()``; it writes no ``fit`` or
``predict`` of its own. Called by the harness (``pfm-bench run``), the environment is
built (or reused) before fitting, under ``<store>/envs``, and the run's options
(``run.env_call_timeout_s``, ``run.env_max_cells_per_group``, ``run.seed``) apply;
called directly (the conformance suite, a notebook), the environment lives under
``$PFM_ENVS_DIR`` or the default store's ``envs/`` and the class attributes below
give the limits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from perturbfm.envs.protocol import group_dict as _group_dict
from perturbfm.envs.protocol import (
    read_fit_response,
    read_predict_response,
    run_call,
    training_payload,
    write_request,
)
from perturbfm.envs.spec import EnvSpec
from perturbfm.envs.store import BuiltEnv, ensure_env, envs_root
from perturbfm.errors import PluginError
from perturbfm.interfaces import Model, Prediction

#: default cap on the cells per group sent to an environment (run.env_max_cells_per_group)
DEFAULT_MAX_CELLS_PER_GROUP = 500
WORK_DIR_ENV = "PFM_ENV_WORK_DIR"


@dataclass
class EnvBinding:
    """What the harness gives an isolated model before ``fit`` (see :func:`prepare_environment`)."""

    env: BuiltEnv
    call_timeout_s: float | None
    max_cells_per_group: int
    #: subsampling seed (run.seed); None: the model config's ``seed`` (else 0)
    seed: int | None
    say: Callable[[str], None] | None = None
    #: the run's :class:`~perturbfm.run.guards.Deadline` (``run.timeout_s``): a call never gets
    #: more than the time it leaves, so the subprocess is killed even where no signal can be used
    deadline: Any = None

    def limit(self) -> tuple[float | None, str]:
        """(seconds allowed for the next call, the option that sets it)."""
        limit, name = self.call_timeout_s, "run.env_call_timeout_s"
        left = self.deadline.left() if self.deadline is not None else None
        if left is not None and (limit is None or left < limit):
            limit, name = max(float(left), 0.001), "run.timeout_s"
        return limit, name


class IsolatedModel(Model):
    """A model run in its own environment (see ``docs/environments.md``)."""

    environment: ClassVar[EnvSpec | None] = None
    #: per-call limit in seconds when not run by the harness (the harness uses run.env_call_timeout_s)
    call_timeout_s: ClassVar[float | None] = None
    #: cells per group sent when not run by the harness (the harness uses run.env_max_cells_per_group)
    max_cells_per_group: ClassVar[int] = DEFAULT_MAX_CELLS_PER_GROUP

    def __init__(self) -> None:
        self._binding: EnvBinding | None = None
        self._state_dir: Path | None = None
        self._finalizer: Any = None
        self._fit_out: dict[str, Any] | None = None
        self._predict_out: dict[str, Any] | None = None
        self._genes: list[str] = []
        self._calls = 0
        self._seconds: dict[str, float] = {}
        self._sent: dict[str, Any] = {}

    # ------------------------------------------------------------------ harness hooks
    def bind(self, binding: EnvBinding) -> None:
        """Use a built environment and the run's limits (called by the harness before ``fit``)."""
        self._binding = binding

    def close(self) -> None:
        """Delete the model's state folder (the harness calls it after predicting)."""
        if self._finalizer is not None:
            self._finalizer()
        self._state_dir = None

    # ------------------------------------------------------------------ internals
    @classmethod
    def spec(cls) -> EnvSpec:
        if cls.environment is None:
            raise PluginError(f"model {getattr(cls, 'name', cls.__name__)!r} subclasses IsolatedModel but sets no "
                              "environment", field="environment",
                              fix="environment = EnvSpec(name=..., requirements=[...], worker=...)")
        return cls.environment

    def _where(self) -> str:
        return f"model {self.name!r} (environment {self.spec().name!r})"

    def _env(self) -> BuiltEnv:
        if self._binding is None:
            self._binding = EnvBinding(env=ensure_env(self.spec(), envs_root()),
                                       call_timeout_s=type(self).call_timeout_s,
                                       max_cells_per_group=int(type(self).max_cells_per_group), seed=None)
        return self._binding.env

    def _new_call_dir(self, call: str) -> Path:
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix=f"pfm-env-{self.spec().name}-",
                                                    dir=os.environ.get(WORK_DIR_ENV) or None))
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._state_dir), True)
            (self._state_dir / "state").mkdir()
        self._calls += 1
        call_dir = self._state_dir / f"call-{self._calls}-{call}"
        call_dir.mkdir()
        return call_dir

    def _call(self, call: str, request: dict[str, Any], arrays: dict[str, Any] | None,
              read: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        env = self._env()
        assert self._binding is not None
        worker = self.spec().worker_path()
        call_dir = self._new_call_dir(call)
        assert self._state_dir is not None
        try:
            write_request(call_dir, {"call": call, "worker": str(worker),
                                     "state_dir": str(self._state_dir / "state"), **request}, arrays)
            limit, option = self._binding.limit()
            seconds = run_call(env.python, call_dir, call=call, where=self._where(), timeout_s=limit,
                               option=option)
            out = read(call_dir)
        except BaseException:
            self.close()  # a failed call leaves nothing behind
            raise
        shutil.rmtree(call_dir, ignore_errors=True)
        self._seconds[call] = round(seconds, 3)
        return out

    # ------------------------------------------------------------------ Model API
    def fit(self, train: Any, val: Any | None, config: Mapping[str, Any]) -> None:
        self._env()
        assert self._binding is not None
        self.close()  # a refit starts from a fresh state folder
        self._fit_out = self._predict_out = None
        seed = self._binding.seed if self._binding.seed is not None else int(config.get("seed", 0) or 0)
        t0 = time.perf_counter()
        meta, X, cell_group = training_payload(train, val, max_cells_per_group=self._binding.max_cells_per_group,
                                               seed=seed)
        self._genes = list(meta["genes"])
        self._sent = {"cells": int(X.shape[0]), "genes": int(X.shape[1]), "groups": len(meta["groups"]),
                      "max_cells_per_group": meta["max_cells_per_group"], "subsampling_seed": seed,
                      "payload_seconds": round(time.perf_counter() - t0, 3)}
        self._fit_out = self._call("fit", {"config": dict(config), "train": meta},
                                   {"X": X, "cell_group": cell_group},
                                   lambda d: read_fit_response(d, self._where()))

    def predict(self, queries: list[Any]) -> Prediction:
        if self._fit_out is None:
            raise PluginError(f"{self._where()}: predict() called before fit()", field="predict",
                              fix="call fit() first")
        if self._state_dir is None:
            raise PluginError(f"{self._where()}: the fitted state was released (close(), or a failed call)",
                              field="predict", fix="call fit() again before predicting")
        ids = [q.group_id for q in queries]
        out = self._call("predict", {"queries": [_group_dict(q) for q in queries]}, None,
                         lambda d: read_predict_response(d, self._where(), ids, len(self._genes)))
        if (out["var_delta"] is not None) != bool(type(self).gives_variance):
            self.close()
            raise PluginError(
                f"{self._where()}: predict() {'returned' if out['var_delta'] is not None else 'did not return'} "
                f"var_delta but the model declares gives_variance = {type(self).gives_variance}",
                field="var_delta", fix="make the worker's output and the class's gives_variance agree")
        self._predict_out = out
        return Prediction(group_ids=ids, mean_delta=out["mean_delta"], var_delta=out["var_delta"],
                          notes=dict(out["notes"]), info=dict(out["info"]))

    def diagnostics(self) -> dict[str, Any]:
        """``{"fit": <fit diagnostics>, "predict": <predict diagnostics>, "fit_notes": {...}, "isolation": {...}}``."""
        out: dict[str, Any] = {"fit": dict((self._fit_out or {}).get("diagnostics", {})),
                               "predict": dict((self._predict_out or {}).get("diagnostics", {}))}
        if (self._fit_out or {}).get("notes"):
            out["fit_notes"] = dict(self._fit_out["notes"])  # type: ignore[index]
        out["isolation"] = self.isolation()
        return out

    def isolation(self) -> dict[str, Any]:
        """How the calls ran: environment, worker file hash, what was sent, subprocess seconds."""
        spec = self.spec()
        env = self._binding.env if self._binding else None
        return {"environment": spec.name, "spec_hash": spec.spec_hash(),
                "python": env.info.get("python_version") if env else None,
                "worker_sha256": spec.worker_sha256(), "sent": dict(self._sent),
                "call_seconds": dict(self._seconds),
                "call_timeout_s": self._binding.call_timeout_s if self._binding else None}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "environment": self.spec().name, "spec_hash": self.spec().spec_hash(),
                "requirements": list(self.spec().requirements)}
