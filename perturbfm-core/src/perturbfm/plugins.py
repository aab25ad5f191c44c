"""Plugin discovery and the name registry.

Each entry point of the group ``perturbfm`` is loaded on its own; a plugin that
fails to import is recorded with its error and only the runs that need it fail.
Set ``PFM_DISABLE_PLUGINS=name1,name2`` (entry-point or distribution names) to
skip plugins.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy

from perturbfm import hookspecs
from perturbfm.errors import PluginError
from perturbfm.interfaces import PLUGIN_KINDS

ENTRY_POINT_GROUP = "perturbfm"
DISABLE_ENV = "PFM_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    """One entry point of the ``perturbfm`` group, as loaded."""

    entry_point: str
    distribution: str
    version: str
    module: str
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    disabled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_point": self.entry_point,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "registers": self.registers,
            "error": self.error,
            "disabled": self.disabled,
        }


@dataclass
class Registered:
    """A registered implementation and where it came from."""

    kind: str
    name: str
    cls: type
    distribution: str
    version: str


def _disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {x.strip() for x in raw.split(",") if x.strip()}


class PluginRegistry:
    """Loads the entry points and indexes what they register, per kind and name."""

    def __init__(self, extra_plugins: list[tuple[str, Any]] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._by_kind: dict[str, dict[str, Registered]] = {k: {} for k in PLUGIN_KINDS}
        self._conflicts: dict[tuple[str, str], list[str]] = {}
        self._load_entry_points()
        for name, obj in extra_plugins or []:
            info = PluginInfo(name, name, "local", getattr(obj, "__name__", repr(obj)))
            self._register(info, obj)
        self._index()

    # ------------------------------------------------------------------ loading
    def _load_entry_points(self) -> None:
        disabled = _disabled_names()
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        seen: set[tuple[str, str]] = set()
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if (dist, ep.name) in seen:  # the same dist found twice on sys.path
                continue
            seen.add((dist, ep.name))
            info = PluginInfo(ep.name, dist, version, ep.value)
            self.plugins.append(info)
            if ep.name in disabled or dist in disabled:
                info.disabled = True
                info.error = f"disabled by {DISABLE_ENV}"
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the CLI
                info.error = f"{type(exc).__name__}: {exc}"
                info.traceback = traceback.format_exc()  # type: ignore[attr-defined]
                continue
            self._register(info, obj)

    def _register(self, info: PluginInfo, obj: Any) -> None:
        try:
            self.pm.register(obj, name=f"{info.distribution}:{info.entry_point}")
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            return
        info._obj = obj  # type: ignore[attr-defined]
        if info not in self.plugins:
            self.plugins.append(info)

    def _index(self) -> None:
        for info in self.plugins:
            obj = getattr(info, "_obj", None)
            if obj is None:
                continue
            for kind, (hook_name, base) in PLUGIN_KINDS.items():
                impl = getattr(obj, hook_name, None)
                if impl is None:
                    continue
                try:
                    classes = list(impl() or [])
                except Exception as exc:
                    info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
                    continue
                names = []
                for cls in classes:
                    problem = _check_class(cls, base)
                    if problem:
                        info.error = f"{hook_name}: {problem}"
                        continue
                    name = cls.name
                    names.append(name)
                    existing = self._by_kind[kind].get(name)
                    if existing is not None and existing.cls is not cls:
                        self._conflicts.setdefault((kind, name), [existing.distribution]).append(
                            info.distribution
                        )
                        continue
                    self._by_kind[kind][name] = Registered(kind, name, cls, info.distribution, info.version)
                if names:
                    info.registers[kind] = sorted(names)

    # ------------------------------------------------------------------ lookups
    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, sorted."""
        return sorted(self._by_kind[kind])

    def get(self, kind: str, name: str) -> Registered:
        """The implementation registered as ``name``; raises :class:`PluginError`
        when it is missing or registered by two distributions."""
        if (kind, name) in self._conflicts:
            dists = sorted(set(self._conflicts[(kind, name)]))
            raise PluginError(
                f"{kind.replace('_', ' ')} name {name!r} is registered by more than one "
                f"distribution: {', '.join(dists)}",
                field=name,
                fix=f"uninstall one of them, or disable one with {DISABLE_ENV}=<entry point>",
            )
        found = self._by_kind[kind].get(name)
        if found is None:
            broken = [p for p in self.plugins if p.error]
            hint = ""
            if broken:
                hint = "; plugins that failed to load or are disabled: " + ", ".join(
                    f"{p.distribution} ({p.error})" for p in broken
                )
            known = ", ".join(self.names(kind)) or "none"
            raise PluginError(
                f"no {kind.replace('_', ' ')} named {name!r} (registered: {known}){hint}",
                field=name,
                fix="check `pfm-bench plugins` and install the package that provides it",
            )
        return found

    def create(self, kind: str, name: str) -> Any:
        """Instantiate the implementation registered as ``name``."""
        return self.get(kind, name).cls()

    def conflicts(self) -> dict[tuple[str, str], list[str]]:
        return dict(self._conflicts)

    def versions(self) -> dict[str, str]:
        """Distribution -> version for every loaded plugin."""
        return {p.distribution: p.version for p in self.plugins}


def _check_class(cls: Any, base: type) -> str | None:
    if not isinstance(cls, type):
        return f"registered {cls!r}, which is not a class"
    if not issubclass(cls, base):
        return f"{cls.__qualname__} does not subclass perturbfm.interfaces.{base.__name__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.strip():
        return f"{cls.__qualname__} has no `name`"
    return None


@lru_cache(maxsize=1)
def get_registry() -> PluginRegistry:
    """The process-wide registry (loaded once)."""
    return PluginRegistry()


def check_requirements(registry: PluginRegistry, required: dict[str, str]) -> dict[str, str]:
    """Refuse unless every required distribution is loaded at a matching version
    (see :func:`perturbfm.plugin_kit.pins.check_requirements`)."""
    from perturbfm.plugin_kit.pins import check_requirements as _check

    return _check(registry, required)


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin)."""
    get_registry.cache_clear()
