"""Every first-party model, metric panel, dataset adapter, split generator and
executor passes the same conformance suites third parties are given
(:mod:`perturbfm.testing.conformance`).

The cases are generated from the installed registry, so a newly registered
first-party implementation is tested without editing this file; one that needs
inputs this file cannot guess (an adapter's source file, a generator's required
parameters) fails :func:`test_every_first_party_registration_has_a_case` until
they are added to the tables below.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from perturbfm.dataset import CONTEXT_COL, CONTROL, PERT_COL, group_table
from perturbfm.plugins import PluginRegistry
from perturbfm.testing import conformance as C
from perturbfm.testing.data import make_canonical_adata

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"perturbfm-core", "perturbfm-metrics", "perturbfm-models", "perturbfm-bench-adapters",
               "perturbfm-gears", "perturbfm-mlflow"}
#: registrations whose conformance suite runs in their own plugin's test directory
#: (they need that plugin's extras and data), with the test class that runs it.
ELSEWHERE = {
    ("model", "gears"): ("tests/gears/test_gears_plugin.py", "class TestGearsConformance(ModelConformance)"),
    ("model", "cgio"): ("tests/models/test_cgio.py", "class TestCGIOConformance(ModelConformance)"),
}

REGISTRY = PluginRegistry()


def first_party(kind: str) -> list[str]:
    reg = REGISTRY.kind(kind)
    return [n for n in reg.names() if reg.origin(n).distribution in FIRST_PARTY and (kind, n) not in ELSEWHERE]


# ------------------------------------------------------------------ small, fast inputs per implementation
#: model -> config overrides that keep the suite fast (defaults otherwise)
MODEL_CONFIG: dict[str, dict[str, Any]] = {
    "linear": {"n_components": 4},
}


def _screen(tmp_path: Path, *, pert_key: str, ctx_key: str, control: str, combo: str, single: str = "{g}") -> str:
    """The canonical test data written as a source file of some format."""
    adata = make_canonical_adata(n_genes=30, cells_per_group=12, n_control=30, seed=3)
    labels = []
    for p in adata.obs[PERT_COL].astype(str):
        genes = p.split("+")
        labels.append(control if p == CONTROL else single.format(g=genes[0]) if len(genes) == 1
                      else combo.join(genes))
    adata.obs = adata.obs[[CONTEXT_COL]].rename(columns={CONTEXT_COL: ctx_key})
    adata.obs[pert_key] = labels
    adata.uns = {}
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    return str(path)


#: adapter -> function(tmp_path) -> (path, options) for a small valid input
ADAPTER_ARGS: dict[str, Any] = {
    "synthetic": lambda tmp: (None, {"n_genes": 30, "n_singles": 4, "n_doubles": 2, "cells_per_group": 10,
                                     "n_control": 30, "seed": 1}),
    "anndata": lambda tmp: (_screen(tmp, pert_key="perturbation", ctx_key="cell_line", control="control",
                                    combo="+"), {"context_keys": ["cell_line"]}),
    "perturbench": lambda tmp: (_screen(tmp, pert_key="condition", ctx_key="cell_type", control="control",
                                        combo="+"), {}),
    "gears": lambda tmp: (_screen(tmp, pert_key="condition", ctx_key="cell_type", control="ctrl", combo="+",
                                  single="{g}+ctrl"), {}),
    "scperturb": lambda tmp: (_screen(tmp, pert_key="perturbation", ctx_key="cell_line", control="control",
                                      combo="_"), {}),
}


def _dosed_groups() -> dict[str, Any]:
    """Every canonical group at two doses (for generators that hold out a dose)."""
    base = {k: v for k, v in group_table(make_canonical_adata()).items() if not v.is_control}
    out = {}
    for gid, g in base.items():
        for dose in (1.0, 10.0):
            new_id = f"{gid}@dose={dose}"
            out[new_id] = dataclasses.replace(g, group_id=new_id, covariates=f"dose={dose}", dose=dose)
    return out


#: generator -> (params, groups factory or None for the canonical groups)
GENERATOR_ARGS: dict[str, tuple[dict[str, Any], Any]] = {
    "explicit": ({"test": ["G0+G1@ctxA", "G4@ctxB"]}, None),
    "random-groups": ({"test_fraction": 0.3}, None),
    "context-ood": ({"context": "ctxB"}, None),
    "loco": ({"fold": 0}, None),
    "perturbation-ood": ({"test_fraction": 0.3}, None),
    "combo": ({}, None),
    "covariate-transfer": ({"covariate": "dose", "value": 10.0}, _dosed_groups),
}


# ------------------------------------------------------------------ generated suites
def _suite(kind: str, name: str) -> type:
    cls = REGISTRY.kind(kind).get(name)
    ident = "".join(part.capitalize() for part in name.replace("_", "-").split("-"))
    if kind == "model":
        return type(f"TestModel{ident}", (C.ModelConformance,), {"model_class": cls,
                                                                "config": MODEL_CONFIG.get(name, {})})
    if kind == "metric_panel":
        return type(f"TestPanel{ident}", (C.MetricPanelConformance,), {"panel_class": cls})
    if kind == "dataset_adapter":
        args = ADAPTER_ARGS[name]
        return type(f"TestAdapter{ident}", (C.DatasetAdapterConformance,),
                    {"adapter_class": cls, "load_args": lambda self, tmp_path, _a=args: _a(tmp_path)})
    if kind == "split_generator":
        params, factory = GENERATOR_ARGS[name]
        body: dict[str, Any] = {"generator_class": cls, "params": params}
        if factory is not None:
            body["groups"] = lambda self, _f=factory: _f()
        return type(f"TestGenerator{ident}", (C.SplitGeneratorConformance,), body)
    return type(f"TestExecutor{ident}", (C.ExecutorConformance,), {"executor_class": cls, "workers": 2})


_KNOWN = {"model": None, "metric_panel": None, "dataset_adapter": ADAPTER_ARGS, "split_generator": GENERATOR_ARGS,
          "executor": None}
for _kind, _table in _KNOWN.items():
    for _name in first_party(_kind):
        if _table is not None and _name not in _table:
            continue  # reported by test_every_first_party_registration_has_a_case
        _cls = _suite(_kind, _name)
        globals()[_cls.__name__] = _cls


def test_every_first_party_registration_has_a_case() -> None:
    missing = [f"{k} {n!r}" for k, table in _KNOWN.items() if table is not None for n in first_party(k)
               if n not in table]
    assert not missing, f"add small inputs for {missing} to ADAPTER_ARGS / GENERATOR_ARGS in {__file__}"
    for kind in _KNOWN:
        for name in first_party(kind):
            assert any(getattr(v, name_attr, None) is REGISTRY.kind(kind).get(name)
                       for v in globals().values() if isinstance(v, type)
                       for name_attr in ("model_class", "panel_class", "adapter_class", "generator_class",
                                         "executor_class")), (kind, name)
    for (kind, name), (path, marker) in ELSEWHERE.items():
        if name in REGISTRY.kind(kind):
            assert marker in (REPO / path).read_text(), f"{kind} {name}: {path} must run the conformance suite"


def test_every_kind_is_covered() -> None:
    counts = {kind: len(first_party(kind)) for kind in _KNOWN}
    assert all(counts.values()), counts
    assert {"control-mean", "train-mean", "additive", "linear"} <= set(first_party("model"))

