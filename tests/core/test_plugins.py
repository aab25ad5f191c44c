"""Plugin discovery, the registry, and broken plugins."""

from __future__ import annotations

import pytest
from perturbfm import hookimpl
from perturbfm.errors import PluginError
from perturbfm.interfaces import Model, Prediction
from perturbfm.plugins import PluginRegistry


class _M(Model):
    name = "dup-model"

    def fit(self, train, val, config):  # pragma: no cover - never called
        pass

    def predict(self, queries):  # pragma: no cover - never called
        return Prediction([], None)  # type: ignore[arg-type]


class _M2(_M):
    pass


class _Nameless(_M):
    name = ""


class _Plugin:
    def __init__(self, *classes):
        self.classes = classes

    @hookimpl
    def pfm_register_models(self):
        return list(self.classes)


class _Raising:
    @hookimpl
    def pfm_register_models(self):
        raise RuntimeError("kaboom")


def test_installed_distributions_register_their_names() -> None:
    reg = PluginRegistry()
    dists = {p.distribution for p in reg.plugins}
    assert {"perturbfm-core", "perturbfm-metrics", "perturbfm-models", "perturbfm-bench-adapters"} <= dists
    assert reg.get("dataset_adapter", "synthetic").distribution == "perturbfm-core"
    assert reg.get("metric_panel", "basic").distribution == "perturbfm-metrics"
    assert {"control-mean", "train-mean", "additive", "linear"} <= set(reg.names("model"))
    assert reg.get("model", "additive").distribution == "perturbfm-models"
    assert {"explicit", "random-groups", "context-ood"} <= set(reg.names("split_generator"))
    assert reg.get("dataset_adapter", "anndata").distribution == "perturbfm-bench-adapters"


def test_duplicate_name_names_both_distributions() -> None:
    reg = PluginRegistry(extra_plugins=[("first-dist", _Plugin(_M)), ("second-dist", _Plugin(_M2))])
    with pytest.raises(PluginError) as err:
        reg.get("model", "dup-model")
    assert "first-dist" in err.value.message and "second-dist" in err.value.message


def test_missing_name_lists_what_exists() -> None:
    with pytest.raises(PluginError, match="no model named 'nope'.*additive"):
        PluginRegistry().get("model", "nope")


def test_class_without_name_is_recorded_not_registered() -> None:
    reg = PluginRegistry(extra_plugins=[("bad", _Plugin(_Nameless))])
    bad = next(p for p in reg.plugins if p.distribution == "bad")
    assert "has no `name`" in (bad.error or "")
    assert "" not in reg.names("model")


def test_raising_hook_is_recorded_and_others_still_work() -> None:
    reg = PluginRegistry(extra_plugins=[("raiser", _Raising())])
    bad = next(p for p in reg.plugins if p.distribution == "raiser")
    assert "kaboom" in (bad.error or "")
    assert reg.get("model", "additive")


def test_disable_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFM_DISABLE_PLUGINS", "perturbfm-models")
    reg = PluginRegistry()
    info = next(p for p in reg.plugins if p.distribution == "perturbfm-models")
    assert info.disabled and "disabled" in (info.error or "")
    with pytest.raises(PluginError, match="disabled by PFM_DISABLE_PLUGINS"):
        reg.get("model", "additive")


def test_every_hook_is_documented() -> None:
    from perturbfm import hookspecs

    names = [n for n in dir(hookspecs) if n.startswith("pfm_")]
    assert len(names) == 8
    for n in names:
        assert (getattr(hookspecs, n).__doc__ or "").strip(), n


# ------------------------------------------------------------------ typed registries
def test_typed_registries_return_classes_with_their_origin() -> None:
    from perturbfm.interfaces import DatasetAdapter, Executor, MetricPanel, SplitGenerator
    from perturbfm.plugins import Origin

    reg = PluginRegistry()
    cls = reg.models.get("additive")
    assert issubclass(cls, Model) and cls.name == "additive"
    assert reg.models.origin("additive") == Origin("perturbfm-models", reg.versions()["perturbfm-models"])
    assert isinstance(reg.models.create("additive"), cls)
    assert "additive" in reg.models and "nope" not in reg.models and len(reg.models) == len(reg.models.names())
    for kind_reg, base in ((reg.metric_panels, MetricPanel), (reg.dataset_adapters, DatasetAdapter),
                           (reg.split_generators, SplitGenerator), (reg.executors, Executor)):
        assert kind_reg.names(), kind_reg.kind
        for name in kind_reg:
            assert issubclass(kind_reg.get(name), base)
            assert kind_reg.origin(name).distribution.startswith("perturbfm")
    # the untyped forms delegate to the typed ones
    assert reg.get("model", "additive").cls is cls and reg.names("model") == reg.models.names()
    assert reg.kind("metric_panel") is reg.metric_panels
    with pytest.raises(PluginError, match="no plugin kind 'widget'"):
        reg.kind("widget")


def test_typed_registry_conflict_and_missing_errors() -> None:
    reg = PluginRegistry(extra_plugins=[("first-dist", _Plugin(_M)), ("second-dist", _Plugin(_M2))],
                         entry_points=False)
    with pytest.raises(PluginError) as err:
        reg.models.get("dup-model")
    assert "first-dist, second-dist" in err.value.message and "PFM_DISABLE_PLUGINS=second-dist" in (err.value.fix or "")
    with pytest.raises(PluginError, match="no model named 'other'"):
        reg.models.origin("other")
    assert "dup-model" not in reg.models and reg.conflicts() == {("model", "dup-model"): ["first-dist", "second-dist"]}


# ------------------------------------------------------------------ hook calls and attribution
class _Observer:
    def __init__(self, action, calls):
        self.action, self.calls = action, calls

    @hookimpl
    def pfm_run_finished(self, run_dir, run_info, status):
        self.calls.append(self.action)
        import argparse
        import time

        if self.action == "exit":
            raise SystemExit(0)
        if self.action == "interrupt":
            raise KeyboardInterrupt
        if self.action == "argparse":
            argparse.ArgumentParser().parse_args(["--no-such-option"])
        if self.action == "raise":
            raise RuntimeError("observer broke")
        if self.action == "sleep":
            time.sleep(30)


@pytest.mark.parametrize("action,kind,words", [
    ("exit", "exit", "sys.exit(0)"), ("interrupt", "interrupt", "KeyboardInterrupt"),
    ("argparse", "exit", "SystemExit"), ("raise", "exception", "observer broke"),
    ("sleep", "timeout", "PFM_OBSERVER_TIMEOUT"),
])
def test_call_observers_returns_what_failed_and_who(monkeypatch: pytest.MonkeyPatch, action: str, kind: str,
                                                    words: str) -> None:
    monkeypatch.setenv("PFM_OBSERVER_TIMEOUT", "0.5")
    calls: list[str] = []
    reg = PluginRegistry(extra_plugins=[("bad-observer", _Observer(action, calls)),
                                        ("good-observer", _Observer("ok", calls))], entry_points=False)
    failures = reg.call_observers("pfm_run_finished", run_dir="/x", run_info={}, status="failed")
    assert sorted(calls) == sorted([action, "ok"])  # the good one is called whatever the bad one did
    (f,) = failures
    assert (f.distribution, f.plugin, f.hook, f.kind) == ("bad-observer", "bad-observer:bad-observer",
                                                          "pfm_run_finished", kind)
    assert words in f.error and "bad-observer" in f.render()
    assert f.to_dict()["kind"] == kind


def test_call_observers_accepts_observers_registered_later_and_subset_arguments() -> None:
    got = []

    class Late:
        @hookimpl
        def pfm_run_started(self, run_dir):  # pluggy lets an impl take a subset of the arguments
            got.append(run_dir)

    reg = PluginRegistry(entry_points=False)
    reg.pm.register(Late(), name="late")
    assert reg.call_observers("pfm_run_started", run_dir="/r", run_info={"a": 1}) == []
    assert got == ["/r"]
    with pytest.raises(PluginError, match="no hook named 'pfm_run_ended'"):
        reg.call_observers("pfm_run_ended", run_dir="/r")


def test_call_hook_attributes_each_result() -> None:
    reg = PluginRegistry(extra_plugins=[("a-dist", _Plugin(_M)), ("raiser", _Raising())], entry_points=False)
    calls = {c.distribution: c for c in reg.call_hook("pfm_register_models")}
    assert calls["a-dist"].value == [_M] and calls["a-dist"].failure is None
    assert calls["raiser"].value is None and "kaboom" in calls["raiser"].failure.error  # type: ignore[union-attr]
    rows = {r["distribution"]: r for r in reg.registrations["pfm_register_models"]}
    assert rows["a-dist"]["registered"] == ["dup-model"] and rows["raiser"]["problems"]


class _Malformed:
    def __init__(self, value):
        self.value = value

    @hookimpl
    def pfm_register_models(self):
        return self.value


@pytest.mark.parametrize("value,words", [
    (_M, "not a list of classes"), ("additive", "not a list of classes"), ({"a": _M}, "not a list of classes"),
    ([_M, "x"], "which is not a class"), ([_M, None], "which is not a class"), ([_M, _M()], "which is not a class"),
    ([_M, _Nameless], "has no `name`"), ([_M, int], "does not subclass"),
])
def test_malformed_results_are_reported_against_the_plugin(value: object, words: str) -> None:
    reg = PluginRegistry(extra_plugins=[("odd", _Malformed(value))], entry_points=False)
    info = next(p for p in reg.plugins if p.distribution == "odd")
    assert words in (info.error or ""), info.error
    assert "PFM_DISABLE_PLUGINS=odd" in (info.fix or "")
    if isinstance(value, list):  # the well-formed classes of the list are still registered
        assert reg.models.get("dup-model") is _M


def test_none_result_means_nothing_registered() -> None:
    reg = PluginRegistry(extra_plugins=[("none", _Malformed(None))], entry_points=False)
    assert next(p for p in reg.plugins if p.distribution == "none").error is None


class _Misspelt:
    @hookimpl
    def pfm_register_model(self):
        return [_M]


class _BadArgs:
    @hookimpl
    def pfm_run_started(self, run_dir, not_an_argument):
        pass


def test_pluggy_validation_is_reported_against_the_plugin() -> None:
    reg = PluginRegistry(extra_plugins=[("misspelt", _Misspelt()), ("bad-args", _BadArgs())], entry_points=False)
    by = {p.distribution: p for p in reg.plugins}
    assert "'pfm_register_model'" in (by["misspelt"].error or "") and "pfm_register_models" in by["misspelt"].error
    assert "rejected by pluggy" in (by["bad-args"].error or "") and "not_an_argument" in by["bad-args"].error
    assert reg.models.names() == []


def test_guard_lets_the_users_ctrl_c_through_but_not_the_plugins() -> None:
    import os
    import signal
    import time

    from perturbfm.plugin_guard import guarded

    def plugin_raises() -> None:
        raise KeyboardInterrupt

    _, failure, _ = guarded(plugin_raises, label="t", limit=5, limit_env="X")
    assert failure is not None and failure.kind == "interrupt"

    def user_presses_ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    with pytest.raises(KeyboardInterrupt):
        guarded(user_presses_ctrl_c, label="t", limit=5, limit_env="X")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_guard_restores_argv_streams_cwd_and_an_outer_timer(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import sys

    from perturbfm.plugin_guard import guarded

    argv, cwd = list(sys.argv), os.getcwd()

    def meddle() -> None:
        sys.argv = ["hijacked", "--help"]
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        os.chdir(tmp_path)
        print("to stdout")  # goes to stderr
        raise SystemExit(0)

    signal.setitimer(signal.ITIMER_REAL, 100)
    old = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        _, failure, _ = guarded(meddle, label="t", limit=5, limit_env="X")
        left = signal.getitimer(signal.ITIMER_REAL)[0]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert failure is not None and failure.kind == "exit"
    assert sys.argv == argv and os.getcwd() == cwd and sys.stderr is not None and not sys.stderr.closed
    assert 90 < left <= 100  # the outer timer was put back


def test_trace_switch_prints_loads_and_calls(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PFM_TRACE_PLUGINS", "1")
    PluginRegistry(extra_plugins=[("traced", _Plugin(_M))], entry_points=False)
    err = capsys.readouterr().err
    assert "pfm-plugins: call pfm_register_models of traced:traced:" in err and " s" in err
