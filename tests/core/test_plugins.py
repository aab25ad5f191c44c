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
