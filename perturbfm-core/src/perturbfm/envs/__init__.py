"""Model environments: a model plugin may run in its own Python environment.

A model declares ``environment = EnvSpec(...)`` and subclasses :class:`IsolatedModel`;
the harness creates the environment with ``uv`` under ``<store>/envs/<spec hash>/``
(atomically, once, reused by every later run), and runs ``fit`` and ``predict`` in a
subprocess of that environment's Python through a versioned file protocol, with a
time limit and clean errors. See ``docs/environments.md``.

Modules: :mod:`.spec` (:class:`EnvSpec`, the hash, machine-level sources),
:mod:`.store` (layout, build with uv, lock, list, remove), :mod:`.protocol` (requests,
the subprocess, checked responses), :mod:`.worker_host` (the env-side runner, stand-alone),
:mod:`.model` (:class:`IsolatedModel`), :mod:`.harness` (what a run does with them).
"""

from __future__ import annotations

from perturbfm.envs.model import EnvBinding, IsolatedModel
from perturbfm.envs.protocol import PROTOCOL, EnvCallError, EnvProtocolError, EnvTimeoutError
from perturbfm.envs.spec import EnvSpec, machine_sources
from perturbfm.envs.store import (
    ENVS_DIR_ENV,
    BuiltEnv,
    EnvBuildError,
    build_env,
    ensure_env,
    envs_root,
    find_env,
    list_envs,
    remove_env,
)

__all__ = ["ENVS_DIR_ENV", "PROTOCOL", "BuiltEnv", "EnvBinding", "EnvBuildError", "EnvCallError",
           "EnvProtocolError", "EnvSpec", "EnvTimeoutError", "IsolatedModel", "build_env", "ensure_env",
           "envs_root", "find_env", "list_envs", "machine_sources", "remove_env"]
