"""``provenance_summary.md``: data sources, model definitions, split protocols
and statistical analyses of a study, from the store and the runs'
``provenance.json``. A missing input makes its section say so explicitly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perturbfm.report import verification_state
from perturbfm.store import ArtifactStore
from perturbfm.study.integrity import RunDamaged, read_json_object
from perturbfm.study.plan import Plan
from perturbfm.study.spec import StudySpec


def _run_prov(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Label -> provenance.json of one of its runs (the first that has one)."""
    out: dict[str, dict[str, Any]] = {}
    for c in cells.values():
        if c["label"] in out or not c.get("run_dir"):
            continue
        try:
            out[c["label"]] = read_json_object(Path(c["run_dir"]) / "provenance.json")
        except RunDamaged:  # missing or damaged: its provenance is not used
            continue
    return out


def provenance_md(spec: StudySpec, plan: Plan, store: ArtifactStore, cells: dict[str, dict[str, Any]],
                  claims: list[dict[str, Any]]) -> str:
    """The Markdown text of ``provenance_summary.md``."""
    L = [f"# Provenance summary: study `{spec.name}`", "", f"Study file: `{spec.path}`", ""]
    L += ["## Data sources", ""]
    if not spec.datasets:
        L.append("No datasets were declared by the study.")
    prov_by_label = _run_prov(cells)
    verif_by_ds = {p["dataset"]["hash"]: p["dataset"].get("verification") for p in prov_by_label.values()
                   if isinstance(p.get("dataset"), dict) and isinstance(p["dataset"].get("hash"), str)}
    for name, d in spec.datasets.items():
        h = plan.datasets.get(name)
        L.append(f"### {name}")
        if h is None:
            reason = next((e.reason for e in plan.exclusions if e.kind == "dataset" and e.entry == name), "unknown")
            L += [f"- NOT AVAILABLE: {reason}. No data stood in for it.", ""]
            continue
        m = store.datasets.get(h).manifest
        src = m.get("source") or {}
        L.append(f"- dataset hash: `{h}` (adapter `{m.get('adapter')}`, file sha256 `{m.get('file_sha256')}`)")
        if src.get("path") or src.get("url") or d.path:
            L.append(f"- source: {src.get('url') or src.get('path') or d.path}")
        elif src:
            L.append(f"- source: {json.dumps(src, sort_keys=True)[:400]}")
        else:
            L.append(f"- No source path or URL was recorded for {name}.")
        L.append(f"- licence: {m['licence']}" if m.get("licence") else f"- No licence was recorded for {name}.")
        L.append(f"- citation: {m['citation']}" if m.get("citation") else
                 f"- No dataset citation was recorded for {name}.")
        L.append(f"- shape: {m.get('n_obs')} cells x {m.get('n_vars')} genes, {m.get('n_groups')} groups; "
                 f"expression space {m.get('expression_space')}")
        if m.get("synthetic"):
            L.append("- **SYNTHETIC**: simulated data, not a real screen.")
        ok, text = verification_state(verif_by_ds.get(h), known=h in verif_by_ds)
        L.append(f"- verification: {'verified' if ok else '**UNVERIFIED**'}: {text}")
        L.append("")
    L += ["## Model definitions", ""]
    if not spec.variants:
        L.append("No models were declared.")
    for v in spec.variants:
        cfg = plan.variant_configs.get(v.label)
        L.append(f"### {v.label}")
        if cfg is None:
            reason = next((e.reason for e in plan.exclusions if e.kind == "model" and e.entry == v.label), "?")
            L += [f"- model `{v.model}`: EXCLUDED ({reason})", ""]
            continue
        pm = prov_by_label.get(v.label, {}).get("model")
        if isinstance(pm, dict):
            L.append(f"- model `{v.model}` from distribution `{pm.get('distribution')}` version {pm.get('version')}")
        else:
            L.append(f"- model `{v.model}`: no finished run recorded its distribution and version yet.")
        params = {k: val for k, val in cfg["model"].items()}
        L.append(f"- resolved parameters: `{json.dumps(params, sort_keys=True)}`"
                 + (" (model.seed follows the study seed)" if "seed" in params else ""))
        L.append(f"- overrides from the study: `{json.dumps(v.set, sort_keys=True)}`" if v.set else
                 "- overrides from the study: none (defaults)")
        L.append("")
    L += ["## Split protocols", ""]
    for name, s in spec.splits.items():
        sid = plan.splits.get(name)
        L.append(f"### {name}")
        if sid is None:
            reason = next((e.reason for e in plan.exclusions if e.kind == "split" and e.entry == name), "?")
            L += [f"- NOT AVAILABLE: {reason}", ""]
            continue
        sp = store.splits.get(sid)
        L.append(f"- split id: `{sid}` on dataset `{sp.dataset[:12]}` ({s.dataset or 'stored split'})")
        L.append(f"- generator: `{sp.generator}`, params `{json.dumps(sp.params, sort_keys=True)}`, seed {sp.seed}")
        L.append("- counts (groups): " + ", ".join(f"{k} {v}" for k, v in sp.counts().items()))
        if sp.source:
            L.append(f"- imported from `{sp.source.get('path') or sp.source.get('url') or sp.source}`, "
                     f"file sha256 `{sp.source.get('sha256') or sp.source.get('file_sha256') or 'not recorded'}`")
        else:
            L.append("- generated by the harness (no source file: not an imported split)")
        L.append("")
    L += ["## Statistical analyses", "",
          "- aggregation: per group -> mean per context -> global mean weighted by true cells (PerturbFM "
          "convention); summary.csv holds one row per run with every global metric.",
          f"- seeds: {spec.seeds} (run.seed and, where the model has one, model.seed)",
          f"- metric panels: {', '.join(spec.panels)}"]
    if claims:
        for c in claims:
            L.append(f"- claim `{c['id']}` ({c.get('statement')}): test {c['test']}, alpha {c['alpha']}, "
                     f"one value per held-out group (seeds averaged first), paired over groups, n = {c.get('n', 0)} "
                     f"groups -> **{c['status']}**")
    else:
        L.append("- No claims were declared, so no statistical tests were run.")
    return "\n".join(L) + "\n"
