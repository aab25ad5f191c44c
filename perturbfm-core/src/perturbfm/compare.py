"""The comparison report ("leaderboard") of several runs on the same split(s).

(Over 400 lines on purpose: one table of paired statistics per stratum and its three
renderings, JSON, CSV and HTML, which must stay column-for-column identical.)

:func:`compare_runs` reads the runs' ``metrics.json`` and writes, into ``out_dir``,
``compare.html`` (jinja2 template ``templates/compare.html.j2``, plots embedded),
``compare.json`` and ``compare.csv``. For every panel / metric and every stratum
of groups (all; single vs combination perturbations; the split's group labels;
OOD vs in-distribution) it gives, per model:

* the raw value and the calibrated value (``(u - b) / (r - b)``, 0 = mean-response
  baseline, 1 = split-half replicate, higher is better), each as the mean over
  held-out groups with a 95 % bootstrap interval;
* the paired difference to the reference model (default from :mod:`perturbfm.defaults`) with its
  95 % paired bootstrap interval, the Wilcoxon signed-rank p-value and a verdict
  ``better`` / ``worse`` / ``tie`` (``undefined`` when there is no interval);

plus rows for the data-derived references stored with every metric (baseline,
replicate and, when the reference model is not among the runs, the ``train_mean``
reference object of ``metrics.json``).

The unit is the held-out group: the runs of one model (seeds, ensembles) are
averaged within each group first, so ``n`` is the number of groups (see
:mod:`perturbfm.stats`). Undefined values stay undefined (``None`` in JSON, empty
in CSV, "–" in HTML), never 0. Missing reference objects are shown as unavailable.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from perturbfm import stats
from perturbfm.defaults import COMPARE_REFERENCE
from perturbfm.errors import PerturbFMError
from perturbfm.fsio import atomic_write_json, atomic_write_text

SCHEMA = "perturbfm.compare/1"
DEFAULT_REFERENCE = COMPARE_REFERENCE
UNDEFINED = "–"
#: Row kinds besides the models: data-derived references stored in every metric entry.
REF_ROWS = {"baseline": "baseline (mean response)", "replicate": "replicate (split-half)"}
EMBEDDED_TM = f"{COMPARE_REFERENCE} (metrics.json reference)"


@dataclass
class RunInput:
    """One run directory and what the comparison needs of it."""

    path: Path
    label: str
    metrics: dict[str, Any]

    @property
    def split(self) -> str:
        return str(self.metrics.get("split") or "?")

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset") or "")

    @property
    def name(self) -> str:
        return str(self.metrics.get("run_id") or self.path.name)


# --------------------------------------------------------------------------- inputs
def parse_run_arg(arg: str) -> tuple[str | None, str]:
    """``LABEL=PATH`` -> (label, path); a plain path -> (None, path)."""
    label, sep, path = arg.partition("=")
    if sep and label and not Path(arg).exists() and "/" not in label:
        return label, path
    return None, arg


def load_runs(run_dirs: Sequence[str | Path], labels: Mapping[str, str] | Sequence[str | None] | None = None
              ) -> list[RunInput]:
    """Read every run's ``metrics.json``. ``labels``: a label per run (same order) or
    path -> label; default the run's model name."""
    out: list[RunInput] = []
    problems: list[str] = []
    for i, d in enumerate(run_dirs):
        p = Path(d)
        f = p / "metrics.json"
        try:
            m = json.loads(f.read_text())
            if not isinstance(m, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            problems.append(f"{p}: {type(exc).__name__}: {exc}")
            continue
        if isinstance(labels, Mapping):
            lbl = labels.get(str(d)) or labels.get(str(p))
        elif labels is not None and i < len(labels):
            lbl = labels[i]
        else:
            lbl = None
        out.append(RunInput(p, str(lbl or m.get("model") or p.name), m))
    if problems:
        raise PerturbFMError("cannot read metrics.json of " + "; ".join(problems), field="RUN",
                             fix="pass run directories of succeeded runs (they hold metrics.json)")
    if not out:
        raise PerturbFMError("no runs to compare", field="RUN", fix="pass at least one run directory")
    return out


def check_splits(runs: Sequence[RunInput]) -> list[str]:
    """The split(s) every model was run on; refuse when the models' splits differ."""
    by_label: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        by_label.setdefault(r.label, {}).setdefault(r.split, []).append(r.name)
    sets = {lbl: frozenset(s) for lbl, s in by_label.items()}
    if len(set(sets.values())) > 1:
        lines = [f"{lbl}: " + "; ".join(f"split {s[:12]} (runs {', '.join(names)})" for s, names in sorted(sp.items()))
                 for lbl, sp in sorted(by_label.items())]
        raise PerturbFMError("the runs are not on the same split(s), so their groups cannot be paired:\n  "
                             + "\n  ".join(lines), field="RUN",
                             fix="compare runs of every model on the same split(s) (one comparison per split, or "
                                 "the same set of splits for every model)")
    return sorted(next(iter(sets.values())))


# --------------------------------------------------------------------------- groups and strata
def group_kind(group_id: str) -> str:
    """``single`` or ``combination`` from a group id (genes joined by "+" before "@context")."""
    pert = group_id.rpartition("@")[0] if "@" in group_id else group_id
    return "combination" if "+" in pert else "single"


def _unit(run: RunInput, gid: str, multi_dataset: bool) -> str:
    return f"{run.dataset[:8]}:{gid}" if multi_dataset else gid


def _group_table(runs: Sequence[RunInput], multi: bool) -> dict[str, dict[str, Any]]:
    """unit -> {group_id, context, kind, label, ood} (label / ood "mixed" when the splits disagree)."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        for g in r.metrics.get("groups") or []:
            if not isinstance(g, dict) or "group_id" not in g:
                continue
            u = _unit(r, str(g["group_id"]), multi)
            row = out.setdefault(u, {"group_id": str(g["group_id"]), "context": g.get("context"),
                                     "kind": group_kind(str(g["group_id"]))})
            for k in ("label", "ood"):
                if k in g:
                    if k in row and row[k] != g[k]:
                        row[k] = "mixed"
                    else:
                        row.setdefault(k, g[k])
    return out


def strata(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Stratum name -> {description, groups}: all; single / combination; each group
    label; OOD / in-distribution. A stratum equal to ``all`` is left out (the
    description of ``all`` gives the composition)."""
    every = sorted(groups)
    kinds: dict[str, list[str]] = {}
    for u in every:
        kinds.setdefault(groups[u]["kind"], []).append(u)
    comp = ", ".join(f"{len(v)} {k}" for k, v in sorted(kinds.items()))
    out: dict[str, dict[str, Any]] = {"all": {"description": f"every held-out group ({comp})" if comp else
                                              "every held-out group", "groups": every}}
    cand: list[tuple[str, str, list[str]]] = []
    for k in ("single", "combination"):
        cand.append((k, f"{k} perturbations (group id {'with' if k == 'combination' else 'without'} '+')",
                     kinds.get(k, [])))
    labels = sorted({str(g["label"]) for g in groups.values() if "label" in g})
    for lab in labels:
        cand.append((f"label={lab}", f"groups the split labels {lab!r}",
                     [u for u in every if str(groups[u].get("label")) == lab]))
    if any("ood" in g for g in groups.values()):
        cand.append(("ood", "groups the split marks out-of-distribution",
                     [u for u in every if groups[u].get("ood") is True]))
        cand.append(("in-distribution", "groups the split marks in-distribution",
                     [u for u in every if groups[u].get("ood") is False]))
    for name, desc, us in cand:
        if not us or len(us) == len(every):
            continue
        same = next((k for k, v in out.items() if v["groups"] == us), None)
        if same is not None:  # e.g. a label that is exactly the OOD groups: one table, both names
            out[same]["description"] += f"; the same groups as {name} ({desc})"
            continue
        out[name] = {"description": desc, "groups": us}
    return out


# --------------------------------------------------------------------------- values
def _finite(x: Any) -> TypeGuard[float]:
    """A finite number (an int counts; a bool does not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _obj(entry: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    o = entry.get(name)
    return o if isinstance(o, Mapping) and "not_applicable" not in o else None


def _na(entry: Mapping[str, Any], name: str) -> str:
    o = entry.get(name)
    if isinstance(o, Mapping) and "not_applicable" in o:
        return str(o["not_applicable"])
    return f"no {name} object in metrics.json" if o is None else f"{name} object unreadable"


def _level_values(obj: Mapping[str, Any] | None, level: str) -> dict[str, float]:
    vals = obj.get(level) if obj else None
    if not isinstance(vals, Mapping):
        return {}
    return {str(k): float(v) for k, v in vals.items() if _finite(v)}


def _metric_keys(runs: Sequence[RunInput]) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for r in runs:
        for p, panel in (r.metrics.get("panels") or {}).items():
            for k in (panel or {}).get("metrics") or {}:
                if (p, k) not in keys:
                    keys.append((p, k))
    return keys


def _entry(run: RunInput, panel: str, key: str) -> Mapping[str, Any] | None:
    e = ((run.metrics.get("panels") or {}).get(panel) or {}).get("metrics", {}).get(key)
    return e if isinstance(e, Mapping) else None


def _level(entries: Iterable[Mapping[str, Any]]) -> str:
    es = [e for e in entries if "not_applicable" not in e]
    if es and all(isinstance(e.get("per_group"), Mapping) for e in es):
        return "per_group"
    return "per_context"


@dataclass
class _Side:
    """One row's per-unit values (already one value per unit) and run-level facts."""

    raw: dict[str, float]
    cal: dict[str, float] | None
    n_runs: int
    globals_raw: list[float]
    globals_cal: list[float]
    n_unresolvable: int | None
    not_applicable: str = ""
    cal_note: str = ""
    fixed_cal: float | None = None
    undefined: dict[str, str] = field(default_factory=dict)


def undefined_groups(obj: Mapping[str, Any]) -> dict[str, str]:
    """Groups whose value is declared undefined: ``not_applicable_groups`` and lists in
    ``extra`` named ``undefined_*groups`` (e.g. a Pearson r of a constant prediction
    that the panel stores as 0.0 by declaration): left out, never scored."""
    out: dict[str, str] = {}
    nag = obj.get("not_applicable_groups")
    if isinstance(nag, Mapping):
        out.update({str(k): str(v) for k, v in nag.items()})
    extra = obj.get("extra")
    if isinstance(extra, Mapping):
        for k, v in extra.items():
            if str(k).startswith("undefined") and str(k).endswith("groups"):
                if isinstance(v, Mapping):
                    out.update({str(g): str(why) for g, why in v.items()})
                elif isinstance(v, list):
                    out.update({str(g): str(k) for g in v})
    return out


def _collect(runs: Sequence[RunInput], panel: str, key: str, level: str, multi: bool,
             source: str) -> _Side:
    """Per-unit means over ``runs`` of the model (``source == "model"``) or of one of
    the reference objects (``baseline``, ``replicate``, ``train_mean``)."""
    raw_runs: list[dict[str, float]] = []
    cal_runs: list[dict[str, float]] = []
    g_raw: list[float] = []
    g_cal: list[float] = []
    unres: set[str] = set()
    na: list[str] = []
    cal_na: list[str] = []
    undefined: dict[str, str] = {}
    n_ok = 0
    for r in runs:
        e = _entry(r, panel, key)
        if e is None:
            na.append(f"{key} not in metrics.json of {r.name}")
            continue
        if "not_applicable" in e:
            na.append(str(e["not_applicable"]))
            continue
        obj = e if source == "model" else _obj(e, source)
        if obj is None:
            na.append(_na(e, source))
            continue
        n_ok += 1
        undef = undefined_groups(obj)
        for g, why in undef.items():
            undefined.setdefault(_unit(r, g, multi), why)
        vals = {g: v for g, v in _level_values(obj, level).items() if g not in undef}
        raw_runs.append({_unit(r, g, multi and level == "per_group"): v for g, v in vals.items()})
        if _finite(obj.get("global")):
            g_raw.append(float(obj["global"]))
        cal = _obj(e, "calibrated")
        if source == "model":
            if cal is None:
                cal_na.append(_na(e, "calibrated"))
            else:
                cv = {g: v for g, v in _level_values(cal, level).items() if g not in undef}
                cal_runs.append({_unit(r, g, multi and level == "per_group"): v for g, v in cv.items()})
                if _finite(cal.get("global")):
                    g_cal.append(float(cal["global"]))
                unres.update(_unit(r, str(g), multi) for g in cal.get("unresolvable") or [])
        elif source == "train_mean":
            # the reference's calibrated score on the groups the model's calibration resolved
            base, rep = _obj(e, "baseline"), _obj(e, "replicate")
            if cal is None or base is None or rep is None:
                cal_na.append(_na(e, "calibrated" if cal is None else "baseline" if base is None else "replicate"))
            else:
                b, rr, resolved = _level_values(base, level), _level_values(rep, level), _level_values(cal, level)
                cal_runs.append({_unit(r, g, multi and level == "per_group"): (v - b[g]) / (rr[g] - b[g])
                                 for g, v in vals.items() if g in resolved and g in b and g in rr and rr[g] != b[g]})
    side = _Side(stats.group_means(raw_runs), stats.group_means(cal_runs) if cal_runs else None, n_ok, g_raw, g_cal,
                 len(unres) if source == "model" and cal_runs else None, undefined=undefined)
    if not n_ok:
        side.not_applicable = "; ".join(dict.fromkeys(na)) or "no value"
    if source in ("model", "train_mean") and not cal_runs:
        side.cal_note = "; ".join(dict.fromkeys(cal_na)) or "not available"
    if source == "baseline":
        side.fixed_cal = 0.0
    elif source == "replicate":
        side.fixed_cal = 1.0
    return side


# --------------------------------------------------------------------------- the comparison
def _restrict(vals: Mapping[str, float] | None, units: set[str] | None) -> dict[str, float]:
    if vals is None:
        return {}
    return {u: v for u, v in vals.items() if units is None or u in units}


class _Batch:
    """Intervals and paired comparisons requested while the tables are built, computed
    together (equal-size samples share one vectorised scipy call) and filled in place."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.opts = opts
        self.marg: list[tuple[list[float], dict[str, Any]]] = []
        self.pairs: list[tuple[Mapping[str, float], Mapping[str, float], bool | None, str, dict[str, Any]]] = []

    def interval(self, vals: Mapping[str, float]) -> dict[str, Any]:
        ph: dict[str, Any] = {}
        self.marg.append((list(vals.values()), ph))
        return ph

    def versus(self, vals: Mapping[str, float], ref: Mapping[str, float] | None, hib: bool | None, ref_name: str,
               why_none: str) -> dict[str, Any]:
        if ref is None:
            return {"verdict": "undefined", "verdict_reason": why_none, "n_groups": 0}
        ph: dict[str, Any] = {}
        self.pairs.append((vals, ref, hib, ref_name, ph))
        return ph

    def resolve(self) -> None:
        ivs = stats.bootstrap_intervals([v for v, _ in self.marg], **self.opts)
        for (_, ph), iv in zip(self.marg, ivs):
            ph.update(iv.to_dict())
        comps = stats.compare_paired_many([(a, b) for a, b, *_ in self.pairs], [p[2] for p in self.pairs],
                                          labels=[("row", p[3]) for p in self.pairs], **self.opts)
        for p, c in zip(self.pairs, comps):
            p[4].update(c.to_dict())


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def compare(runs: Sequence[RunInput], *, reference: str = DEFAULT_REFERENCE, confidence: float = stats.CONFIDENCE,
            n_resamples: int = stats.N_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (see the module docstring)."""
    splits = check_splits(runs)
    datasets = sorted({r.dataset for r in runs})
    multi = len(datasets) > 1
    labels = list(dict.fromkeys(r.label for r in runs))
    by_label = {lbl: [r for r in runs if r.label == lbl] for lbl in labels}
    groups = _group_table(runs, multi)
    strat = strata(groups)
    opts = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    batch = _Batch(opts)
    metrics_out: list[dict[str, Any]] = []
    for panel, key in _metric_keys(runs):
        entries = [e for r in runs if (e := _entry(r, panel, key)) is not None]
        applicable = [e for e in entries if "not_applicable" not in e]
        first = applicable[0] if applicable else (entries[0] if entries else {})
        hibs = {e.get("higher_is_better") for e in applicable}
        hib = hibs.pop() if len(hibs) == 1 else None
        level = _level(entries)
        sides: dict[str, tuple[str, _Side]] = {lbl: ("model", _collect(rs, panel, key, level, multi, "model"))
                                              for lbl, rs in by_label.items()}
        for src, name in REF_ROWS.items():
            sides[name] = (src, _collect(runs, panel, key, level, multi, src))
        # the reference: a run among the inputs, else the train_mean object of each model's own runs
        ref_source = "unavailable"
        ref_why = f"reference {reference!r} is not among the runs"
        per_label_ref: dict[str, _Side] = {}
        if reference in by_label:
            ref_source = "run"
        elif reference == DEFAULT_REFERENCE:
            tm_all = _collect(runs, panel, key, level, multi, "train_mean")
            if not tm_all.not_applicable:
                ref_source = "metrics.json train_mean"
                sides[EMBEDDED_TM] = ("reference", tm_all)
                per_label_ref = {lbl: _collect(rs, panel, key, level, multi, "train_mean")
                                 for lbl, rs in by_label.items()}
            else:
                ref_why += f" and metrics.json has no train_mean reference ({tm_all.not_applicable})"
        if ref_source == "unavailable" and reference not in by_label and reference != DEFAULT_REFERENCE:
            ref_why += f" (only {DEFAULT_REFERENCE} can be taken from metrics.json)"
        m_out: dict[str, Any] = {
            "id": f"{panel}.{key}", "panel": panel, "key": key, "definition": first.get("definition"),
            "variant": first.get("variant"), "higher_is_better": hib, "level": level,
            "unit": "held-out group" if level == "per_group" else "context (the metric has no per-group values)",
            "reference": {"requested": reference, "source": ref_source,
                          **({"why_unavailable": ref_why} if ref_source == "unavailable" else {})},
            "not_applicable": (sorted({str(e["not_applicable"]) for e in entries if "not_applicable" in e})
                               if not applicable else None),
            "strata": {},
        }
        for sname, st in strat.items():
            units = set(st["groups"]) if level == "per_group" else None
            if level != "per_group" and sname != "all":
                continue
            rows = []
            for name, (kind, side) in sides.items():
                raw = _restrict(side.raw, units)
                cal = _restrict(side.cal, units) if side.cal is not None else None
                if kind == "model" and ref_source == "run":
                    ref_side = sides[reference][1]
                    ref_raw: dict[str, float] | None = _restrict(ref_side.raw, units)
                    ref_cal = _restrict(ref_side.cal, units) if ref_side.cal is not None else None
                elif kind == "model" and ref_source == "metrics.json train_mean":
                    ref_side = per_label_ref[name]
                    ref_raw = _restrict(ref_side.raw, units) if not ref_side.not_applicable else None
                    ref_cal = _restrict(ref_side.cal, units) if ref_side.cal is not None else None
                elif kind == "baseline" or kind == "replicate":
                    base_ref = sides[reference][1] if ref_source == "run" else (
                        sides[EMBEDDED_TM][1] if ref_source == "metrics.json train_mean" else None)
                    ref_raw = _restrict(base_ref.raw, units) if base_ref else None
                    ref_cal = None
                else:
                    ref_raw = ref_cal = None
                is_ref = (kind == "model" and name == reference) or kind == "reference"
                row: dict[str, Any] = {"row": name, "kind": kind, "n_runs": side.n_runs,
                                       "is_reference": is_ref, "not_applicable": side.not_applicable or None,
                                       "n_undefined_groups": len([u for u in side.undefined
                                                                  if units is None or u in units])}
                if side.not_applicable:
                    rows.append(row)
                    continue
                why = ref_why if ref_source == "unavailable" else "no reference values"
                row["raw"] = batch.interval(raw)
                row["raw_vs_reference"] = None if is_ref else batch.versus(raw, ref_raw, hib, reference, why)
                if side.fixed_cal is not None:
                    row["calibrated"] = {"estimate": side.fixed_cal, "low": None, "high": None,
                                         "n_groups": len(raw), "method": "by definition",
                                         "note": f"the {kind} scores {side.fixed_cal:g} by definition"}
                    row["calibrated_vs_reference"] = None
                elif cal is not None:
                    row["calibrated"] = batch.interval(cal)
                    row["calibrated_vs_reference"] = None if is_ref else batch.versus(
                        cal, ref_cal, True, reference,
                        why if ref_source == "unavailable" else "the reference has no calibrated values")
                else:
                    row["calibrated"] = {"estimate": None, "low": None, "high": None, "n_groups": 0,
                                         "method": "undefined", "note": side.cal_note or "not available"}
                    row["calibrated_vs_reference"] = None
                if sname == "all":
                    row["global_raw_mean_over_runs"] = _mean(side.globals_raw)
                    row["global_calibrated_mean_over_runs"] = _mean(side.globals_cal)
                    row["n_unresolvable"] = side.n_unresolvable
                rows.append(row)
            m_out["strata"][sname] = {"n_groups": len(st["groups"]) if units is not None else None, "rows": rows}
        metrics_out.append(m_out)
    batch.resolve()
    return {
        "schema": SCHEMA,
        "synthetic": any(bool(r.metrics.get("synthetic")) for r in runs),
        "splits": splits, "datasets": datasets,
        "reference": reference,
        "settings": {"confidence": confidence, "n_resamples": n_resamples, "seed": seed,
                     "unit": "held-out group: a model's runs (seeds, ensembles) are averaged within each group "
                             "first; n = number of groups",
                     "interval": "scipy.stats.bootstrap of the mean over groups (BCa, percentile where BCa is "
                                 f"undefined or n < {stats.BCA_MIN_GROUPS})",
                     "paired_test": "two-sided Wilcoxon signed-rank on the per-group differences",
                     "verdict": "tie when the paired interval contains 0; else better / worse by the metric's "
                                "direction (calibrated: higher is better)"},
        "runs": [{"label": r.label, "model": r.metrics.get("model"), "split": r.split, "dataset": r.dataset,
                  "run_id": r.name, "run_dir": str(r.path)} for r in runs],
        "models": labels,
        "strata": {k: {"description": v["description"], "n_groups": len(v["groups"])} for k, v in strat.items()},
        "groups": groups,
        "metrics": metrics_out,
    }


# --------------------------------------------------------------------------- output
def _clean(x: Any) -> Any:
    """Non-finite floats -> None (undefined), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{float(x):.{digits}g}" if _finite(x) else UNDEFINED


def _fmt_iv(iv: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not iv:
        return UNDEFINED
    est = iv.get("estimate")
    if not _finite(est):
        return UNDEFINED
    s = f"{float(est):+.4g}" if signed else f"{float(est):.4g}"
    if iv.get("method") == "by definition":
        return f"{s} (by definition)"
    if _finite(iv.get("low")) and _finite(iv.get("high")):
        return f"{s} [{float(iv['low']):.4g}, {float(iv['high']):.4g}]"
    return f"{s} [{UNDEFINED}]"


def _p(c: Mapping[str, Any] | None) -> str:
    if not c or not c.get("wilcoxon"):
        return UNDEFINED
    p = c["wilcoxon"].get("p_value")
    return f"{float(p):.3g}" if _finite(p) else UNDEFINED


def direction_text(hib: bool | None) -> str:
    return {True: "higher is better ↑", False: "lower is better ↓"}.get(hib, "direction not declared")  # type: ignore[arg-type]


CSV_COLUMNS = ["metric", "panel", "key", "higher_is_better", "stratum", "n_groups_stratum", "row", "row_kind",
               "is_reference", "n_runs", "not_applicable",
               "raw_mean", "raw_low", "raw_high", "raw_method", "raw_n_groups",
               "raw_diff", "raw_diff_low", "raw_diff_high", "raw_diff_method", "raw_n_paired", "raw_wilcoxon_p",
               "raw_verdict",
               "cal_mean", "cal_low", "cal_high", "cal_method", "cal_n_groups",
               "cal_diff", "cal_diff_low", "cal_diff_high", "cal_n_paired", "cal_wilcoxon_p", "cal_verdict",
               "global_raw_mean_over_runs", "global_calibrated_mean_over_runs", "n_unresolvable", "n_undefined_groups", "reference",
               "reference_source"]


def _csv_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for m in result["metrics"]:
        for sname, st in m["strata"].items():
            for r in st["rows"]:
                raw, cal = r.get("raw") or {}, r.get("calibrated") or {}
                rv, cv = r.get("raw_vs_reference") or {}, r.get("calibrated_vs_reference") or {}
                rd, cd = rv.get("difference") or {}, cv.get("difference") or {}
                out.append({
                    "metric": m["id"], "panel": m["panel"], "key": m["key"], "higher_is_better": m["higher_is_better"],
                    "stratum": sname, "n_groups_stratum": st["n_groups"], "row": r["row"], "row_kind": r["kind"],
                    "is_reference": r["is_reference"], "n_runs": r["n_runs"], "not_applicable": r["not_applicable"],
                    "raw_mean": raw.get("estimate"), "raw_low": raw.get("low"), "raw_high": raw.get("high"),
                    "raw_method": raw.get("method"), "raw_n_groups": raw.get("n_groups"),
                    "raw_diff": rd.get("estimate"), "raw_diff_low": rd.get("low"), "raw_diff_high": rd.get("high"),
                    "raw_diff_method": rd.get("method"), "raw_n_paired": rv.get("n_groups"),
                    "raw_wilcoxon_p": (rv.get("wilcoxon") or {}).get("p_value"), "raw_verdict": rv.get("verdict"),
                    "cal_mean": cal.get("estimate"), "cal_low": cal.get("low"), "cal_high": cal.get("high"),
                    "cal_method": cal.get("method"), "cal_n_groups": cal.get("n_groups"),
                    "cal_diff": cd.get("estimate"), "cal_diff_low": cd.get("low"), "cal_diff_high": cd.get("high"),
                    "cal_n_paired": cv.get("n_groups"), "cal_wilcoxon_p": (cv.get("wilcoxon") or {}).get("p_value"),
                    "cal_verdict": cv.get("verdict"),
                    "global_raw_mean_over_runs": r.get("global_raw_mean_over_runs"),
                    "global_calibrated_mean_over_runs": r.get("global_calibrated_mean_over_runs"),
                    "n_unresolvable": r.get("n_unresolvable"), "n_undefined_groups": r.get("n_undefined_groups"),
                    "reference": result["reference"],
                    "reference_source": m["reference"]["source"],
                })
    return out


def to_csv(result: Mapping[str, Any]) -> str:
    """Long-format CSV: one line per metric x stratum x row; undefined values are empty."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in _csv_rows(result):
        w.writerow({k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                    for k, v in row.items()})
    return buf.getvalue()


def _plot(m: Mapping[str, Any], synthetic: bool) -> str | None:
    """Raw and calibrated means with intervals (stratum ``all``), as an SVG data URI
    (text kept as text: small and fast to draw)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    rows = [r for r in m["strata"]["all"]["rows"] if not r.get("not_applicable")]
    if not rows:
        return None
    height = 0.3 * len(rows) + 1.1
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 7}):
        fig, axes = plt.subplots(1, 2, figsize=(10.0, height), squeeze=False, sharey=True)
        fig.subplots_adjust(left=0.2, right=0.98, wspace=0.06, top=1 - 0.5 / height, bottom=0.35 / height)
        ys = list(range(len(rows)))[::-1]
        for ax, part, title in ((axes[0][0], "raw", f"raw: {direction_text(m['higher_is_better'])}"),
                                (axes[0][1], "calibrated", "calibrated: higher is better ↑ (0 baseline, 1 replicate)")):
            pts: dict[tuple[str, bool], list[tuple[float, float, float, float]]] = {}
            for y, r in zip(ys, rows):
                iv = r.get(part) or {}
                est, lo, hi = iv.get("estimate"), iv.get("low"), iv.get("high")
                if not _finite(est):
                    ax.text(0.02, y, "undefined", transform=ax.get_yaxis_transform(), va="center", color="#888")
                    continue
                color = "#b00020" if r["is_reference"] else "#555" if r["kind"] != "model" else "#1f4e99"
                if _finite(lo) and _finite(hi):
                    has, lo_f, hi_f = True, float(lo), float(hi)
                else:
                    has, lo_f, hi_f = False, 0.0, 0.0
                pts.setdefault((color, has), []).append((float(y), float(est), lo_f, hi_f))
            for (color, has), p in pts.items():  # one artist per colour: quick to draw
                y_, e_, l_, h_ = (list(t) for t in zip(*p))
                if has:
                    ax.errorbar(e_, y_, xerr=[[e - lo for e, lo in zip(e_, l_)], [hi - e for e, hi in zip(e_, h_)]],
                                fmt="o", color=color, capsize=3, ms=4, lw=1.2)
                else:
                    ax.plot(e_, y_, "o", color=color, ms=4)
            if part == "calibrated":
                for x in (0.0, 1.0):
                    ax.axvline(x, color="#bbb", lw=0.8, ls="--")
            ax.set_title(title, fontsize=8)
            ax.grid(axis="x", color="#eee")
        axes[0][0].set_yticks(ys, [r["row"] for r in rows])
        fig.suptitle(f"{m['id']}: mean over held-out groups, 95% bootstrap interval"
                     + ("  [SYNTHETIC DATA]" if synthetic else ""), fontsize=9,
                     color="#b00020" if synthetic else "#222")
        buf = io.BytesIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def _verdict_cell(c: Mapping[str, Any] | None, is_ref: bool) -> dict[str, str]:
    if is_ref:
        return {"text": "reference", "cls": "ref", "title": "the reference row"}
    if not c:
        return {"text": UNDEFINED, "cls": "undef", "title": "no comparison"}
    v = str(c.get("verdict") or "undefined")
    return {"text": UNDEFINED if v == "undefined" else v, "cls": v, "title": str(c.get("verdict_reason") or "")}


def _html_context(result: Mapping[str, Any], plots: bool) -> dict[str, Any]:
    metrics = []
    for m in result["metrics"]:
        tables = []
        for sname, st in m["strata"].items():
            rows = []
            for r in st["rows"]:
                if r.get("not_applicable"):
                    rows.append({"row": r["row"], "kind": r["kind"], "is_reference": r["is_reference"],
                                 "n_runs": r["n_runs"], "na": r["not_applicable"]})
                    continue
                rv, cv = r.get("raw_vs_reference"), r.get("calibrated_vs_reference")
                rows.append({
                    "row": r["row"], "kind": r["kind"], "is_reference": r["is_reference"], "n_runs": r["n_runs"],
                    "na": None, "n_groups": (r.get("raw") or {}).get("n_groups", 0),
                    "n_undef": r.get("n_undefined_groups") or 0,
                    "raw": _fmt_iv(r.get("raw")), "raw_title": (r.get("raw") or {}).get("method", ""),
                    "raw_diff": _fmt_iv((rv or {}).get("difference"), signed=True), "raw_p": _p(rv),
                    "raw_verdict": _verdict_cell(rv, r["is_reference"]),
                    "cal": _fmt_iv(r.get("calibrated")),
                    "cal_title": f"{(r.get('calibrated') or {}).get('method', '')}: "
                                 f"{(r.get('calibrated') or {}).get('note', '')}",
                    "cal_diff": _fmt_iv((cv or {}).get("difference"), signed=True), "cal_p": _p(cv),
                    "cal_verdict": _verdict_cell(cv, r["is_reference"]) if r["kind"] not in REF_ROWS else
                    {"text": UNDEFINED, "cls": "undef", "title": "calibrated references are fixed by definition"},
                    "global_raw": _fmt(r.get("global_raw_mean_over_runs")),
                    "global_cal": _fmt(r.get("global_calibrated_mean_over_runs")),
                    "n_unres": UNDEFINED if r.get("n_unresolvable") is None else str(r["n_unresolvable"]),
                })
            tables.append({"stratum": sname, "description": result["strata"][sname]["description"],
                           "n_groups": st["n_groups"], "rows": rows, "all": sname == "all"})
        metrics.append({
            "id": m["id"], "definition": m.get("definition") or "", "variant": m.get("variant") or "",
            "direction": direction_text(m["higher_is_better"]),
            "direction_cls": {True: "up", False: "down"}.get(m["higher_is_better"], "none"),
            "unit": m["unit"], "reference": m["reference"], "not_applicable": m.get("not_applicable"),
            "tables": tables, "plot": _plot(m, bool(result["synthetic"])) if plots else None,
        })
    return {"r": result, "metrics": metrics, "undefined": UNDEFINED,
            "strata": [{"name": k, **v} for k, v in result["strata"].items()]}


def render_html(result: Mapping[str, Any], *, plots: bool = True) -> str:
    """The HTML page of a comparison (jinja2 template ``compare.html.j2``)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("perturbfm", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("compare.html.j2").render(**_html_context(result, plots))


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, *, reference: str = DEFAULT_REFERENCE,
                 labels: Mapping[str, str] | Sequence[str | None] | None = None, confidence: float = stats.CONFIDENCE,
                 n_resamples: int = stats.N_RESAMPLES, seed: int = 0, plots: bool = True) -> dict[str, Any]:
    """Compare the runs in ``run_dirs`` and write ``compare.html``, ``compare.json`` and
    ``compare.csv`` into ``out_dir``. Returns the comparison dict with the written
    paths under ``"files"``. Refuses (:class:`PerturbFMError`) runs whose models
    were not run on the same split(s)."""
    runs = load_runs(run_dirs, labels)
    result = _clean(compare(runs, reference=reference, confidence=confidence, n_resamples=n_resamples, seed=seed))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"html": out / "compare.html", "json": out / "compare.json", "csv": out / "compare.csv"}
    atomic_write_json(files["json"], result)
    atomic_write_text(files["csv"], to_csv(result))
    atomic_write_text(files["html"], render_html(result, plots=plots))
    return {**result, "files": {k: str(v) for k, v in files.items()}}
