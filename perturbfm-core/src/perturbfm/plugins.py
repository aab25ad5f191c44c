"""Plugin discovery, the typed per-kind registries, and the one way hooks are called.

(Over 400 lines on purpose: the registry, its per-kind views and the records
they return are one public surface that other packages import from here; the
mechanics of running plugin code safely live in :mod:`perturbfm.plugin_guard`.)

Each entry point of the group ``perturbfm`` is imported on its own, through
:func:`perturbfm.plugin_guard.guarded`: a plugin that raises, calls
``sys.exit``, raises ``KeyboardInterrupt``, runs argparse or hangs at import is
recorded with what it did (and where) and skipped; only the work that needs it
fails. Every hook implementation is called the same way and its result is
attributed to the plugin that returned it.

Public surface (see :class:`PluginRegistry`):

* ``registry.models``, ``.metric_panels``, ``.dataset_adapters``,
  ``.split_generators``, ``.executors``: :class:`KindRegistry` objects with
  ``get(name) -> class``, ``names()``, ``create(name, *args, **kwargs)`` and
  ``origin(name) -> Origin(distribution, version)``.
* ``registry.get(kind, name) -> Registered``, ``names(kind)``, ``create(kind, name)``:
  the untyped forms, delegating to the above.
* ``registry.call_observers(hook_name, **kwargs) -> list[ObserverFailure]``: call an
  observer hook (``pfm_run_started``, ``pfm_run_finished``) on every plugin; a
  plugin raising anything (``SystemExit`` and ``KeyboardInterrupt`` included) or
  running past ``PFM_OBSERVER_TIMEOUT`` seconds (default 300) is returned as an
  :class:`ObserverFailure`; nothing propagates.
* ``registry.call_hook(hook_name, **kwargs) -> list[HookCall]``: the general form.

Switches (environment):

* ``PFM_DISABLE_PLUGINS=name1,name2``: skip these entry points or distributions.
* ``PFM_PLUGIN_LOAD_TIMEOUT=SECONDS``: limit for importing one entry point
  (default 20; 0 = no limit).
* ``PFM_PLUGIN_HOOK_TIMEOUT=SECONDS``: limit for one registration or command hook
  call (default 60; 0 = no limit).
* ``PFM_OBSERVER_TIMEOUT=SECONDS``: limit for one observer call (default 300).
* ``PFM_TRACE_PLUGINS=1``: print each load and hook call with its duration to stderr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any, Generic, NamedTuple, TypeVar

import pluggy

from perturbfm import hookspecs
from perturbfm.errors import PluginError
from perturbfm.interfaces import PLUGIN_KINDS, DatasetAdapter, Executor, MetricPanel, Model, SplitGenerator
from perturbfm.plugin_guard import (
    HOOK_TIMEOUT_ENV,
    LOAD_TIMEOUT_ENV,
    OBSERVER_TIMEOUT_ENV,
    Failure,
    guarded,
    hook_timeout,
    load_timeout,
    observer_timeout,
    trace,
)

ENTRY_POINT_GROUP = "perturbfm"
DISABLE_ENV = "PFM_DISABLE_PLUGINS"
OBSERVER_HOOKS = ("pfm_run_started", "pfm_run_finished")
T = TypeVar("T")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {_norm(x.strip()) for x in raw.split(",") if x.strip()}


def _safe_repr(obj: Any, limit: int = 80) -> str:
    try:
        text = repr(obj)
    except BaseException:  # noqa: BLE001 - a hostile __repr__
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class PluginInfo:
    """One entry point of the ``perturbfm`` group (or an in-process plugin), as loaded.

    ``error`` is set when the plugin is unusable or misbehaved: its import failed
    (``failure`` says how), it was disabled, or a hook returned something malformed
    (each listed in ``problems``).
    """

    entry_point: str
    distribution: str
    version: str
    module: str
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    disabled: bool = False
    problems: list[str] = field(default_factory=list)
    failure: Failure | None = None
    load_seconds: float = 0.0
    hooks: list[str] = field(default_factory=list)
    obj: Any = field(default=None, repr=False)

    @property
    def pm_name(self) -> str:
        return f"{self.distribution}:{self.entry_point}"

    @property
    def fix(self) -> str | None:
        if self.disabled:
            return f"remove it from {DISABLE_ENV} to use it"
        if self.failure is not None:
            limit = f" (or raise {LOAD_TIMEOUT_ENV} if it is just slow)" if self.failure.kind == "timeout" else ""
            return (f"fix or uninstall it (pip uninstall {self.distribution}), or skip it with "
                    f"{DISABLE_ENV}={self.distribution}{limit}")
        if self.problems:
            return f"report it to the authors of {self.distribution}, or skip it with {DISABLE_ENV}={self.distribution}"
        return None

    def add_problem(self, problem: str) -> None:
        self.problems.append(problem)
        if self.failure is None and not self.disabled:
            self.error = "; ".join(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_point": self.entry_point,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "registers": self.registers,
            "error": self.error,
            "disabled": self.disabled,
            "failure": None if self.failure is None else {"kind": self.failure.kind, "error": self.failure.error,
                                                          "where": self.failure.where},
            "problems": list(self.problems),
            "fix": self.fix,
            "hooks": list(self.hooks),
            "load_seconds": round(self.load_seconds, 4),
        }


@dataclass
class Registered:
    """A registered implementation and where it came from."""

    kind: str
    name: str
    cls: type
    distribution: str
    version: str


class Origin(NamedTuple):
    """The distribution (and its version) that registered a name."""

    distribution: str
    version: str


@dataclass
class HookCall:
    """One hook implementation's call: who, what it returned, or how it failed."""

    hook: str
    plugin: str
    distribution: str
    version: str
    value: Any = None
    failure: Failure | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "plugin": self.plugin, "distribution": self.distribution,
                "version": self.version, "seconds": round(self.seconds, 4),
                "failure": None if self.failure is None else {"kind": self.failure.kind, "error": self.failure.error,
                                                              "where": self.failure.where}}


@dataclass
class ObserverFailure:
    """An observer hook implementation that did not return normally."""

    hook: str
    plugin: str
    distribution: str
    version: str
    kind: str
    error: str
    where: str = ""

    def render(self) -> str:
        return (f"{self.distribution} ({self.plugin}) {self.hook}: {self.error}"
                + (f" at {self.where}" if self.where else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "plugin": self.plugin, "distribution": self.distribution,
                "version": self.version, "kind": self.kind, "error": self.error, "where": self.where}


class KindRegistry(Generic[T]):
    """The registered classes of one kind (models, metric panels ...), by name."""

    def __init__(self, kind: str, hook: str, base: type[T], owner: PluginRegistry) -> None:
        self.kind = kind
        self.hook = hook
        self.base = base
        self._owner = owner
        self._entries: dict[str, Registered] = {}
        self._conflicts: dict[str, list[str]] = {}

    @property
    def label(self) -> str:
        return self.kind.replace("_", " ")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries and name not in self._conflicts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> Registered:
        """The registration of ``name``; raises :class:`PluginError` when it is missing
        or registered by two distributions."""
        if name in self._conflicts:
            dists = list(dict.fromkeys(self._conflicts[name]))  # registration order: the first is kept below
            raise PluginError(
                f"{self.label} name {name!r} is registered by more than one distribution: {', '.join(dists)}",
                field=name,
                fix=(f"uninstall all but one of them, or skip the others, e.g. to keep {dists[0]}: "
                     f"{DISABLE_ENV}={','.join(dists[1:])}"),
            )
        found = self._entries.get(name)
        if found is None:
            raise self._owner._missing(self, name)
        return found

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``."""
        return self.entry(name).cls

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """An instance of the class registered as ``name``."""
        return self.entry(name).cls(*args, **kwargs)

    def origin(self, name: str) -> Origin:
        """The distribution and version that registered ``name``."""
        e = self.entry(name)
        return Origin(e.distribution, e.version)

    def conflicts(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self._conflicts.items()}

    def _add(self, info: PluginInfo, cls: type) -> None:
        name = cls.name  # type: ignore[attr-defined]
        existing = self._entries.get(name)
        if existing is not None and existing.cls is not cls:
            dists = self._conflicts.setdefault(name, [existing.distribution])
            dists.append(info.distribution)
            return
        self._entries[name] = Registered(self.kind, name, cls, info.distribution, info.version)


class PluginRegistry:
    """Loads the entry points, registers them with pluggy, and indexes what they
    register per kind (see the module docstring)."""

    models: KindRegistry[Model]
    metric_panels: KindRegistry[MetricPanel]
    dataset_adapters: KindRegistry[DatasetAdapter]
    split_generators: KindRegistry[SplitGenerator]
    executors: KindRegistry[Executor]

    _ATTRS = {"model": "models", "metric_panel": "metric_panels", "dataset_adapter": "dataset_adapters",
              "split_generator": "split_generators", "executor": "executors"}

    def __init__(self, extra_plugins: list[tuple[str, Any]] | None = None, *, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.registrations: dict[str, list[dict[str, Any]]] = {}
        self._kinds: dict[str, KindRegistry[Any]] = {}
        for kind, (hook_name, base) in PLUGIN_KINDS.items():
            reg: KindRegistry[Any] = KindRegistry(kind, hook_name, base, self)
            self._kinds[kind] = reg
            setattr(self, self._ATTRS.get(kind, kind + "s"), reg)
        if entry_points:
            self._load_entry_points()
        for name, obj in extra_plugins or []:
            info = PluginInfo(name, name, "local", getattr(obj, "__name__", type(obj).__qualname__))
            self.plugins.append(info)
            self._register(info, obj)
        self._index()

    # ------------------------------------------------------------------ loading
    def _load_entry_points(self) -> None:
        disabled = _disabled_names()
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        seen: set[tuple[str, str]] = set()
        limit = load_timeout()
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if (dist, ep.name) in seen:  # the same dist found twice on sys.path
                continue
            seen.add((dist, ep.name))
            info = PluginInfo(ep.name, dist, version, ep.value)
            self.plugins.append(info)
            if _norm(ep.name) in disabled or _norm(dist) in disabled:
                info.disabled = True
                info.error = f"disabled by {DISABLE_ENV}"
                trace(f"skip {info.pm_name} (disabled by {DISABLE_ENV})")
                continue
            obj, failure, seconds = guarded(ep.load, label=f"load {info.pm_name} ({ep.value})", limit=limit,
                                            limit_env=LOAD_TIMEOUT_ENV)
            info.load_seconds = seconds
            if failure is not None:
                info.failure = failure
                info.error = f"import of {ep.value} {failure.describe()}"
                continue
            self._register(info, obj)

    def _register(self, info: PluginInfo, obj: Any) -> None:
        # pluggy's validation applies here (a hookimpl whose arguments match no spec ...); registering
        # reads every attribute of the plugin object, which can run plugin code (a module __getattr__)
        _, failure, _ = guarded(lambda: self.pm.register(obj, name=info.pm_name), label=f"register {info.pm_name}",
                                limit=load_timeout(), limit_env=LOAD_TIMEOUT_ENV)
        if failure is not None:
            info.failure = Failure(failure.kind, f"rejected by pluggy: {failure.error}", failure.where)
            info.error = info.failure.error
            return
        info.obj = obj
        known = sorted(self.pm.hook.__dict__)
        for caller in self.pm.get_hookcallers(obj) or []:
            impls = [i for i in caller.get_hookimpls() if i.plugin is obj]
            if caller.spec is None:
                if all(i.optionalhook for i in impls):
                    continue
                specs = [n for n in known if getattr(self.pm.hook, n).spec is not None]
                info.add_problem(f"implements {caller.name!r}, which is not a PerturbFM hook (misspelt? hooks: "
                                 f"{', '.join(specs)})")
                continue
            if any(i.hookwrapper or i.wrapper for i in impls):
                info.add_problem(f"{caller.name}: hook wrappers are not supported; write a plain hookimpl")
                continue
            info.hooks.append(caller.name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:  # reported against the plugin above
            trace(f"check_pending: {exc}")

    def _info_for(self, pm_name: str) -> PluginInfo:
        for info in self.plugins:
            if info.pm_name == pm_name:
                return info
        info = PluginInfo(pm_name, pm_name, "local", pm_name)  # registered directly on self.pm
        return info

    def _index(self) -> None:
        for kind, reg in self._kinds.items():
            rows = self.registrations.setdefault(reg.hook, [])
            for call in self.call_hook(reg.hook):
                info = self._info_for(call.plugin)
                row: dict[str, Any] = {**call.to_dict(), "returned": [], "registered": [], "problems": []}
                rows.append(row)
                if call.failure is not None:
                    failed = f"{reg.hook} {call.failure.describe()}"
                    row["problems"].append(failed)
                    info.add_problem(failed)
                    continue
                names = []
                for cls, problem in _classes(call.value, reg.hook, reg.base):
                    if cls is not None:
                        row["returned"].append(_safe_repr(cls))
                    if problem:
                        row["problems"].append(problem)
                        info.add_problem(problem)
                        continue
                    assert cls is not None
                    reg._add(info, cls)
                    names.append(cls.name)  # type: ignore[attr-defined]
                if names:
                    row["registered"] = sorted(set(names))
                    info.registers[kind] = sorted(set(info.registers.get(kind, [])) | set(names))

    # ------------------------------------------------------------------ hooks
    def hook_names(self) -> list[str]:
        """Every hook with a specification, sorted."""
        return sorted(n for n, c in self.pm.hook.__dict__.items() if getattr(c, "spec", None) is not None)

    def hook_impls(self, hook_name: str) -> list[Any]:
        """The pluggy implementations of ``hook_name``, in registration order (entry points
        sorted by name, then in-process plugins)."""
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None or caller.spec is None:
            raise PluginError(f"no hook named {hook_name!r}", field=hook_name,
                              fix=f"use one of: {', '.join(self.hook_names())}")
        return [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]

    def call_impl(self, impl: Any, hook_name: str, kwargs: dict[str, Any], *, observer: bool = False) -> HookCall:
        """Call one implementation guarded (see :mod:`perturbfm.plugin_guard`), limited to
        ``PFM_PLUGIN_HOOK_TIMEOUT`` seconds (``PFM_OBSERVER_TIMEOUT`` for an observer)."""
        limit, limit_env = (observer_timeout(), OBSERVER_TIMEOUT_ENV) if observer else (hook_timeout(),
                                                                                          HOOK_TIMEOUT_ENV)
        info = self._info_for(impl.plugin_name)
        args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
        missing = [k for k in impl.argnames if k not in kwargs]
        call = HookCall(hook_name, impl.plugin_name, info.distribution, info.version)
        if missing:
            call.failure = Failure("exception", f"asks for argument(s) {missing} the hook does not give")
            return call
        fn: Callable[[], Any] = lambda: impl.function(**args)  # noqa: E731
        call.value, call.failure, call.seconds = guarded(fn, label=f"call {hook_name} of {impl.plugin_name}",
                                                         limit=limit, limit_env=limit_env)
        return call

    def call_hook(self, hook_name: str, **kwargs: Any) -> list[HookCall]:
        """Call every implementation of ``hook_name`` with ``kwargs``; one :class:`HookCall`
        each (its value, or its failure), attributed to its plugin, each call limited to
        ``PFM_PLUGIN_HOOK_TIMEOUT`` seconds. Never raises for what plugin code does."""
        return [self.call_impl(impl, hook_name, kwargs) for impl in self.hook_impls(hook_name)]

    def call_observers(self, hook_name: str, **kwargs: Any) -> list[ObserverFailure]:
        """Call the observer hook ``hook_name`` (``pfm_run_started`` or
        ``pfm_run_finished``) on every plugin and return the calls that failed.

        Anything a plugin raises — ``SystemExit``, its own ``KeyboardInterrupt``,
        argparse's exit — and a call past ``PFM_OBSERVER_TIMEOUT`` seconds (default
        300; 0 = no limit) becomes an :class:`ObserverFailure`; nothing propagates
        except the user's own Ctrl-C.
        """
        failures = []
        for impl in self.hook_impls(hook_name):
            call = self.call_impl(impl, hook_name, kwargs, observer=True)
            if call.failure is not None:
                failures.append(ObserverFailure(hook_name, call.plugin, call.distribution, call.version,
                                                call.failure.kind, call.failure.error, call.failure.where))
        return failures

    # ------------------------------------------------------------------ lookups
    def kind(self, kind: str) -> KindRegistry[Any]:
        """The typed registry of ``kind`` (``model``, ``metric_panel`` ...)."""
        try:
            return self._kinds[kind]
        except KeyError:
            raise PluginError(f"no plugin kind {kind!r}", field=kind,
                              fix=f"use one of: {', '.join(self._kinds)}") from None

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, sorted."""
        return self.kind(kind).names()

    def get(self, kind: str, name: str) -> Registered:
        """The registration of ``name``; raises :class:`PluginError` when it is missing
        or registered by two distributions."""
        return self.kind(kind).entry(name)

    def create(self, kind: str, name: str) -> Any:
        """Instantiate the implementation registered as ``name``."""
        return self.kind(kind).create(name)

    def conflicts(self) -> dict[tuple[str, str], list[str]]:
        return {(k, n): d for k, reg in self._kinds.items() for n, d in reg.conflicts().items()}

    def versions(self) -> dict[str, str]:
        """Distribution -> version for every loaded plugin."""
        return {p.distribution: p.version for p in self.plugins}

    def broken(self) -> list[PluginInfo]:
        """Plugins that failed to load or returned malformed registrations (not the disabled)."""
        return [p for p in self.plugins if p.error and not p.disabled]

    def _missing(self, reg: KindRegistry[Any], name: str) -> PluginError:
        unusable = [p for p in self.plugins if p.error]
        known = ", ".join(reg.names()) or "none"
        msg = f"no {reg.label} named {name!r} (registered: {known})"
        fix = "check `pfm-bench plugins` and install the package that provides it"
        if unusable:
            msg += "; plugins that failed to load or are disabled: " + ", ".join(
                f"{p.distribution} ({p.error})" for p in unusable)
            failed = [p.distribution for p in unusable if not p.disabled]
            if failed:
                fix = (f"if {name!r} comes from {' or '.join(failed)}, fix or reinstall it (see "
                       f"`pfm-bench plugins`); to silence a broken plugin, uninstall it or set "
                       f"{DISABLE_ENV}={','.join(failed)}; otherwise install the package that provides {name!r}")
            else:
                fix = (f"if {name!r} comes from a disabled plugin, remove it from {DISABLE_ENV}; otherwise " + fix)
        return PluginError(msg, field=name, fix=fix)


def _classes(value: Any, hook: str, base: type) -> Iterator[tuple[type | None, str | None]]:
    """The classes a registration hook returned, each with the problem that keeps
    it out of the registry (None when it is fine)."""
    if value is None:
        return
    if not isinstance(value, (list, tuple)):
        yield None, f"{hook} returned {type(value).__name__} {_safe_repr(value, 60)}, not a list of classes"
        return
    seen: set[int] = set()
    for cls in value:
        if id(cls) in seen:
            continue
        seen.add(id(cls))
        yield (cls if isinstance(cls, type) else None), _check_class(cls, base, hook)


def _check_class(cls: Any, base: type, hook: str = "") -> str | None:
    prefix = f"{hook}: " if hook else ""
    if not isinstance(cls, type):
        return f"{prefix}registered {_safe_repr(cls, 60)}, which is not a class"
    try:
        qual = str(cls.__qualname__)
        if not issubclass(cls, base):
            return f"{prefix}{qual} does not subclass perturbfm.interfaces.{base.__name__}"
        name = getattr(cls, "name", None)
    except BaseException as exc:  # noqa: BLE001 - a hostile metaclass
        return f"{prefix}inspecting {_safe_repr(cls, 60)} raised {type(exc).__name__}"
    if not isinstance(name, str) or not name.strip():
        return f"{prefix}{qual} has no `name` (a non-empty str class attribute)"
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
