"""Summaries, paired intervals and the markdown table of ``model_accuracy.py``.

Input: per task, per model, a result dict written by ``model_accuracy.run_one``::

    {"status": "ok" | "refuses" | "failed" | "not installed", "message": str,
     "rows": {group: [pearson_delta or None, l2]},
     "cal": {"pcc_delta" | "mse": {group: {"u", "b", "r", "resolved"}}},
     "fit_s": [seconds per split], "base_rows": {group: [pearson, l2]} (CGIO's own base, optional)}

Pearson delta is missing (None) where r is undefined (a constant prediction); such groups are
left out of that model's Pearson mean and of any Pearson interval it is part of.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BASELINES = ("control-mean", "train-mean", "additive", "linear")
PEARSON, L2 = 0, 1


def _vals(rows: dict[str, Any], ids: list[str], col: int) -> np.ndarray:
    return np.array([np.nan if rows.get(g) is None or rows[g][col] is None else float(rows[g][col]) for g in ids])


def mean_or_none(x: np.ndarray) -> float | None:
    return None if np.isnan(x).all() else float(np.nanmean(x))


def calibrated(cal: dict[str, Any] | None) -> tuple[float | None, int]:
    """(U - B) / (R - B) over the resolved groups' means (the core's aggregate), and the number of
    unresolvable groups; None where no group is resolved."""
    if not cal:
        return None, 0
    res = [r for r in cal.values() if r["resolved"]]
    n_unres = len(cal) - len(res)
    if not res:
        return None, n_unres
    U, B, R = (float(np.mean([r[k] for r in res])) for k in ("u", "b", "r"))
    return ((U - B) / (R - B) if R != B else None), n_unres


def paired(a: dict[str, Any], b: dict[str, Any], ids: list[str], col: int, seed: int = 0) -> dict[str, Any] | None:
    """Mean of a − b over the groups where both are defined, with a paired bootstrap 95 % interval
    (:func:`perturbfm.stats.bootstrap_interval`, 2,000 resamples of the held-out groups)."""
    from perturbfm.stats import bootstrap_interval

    d = _vals(a, ids, col) - _vals(b, ids, col)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return None
    iv = bootstrap_interval(d, n_resamples=2000, seed=seed)
    return {"mean": float(d.mean()), "low": iv.low, "high": iv.high, "method": iv.method, "n": int(d.size)}


def best_baseline(models: dict[str, dict[str, Any]], ids: list[str], col: int) -> str | None:
    """The baseline with the best mean over the task's held-out groups (max Pearson, min L2);
    a baseline whose Pearson is undefined on every group is not a candidate for Pearson."""
    cands = {}
    for name in BASELINES:
        m = models.get(name)
        if m is None or m["status"] != "ok":
            continue
        v = mean_or_none(_vals(m["rows"], ids, col))
        if v is not None:
            cands[name] = v
    if not cands:
        return None
    return (max if col == PEARSON else min)(cands, key=lambda k: cands[k])


def summarise(res: dict[str, dict[str, dict[str, Any]]], extra: list[str]) -> dict[str, Any]:
    """Per task: model summaries and the paired comparisons (the ``--json`` document's ``tasks``)."""
    out: dict[str, Any] = {}
    for task, models in res.items():
        ok = [m for m in models.values() if m["status"] == "ok"]
        # the groups every model that ran has a figure for (all of them in a complete run)
        ids = sorted(set.intersection(*(set(m["rows"]) for m in ok))) if ok else []
        n_union = len(set().union(*(set(m["rows"]) for m in ok))) if ok else 0
        summ: dict[str, Any] = {}
        for name, m in models.items():
            s: dict[str, Any] = {"status": m["status"], "message": m.get("message", "")}
            if m["status"] == "ok":
                p = _vals(m["rows"], ids, PEARSON)
                s.update(pearson=mean_or_none(p), n_r_undefined=int(np.isnan(p).sum()),
                         l2=float(np.nanmean(_vals(m["rows"], ids, L2))),
                         fit_s_per_split=[round(x, 2) for x in m["fit_s"]])
                for metric in ("pcc_delta", "mse"):
                    cal = {g: v for g, v in (m.get("cal", {}).get(metric) or {}).items() if g in set(ids)}
                    c, nu = calibrated(cal)
                    s[f"cal_{metric}"], s[f"n_unresolvable_{metric}"] = c, nu
            summ[name] = s
        comps: list[dict[str, Any]] = []
        best = {col: best_baseline(models, ids, col) for col in (PEARSON, L2)}

        def add(a: str, b: str, rows_a: dict[str, Any], rows_b: dict[str, Any], label: str) -> None:
            for col, metric in ((PEARSON, "pearson"), (L2, "l2")):
                c = paired(rows_a, rows_b, ids, col)
                if c is not None:
                    comps.append({"a": a, "b": b, "label": label, "metric": metric, **c})

        cg = models.get("cgio")
        if cg is not None and cg["status"] == "ok":
            for col, metric in ((PEARSON, "pearson"), (L2, "l2")):
                b = best[col]
                if b is not None:
                    c = paired(cg["rows"], models[b]["rows"], ids, col)
                    if c is not None:
                        comps.append({"a": "cgio", "b": b, "label": f"cgio − best baseline ({b})", "metric": metric,
                                      **c})
            if cg.get("base_rows"):
                add("cgio", "cgio base", cg["rows"], cg["base_rows"], "cgio − its own base")
        for name in extra:
            m = models.get(name)
            if m is None or m["status"] != "ok":
                continue
            if cg is not None and cg["status"] == "ok":
                add(name, "cgio", m["rows"], cg["rows"], f"{name} − cgio")
            for col, metric in ((PEARSON, "pearson"), (L2, "l2")):
                b = best[col]
                if b is not None:
                    c = paired(m["rows"], models[b]["rows"], ids, col)
                    if c is not None:
                        comps.append({"a": name, "b": b, "label": f"{name} − best baseline ({b})", "metric": metric,
                                      **c})
        out[task] = {"n_groups": len(ids), "n_groups_left_out": n_union - len(ids), "best_baseline": {"pearson": best[PEARSON], "l2": best[L2]},
                     "models": summ, "comparisons": comps,
                     "base_note": None if (cg and cg.get("base_rows")) else
                     "cgio's own base is not in its predictions (no layer 'base_delta'): cgio − base omitted"}
    return out


def _f(x: float | None, d: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _iv(c: dict[str, Any]) -> str:
    lo, hi = c["low"], c["high"]
    if lo is None or hi is None:
        return f"{c['mean']:+.3f} (n={c['n']}, no interval)"
    star = " *" if lo > 0 or hi < 0 else ""
    return f"{c['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"


def markdown(summary: dict[str, Any], labels: dict[str, str]) -> str:
    """The README table: one row per task and model, then the paired comparisons."""
    lines = ["| task (held-out groups) | model | Pearson Δ | L2 | calibrated pcc_delta / mse | fit s per split |",
             "|---|---|---|---|---|---|"]
    for task, t in summary.items():
        left = t.get("n_groups_left_out", 0)
        head = f"{labels.get(task, task)} ({t['n_groups']}" + (f"; {left} not run by every model, left out)" if left
                                                               else ")")
        for name, s in t["models"].items():
            if s["status"] != "ok":
                msg = s["message"].replace("|", "/").replace("\n", " ")[:160]
                lines.append(f"| {head} | {name} | {s['status']}: {msg} | | | |")
                head = ""
                continue
            p = _f(s["pearson"]) + (f" ({s['n_r_undefined']} r undef.)" if s["n_r_undefined"] and s["pearson"]
                                    is not None else "")
            cal = f"{_f(s['cal_pcc_delta'], 2)} / {_f(s['cal_mse'], 2)}"
            nu = max(s["n_unresolvable_pcc_delta"], s["n_unresolvable_mse"])
            if nu:
                cal += f" ({nu} u)"
            fit = s["fit_s_per_split"]
            fs = f"{np.mean(fit):.1f}" + (f" ({min(fit):.1f}–{max(fit):.1f})" if len(fit) > 1 else "")
            lines.append(f"| {head} | {name} | {p} | {_f(s['l2'])} | {cal} | {fs} |")
            head = ""
    lines += ["", "| task | comparison | Pearson Δ difference [95 % CI] | L2 difference [95 % CI] |", "|---|---|---|---|"]
    for task, t in summary.items():
        by: dict[str, dict[str, dict[str, Any]]] = {}
        for c in t["comparisons"]:
            by.setdefault(c["label"], {})[c["metric"]] = c
        for label, cs in by.items():
            lines.append(f"| {labels.get(task, task)} | {label} | {_iv(cs['pearson']) if 'pearson' in cs else '–'} | "
                         f"{_iv(cs['l2']) if 'l2' in cs else '–'} |")
        if t.get("base_note"):
            lines.append(f"| {labels.get(task, task)} | cgio − its own base | omitted: not exposed | |")
    return "\n".join(lines)
