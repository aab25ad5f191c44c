"""The peer-model plugins (scgen, cpa, biolord): the parts that need no built environment.

Environment specs, workers that never import perturbfm, the offline guard, each wrapper's
refusal of split kinds it cannot do, and the parameter ledger naming the authors' defaults.
The models themselves run in uv environments: see test_peer_envs.py (PFM_PEER_ENVS=1).
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PLUGINS = {"scgen": ("perturbfm_scgen", "ScgenModel"), "cpa": ("perturbfm_cpa", "CpaModel"),
           "biolord": ("perturbfm_biolord", "BiolordModel")}


def _mod(name: str, sub: str) -> Any:
    pkg = PLUGINS[name][0]
    try:
        return importlib.import_module(f"{pkg}.{sub}")
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{pkg} is required under CI (pip install -e plugins/perturbfm-{name}): {exc}", pytrace=False)
        pytest.skip(f"{pkg} not installed ({exc}); pip install -e plugins/perturbfm-{name}")


def _model(name: str) -> Any:
    return getattr(_mod(name, "model"), PLUGINS[name][1])


def _group(gid: str, pert: str, ctx: str, *, genes: list[str] | None = None, dose: float | None = None,
           covariates: str = "", control: bool = False, split: str = "train") -> dict[str, Any]:
    return {"group_id": gid, "perturbation": pert, "genes": genes if genes is not None else pert.split("+"),
            "context": ctx, "covariates": covariates, "dose": dose, "time": None, "is_control": control,
            "split": split}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_environment_spec(name: str) -> None:
    """Pinned requirements with the project's torch, a worker file beside the model, a stable hash."""
    cls = _model(name)
    spec = cls.environment
    assert spec is not None and spec.name == name and spec.python == "3.11"
    assert "torch==2.13.0" in spec.requirements
    assert any(r.startswith({"scgen": "scgen==", "cpa": "cpa-tools==", "biolord": "biolord=="}[name])
               for r in spec.requirements)
    worker = spec.worker_path()
    assert worker == Path(_mod(name, "worker").__file__).resolve()
    assert len(spec.spec_hash()) == 64 and spec.spec_hash() == type(spec)(**spec.__dict__).spec_hash()
    assert cls.name == name and cls.description


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_worker_is_standalone(name: str) -> None:
    """The env side never imports perturbfm, and defines fit/predict with the protocol's signatures."""
    path = Path(_mod(name, "worker").__file__)
    tree = ast.parse(path.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.startswith("perturbfm")}, imported
    funcs = {n.name: [a.arg for a in n.args.args] for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert funcs["fit"] == ["train", "config", "state_dir"]
    assert funcs["predict"] == ["queries", "state_dir"]


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_worker_blocks_the_network(name: str) -> None:
    """After block_network() (called first in fit and predict) a connection attempt raises clearly."""
    path = Path(_mod(name, "worker").__file__)
    code = ("import importlib.util, socket\n"
            f"spec = importlib.util.spec_from_file_location('w', {str(path)!r}); w = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(w); w.block_network()\n"
            "try:\n    socket.create_connection(('127.0.0.1', 9))\nexcept RuntimeError as e:\n    print('BLOCKED', e)\n"
            "s = socket.socket()\n"
            "try:\n    s.connect(('127.0.0.1', 9))\nexcept RuntimeError as e:\n    print('BLOCKED', e)\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("BLOCKED") == 2 and "network access" in out.stdout


def test_scgen_refuses_what_it_cannot_transfer() -> None:
    w = _mod("scgen", "worker")
    seen = {"G4": ["ctxA"], "G0+G1": ["ctxB"]}
    w.check_queries([_group("G4@ctxB", "G4", "ctxB"), _group("G0+G1@ctxA", "G0+G1", "ctxA")], seen, ["ctxA", "ctxB"])
    with pytest.raises(ValueError, match=r"scgen refuses.*G9@ctxB: perturbation 'G9' was not seen") as exc:
        w.check_queries([_group("G9@ctxB", "G9", "ctxB")], seen, ["ctxA", "ctxB"])
    assert "context-transfer split" in str(exc.value)
    with pytest.raises(ValueError, match="not seen in training in any other context"):  # only seen in its own context
        w.check_queries([_group("G4@ctxA", "G4", "ctxA", covariates="")], {"G4": ["ctxA"]}, ["ctxA"])
    with pytest.raises(ValueError, match="has no control cells"):
        w.check_queries([_group("G4@ctxC", "G4", "ctxC")], seen, ["ctxA", "ctxB"])
    # covariates are part of scGen's condition: G4 at another dose is another condition
    assert w.label(_group("x", "G4", "ctxB", covariates="dose=10")) == "G4 | dose=10"


def test_cpa_refuses_unseen_perturbations_but_takes_new_combinations() -> None:
    w = _mod("cpa", "worker")
    ok = [_group("G0+G1@ctxA", "G0+G1", "ctxA"), _group("G4@ctxB", "G4", "ctxB", dose=10.0)]
    w.check_queries(ok, ["G0", "G1", "G4"], ["ctxA", "ctxB"], ["none"], 2)
    with pytest.raises(ValueError, match=r"cpa refuses.*G7@ctxA: perturbation\(s\) G7 never seen"):
        w.check_queries([_group("G7@ctxA", "G7", "ctxA")], ["G0", "G1"], ["ctxA"], ["none"], 2)
    with pytest.raises(ValueError, match="context 'ctxZ' has no training or control cells"):
        w.check_queries([_group("G0@ctxZ", "G0", "ctxZ")], ["G0"], ["ctxA"], ["none"], 2)
    with pytest.raises(ValueError, match="3 perturbations"):
        w.check_queries([_group("t", "G0+G1+G4", "ctxA")], ["G0", "G1", "G4"], ["ctxA"], ["none"], 2)
    # atoms: the perturbed genes, else the label (a drug); the dose goes per atom
    assert w.atoms(_group("d", "JQ1", "ctxA", genes=[])) == ["JQ1"]
    assert w._row(_group("x", "G0+G1", "ctxA", dose=2.0))["dose"] == "2.0+2.0"


def test_biolord_refuses_unseen_perturbations() -> None:
    w = _mod("biolord", "worker")
    w.check_queries([_group("G4@ctxB", "G4", "ctxB")], {"G4": ["ctxA"]}, ["ctxA", "ctxB"], ["none"])
    with pytest.raises(ValueError, match=r"biolord refuses.*'G9' never seen in training"):
        w.check_queries([_group("G9@ctxB", "G9", "ctxB")], {"G4": ["ctxA"]}, ["ctxA", "ctxB"], ["none"])
    with pytest.raises(ValueError, match="covariates 'dose=3' never seen"):
        w.check_queries([_group("G4@ctxB", "G4", "ctxB", covariates="dose=3")], {"G4": ["ctxA"]}, ["ctxB"], ["none"])


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_ledger_names_the_authors_defaults(name: str) -> None:
    """Every default of a peer model is recorded in parameters.csv as the package's/authors' default;
    a --set value is recorded as such."""
    from perturbfm.config import resolve_config

    cls = _model(name)
    m = cls()
    cfg, ledger = resolve_config(m.default_config(), model_name=name, config_model=cls.config_model,
                                 sets=["model.seed=3"])
    rows = {r.parameter: r.source for r in ledger if r.parameter.startswith("model.")}
    assert rows.pop("model.seed") == "CLI --set" and cfg["model"]["seed"] == 3
    assert rows and all(src == f"default ({name}: {cls.config_model.defaults_source})" for src in rows.values())
    assert ("authors" in cls.config_model.defaults_source) or ("package defaults" in cls.config_model.defaults_source)


def test_published_defaults() -> None:
    """The defaults are the authors' (scGen: SCGEN() + tutorial train; CPA: CPAModule + tutorial budget)."""
    assert {k: v for k, v in _model("scgen")().default_config().items() if k != "seed"} == {
        "n_hidden": 800, "n_latent": 100, "n_layers": 2, "dropout_rate": 0.2, "max_epochs": 100, "batch_size": 32,
        "early_stopping": True, "early_stopping_patience": 25}
    cpa = _model("cpa")().default_config()
    assert (cpa["n_latent"], cpa["doser_type"], cpa["n_layers_encoder"], cpa["max_epochs"]) == (128, "logsigm", 3, 2000)
    assert _model("biolord")().default_config()["n_latent"] == 128
    # the host-side defaults are exactly what the worker falls back to
    for name in PLUGINS:
        w = _mod(name, "worker")
        assert {k: v for k, v in _model(name)().default_config().items()} == w.DEFAULTS
