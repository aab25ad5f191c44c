"""Issue class 1: plugins that exit, interrupt, run argparse, hang, or return
malformed registrations, tried against the real ``pfm-bench``.

Each case builds a throw-away distribution on the fly (a package plus a
``*.dist-info`` with ``entry_points.txt``) in a directory put on PYTHONPATH, then
runs ``pfm-bench plugins``, ``pfm-bench --help``, a command that needs the
hostile plugin and a command that needs only other plugins. Every attempt must be
a success with the culprit reported, or a clean error (exit != 0) naming the
culprit and the fix; never a traceback, a hang, or exit 0 with nothing done. Where
an error gives a fix, the test follows it and checks that it works.
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import pytest
from harness import attempt, check

CLASS = 1
LIMIT = "3"  # PFM_PLUGIN_LOAD_TIMEOUT for the tests (seconds); importing a first-party entry point takes ~1 ms
HOOK_LIMIT = "15"  # PFM_PLUGIN_HOOK_TIMEOUT: first-party registration hooks import scipy, anndata ... (~3 s)

MODEL_OK = """
from perturbfm import hookimpl
from perturbfm.interfaces import Model, Prediction
import numpy as np


class HostileModel(Model):
    name = "{model}"

    def fit(self, train, val, config):
        self.n = len(train.genes)

    def predict(self, queries):
        return Prediction([q.group_id for q in queries], np.zeros((len(queries), self.n)))


@hookimpl
def pfm_register_models():
    return [HostileModel]
"""

# what the plugin module does at import, before registering its model
IMPORT_BEHAVIOURS = {
    "exit0": ("import sys\nsys.exit(0)\n", "sys.exit(0)"),
    "exit3": ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
    "exit_message": ("import sys\nsys.exit('plugin says bye')\n", "sys.exit"),
    "keyboard_interrupt": ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    "argparse": ("import argparse\np = argparse.ArgumentParser()\np.add_argument('x', type=int)\np.parse_args()\n",
                 "SystemExit"),
    "argparse_help": ("import argparse, sys\nsys.argv = ['x', '--help']\nargparse.ArgumentParser().parse_args()\n",
                      "sys.exit(0)"),
    "sleep": ("import time\ntime.sleep(1000)\n", "did not finish within"),
    "busy_loop_catching_exceptions": ("while True:\n    try:\n        sum(range(1000))\n    except Exception:\n"
                                      "        pass\n", "did not finish within"),
    "base_exception": ("class Boom(BaseException):\n    pass\nraise Boom('custom base exception')\n", "Boom"),
    "generator_exit": ("raise GeneratorExit\n", "GeneratorExit"),
    "prints_to_stdout": ("print('{\"not\": \"json\"} garbage on stdout')\nimport sys\nsys.exit(0)\n", "sys.exit(0)"),
}


def make_dist(root: Path, dist: str, files: dict[str, str], entry_points: dict[str, str],
              version: str = "0.0.1") -> Path:
    """A minimal installed distribution under ``root`` (put ``root`` on PYTHONPATH)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[perturbfm]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return root


def hostile_import(root: Path, case: str) -> tuple[str, str, str]:
    """A distribution ``pfm-hostile-<case>`` whose import does ``case``; returns
    (distribution, model name, expected words in the error)."""
    code, words = IMPORT_BEHAVIOURS[case]
    dist = f"pfm-hostile-{case.replace('_', '-')}"
    mod = f"pfm_hostile_{case}"
    model = f"hostile-{case.replace('_', '-')}"
    make_dist(root, dist, {f"{mod}/__init__.py": code + MODEL_OK.format(model=model)}, {"hostile": mod})
    return dist, model, words


@pytest.fixture(scope="module")
def split_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store with a tiny synthetic dataset and a split (made without hostile plugins)."""
    from perturbfm.datasets import create_split, import_dataset
    from perturbfm.store import ArtifactStore

    root = tmp_path_factory.mktemp("hostile") / "store"
    store = ArtifactStore(root)
    stored, _ = import_dataset(store, "synthetic", None, {"n_genes": 30, "n_singles": 4, "n_doubles": 2,
                                                         "cells_per_group": 10, "n_control": 30, "seed": 0})
    sid, _, _ = create_split(store, stored.hash, "random-groups", {"test_fraction": 0.3}, 0)
    return root, sid


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(root), "PFM_PLUGIN_LOAD_TIMEOUT": LIMIT, "PFM_PLUGIN_HOOK_TIMEOUT": HOOK_LIMIT, **extra}


# ------------------------------------------------------------------ import-time misbehaviour
@pytest.mark.parametrize("case", sorted(IMPORT_BEHAVIOURS))
def test_plugins_listing_reports_the_culprit(tmp_path: Path, case: str) -> None:
    dist, _, words = hostile_import(tmp_path / "site", case)
    started = time.monotonic()
    a = check(attempt(f"plugins --json with a plugin whose import does {case}", CLASS, ["plugins", "--json"],
                      store=tmp_path / "store", expect_error=False, env=_env(tmp_path / "site"), timeout=60))
    assert time.monotonic() - started < 40
    out = json.loads(a.stdout)  # stdout stays machine-readable whatever the plugin printed
    info = next(p for p in out["plugins"] if p["distribution"] == dist)
    assert words in info["error"], info
    assert info["failure"]["kind"] in ("exit", "interrupt", "timeout", "base_exception")
    assert f"PFM_DISABLE_PLUGINS={dist}" in info["fix"]
    assert "__init__.py" in info["failure"]["where"]
    assert {p["distribution"] for p in out["plugins"] if not p["error"]} >= {"perturbfm-core", "perturbfm-models"}


@pytest.mark.parametrize("case", ["exit0", "keyboard_interrupt", "argparse_help", "prints_to_stdout"])
def test_help_still_works_and_names_the_culprit(tmp_path: Path, case: str) -> None:
    dist, _, _ = hostile_import(tmp_path / "site", case)
    a = check(attempt(f"--help with a plugin whose import does {case}", CLASS, ["--help"],
                      store=tmp_path / "store", expect_error=False, env=_env(tmp_path / "site"), timeout=60))
    assert "Usage: pfm-bench" in a.stdout and "run" in a.stdout
    assert dist in a.stderr and "PFM_DISABLE_PLUGINS" in a.stderr


@pytest.mark.parametrize("case", ["exit0", "keyboard_interrupt", "argparse", "sleep"])
def test_run_needing_the_broken_plugin_fails_cleanly(tmp_path: Path, split_store: tuple[Path, str],
                                                       case: str) -> None:
    store, sid = split_store
    dist, model, _ = hostile_import(tmp_path / "site", case)
    a = check(attempt(f"run --model from a plugin whose import does {case}", CLASS,
                      ["run", "--model", model, "--split", sid], store=store, expect_error=True,
                      must_name=[model, dist, "PFM_DISABLE_PLUGINS", "fix:"], env=_env(tmp_path / "site"),
                      timeout=60))
    assert a.rc == 2
    # following the fix (skip the broken plugin) silences it: no warning, and the error is the plain one
    b = check(attempt(f"run --model from a plugin whose import does {case}, plugin disabled", CLASS,
                      ["run", "--model", model, "--split", sid], store=store, expect_error=True,
                      must_name=[model, "disabled"],
                      env=_env(tmp_path / "site", PFM_DISABLE_PLUGINS=dist), timeout=60))
    assert "is not usable" not in b.stderr


@pytest.mark.parametrize("case", ["exit3", "sleep"])
def test_run_needing_another_plugin_succeeds(tmp_path: Path, split_store: tuple[Path, str], case: str) -> None:
    store, sid = split_store
    dist, _, _ = hostile_import(tmp_path / "site", case)
    a = check(attempt(f"run --model control-mean beside a plugin whose import does {case}", CLASS,
                      ["run", "--model", "control-mean", "--split", sid, "--set", "run.panels=[basic]"],
                      store=store, expect_error=False, env=_env(tmp_path / "site"), timeout=90))
    run_dir = Path(a.stdout.strip().splitlines()[-1])
    assert (run_dir / "metrics.json").exists()
    assert dist in a.stderr  # the culprit is still reported


def test_sleeping_plugin_costs_at_most_the_limit_and_disabling_it_removes_the_cost(tmp_path: Path) -> None:
    dist, _, _ = hostile_import(tmp_path / "site", "sleep")
    t0 = time.monotonic()
    a = check(attempt("--version with a sleeping plugin", CLASS, ["--version"], store=tmp_path / "store",
                      expect_error=False, timeout=60,
                      env=_env(tmp_path / "site", PFM_PLUGIN_LOAD_TIMEOUT="1", PFM_TRACE_PLUGINS="1")))
    assert time.monotonic() - t0 < 40
    load = next(line for line in a.stderr.splitlines() if f"load {dist}:hostile" in line)
    seconds = float(load.split(": ")[2].split(" s")[0])
    assert 0.9 < seconds < 5 and "did not finish within 1 s" in load
    b = check(attempt("--version with a sleeping plugin disabled", CLASS, ["--version"], store=tmp_path / "store",
                      expect_error=False, timeout=60,
                      env=_env(tmp_path / "site", PFM_DISABLE_PLUGINS=dist, PFM_TRACE_PLUGINS="1")))
    assert f"skip {dist}:hostile (disabled by PFM_DISABLE_PLUGINS)" in b.stderr
    assert f"load {dist}" not in b.stderr and "is not usable" not in b.stderr


@pytest.mark.parametrize("value", ["abc", "1e400x", "ten"])
def test_malformed_load_timeout_is_a_clean_error(tmp_path: Path, value: str) -> None:
    check(attempt(f"PFM_PLUGIN_LOAD_TIMEOUT={value}", CLASS, ["plugins"], store=tmp_path / "store",
                  expect_error=True, must_name=["PFM_PLUGIN_LOAD_TIMEOUT", "fix:"],
                  env={"PFM_PLUGIN_LOAD_TIMEOUT": value}, timeout=60))
    check(attempt(f"PFM_PLUGIN_LOAD_TIMEOUT={value}, fixed", CLASS, ["plugins", "--json"], store=tmp_path / "store",
                  expect_error=False, env={"PFM_PLUGIN_LOAD_TIMEOUT": "0"}, timeout=60))


# ------------------------------------------------------------------ malformed hook results
MALFORMED = {
    "a_class_not_a_list": ("return HostileModel", "not a list of classes"),
    "a_string": ("return 'hostile'", "not a list of classes"),
    "a_dict": ("return {'hostile': HostileModel}", "not a list of classes"),
    "strings_in_list": ("return ['hostile', HostileModel]", "which is not a class"),
    "none_in_list": ("return [None, HostileModel]", "which is not a class"),
    "instance_in_list": ("return [HostileModel(), HostileModel]", "which is not a class"),
    "nameless_class": ("class Nameless(HostileModel):\n        name = ''\n    return [Nameless, HostileModel]",
                       "has no `name`"),
    "numeric_name": ("class Numbered(HostileModel):\n        name = 123\n    return [Numbered, HostileModel]",
                     "has no `name`"),
    "not_a_model": ("class Other:\n        name = 'other'\n    return [Other, HostileModel]",
                    "does not subclass perturbfm.interfaces.Model"),
    "raises": ("raise RuntimeError('registration exploded')", "registration exploded"),
    "exits": ("import sys\n    sys.exit(0)", "sys.exit(0)"),
    "interrupts": ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    "sleeps": ("import time\n    time.sleep(1000)", "did not finish within"),
}

MALFORMED_MODULE = """
from perturbfm import hookimpl
from perturbfm.interfaces import Model, Prediction
import numpy as np


class HostileModel(Model):
    name = "{model}"

    def fit(self, train, val, config):
        self.n = len(train.genes)

    def predict(self, queries):
        return Prediction([q.group_id for q in queries], np.zeros((len(queries), self.n)))


@hookimpl
def pfm_register_models():
    {body}
"""


@pytest.fixture(scope="module")
def malformed_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One distribution per malformed case, all installed together: each problem must
    be attributed to its own plugin, and none may disturb the others."""
    site = tmp_path_factory.mktemp("malformed") / "site"
    for case, (body, _) in MALFORMED.items():
        dist, mod, model = f"pfm-malformed-{case.replace('_', '-')}", f"pfm_malformed_{case}", f"malformed-{case}"
        make_dist(site, dist, {f"{mod}.py": MALFORMED_MODULE.format(model=model, body=body)}, {"malformed": mod})
    return site


def _malformed_env(site: Path) -> dict[str, str]:
    return _env(site, PFM_PLUGIN_HOOK_TIMEOUT="20")  # the sleeping hook costs this once per command


def test_malformed_registrations_are_reported_against_each_plugin(tmp_path: Path, malformed_site: Path) -> None:
    a = check(attempt("plugins --json with malformed register hooks", CLASS, ["plugins", "--json"],
                      store=tmp_path / "store", expect_error=False, env=_malformed_env(malformed_site), timeout=120))
    by = {p["distribution"]: p for p in json.loads(a.stdout)["plugins"]}
    for case, (_, words) in MALFORMED.items():
        info = by[f"pfm-malformed-{case.replace('_', '-')}"]
        assert words in (info["error"] or ""), (case, info)
        assert f"PFM_DISABLE_PLUGINS=pfm-malformed-{case.replace('_', '-')}" in info["fix"]
        others = [m for m in MALFORMED if m != case]
        assert not any(f"malformed_{m}" in info["error"] for m in others), (case, info["error"])
    for dist in ("perturbfm-core", "perturbfm-models", "perturbfm-metrics", "perturbfm-bench-adapters"):
        assert by[dist]["error"] is None, by[dist]
    # a well-formed class listed beside a malformed item is still registered
    assert by["pfm-malformed-none-in-list"]["registers"] == {"model": ["malformed-none_in_list"]}


def test_plugins_hook_shows_what_each_malformed_plugin_returned(tmp_path: Path, malformed_site: Path) -> None:
    a = check(attempt("plugins --hook pfm_register_models with malformed register hooks", CLASS,
                      ["plugins", "--hook", "pfm_register_models", "--json"], store=tmp_path / "store",
                      expect_error=False, env=_malformed_env(malformed_site), timeout=120))
    rows = {r["distribution"]: r for r in json.loads(a.stdout)["implementations"]}
    for case, (_, words) in MALFORMED.items():
        row = rows[f"pfm-malformed-{case.replace('_', '-')}"]
        assert any(words in p for p in row["problems"]), (case, row)
    assert "additive" in rows["perturbfm-models"]["registered"] and not rows["perturbfm-models"]["problems"]
    assert rows["pfm-malformed-strings-in-list"]["returned"] == [
        "<class 'pfm_malformed_strings_in_list.HostileModel'>"]


def test_commands_needing_other_plugins_work_beside_malformed_ones(tmp_path: Path, malformed_site: Path,
                                                                  split_store: tuple[Path, str]) -> None:
    store, sid = split_store
    check(attempt("run --model train-mean beside malformed register hooks", CLASS,
                  ["run", "--model", "train-mean", "--split", sid, "--set", "run.panels=[basic]"], store=store,
                  expect_error=False, env=_malformed_env(malformed_site), timeout=120))
    # a model whose plugin returned it beside a malformed item is usable too
    check(attempt("run --model registered beside a malformed item", CLASS,
                  ["run", "--model", "malformed-none_in_list", "--split", sid, "--set", "run.panels=[basic]"],
                  store=store, expect_error=False, env=_malformed_env(malformed_site), timeout=120))
    # a model whose plugin's hook failed is a clean error naming that plugin
    check(attempt("run --model of a plugin whose hook exited", CLASS,
                  ["run", "--model", "malformed-exits", "--split", sid], store=store, expect_error=True,
                  must_name=["malformed-exits", "pfm-malformed-exits", "fix:"], env=_malformed_env(malformed_site),
                  timeout=120))


def test_misspelt_hook_is_reported_against_its_plugin(tmp_path: Path) -> None:
    make_dist(tmp_path / "site", "pfm-misspelt", {"pfm_misspelt.py": """
        from perturbfm import hookimpl

        @hookimpl
        def pfm_register_model():
            return []
        """}, {"misspelt": "pfm_misspelt"})
    a = check(attempt("plugins --json with a misspelt hook", CLASS, ["plugins", "--json"], store=tmp_path / "store",
                      expect_error=False, env=_env(tmp_path / "site"), timeout=60))
    info = next(p for p in json.loads(a.stdout)["plugins"] if p["distribution"] == "pfm-misspelt")
    assert "'pfm_register_model'" in info["error"] and "not a PerturbFM hook" in info["error"]
    assert "pfm_register_models" in info["error"]  # the hooks it could have meant are listed


# ------------------------------------------------------------------ a name registered twice
TWIN = """
from perturbfm import hookimpl


@hookimpl
def pfm_register_models():
    from perturbfm_models.baselines.simple import TrainMeanModel

    class Twin(TrainMeanModel):
        name = "{name}"

    return [Twin]
"""


@pytest.mark.parametrize("name", ["twin-model", "additive"])
def test_name_registered_twice_fails_cleanly_and_the_fix_works(tmp_path: Path, split_store: tuple[Path, str],
                                                                 name: str) -> None:
    store, sid = split_store
    site = tmp_path / "site"
    make_dist(site, "pfm-twin-a", {"pfm_twin_a.py": TWIN.format(name=name)}, {"twin-a": "pfm_twin_a"})
    make_dist(site, "pfm-twin-b", {"pfm_twin_b.py": TWIN.format(name=name)}, {"twin-b": "pfm_twin_b"})
    argv = ["run", "--model", name, "--split", sid, "--set", "run.panels=[basic]"]
    a = check(attempt(f"run --model {name} registered by two plugins", CLASS, argv, store=store, expect_error=True,
                      must_name=["pfm-twin-a", "pfm-twin-b", "PFM_DISABLE_PLUGINS", name], env=_env(site),
                      timeout=60))
    assert a.rc == 2
    listing = json.loads(check(attempt("plugins --json with a name registered twice", CLASS, ["plugins", "--json"],
                                       store=store, expect_error=False, env=_env(site), timeout=60)).stdout)
    (conflict,) = [c for c in listing["conflicts"] if c["name"] == name]
    assert {"pfm-twin-a", "pfm-twin-b"} <= set(conflict["distributions"])
    # the fix, as printed: skip all but one of them
    skip = re.search(r"PFM_DISABLE_PLUGINS=(\S+)", a.stderr).group(1)  # type: ignore[union-attr]
    assert set(skip.split(",")) == ({"pfm-twin-b"} if name == "twin-model" else {"pfm-twin-a", "pfm-twin-b"})
    b = check(attempt(f"run --model {name} with the duplicates skipped", CLASS, argv, store=store,
                      expect_error=False, env=_env(site, PFM_DISABLE_PLUGINS=skip), timeout=90))
    assert (Path(b.stdout.strip().splitlines()[-1]) / "metrics.json").exists()


# ------------------------------------------------------------------ commands and observers
COMMANDS = {
    "exits": "import sys\n    sys.exit(0)",
    "interrupts": "raise KeyboardInterrupt",
    "argparse": "import argparse\n    argparse.ArgumentParser().parse_args(['--nope'])",
    "raises": "raise ValueError('no commands today')",
}


@pytest.mark.parametrize("case", sorted(COMMANDS))
def test_command_registration_that_misbehaves_is_skipped(tmp_path: Path, case: str) -> None:
    make_dist(tmp_path / "site", "pfm-bad-commands", {"pfm_bad_commands.py": f"""
from perturbfm import hookimpl


@hookimpl
def pfm_register_commands(cli):
    {COMMANDS[case]}
"""}, {"bad-commands": "pfm_bad_commands"})
    a = check(attempt(f"--help with a pfm_register_commands that {case}", CLASS, ["--help"],
                      store=tmp_path / "store", expect_error=False, env=_env(tmp_path / "site"), timeout=60))
    assert "Usage: pfm-bench" in a.stdout and "study" in a.stdout  # other plugins' commands are still added
    assert "pfm-bad-commands" in a.stderr and "failed to add commands" in a.stderr
    b = check(attempt(f"plugins --hook pfm_register_commands that {case}", CLASS,
                      ["plugins", "--hook", "pfm_register_commands", "--json"], store=tmp_path / "store",
                      expect_error=False, env=_env(tmp_path / "site"), timeout=60))
    rows = {r["distribution"]: r for r in json.loads(b.stdout)["implementations"]}
    assert rows["pfm-bad-commands"]["problems"] and "study" in rows["perturbfm-core"]["registered"]


@pytest.mark.parametrize("hook", ["pfm_run_started", "pfm_run_finished"])
def test_plugins_hook_lists_observers_without_calling_them(tmp_path: Path, hook: str) -> None:
    make_dist(tmp_path / "site", "pfm-exiting-observer", {"pfm_exiting_observer.py": f"""
from perturbfm import hookimpl


@hookimpl
def {hook}(run_dir, run_info):
    import sys
    sys.exit(0)
"""}, {"observer": "pfm_exiting_observer"})
    a = check(attempt(f"plugins --hook {hook}", CLASS, ["plugins", "--hook", hook, "--json"],
                      store=tmp_path / "store", expect_error=False, env=_env(tmp_path / "site"), timeout=60))
    (row,) = [r for r in json.loads(a.stdout)["implementations"] if r["distribution"] == "pfm-exiting-observer"]
    assert row["note"].startswith("observer")


@pytest.mark.parametrize("hook", ["pfm_nope", "pfm_register_model", ""])
def test_unknown_hook_name_is_a_clean_error(tmp_path: Path, hook: str) -> None:
    check(attempt(f"plugins --hook {hook!r}", CLASS, ["plugins", "--hook", hook], store=tmp_path / "store",
                  expect_error=True, must_name=["no hook named", "fix:", "pfm_register_models"], timeout=60))
