"""Claims: statements such as "additive beats train-mean on pcc_delta", tested
on the runs' per-group values, paired over groups and seeds.

A claim is ``supported``, ``refuted`` or ``inconclusive``; missing runs or
metrics make it ``inconclusive: missing ...``, never supported. The direction
comes from each metric's ``higher_is_better`` in ``metrics.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TESTS = ("bootstrap", "wilcoxon")
CLAIM_KEYS = {"id", "statement", "better", "worse", "metric", "split", "groups", "test", "alpha", "n_boot", "seed"}

#: (label, split name, seed) -> run dir of a succeeded run, or a string saying why there is none.
RunLookup = Callable[[str, str, int], "Path | str"]


def _metric_entry(metrics: dict[str, Any], metric: str) -> dict[str, Any] | str:
    panel, _, key = metric.rpartition(".")
    panels = metrics.get("panels", {})
    cands = [(panel, key)] if panel else [(p, key) for p in panels if key in panels[p].get("metrics", {})]
    for p, k in cands:
        e = panels.get(p, {}).get("metrics", {}).get(k)
        if e is not None:
            return e
    return f"metric {metric} is not in metrics.json"


def _values(entry: dict[str, Any]) -> dict[str, float]:
    vals = entry.get("per_group") or entry.get("per_context") or {}
    return {str(k): float(v) for k, v in vals.items()}


def _stats(d: np.ndarray, test: str, alpha: float, n_boot: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(d.size), "mean_difference": float(d.mean()),
                           "median_difference": float(np.median(d))}
    if d.size < 2 or np.allclose(d, 0.0):
        out.update(status="inconclusive", reason=f"too few informative pairs (n = {d.size}, "
                   f"{'all differences zero' if d.size and np.allclose(d, 0.0) else 'need at least 2'})")
        return out
    if test == "bootstrap":
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, d.size, size=(n_boot, d.size))
        boots = d[idx].mean(axis=1)
        lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
        out.update(statistic=float(d.mean()), statistic_name="mean paired difference (oriented: > 0 favours better)",
                   ci=[float(lo), float(hi)], ci_level=1 - alpha, n_boot=n_boot)
        status = "supported" if lo > 0 else "refuted" if hi < 0 else "inconclusive"
        out["reason"] = (f"{int((1 - alpha) * 100)}% bootstrap CI of the mean difference "
                         f"[{lo:.4g}, {hi:.4g}] " + {"supported": "excludes 0 in favour of the claim",
                                                     "refuted": "excludes 0 against the claim",
                                                     "inconclusive": "contains 0"}[status])
    else:
        from scipy.stats import wilcoxon

        res = wilcoxon(d, alternative="two-sided", zero_method="wilcox")
        p = float(res.pvalue)
        out.update(statistic=float(res.statistic), statistic_name="Wilcoxon signed-rank W", p_value=p)
        sign = float(np.median(d))
        status = ("supported" if p < alpha and sign > 0 else "refuted" if p < alpha and sign < 0 else "inconclusive")
        out["reason"] = f"two-sided Wilcoxon signed-rank p = {p:.3g} (alpha {alpha}), median difference {sign:.4g}"
    out["status"] = status
    return out


def evaluate_claim(claim: dict[str, Any], splits: list[str], seeds: list[int], lookup: RunLookup,
                   split_labels: Callable[[str], dict[str, str] | None]) -> dict[str, Any]:
    """Evaluate one claim. ``splits``: the study's split names (a claim without
    ``split`` pools them all); ``split_labels``: split name -> group labels."""
    out: dict[str, Any] = {k: claim.get(k) for k in ("id", "statement", "better", "worse", "metric", "split", "groups")}
    test = str(claim.get("test", "bootstrap"))
    alpha = float(claim.get("alpha", 0.05))
    out.update(test=test, alpha=alpha)
    problems = []
    unknown = sorted(set(claim) - CLAIM_KEYS)
    if unknown:
        problems.append(f"unknown claim keys {unknown}")
    if test not in TESTS:
        problems.append(f"unknown test {test!r} (use {' or '.join(TESTS)})")
    for k in ("better", "worse", "metric"):
        if not claim.get(k):
            problems.append(f"claim has no `{k}`")
    scope = [claim["split"]] if claim.get("split") else list(splits)
    if claim.get("split") and claim["split"] not in splits:
        problems.append(f"split {claim['split']!r} is not in the study")
    if problems:
        return {**out, "status": "inconclusive", "reason": "invalid claim: " + "; ".join(problems), "n": 0}
    missing: list[str] = []
    diffs: list[float] = []
    directions: set[Any] = set()
    group_filter = dict(claim.get("groups") or {})
    n_groups: set[str] = set()
    for sname in scope:
        labels = split_labels(sname) if group_filter else None
        for seed in seeds:
            vals = {}
            for side in ("better", "worse"):
                found = lookup(str(claim[side]), sname, seed)
                if isinstance(found, str):
                    missing.append(f"run {claim[side]} on {sname} seed {seed} ({found})")
                    continue
                m = json.loads((Path(found) / "metrics.json").read_text())
                e = _metric_entry(m, str(claim["metric"]))
                if isinstance(e, str):
                    missing.append(f"{e} of {claim[side]} on {sname} seed {seed}")
                elif "not_applicable" in e:
                    missing.append(f"{claim['metric']} of {claim[side]} on {sname} seed {seed} is not applicable: "
                                   f"{e['not_applicable']}")
                else:
                    directions.add(e.get("higher_is_better"))
                    vals[side] = _values(e)
            if len(vals) < 2:
                continue
            common = sorted(set(vals["better"]) & set(vals["worse"]))
            if "label" in group_filter:
                if labels is None:
                    missing.append(f"split {sname} has no group labels to filter by label={group_filter['label']}")
                    continue
                common = [g for g in common if labels.get(g) == group_filter["label"]]
            if "context" in group_filter:
                common = [g for g in common if g.rpartition("@")[2] == str(group_filter["context"])]
            if not common:
                missing.append(f"no groups of {sname} seed {seed} match {group_filter or 'the runs'}")
            for g in common:
                diffs.append(vals["better"][g] - vals["worse"][g])
                n_groups.add(f"{sname}:{g}")
    if missing:
        return {**out, "status": "inconclusive", "reason": "missing " + "; ".join(missing[:6])
                + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""), "n": len(diffs)}
    if len(directions) != 1 or None in directions:
        return {**out, "status": "inconclusive", "n": len(diffs),
                "reason": f"metric {claim['metric']} has no single declared direction (higher_is_better: "
                          f"{sorted(map(str, directions))})"}
    hib = directions.pop()
    d = np.asarray(diffs) * (1.0 if hib else -1.0)
    stats = _stats(d, test, alpha, int(claim.get("n_boot", 2000)), int(claim.get("seed", 0)))
    return {**out, **stats, "higher_is_better": hib, "n_groups": len(n_groups), "n_seeds": len(seeds),
            "pairing": "paired over (split, seed, group); difference = better - worse, sign flipped when lower "
                       "is better"}


def evaluate_claims(claims: list[dict[str, Any]], splits: list[str], seeds: list[int], lookup: RunLookup,
                    split_labels: Callable[[str], dict[str, str] | None]) -> list[dict[str, Any]]:
    """Evaluate every claim of a study."""
    return [evaluate_claim(c, splits, seeds, lookup, split_labels) for c in claims]
