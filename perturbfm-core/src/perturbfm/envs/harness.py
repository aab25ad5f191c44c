"""How a run (:mod:`perturbfm.run.stages`) uses a model's own environment: refuse a
bad declaration before the run directory exists, build or reuse the environment
before fitting (outside the fit time and the run's time limit), bind the run's
options to every member, and record the environment in the provenance."""

from __future__ import annotations

import time
from typing import Any

from perturbfm.envs.model import EnvBinding, IsolatedModel
from perturbfm.envs.spec import EnvSpec
from perturbfm.envs.store import ensure_env, envs_root
from perturbfm.errors import PluginError


def check_declaration(model_cls: type) -> None:
    """A model declaring an environment must be an :class:`IsolatedModel` with an :class:`EnvSpec`."""
    spec = getattr(model_cls, "environment", None)
    if spec is None:
        return
    name = getattr(model_cls, "name", model_cls.__name__)
    if not isinstance(spec, EnvSpec):
        raise PluginError(f"model {name!r} declares environment = {type(spec).__name__}, not an EnvSpec",
                          field="environment", fix="environment = perturbfm.envs.EnvSpec(...)")
    if not issubclass(model_cls, IsolatedModel):
        raise PluginError(f"model {name!r} declares an environment but does not subclass "
                          "perturbfm.envs.IsolatedModel, which runs fit and predict in it", field="environment",
                          fix="class MyModel(perturbfm.envs.IsolatedModel): ... (no fit/predict of its own)")
    spec.worker_path()


def prepare_environment(ctx: Any, deadline: Any = None) -> EnvBinding | None:
    """Build or reuse the model's environment and record it; None for an in-process model.
    ``deadline`` (the run's ``run.timeout_s``) also bounds each call's subprocess."""
    model_cls = ctx.model_reg.cls
    spec: EnvSpec | None = getattr(model_cls, "environment", None)
    if spec is None:
        return None
    check_declaration(model_cls)
    root = envs_root(ctx.store.root)
    ctx.say(f"model {ctx.model_name!r} runs in its own environment {spec.name!r} ({spec.spec_hash()[:12]})")
    t0 = time.monotonic()
    built = ensure_env(spec, root, say=ctx.say)
    if deadline is not None and getattr(deadline, "end", None) is not None:
        deadline.end += time.monotonic() - t0  # building is not part of the time fit + predict are allowed
    run = ctx.run_cfg
    binding = EnvBinding(env=built, call_timeout_s=run.get("env_call_timeout_s"),
                         max_cells_per_group=int(run.get("env_max_cells_per_group") or 500),
                         seed=int(run.get("seed", 0)), say=ctx.say, deadline=deadline)
    host = ctx.provenance.get("environment")
    ctx.provenance["environment"] = {
        **built.record(),
        "worker": {"path": str(spec.worker_path()), "sha256": spec.worker_sha256()},
        "isolation": {"protocol": 1, "max_cells_per_group": binding.max_cells_per_group,
                      "call_timeout_s": binding.call_timeout_s, "subsampling_seed": binding.seed},
        "harness": host,
    }
    return binding
