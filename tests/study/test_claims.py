"""Claims resolved on per-group values: one value per held-out group (seeds averaged first), paired over groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from perturbfm.study.claims import evaluate_claim

GROUPS = [f"G{i}@ctx0" for i in range(12)]


def _run(tmp: Path, name: str, values: list[float], hib: bool | None = True, na: str | None = None) -> Path:
    d = tmp / name
    d.mkdir(parents=True)
    entry: dict[str, Any] = {"definition": "x", "higher_is_better": hib}
    if na:
        entry["not_applicable"] = na
    else:
        entry.update(global_=float(np.mean(values)), per_group=dict(zip(GROUPS, values)))
    (d / "metrics.json").write_text(json.dumps({"panels": {"basic": {"metrics": {"m": entry}}}}))
    return d


def _lookup(runs: dict[tuple[str, int], Path | str]):  # type: ignore[no-untyped-def]
    return lambda label, split, seed: runs.get((label, seed), "status failed")


def _claim(**kw: Any) -> dict[str, Any]:
    return {"id": "c", "statement": "a beats b", "better": "a", "worse": "b", "metric": "basic.m", "split": "s",
            **kw}


def _two(tmp: Path, a: list[float], b: list[float], hib: bool | None = True) -> dict[tuple[str, int], Path | str]:
    return {(lbl, s): _run(tmp, f"{lbl}{s}", [v + 0.01 * s for v in vals], hib)
            for lbl, vals in (("a", a), ("b", b)) for s in (0, 1)}


def test_supported_refuted_and_paired_n(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    b = list(rng.normal(0.3, 0.1, 12))
    a = [x + 0.2 + rng.normal(0, 0.02) for x in b]
    runs = _two(tmp_path, a, b)
    for test in ("bootstrap", "wilcoxon"):
        out = evaluate_claim(_claim(test=test), ["s"], [0, 1], _lookup(runs), lambda s: None)
        assert out["status"] == "supported", out
        # 12 groups x 2 seeds: n counts the groups (seeds are averaged within a group first)
        assert out["n"] == 12 and out["n_seeds"] == 2 and out["n_groups"] == 12 and out["n_pairs"] == 24
    assert "ci" in evaluate_claim(_claim(test="bootstrap"), ["s"], [0, 1], _lookup(runs), lambda s: None)
    assert "p_value" in evaluate_claim(_claim(test="wilcoxon"), ["s"], [0, 1], _lookup(runs), lambda s: None)
    rev = evaluate_claim(_claim(better="b", worse="a"), ["s"], [0, 1], _lookup(runs), lambda s: None)
    assert rev["status"] == "refuted"


def test_lower_is_better_is_respected(tmp_path: Path) -> None:
    b = [0.5] * 6 + [0.6] * 6
    a = [x + 0.3 + 0.01 * i for i, x in enumerate(b)]  # a has the larger error
    runs = _two(tmp_path, a, b, hib=False)
    out = evaluate_claim(_claim(), ["s"], [0, 1], _lookup(runs), lambda s: None)
    assert out["status"] == "refuted" and out["higher_is_better"] is False


def test_missing_runs_and_metrics_are_inconclusive(tmp_path: Path) -> None:
    runs = _two(tmp_path, [1.0] * 12, [0.0] * 12)
    del runs[("a", 1)]
    out = evaluate_claim(_claim(), ["s"], [0, 1], _lookup(runs), lambda s: None)
    assert out["status"] == "inconclusive" and out["reason"].startswith("missing run a on s seed 1")
    out = evaluate_claim(_claim(metric="basic.nope"), ["s"], [0, 1], _lookup(_two(tmp_path / "x", [1.0] * 12,
                                                                                   [0.0] * 12)), lambda s: None)
    assert out["status"] == "inconclusive" and "basic.nope is not in metrics.json" in out["reason"]
    na = {("a", 0): _run(tmp_path / "n", "a0", [], na="no variance"), ("b", 0): _run(tmp_path / "n", "b0", [0.0] * 12)}
    out = evaluate_claim(_claim(), ["s"], [0], _lookup(na), lambda s: None)
    assert out["status"] == "inconclusive" and "not applicable: no variance" in out["reason"]


def test_group_label_filter(tmp_path: Path) -> None:
    a = [1.0 + 0.01 * i if i < 6 else 0.0 for i in range(12)]
    b = [0.0 if i < 6 else 1.0 + 0.01 * i for i in range(12)]
    runs = _two(tmp_path, a, b)
    labels = {g: ("combo_seen1" if i < 6 else "combo_seen0") for i, g in enumerate(GROUPS)}
    seen1 = evaluate_claim(_claim(groups={"label": "combo_seen1"}), ["s"], [0, 1], _lookup(runs), lambda s: labels)
    seen0 = evaluate_claim(_claim(groups={"label": "combo_seen0"}), ["s"], [0, 1], _lookup(runs), lambda s: labels)
    assert seen1["status"] == "supported" and seen1["n"] == 6 and seen1["n_pairs"] == 12
    assert seen0["status"] == "refuted"
    nolab = evaluate_claim(_claim(groups={"label": "combo_seen1"}), ["s"], [0, 1], _lookup(runs), lambda s: None)
    assert nolab["status"] == "inconclusive" and "no group labels" in nolab["reason"]


def test_identical_models_are_inconclusive(tmp_path: Path) -> None:
    runs = _two(tmp_path, [0.5] * 12, [0.5] * 12)
    assert evaluate_claim(_claim(), ["s"], [0, 1], _lookup(runs), lambda s: None)["status"] == "inconclusive"


def test_identical_seeds_are_not_independent_samples(tmp_path: Path) -> None:
    """A deterministic model run with 1 or 5 seeds gives the same n, interval and p-value."""
    rng = np.random.default_rng(1)
    b = list(rng.normal(0.3, 0.1, 12))
    a = [x + 0.02 + rng.normal(0, 0.05) for x in b]
    outs = []
    for n_seeds in (1, 5):
        runs = {(lbl, s): _run(tmp_path / str(n_seeds), f"{lbl}{s}", vals)
                for lbl, vals in (("a", a), ("b", b)) for s in range(n_seeds)}
        seeds = list(range(n_seeds))
        boot = evaluate_claim(_claim(), ["s"], seeds, _lookup(runs), lambda s: None)
        wil = evaluate_claim(_claim(test="wilcoxon"), ["s"], seeds, _lookup(runs), lambda s: None)
        outs.append((boot, wil))
    (b1, w1), (b5, w5) = outs
    assert b1["n"] == b5["n"] == 12 and b5["n_pairs"] == 60
    assert np.allclose(b1["ci"], b5["ci"], rtol=0, atol=1e-12) and b1["status"] == b5["status"]
    assert b1["ci_method"] == "BCa" and abs(w1["p_value"] - w5["p_value"]) < 1e-12


def test_seeds_are_averaged_within_group(tmp_path: Path) -> None:
    """Seed values are averaged per group before the groups are compared."""
    runs = {("a", 0): _run(tmp_path, "a0", [1.0] * 12), ("a", 1): _run(tmp_path, "a1", [0.0] * 12),
            ("b", 0): _run(tmp_path, "b0", [0.4 + 0.01 * i for i in range(12)]),
            ("b", 1): _run(tmp_path, "b1", [0.4 + 0.01 * i for i in range(12)])}
    out = evaluate_claim(_claim(), ["s"], [0, 1], _lookup(runs), lambda s: None)
    assert out["n"] == 12
    assert abs(out["mean_difference"] - (0.5 - np.mean([0.4 + 0.01 * i for i in range(12)]))) < 1e-12


def test_wilcoxon_all_zero_differences_is_inconclusive_not_a_crash(tmp_path: Path) -> None:
    runs = _two(tmp_path, [0.5] * 12, [0.5] * 12)
    out = evaluate_claim(_claim(test="wilcoxon"), ["s"], [0, 1], _lookup(runs), lambda s: None)
    assert out["status"] == "inconclusive" and "all differences zero" in out["reason"]


def test_groups_declared_undefined_are_left_out(tmp_path: Path) -> None:
    """A value stored as 0.0 by declaration (extra.undefined_r_groups) is not compared."""
    runs = _two(tmp_path, [0.5 + 0.01 * i for i in range(12)], [0.3] * 12)
    for s in (0, 1):
        m = json.loads((runs[("a", s)] / "metrics.json").read_text())
        e = m["panels"]["basic"]["metrics"]["m"]
        e["per_group"][GROUPS[0]] = 0.0
        e["extra"] = {"undefined_r_groups": {GROUPS[0]: "constant prediction"}}
        (runs[("a", s)] / "metrics.json").write_text(json.dumps(m))
    out = evaluate_claim(_claim(), ["s"], [0, 1], _lookup(runs), lambda s: None)
    assert out["n"] == 11 and out["status"] == "supported"
