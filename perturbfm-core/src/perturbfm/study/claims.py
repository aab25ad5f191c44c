"""Claims: statements such as "model A beats model B on pcc_delta", tested
on the runs' per-group values, paired over held-out groups.

The unit is the held-out group: each side's values are first averaged over the
seeds (and over the splits of the same dataset that hold the group out), so a
deterministic model run with several seeds counts once; ``n`` is the number of
groups. Intervals and tests come from :mod:`perturbfm.stats`.

A claim is ``supported``, ``refuted`` or ``inconclusive``; missing runs or
metrics (or a ``metrics.json`` that no longer reads back) make it
``inconclusive: missing ...``, never supported. The direction comes from each
metric's ``higher_is_better`` in ``metrics.json``.

Every claim carries ``synthetic`` (true when any split it draws on is on
simulated data) and, then, ``synthetic_note``; ``claims.json`` says the same
at its top level.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from perturbfm import stats
from perturbfm.study.integrity import RunDamaged, read_run_metrics

SYNTHETIC_NOTE = ("SYNTHETIC DATA: this claim is tested on simulated data, not on a real screen; it says nothing "
                  "about real perturbation responses")

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
    """Per-group (else per-context) values; groups the metric declares undefined (e.g. a
    Pearson r stored as 0.0 for a constant prediction) are left out, never compared."""
    from perturbfm.compare import undefined_groups

    vals = entry.get("per_group") or entry.get("per_context") or {}
    undef = undefined_groups(entry)
    return {str(k): float(v) for k, v in vals.items() if str(k) not in undef and v is not None}


def _stats(better: dict[Any, float], worse: dict[Any, float], test: str, alpha: float, n_boot: int,
           seed: int) -> dict[str, Any]:
    """Test ``better`` vs ``worse`` (one value per group each, already oriented so that
    larger is better) with :mod:`perturbfm.stats`."""
    keys = sorted(set(better) & set(worse), key=str)
    d = np.array([better[k] - worse[k] for k in keys], dtype=np.float64)
    out: dict[str, Any] = {"n": int(d.size), "mean_difference": float(d.mean()) if d.size else None,
                           "median_difference": float(np.median(d)) if d.size else None}
    if d.size < 2 or np.allclose(d, 0.0):
        out.update(status="inconclusive", reason=f"too few informative groups (n = {d.size}, "
                   f"{'all differences zero' if d.size and np.allclose(d, 0.0) else 'need at least 2'})")
        return out
    if test == "bootstrap":
        iv = stats.bootstrap_interval(d, confidence=1 - alpha, n_resamples=n_boot, seed=seed)
        status = {"better": "supported", "worse": "refuted"}.get(stats.verdict(iv, True)[0], "inconclusive")
        out.update(statistic=iv.estimate, statistic_name="mean paired difference over groups (oriented: > 0 "
                   "favours better)", ci=[iv.low, iv.high], ci_level=1 - alpha, ci_method=iv.method, n_boot=n_boot)
        if iv.note:
            out["ci_note"] = iv.note
        out["reason"] = (f"{int(round((1 - alpha) * 100))}% bootstrap ({iv.method}) CI of the mean difference "
                         + (f"[{iv.low:.4g}, {iv.high:.4g}] " if iv.defined else "undefined ")
                         + {"supported": "excludes 0 in favour of the claim", "refuted": "excludes 0 against the claim",
                            "inconclusive": "contains 0" if iv.defined else f"({iv.note})"}[status]
                         + f" (n = {d.size} groups)")
    else:
        w = stats.wilcoxon_test(d)
        sign = float(np.median(d))
        out.update(statistic=w.statistic, statistic_name="Wilcoxon signed-rank W", p_value=w.p_value)
        if not w.defined:
            status = "inconclusive"
            out["reason"] = f"Wilcoxon signed-rank test undefined: {w.note}"
        else:
            p = float(w.p_value)  # type: ignore[arg-type]
            status = ("supported" if p < alpha and sign > 0 else "refuted" if p < alpha and sign < 0
                      else "inconclusive")
            out["reason"] = (f"two-sided Wilcoxon signed-rank p = {p:.3g} (alpha {alpha}), median difference "
                             f"{sign:.4g} (n = {d.size} groups)")
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
    # one dict per (split, seed) and side: unit -> value; a unit is a held-out group of a dataset
    per_run: dict[str, list[dict[str, float]]] = {"better": [], "worse": []}
    n_pairs = 0
    directions: set[Any] = set()
    group_filter = dict(claim.get("groups") or {})
    for sname in scope:
        labels = split_labels(sname) if group_filter else None
        for seed in seeds:
            vals = {}
            dataset = sname
            for side in ("better", "worse"):
                found = lookup(str(claim[side]), sname, seed)
                if isinstance(found, str):
                    missing.append(f"run {claim[side]} on {sname} seed {seed} ({found})")
                    continue
                try:
                    m = read_run_metrics(found, require_global=False)
                except RunDamaged as exc:
                    missing.append(f"run {claim[side]} on {sname} seed {seed} (damaged: {exc})")
                    continue
                dataset = str(m.get("dataset") or sname)
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
            for side in ("better", "worse"):
                per_run[side].append({f"{dataset}:{g}": vals[side][g] for g in common})
            n_pairs += len(common)
    # seeds (and splits holding the same group out) averaged within each group first
    better, worse = stats.group_means(per_run["better"]), stats.group_means(per_run["worse"])
    n_units = len(set(better) & set(worse))
    if missing:
        return {**out, "status": "inconclusive", "reason": "missing " + "; ".join(missing[:6])
                + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""), "n": n_units}
    if len(directions) != 1 or None in directions:
        return {**out, "status": "inconclusive", "n": n_units,
                "reason": f"metric {claim['metric']} has no single declared direction (higher_is_better: "
                          f"{sorted(map(str, directions))})"}
    hib = directions.pop()
    sign = 1.0 if hib else -1.0
    res = _stats({k: sign * v for k, v in better.items()}, {k: sign * v for k, v in worse.items()}, test, alpha,
                 int(claim.get("n_boot", 2000)), int(claim.get("seed", 0)))
    return {**out, **res, "higher_is_better": hib, "n_groups": n_units, "n_seeds": len(seeds), "n_pairs": n_pairs,
            "pairing": "one value per held-out group: each side's values averaged over seeds (and over splits of "
                       "the same dataset holding the group out) before pairing; n = number of groups; difference "
                       "= better - worse, sign flipped when lower is better"}


def evaluate_claims(claims: list[dict[str, Any]], splits: list[str], seeds: list[int], lookup: RunLookup,
                    split_labels: Callable[[str], dict[str, str] | None], *,
                    synthetic: dict[str, bool] | None = None) -> list[dict[str, Any]]:
    """Evaluate every claim of a study; ``synthetic``: split name -> whether its data
    are simulated (each claim is marked from the splits it draws on)."""
    out = []
    for c in claims:
        res = evaluate_claim(c, splits, seeds, lookup, split_labels)
        if synthetic is not None:
            scope = [c["split"]] if c.get("split") in splits else list(splits)
            syn = sorted(s for s in scope if synthetic.get(s))
            res["synthetic"] = bool(syn)
            if syn:
                res["synthetic_splits"] = syn
                res["synthetic_note"] = SYNTHETIC_NOTE
        out.append(res)
    return out


def claims_document(claims: list[dict[str, Any]], synthetic: dict[str, bool]) -> dict[str, Any]:
    """The content of ``claims.json``: the claims and the study-level synthetic mark."""
    syn = sorted(s for s, v in synthetic.items() if v)
    doc: dict[str, Any] = {"synthetic": bool(syn), "synthetic_splits": syn}
    if syn:
        doc["synthetic_note"] = ("SYNTHETIC DATA: splits " + ", ".join(syn) + " are on simulated data; no claim "
                                 "tested on them is evidence about a real screen")
    return {**doc, "claims": claims}
