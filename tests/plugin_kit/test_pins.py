"""check_requirements: pinned plugin distributions, found vs required."""

from __future__ import annotations

import pytest
from perturbfm.errors import PluginError
from perturbfm.plugin_kit.pins import check_requirements
from perturbfm.plugins import PluginInfo


class FakeRegistry:
    """Just the ``plugins`` list check_requirements reads."""

    def __init__(self, *infos: PluginInfo) -> None:
        self.plugins = list(infos)


REG = FakeRegistry(
    PluginInfo("models", "perturbfm-models", "0.1.0", "perturbfm_models.plugin"),
    PluginInfo("example-model", "pfm-example-model", "0.3.0", "pfm_example_model.plugin"),
    PluginInfo("broken", "pfm-broken-plugin", "0.0.1", "pfm_broken_plugin", error="ModuleNotFoundError: x"),
    PluginInfo("off", "pfm-off", "1.0", "pfm_off", error="disabled by PFM_DISABLE_PLUGINS", disabled=True),
)


def test_satisfied_pins_return_the_versions() -> None:
    got = check_requirements(REG, {"perturbfm-models": ">=0.1", "pfm-example-model": "==0.3.0",
                                   "PFM_Example.Model": "0.3.0", "packaging": ">=20"})
    assert got["perturbfm-models"] == "0.1.0" and got["pfm-example-model"] == "0.3.0"


def test_every_problem_is_listed_with_found_and_required() -> None:
    with pytest.raises(PluginError) as info:
        check_requirements(REG, {"perturbfm-models": ">=0.2", "pfm-example-model": "==0.3.0",
                                 "pfm-missing": ">=1", "pfm-broken-plugin": "", "pfm-off": ">=1",
                                 "pfm-example-model ": "~~1"})
    msg = info.value.render()
    assert "5 pinned distribution(s)" in msg
    for needle in ("perturbfm-models", "0.1.0", ">=0.2", "version mismatch", "pfm-missing", "not installed",
                   "missing", "pfm-broken-plugin", "ModuleNotFoundError", "pfm-off", "disabled",
                   "invalid version specifier"):
        assert needle in msg, needle


def test_real_registry() -> None:
    from perturbfm.plugins import PluginRegistry

    reg = PluginRegistry()
    assert check_requirements(reg, {"perturbfm-core": ">=0.1"})["perturbfm-core"]
    with pytest.raises(PluginError, match="pfm-example-model"):
        check_requirements(reg, {"pfm-example-model": "==0.3.0"})
