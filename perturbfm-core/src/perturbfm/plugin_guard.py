"""Running plugin code without letting it take over the process.

Every call into plugin code (importing an entry point, calling a hook
implementation) goes through :func:`guarded`, which

* catches :class:`BaseException` — ``sys.exit``, ``KeyboardInterrupt`` raised by
  the plugin itself, argparse's ``SystemExit`` — and returns it as a
  :class:`Failure` naming what the plugin did and where;
* bounds the time of the call with ``SIGALRM`` (main thread, POSIX only; elsewhere
  the call is unbounded), restoring any timer that was already armed;
* still lets a *real* Ctrl-C through: a ``KeyboardInterrupt`` that comes from the
  user's SIGINT (not from the plugin's ``raise``) is re-raised;
* sends what the plugin prints on stdout to stderr, so machine-readable output
  (``--json``, a printed id) stays clean, and puts back ``sys.argv``, the standard
  streams and the working directory if the plugin changed them;
* after a failure, forgets modules left half-imported, so one interrupted import
  does not break every later import of the same library;
* prints, when ``PFM_TRACE_PLUGINS=1``, what was called and how long it took.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACE_ENV = "PFM_TRACE_PLUGINS"
LOAD_TIMEOUT_ENV = "PFM_PLUGIN_LOAD_TIMEOUT"
HOOK_TIMEOUT_ENV = "PFM_PLUGIN_HOOK_TIMEOUT"
OBSERVER_TIMEOUT_ENV = "PFM_OBSERVER_TIMEOUT"
DEFAULT_LOAD_TIMEOUT = 20.0
DEFAULT_HOOK_TIMEOUT = 60.0
DEFAULT_OBSERVER_TIMEOUT = 300.0


class PluginTimeout(BaseException):
    """Raised inside plugin code when its time limit runs out. A BaseException, so a
    plugin's ``except Exception`` cannot swallow it."""


@dataclass
class Failure:
    """What a piece of plugin code did instead of returning.

    Attributes:
        kind: ``exception``, ``exit`` (SystemExit), ``interrupt`` (KeyboardInterrupt
            raised by the plugin), ``timeout`` or ``base_exception`` (any other
            BaseException).
        error: one line: the exception type and message, in words.
        where: ``file:line in function`` of the innermost frame, if known.
    """

    kind: str
    error: str
    where: str = ""

    def describe(self) -> str:
        return self.error + (f" (at {self.where})" if self.where else "")


def _seconds_from_env(name: str, default: float) -> float | None:
    """A time limit from the environment; ``0`` (or a negative value) means none."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        from perturbfm.errors import ConfigError

        raise ConfigError(f"{name}={raw!r} is not a number of seconds", field=name,
                          fix=f"set {name} to a number of seconds (0 for no limit), or unset it") from None
    return value if value > 0 else None


def load_timeout() -> float | None:
    """Seconds allowed for importing one entry point (``PFM_PLUGIN_LOAD_TIMEOUT``,
    default 20; 0 = no limit)."""
    return _seconds_from_env(LOAD_TIMEOUT_ENV, DEFAULT_LOAD_TIMEOUT)


def hook_timeout() -> float | None:
    """Seconds allowed for one registration or command hook call
    (``PFM_PLUGIN_HOOK_TIMEOUT``, default 60; 0 = no limit). Larger than the import
    limit: plugins import their heavy libraries (torch, scipy) inside these hooks."""
    return _seconds_from_env(HOOK_TIMEOUT_ENV, DEFAULT_HOOK_TIMEOUT)


def observer_timeout() -> float | None:
    """Seconds allowed for one observer call (``PFM_OBSERVER_TIMEOUT``, default 300; 0 = no limit)."""
    return _seconds_from_env(OBSERVER_TIMEOUT_ENV, DEFAULT_OBSERVER_TIMEOUT)


def tracing() -> bool:
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def trace(message: str) -> None:
    """Print a trace line to stderr when ``PFM_TRACE_PLUGINS`` is set."""
    if tracing():
        print(f"pfm-plugins: {message}", file=sys.stderr, flush=True)


def _is_plugin_frame(filename: str) -> bool:
    """False for the standard library, the import machinery and this harness."""
    if filename.startswith("<frozen") or Path(filename).name in ("plugin_guard.py", "plugins.py"):
        return False
    path = os.path.abspath(filename)
    return not (path.startswith(_STDLIB) and not path.startswith(_SITE))


_STDLIB = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep
_SITE = os.path.abspath(sysconfig.get_paths()["purelib"]) + os.sep


def _where(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame of plugin code (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    own = [f for f in frames if _is_plugin_frame(f.filename)]
    f = (own or frames)[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"


def _describe(exc: BaseException, limit: float | None, limit_env: str) -> Failure:
    where = _where(exc)
    if isinstance(exc, PluginTimeout):
        return Failure("timeout", f"did not finish within {limit:g} s (limit set by {limit_env})", where)
    if isinstance(exc, SystemExit):
        return Failure("exit", f"called sys.exit({exc.code!r}) (SystemExit; argparse and click exit this way)", where)
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupt", "raised KeyboardInterrupt", where)
    kind = "exception" if isinstance(exc, Exception) else "base_exception"
    text = str(exc).strip().replace("\n", " ")
    return Failure(kind, f"{type(exc).__name__}: {text}" if text else type(exc).__name__, where)


class _State:
    def __init__(self) -> None:
        self.armed = False
        self.user_interrupt = False


@contextlib.contextmanager
def _signals(limit: float | None, state: _State) -> Iterator[None]:
    """Arm SIGALRM for ``limit`` seconds and mark a user's SIGINT (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    use_alarm = limit is not None and hasattr(signal, "setitimer")
    old_int = signal.getsignal(signal.SIGINT)
    watch_int = old_int is signal.default_int_handler

    def on_int(signum: int, frame: Any) -> None:
        state.user_interrupt = True
        raise KeyboardInterrupt

    def on_alarm(signum: int, frame: Any) -> None:
        if state.armed:
            state.armed = False
            raise PluginTimeout()

    if watch_int:
        signal.signal(signal.SIGINT, on_int)
    old_alarm: Any = None
    previous = (0.0, 0.0)
    started = time.monotonic()
    if use_alarm:
        old_alarm = signal.signal(signal.SIGALRM, on_alarm)
        state.armed = True
        previous = signal.setitimer(signal.ITIMER_REAL, limit)  # type: ignore[arg-type]
    try:
        yield
    finally:
        if use_alarm:
            state.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
            if previous[0] > 0:  # someone else's timer was running: re-arm what is left of it
                left = max(previous[0] - (time.monotonic() - started), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, previous[1])
        if watch_int:
            signal.signal(signal.SIGINT, old_int)


class _ProcessState:
    """What plugin code must not change for the rest of the process: the command
    line (a plugin setting ``sys.argv`` would change which command runs), the
    standard streams and the working directory."""

    def __init__(self) -> None:
        self.argv_list = sys.argv
        self.argv = list(sys.argv)
        self.streams = (sys.stdin, sys.stdout, sys.stderr)
        try:
            self.cwd: str | None = os.getcwd()
        except OSError:
            self.cwd = None

    def restore(self) -> None:
        sys.argv = self.argv_list
        sys.argv[:] = self.argv
        sys.stdin, sys.stdout, sys.stderr = self.streams
        if self.cwd is not None:
            with contextlib.suppress(OSError):
                if os.getcwd() != self.cwd:
                    os.chdir(self.cwd)


def _drop_half_imported(before: set[str]) -> None:
    """After plugin code was stopped mid-import, forget the modules it added that
    are still initialising or whose parent package was removed (Python removes
    the module whose import failed, not its already-imported submodules, which
    would then break every later import of that package)."""
    added = sorted(set(sys.modules) - before, key=lambda n: n.count("."))
    for name in added:
        mod = sys.modules.get(name)
        spec = getattr(mod, "__spec__", None)
        parent = name.rpartition(".")[0]
        if getattr(spec, "_initializing", False) or (parent and parent not in sys.modules):
            sys.modules.pop(name, None)


def guarded(fn: Callable[[], Any], *, label: str, limit: float | None, limit_env: str) -> tuple[Any, Failure | None,
                                                                                                  float]:
    """Call ``fn()`` as plugin code: returns ``(value, failure, seconds)``.

    ``failure`` is None when ``fn`` returned; otherwise ``value`` is None and the
    failure says what happened. A KeyboardInterrupt from the user's Ctrl-C is
    re-raised, never recorded against the plugin.
    """
    state = _State()
    started = time.perf_counter()
    value: Any = None
    failure: Failure | None = None
    before = set(sys.modules)
    saved = _ProcessState()
    try:
        with _signals(limit, state), contextlib.redirect_stdout(sys.stderr):
            value = fn()
    except BaseException as exc:  # noqa: BLE001 - plugin code must not take over the process
        _drop_half_imported(before)
        if isinstance(exc, KeyboardInterrupt) and state.user_interrupt:
            raise
        failure = _describe(exc, limit, limit_env)
    finally:
        saved.restore()
    seconds = time.perf_counter() - started
    trace(f"{label}: {seconds:.3f} s" + (f", FAILED: {failure.describe()}" if failure else ""))
    return value, failure, seconds
