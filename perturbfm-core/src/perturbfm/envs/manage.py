"""``pfm-bench envs list / build / remove`` and the environment column of
``pfm-bench plugins``: the installed models' environments next to what is on disk."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from perturbfm.envs.spec import EnvSpec
from perturbfm.envs.store import build_env, envs_root, find_env, list_envs, remove_env
from perturbfm.errors import ArtifactNotFoundError, ConfigError, PerturbFMError


def model_environments(registry: Any) -> dict[str, EnvSpec]:
    """Registered model name -> its :class:`EnvSpec`, for the models that declare one."""
    models = registry.kind("model")
    out: dict[str, EnvSpec] = {}
    for name in models.names():
        try:
            spec = getattr(models.get(name), "environment", None)
        except PerturbFMError:
            continue  # a name conflict: reported by `pfm-bench plugins`
        if isinstance(spec, EnvSpec):
            out[name] = spec
    return out


def environment_status(registry: Any, store: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Model name -> ``{"environment", "spec_hash", "built"}`` (the ``plugins`` listing's column)."""
    root = envs_root(store)
    return {m: {"environment": s.name, "spec_hash": s.spec_hash(), "built": find_env(s, root) is not None}
            for m, s in model_environments(registry).items()}


def environment_rows(registry: Any, store: str | os.PathLike[str] | None = None, *,
                     sizes: bool = False) -> list[dict[str, Any]]:
    """One row per environment: every installed model's (built or not) and every folder on disk."""
    root = envs_root(store)
    by_hash: dict[str, list[str]] = {}
    specs: dict[str, EnvSpec] = {}
    for model, spec in model_environments(registry).items():
        by_hash.setdefault(spec.spec_hash(), []).append(model)
        specs.setdefault(spec.spec_hash(), spec)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in list_envs(root, sizes=sizes):
        h = row["spec_hash"]
        if row["status"] == "built":
            seen.add(h)
        models = by_hash.get(h, [])
        rows.append({"spec_hash": h, "name": row.get("name") or (specs[h].name if h in specs else None),
                     "models": models, "status": row["status"] if models or row["status"] != "built" else
                     "built (no installed model uses it)", **{k: v for k, v in row.items()
                                                                if k not in ("spec_hash", "name", "status")}})
    for h, models in sorted(by_hash.items()):
        if h not in seen:
            rows.append({"spec_hash": h, "name": specs[h].name, "models": models, "status": "not built",
                         "path": str(root / h), "python": specs[h].python,
                         "requirements": list(specs[h].requirements)})
    return rows


def _specs_for(registry: Any, models: Sequence[str]) -> dict[str, EnvSpec]:
    envs = model_environments(registry)
    if not models:
        if not envs:
            raise ConfigError("no installed model declares its own environment", field="MODEL",
                              fix="install a model plugin that does (pfm-bench plugins shows an environment column)")
        return envs
    out: dict[str, EnvSpec] = {}
    for m in models:
        registry.kind("model").get(m)  # unknown model: the registry's error lists the installed ones
        if m not in envs:
            raise ConfigError(f"model {m!r} runs in-process: it declares no environment", field="MODEL",
                              fix="pfm-bench envs list shows the models that have one")
        out[m] = envs[m]
    return out


def build_model_environments(registry: Any, models: Sequence[str] = (), *,
                             store: str | os.PathLike[str] | None = None, force: bool = False,
                             say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Build (or, ``force``, rebuild) the environments of ``models`` (default: every model that has one)."""
    root = envs_root(store)
    out = []
    done: dict[str, dict[str, Any]] = {}
    for model, spec in _specs_for(registry, models).items():
        h = spec.spec_hash()
        if h not in done:
            existing = None if force else find_env(spec, root)
            built = existing or build_env(spec, root, say=say, force=force)
            done[h] = {"spec_hash": h, "name": spec.name, "path": str(built.path), "reused": built.reused,
                       "build_seconds": built.info.get("build_seconds"), "packages": built.info.get("packages", [])}
        out.append({"model": model, **done[h]})
    return out


def remove_environments(registry: Any, ref: str, *, store: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove by model name, hash prefix, or ``incomplete`` (every killed build). Returns the hashes removed."""
    root = envs_root(store)
    if ref == "incomplete":
        return remove_env(root, ref)
    envs = model_environments(registry)
    if ref in envs:
        h = envs[ref].spec_hash()
        if not Path(root / h).exists():
            raise ArtifactNotFoundError(f"the environment of model {ref!r} ({h[:12]}) is not built", field="env",
                                        fix="nothing to remove; pfm-bench envs list shows what is built")
        return remove_env(root, h)
    return remove_env(root, ref)
