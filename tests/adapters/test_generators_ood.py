"""loco, perturbation-ood, combo and covariate-transfer generators; calibration folds; families."""

from __future__ import annotations

import json

import pytest
from adapter_helpers import combo_adata, run_cli
from perturbfm.dataset import GroupInfo, group_id
from perturbfm.errors import PerturbFMError
from perturbfm.splits import Split
from perturbfm.store import ArtifactStore
from perturbfm_bench_adapters import plugin
from perturbfm_bench_adapters.generators_ood import ComboSplit, CovariateTransfer, LeaveOneContextOut, PerturbationOOD


def make_groups(contexts=("K", "H", "U")) -> dict[str, GroupInfo]:
    out = {}
    for ctx in contexts:
        for p in ("A", "B", "C", "D", "E", "F", "A+B", "C+D", "A+E", "E+F"):
            gid = group_id(p, ctx)
            out[gid] = GroupInfo(gid, p, ctx, "", 10)
    return out


GROUPS = make_groups()


def check(gen, params, seed=0):
    res = gen.generate(GROUPS, params, seed)
    assert set(res.assignments) == set(GROUPS)
    Split("d" * 64, gen.name, dict(params), seed, res.assignments, res.ood, res.labels, notes=res.notes).validate()
    assert res.assignments == gen.generate(dict(reversed(list(GROUPS.items()))), params, seed).assignments
    return res


def test_loco_folds():
    gen = LeaveOneContextOut()
    assert [m["fold"] for m in gen.family_members(GROUPS, {"val_fraction": 0.1})] == [0, 1, 2]
    res = check(gen, {"fold": 1})  # sorted contexts H, K, U
    test = {g for g, r in res.assignments.items() if r == "test"}
    assert test == {g for g in GROUPS if g.endswith("@K")} and all(res.ood[g] for g in test)
    assert set(res.labels.values()) == {"seen_perturbation_other_context"}
    assert check(gen, {"context": "K"}).assignments == res.assignments
    for bad in ({}, {"fold": 3}, {"fold": 0, "context": "K"}, {"context": "Z"}):
        with pytest.raises(PerturbFMError):
            gen.generate(GROUPS, bad, 0)


def test_perturbation_ood_holds_genes_out_everywhere():
    res = check(PerturbationOOD(), {"test_fraction": 0.34, "val_fraction": 0.25})
    test = [g for g, r in res.assignments.items() if r == "test"]
    held = {GROUPS[g].genes[0] for g in test if len(GROUPS[g].genes) == 1}
    assert len(held) == 2  # round(0.34 * 6)
    for g, r in res.assignments.items():
        hits = set(GROUPS[g].genes) & held
        assert (r == "test") == bool(hits)
        if hits:
            assert res.labels[g] == ("unseen_single" if len(GROUPS[g].genes) == 1 else "combo_unseen_gene")
    trained = {x for g, r in res.assignments.items() if r == "train" for x in GROUPS[g].genes}
    assert not trained & held
    folds = [check(PerturbationOOD(), {"n_folds": 3, "fold": i}) for i in range(3)]
    singles = [{GROUPS[g].genes[0] for g, r in f.assignments.items() if r == "test" and len(GROUPS[g].genes) == 1}
               for f in folds]
    assert set().union(*singles) == set("ABCDEF") and sum(map(len, singles)) == 6
    with pytest.raises(PerturbFMError, match="combos"):
        PerturbationOOD().generate(GROUPS, {"combos": "train"}, 0)


def test_combo_subgroups():
    res = check(ComboSplit(), {"single_test_fraction": 0.34, "combo_seen2_test_fraction": 0.5})
    for g, lab in res.labels.items():
        assert res.assignments[g] == "test"
        genes = GROUPS[g].genes
        if lab == "unseen_single":
            assert len(genes) == 1
        else:
            ctx = GROUPS[g].context
            n_seen = sum(res.assignments.get(group_id(x, ctx)) == "train" for x in genes)
            assert lab == f"combo_seen{n_seen}"
            assert res.ood[g] is (lab != "combo_seen2")
    assert {"unseen_single", "combo_seen2"} <= set(res.labels.values())
    assert any(lab in ("combo_seen0", "combo_seen1") for lab in res.labels.values())


def _dose_groups(perts=("A", "B")):
    groups = {}
    for p in perts:
        for d in (1.0, 10.0, 100.0):
            gid = group_id(p, "K", f"dose={d}")
            groups[gid] = GroupInfo(gid, p, "K", f"dose={d}", 5, dose=d)
    return groups


def test_covariate_transfer():
    groups = _dose_groups()
    res = CovariateTransfer().generate(groups, {"covariate": "dose", "value": "100"}, 0)
    assert {g for g, r in res.assignments.items() if r == "test"} == {"A@K@dose=100.0", "B@K@dose=100.0"}
    assert res.ood == {"A@K@dose=100.0": True, "B@K@dose=100.0": True}
    assert set(res.labels.values()) == {"dose_transfer"}
    with pytest.raises(PerturbFMError, match="1, 10, 100"):
        CovariateTransfer().generate(groups, {"covariate": "dose", "value": 5}, 0)
    with pytest.raises(PerturbFMError, match="no numeric time"):
        CovariateTransfer().generate(groups, {"covariate": "time", "value": 5}, 0)


@pytest.mark.parametrize("cls", plugin.pfm_register_split_generators(), ids=lambda c: c.name)
def test_calibration_fold_on_every_generator(cls):
    assert "calibration_fraction" in cls.options
    params = {"explicit": {"test": "A@K"}, "random-groups": {}, "context-ood": {"context": "U"},
              "loco": {"fold": 0}, "perturbation-ood": {}, "combo": {},
              "covariate-transfer": {"covariate": "dose", "value": 100}}[cls.name]
    groups = _dose_groups(tuple("ABCDEFGH")) if cls.name == "covariate-transfer" else GROUPS
    base = cls().generate(groups, params, 5)
    cal = cls().generate(groups, {**params, "calibration_fraction": 0.2}, 5)
    moved = {g for g, r in cal.assignments.items() if r == "calibration"}
    assert moved and all(base.assignments[g] == "train" for g in moved)
    assert all(cal.assignments[g] == r for g, r in base.assignments.items() if g not in moved)
    assert cal.assignments == cls().generate(groups, {**params, "calibration_fraction": 0.2}, 5).assignments


def test_create_family_cli(tmp_path, write_h5ad, capsys):
    store = tmp_path / "store"
    path = write_h5ad(combo_adata(("K", "H", "U")))
    rc, out, err = run_cli(["--store", str(store), "data", "import", "--adapter", "perturbench", str(path),
                            "--perturbation-key", "perturbation"], capsys)
    assert rc == 0, err
    dataset = out.strip()
    args = ["--store", str(store), "splits", "create-family", "--dataset", dataset, "--generator", "loco",
            "--param", "calibration_fraction=0.1"]
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    family, *lines = out.strip().splitlines()
    assert len(lines) == 3
    splits = ArtifactStore(store).splits.list()
    assert {s.family for _, s in splits} == {family} and len(splits) == 3
    tested = set()
    for _, s in splits:
        tested |= {g.split("@")[1] for g in s.groups("test")}
        assert s.groups("calibration") and s.ood
    assert tested == {"K", "H", "U"}
    rc, out2, _ = run_cli(args, capsys)  # idempotent
    assert out2.splitlines()[0] == family and out2.count("exists") == 3
    rc, out, _ = run_cli(["--store", str(store), "splits", "families", "--json"], capsys)
    assert len(json.loads(out)[family]) == 3
    rc, _, err = run_cli(["--store", str(store), "splits", "create-family", "--dataset", dataset,
                          "--generator", "random-groups"], capsys)
    assert rc == 2 and "no folds" in err


def test_real_devel_combo_and_loco():
    from adapter_helpers import require_shared
    from perturbfm.dataset import group_table
    from perturbfm_bench_adapters.formats import PerturBenchAdapter

    res = PerturBenchAdapter().load(str(require_shared("perturbench_devel/norman19_mcfaline23_devel.h5ad")))
    groups = {k: v for k, v in group_table(res.adata).items() if not v.is_control}
    combo = ComboSplit().generate(groups, {"single_test_fraction": 0, "combo_seen2_test_fraction": 0}, 0)
    combos = [g for g in groups if len(groups[g].genes) == 2]
    seen2_train = [g for g in combos if combo.assignments[g] == "train"]
    assert len(combos) == 15 and len(seen2_train) == 5  # 5 doubles whose two singles are measured
    assert {combo.labels[g] for g in combos if g not in seen2_train} <= {"combo_seen0", "combo_seen1"}
    loco = LeaveOneContextOut()
    assert len(loco.family_members(groups, {})) == 4
    fold = loco.generate(groups, {"context": "U87MG"}, 0)
    assert sorted(g for g, r in fold.assignments.items() if r == "test") == sorted(
        g for g in groups if g.endswith("@U87MG"))
    assert set(fold.labels.values()) == {"seen_perturbation_other_context"}  # same 9 knock-downs elsewhere
