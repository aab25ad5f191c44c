"""The ``explicit``, ``random-groups`` and ``context-ood`` split generators."""

from __future__ import annotations

import pytest
from perturbfm.dataset import GroupInfo, group_id
from perturbfm.errors import PerturbFMError
from perturbfm.splits import Split
from perturbfm_bench_adapters import plugin
from perturbfm_bench_adapters.generators import ContextOODSplit, ExplicitSplit, RandomGroupsSplit


def make_groups() -> dict[str, GroupInfo]:
    out = {}
    for ctx in ("K", "H", "U"):
        for p in ("A", "B", "C", "D", "E", "A+B", "C+D"):
            gid = group_id(p, ctx)
            out[gid] = GroupInfo(gid, p, ctx, "", 10)
    return out


GROUPS = make_groups()


def as_split(gen, params, seed, res):
    s = Split("d" * 64, gen.name, dict(params), seed, res.assignments, res.ood, res.labels, notes=res.notes)
    s.validate()
    return s


def test_registered():
    assert {c.name for c in plugin.pfm_register_split_generators()} == {
        "explicit", "random-groups", "context-ood", "loco", "perturbation-ood", "combo", "covariate-transfer"}
    assert [c.name for c in plugin.pfm_register_dataset_adapters()][0] == "anndata"
    for cls in plugin.pfm_register_split_generators():
        assert cls.options and all(cls.options.values())


def test_explicit_roles():
    res = ExplicitSplit().generate(GROUPS, {"test": "A@K, B@H", "val": ["C@U"], "calibration": "D@K"}, 0)
    assert res.assignments["A@K"] == "test" and res.assignments["B@H"] == "test"
    assert res.assignments["C@U"] == "val" and res.assignments["D@K"] == "calibration"
    assert sum(r == "train" for r in res.assignments.values()) == len(GROUPS) - 4
    assert set(res.assignments) == set(GROUPS)
    as_split(ExplicitSplit, {}, 0, res)


def test_explicit_errors():
    gen = ExplicitSplit()
    with pytest.raises(PerturbFMError, match="Z@K") as info:
        gen.generate(GROUPS, {"test": "A@K,Z@K"}, 0)
    assert info.value.fix and "@" in info.value.fix
    with pytest.raises(PerturbFMError, match="A@H, A@K, A@U"):  # bare perturbation: suggest ids
        gen.generate(GROUPS, {"test": "A"}, 0)
    with pytest.raises(PerturbFMError, match="A\\+B@K"):  # non-canonical combo order
        gen.generate(GROUPS, {"test": "B+A"}, 0)
    with pytest.raises(PerturbFMError, match="named twice"):
        gen.generate(GROUPS, {"test": "A@K", "val": "A@K"}, 0)
    with pytest.raises(PerturbFMError, match="named twice"):
        gen.generate(GROUPS, {"test": ["A@K", "A@K"]}, 0)
    with pytest.raises(PerturbFMError, match="at least one test"):
        gen.generate(GROUPS, {"val": "A@K"}, 0)
    with pytest.raises(PerturbFMError, match="unknown parameter"):
        gen.generate(GROUPS, {"test": "A@K", "tset": "B@K"}, 0)


def test_random_groups_deterministic():
    gen = RandomGroupsSplit()
    params = {"test_fraction": "0.25", "val_fraction": "0.1"}
    a = gen.generate(GROUPS, params, 7)
    b = gen.generate(dict(reversed(list(GROUPS.items()))), params, 7)
    c = gen.generate(GROUPS, params, 8)
    assert a.assignments == b.assignments
    assert a.assignments != c.assignments
    roles = list(a.assignments.values())
    assert roles.count("test") == 5 and roles.count("val") == 2  # round(0.25*21), round(0.1*21)
    test = [g for g, r in a.assignments.items() if r == "test"]
    assert set(a.ood) == set(a.labels) == set(test)  # OOD = perturbation trained in no context
    for g in test:
        seen = any(GROUPS[t].perturbation == GROUPS[g].perturbation for t, r in a.assignments.items() if r == "train")
        assert a.ood[g] is (not seen)
    as_split(gen, params, 7, a)


def test_random_groups_context_and_minimum():
    gen = RandomGroupsSplit()
    res = gen.generate(GROUPS, {"context": "H", "test_fraction": 0.01}, 0)
    held = [g for g, r in res.assignments.items() if r != "train"]
    assert len(held) == 1 and held[0].endswith("@H")
    assert gen.generate(GROUPS, {}, 0).assignments != {}
    for bad in ({"test_fraction": "x"}, {"test_fraction": 0}, {"test_fraction": 1.5},
                {"test_fraction": 0.6, "val_fraction": 0.5}, {"context": "Q"}):
        with pytest.raises(PerturbFMError):
            gen.generate(GROUPS, bad, 0)


def test_context_ood():
    gen = ContextOODSplit()
    res = gen.generate(GROUPS, {"context": "U"}, 0)
    test = {g for g, r in res.assignments.items() if r == "test"}
    assert test == {g for g in GROUPS if g.endswith("@U")}
    assert all(r == "train" for g, r in res.assignments.items() if g not in test)
    assert res.ood == {g: True for g in test}
    assert "'U'" in res.notes
    as_split(gen, {"context": "U"}, 0, res)
    v1 = gen.generate(GROUPS, {"context": "U", "val_fraction": "0.3"}, 1)
    v2 = gen.generate(GROUPS, {"context": "U", "val_fraction": "0.3"}, 1)
    v3 = gen.generate(GROUPS, {"context": "U", "val_fraction": "0.3"}, 2)
    assert v1.assignments == v2.assignments != v3.assignments
    val = [g for g, r in v1.assignments.items() if r == "val"]
    assert len(val) == 4 and not any(g.endswith("@U") for g in val)  # round(0.3 * 14)
    with pytest.raises(PerturbFMError, match="H, K, U"):
        gen.generate(GROUPS, {"context": "X"}, 0)
    with pytest.raises(PerturbFMError, match="context"):
        gen.generate(GROUPS, {}, 0)


def test_hints_for_unknown_names_keep_bracketed_compound_names_whole() -> None:
    """A bracketed compound name (``Drug(+)``) is one name in the explicit split's
    hints and in GEARS conditions, never split at its inner ``+``."""
    from perturbfm.canonical.labels import split_combo
    from perturbfm_bench_adapters.official_splits import _gears_perturbation

    assert split_combo("Drug(+)", "+") == ["Drug(+)"]
    assert _gears_perturbation("(+)-JQ1+ctrl") == "(+)-JQ1"
    assert _gears_perturbation("KLF1+MAP2K6") == "KLF1+MAP2K6"
