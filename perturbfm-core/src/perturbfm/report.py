"""A run's ``report.html``: metric tables, per-group plots, model notes,
calibration, the model's own sections and provenance, readable on its own
(plots embedded as PNG). :func:`render_run_report_from_dir` rebuilds it from
``metrics.json`` / ``provenance.json`` / ``calibration.json`` alone (no
predictions needed).

The markup lives in jinja2 templates (``templates/run_report.html.j2`` and its
fragments; ``report_page.html.j2`` / ``report_macros.html.j2`` are shared with the
study report), rendered with autoescaping: this module only computes the values."""

from __future__ import annotations

import base64
import functools
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perturbfm.fsio import atomic_write_text

if TYPE_CHECKING:
    import jinja2


def _is_number(v: Any) -> bool:
    """A table cell right-aligned as a number (bools included, as before)."""
    return isinstance(v, (int, float))


def _cell(v: Any) -> Any:
    """A table cell's text: floats to 4 significant digits; the template escapes the rest."""
    return f"{v:.4g}" if isinstance(v, float) else v


@functools.cache
def _env() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("perturbfm", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["report_cell"] = _cell
    env.tests["report_number"] = _is_number
    return env


def render_template(template: str, /, **context: Any) -> str:
    """Render the report template ``templates/<template>`` (autoescaped: values from data,
    labels and plugins are escaped; fragments rendered here are passed to ``|safe``)."""
    return _env().get_template(template).render(**context)


def _png(fig: Any) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _per_group_plot(metrics: dict[str, Any], synthetic: bool) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = []
    for pname, panel in metrics["panels"].items():
        for key, entry in panel["metrics"].items():
            if "per_group" in entry:
                keys.append((pname, key, entry))
    if not keys:
        return None
    keys = keys[:4]
    # one shared group axis (ordered by the first metric), labelled once on the left
    order = [g for g, _ in sorted(keys[0][2]["per_group"].items(), key=lambda kv: kv[1])]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys) + 2.0, 0.22 * max(len(order), 8) + 1.2),
                             squeeze=False, sharey=True)
    for ax, (pname, key, entry) in zip(axes[0], keys):
        ax.barh(order, [entry["per_group"][g] for g in order], color="#4c72b0")
        ax.set_title(f"{pname}: {key}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    if synthetic:
        fig.suptitle("SYNTHETIC DATA", color="#b00020", fontsize=10)
    return _png(fig)


def verification_state(value: Any, *, known: bool = True) -> tuple[bool, str]:
    """Whether ``provenance.json["dataset"]["verification"]`` says *verified*.

    Verified means a dict with ``status == "verified"`` (or ``verified: true``) or
    a string starting with "verified"; anything else, including a missing field,
    is unverified, and the text says why."""
    if not known or value is None:
        return False, "no verification was recorded (missing field): treated as unverified"
    if isinstance(value, dict):
        ok = value.get("status") == "verified" or value.get("verified") is True
        return ok, json.dumps(value, sort_keys=True)[:300]
    text = str(value)
    ok = text.strip().lower().startswith("verified")
    return ok, text if ok else f"{text!r} does not say the data were verified against a published digest"


def banners(metrics: dict[str, Any], provenance: dict[str, Any]) -> list[str]:
    """Red banners: synthetic data, unverified data."""
    out = []
    if metrics.get("synthetic") or provenance.get("synthetic"):
        out.append(metrics.get("synthetic_note") or "SYNTHETIC DATA: these results come from simulated data")
    ds = provenance.get("dataset") or {}
    ver = ds.get("verification")
    is_synthetic = isinstance(ver, dict) and ver.get("status") == "synthetic"
    ok, text = verification_state(ver, known="verification" in ds)
    if not ok and not is_synthetic:  # simulated data has no published file; the synthetic banner says so
        out.append(f"UNVERIFIED DATA: {text}")
    return out


def _curve_plot(title: str, curves: dict[str, list[list[float]]], xlabel: str, ylabel: str,
                diagonal: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    for name, pts in curves.items():
        xs, ys = [float(p[0]) for p in pts], [float(p[1]) for p in pts]
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if len(curves) > 1 or next(iter(curves), "all") != "all":
        ax.legend(fontsize=7)
    return _png(fig)


def _curves(value: Any) -> dict[str, list[list[float]]]:
    """``[[x, y], ...]`` or ``{name: [[x, y], ...]}`` -> named numeric curves (others dropped)."""
    raw = value if isinstance(value, dict) else {"all": value}
    out = {}
    for name, pts in raw.items():
        try:
            out[str(name)] = [[float(p[0]), float(p[1])] for p in pts]
        except (TypeError, ValueError, IndexError):
            continue
    return out


def _scalar_cell(v: Any) -> Any:
    if isinstance(v, dict) and "not_applicable" in v:
        return "n/a: " + str(v["not_applicable"])
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_cell(x)}" for k, x in v.items())
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return "not recorded" if v is None else str(v)


def render_calibration(cal: dict[str, Any]) -> str:
    """Calibration tables and risk-coverage / reliability plots. Missing or
    unexpected keys are tolerated: the report says what it could not show."""
    try:
        return render_template("run_calibration.html.j2", error=None, **_calibration_context(cal))
    except Exception as exc:  # a report must never fail a run  # noqa: BLE001
        return render_template("run_calibration.html.j2", error=repr(exc))


def _calibration_context(cal: dict[str, Any]) -> dict[str, Any]:
    rows: list[list[Any]] = []
    reliab: dict[str, list[list[float]]] = {}
    ctx_rows: list[list[Any]] = []
    for method in ("gaussian", "conformal"):
        entry = cal.get(method)
        if entry is None:
            rows.append([method, "not recorded", ""])
            continue
        if not isinstance(entry, dict) or "not_applicable" in entry:
            rows.append([method, "n/a: " + str(entry.get("not_applicable") if isinstance(entry, dict) else entry), ""])
            continue
        cov = entry.get("coverage") or {}
        rows.append([method, ", ".join(f"{k}% -> {float(v):.3f}" for k, v in cov.items()) or "no coverage recorded",
                     len(entry.get("reliability") or [])])
        for level, det in (entry.get("coverage_detail") or {}).items():
            if isinstance(det, dict) and isinstance(det.get("per_context"), dict):
                ctx_rows += [[method, f"{level}%", c, float(v)] for c, v in det["per_context"].items()]
        curve = _curves(entry.get("reliability") or []).get("all")
        if curve:
            reliab[method] = curve
    plots = []
    rc = _curves(cal.get("risk_coverage") or [])
    if rc:
        plots.append(_curve_plot("risk-coverage", rc, "coverage", "risk"))
    if reliab:
        plots.append(_curve_plot("reliability", reliab, "nominal coverage", "empirical coverage", diagonal=True))
    return {"methods": rows, "per_context": ctx_rows, "plots": plots,
            "quantities": [[k, _scalar_cell(cal.get(k))] for k in ("nll", "aurc", "ood_auroc")]}


def render_sections(sections: Any) -> str:
    """Model-specific sections (:class:`perturbfm.interfaces.ReportSection`): heading, text,
    a table and optionally a heatmap of its numeric cells. A section that cannot be
    rendered says so; a report never fails a run."""
    parts = []
    for sec in sections or []:
        try:
            parts.append(render_template("run_section.html.j2", error=None, **_section_context(sec)))
        except Exception as exc:  # a report must never fail a run  # noqa: BLE001
            title = str(getattr(sec, "title", "") or "Model section")
            parts.append(render_template("run_section.html.j2", title=title, error=repr(exc)))
    return "\n".join(parts)


def _num(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    return float(v) if ok else None


def _section_context(sec: Any) -> dict[str, Any]:
    title, text = str(sec.title), str(sec.text) if sec.text else ""
    rows = [list(r) for r in (sec.rows or [])]
    headers = [str(h) for h in sec.headers]
    cells = [[c if isinstance(c, (int, float)) and not isinstance(c, bool) else str(c) for c in r] for r in rows]
    heatmap = None
    if getattr(sec, "heatmap", False) and rows and len(sec.headers) > 1:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        cols = headers[1:]
        labels = [str(r[0]) for r in rows]
        arr = np.array([[(_num(c) if _num(c) is not None else np.nan) for c in r[1:]] for r in rows], dtype=float)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 0.8 + 0.35 * len(labels)))
        top = float(np.nanmax(arr)) if np.isfinite(arr).any() else 1.0
        im = ax.imshow(arr, cmap="viridis", vmin=0.0, vmax=max(1.0, top), aspect="auto")
        ax.set_xticks(range(len(cols)), cols, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        fig.colorbar(im, ax=ax)
        ax.set_title(title, fontsize=9)
        heatmap = _png(fig)
    return {"title": title, "text": text,
            "table": bool(sec.headers or rows), "headers": headers, "rows": cells, "heatmap": heatmap}


def render_calibrated_metrics(metrics: dict[str, Any]) -> str:
    """The metrics table of a run: raw and calibrated side by side, with the references."""
    from perturbfm.references import fmt, metric_rows

    refs = metrics.get("references") or {}
    sel = (metrics.get("panel_selection") or {}).get("selection", "")
    rows: list[list[Any]] = []
    for r in metric_rows(metrics):
        direction = {True: "↑", False: "↓"}.get(r["higher_is_better"], "")
        if r["raw"] is None:
            rows.append([r["panel"], r["metric"], direction, "n/a: " + r["note"], "", "", "", "", "", "", ""])
            continue
        rows.append([r["panel"], r["metric"], direction, fmt(r["raw"]), fmt(r["calibrated"], 3), fmt(r["baseline"]),
                     fmt(r["replicate"]), fmt(r["indep_ctrl"]), fmt(r["train_mean"]),
                     "" if r["n_unresolvable"] is None else f"{r['n_unresolvable']} / {r['n_resolved']}",
                     r["n_not_applicable_groups"] or ""])
    unsplit = refs.get("unsplittable_groups") or {}
    return render_template(
        "run_metrics.html.j2", rows=rows, narrower=sel if sel.startswith("narrower") else "",
        n_unsplittable=len(unsplit), unsplittable="; ".join(f"{k}: {v}" for k, v in list(unsplit.items())[:20]),
        definitions=[[k, v] for k, v in (refs.get("definitions") or {}).items()])


def render_run_report(metrics: dict[str, Any], provenance: dict[str, Any],
                      calibration: dict[str, Any] | None = None, sections: Any = None) -> str:
    """The HTML text of a run report (template ``run_report.html.j2``); ``sections`` are
    the model's own (:meth:`perturbfm.interfaces.Model.report_sections`)."""
    synthetic = bool(metrics.get("synthetic"))
    ds = provenance["dataset"]
    sp = provenance["split"]
    overview = [
        ["model", f"{metrics['model']} ({provenance['model']['distribution']} {provenance['model']['version']})"],
        ["dataset", f"{ds['hash'][:12]} ({'synthetic' if synthetic else 'real'}; {ds.get('expression_space')})"],
        ["dataset source", str(ds.get("source"))[:300]],
        ["citation / licence", f"{ds.get('citation')} / {ds.get('licence')}"],
        ["split", f"{sp['id'][:12]} — generator {sp['generator']}, params {sp['params']}, seed {sp['seed']}"],
        ["split sizes (groups)", ", ".join(f"{k} {v}" for k, v in sp["counts"].items() if v)],
        ["evaluated groups / true cells", f"{metrics['n_groups']} / {metrics['n_true_cells']}"],
        ["config hash", provenance["config_hash"][:12]],
        ["git", str(provenance["git"])],
    ]
    contexts = sorted({c for p in metrics["panels"].values() for e in p["metrics"].values()
                       for c in e.get("per_context", {})})
    context_rows: list[list[Any]] = []
    for pname, panel in metrics["panels"].items():
        for key, e in panel["metrics"].items():
            if "not_applicable" in e:
                context_rows.append([pname, key, "n/a: " + e["not_applicable"]] + [""] * len(contexts))
            else:
                context_rows.append([pname, key, e["global"]] + [e["per_context"].get(c, "–") for c in contexts])
    group_keys = [(p, k) for p, panel in metrics["panels"].items() for k, e in panel["metrics"].items()
                  if "per_group" in e]
    group_rows = [[g["group_id"], g["context"], g["n_true_cells"]]
                  + [metrics["panels"][p]["metrics"][k]["per_group"].get(g["group_id"], "n/a") for p, k in group_keys]
                  + [metrics["model_notes"].get(g["group_id"], "")]
                  for g in metrics["groups"]]
    return render_template(
        "run_report.html.j2", run_id=metrics["run_id"], banners=banners(metrics, provenance), overview=overview,
        metrics_html=render_calibrated_metrics(metrics), contexts=contexts, context_rows=context_rows,
        definitions=[[k, e["definition"], e.get("variant", ""), e.get("higher_is_better")]
                     for p in metrics["panels"].values() for k, e in p["metrics"].items()],
        per_group_plot=_per_group_plot(metrics, synthetic), group_metrics=[k for _, k in group_keys],
        group_rows=group_rows, model_info=[[k, str(v)] for k, v in (metrics.get("model_info") or {}).items()],
        sections_html=render_sections(sections) if sections else "",
        calibration_html=render_calibration(calibration) if calibration is not None else "",
        conventions=[[k, str(v)] for k, v in metrics["conventions"].items()])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def model_sections(model: str | None, diagnostics: Any) -> list[Any]:
    """The report sections the installed model ``model`` builds from its stored
    diagnostics; none when it is not installed (the report still renders) or fails."""
    if not model or not isinstance(diagnostics, dict):
        return []
    try:
        from perturbfm.plugins import get_registry

        return list(get_registry().models.get(model).report_sections(diagnostics) or [])
    except Exception:  # a report must never fail because of a model's section  # noqa: BLE001
        return []


def write_run_report(run_dir: Path, metrics: dict[str, Any], provenance: dict[str, Any],
                     sections: Any = None) -> Path:
    """Write ``report.html`` atomically (with ``calibration.json`` when the run
    dir has one) and return its path. ``sections`` default to the installed
    model's :meth:`~perturbfm.interfaces.Model.report_sections` of the stored diagnostics."""
    path = Path(run_dir) / "report.html"
    if sections is None:
        sections = model_sections(metrics.get("model"), metrics.get("model_diagnostics"))
    atomic_write_text(path, render_run_report(metrics, provenance, _read_json(Path(run_dir) / "calibration.json"),
                                              sections))
    return path


def render_run_report_from_dir(run_dir: str | Path) -> Path:
    """Regenerate ``report.html`` from ``metrics.json``, ``provenance.json`` and
    (if present) ``calibration.json`` alone; predictions are not read."""
    d = Path(run_dir)
    metrics = _read_json(d / "metrics.json")
    provenance = _read_json(d / "provenance.json")
    if metrics is None or provenance is None:
        from perturbfm.errors import ArtifactNotFoundError

        raise ArtifactNotFoundError(f"run {d.name} has no readable metrics.json/provenance.json", file=str(d),
                                    fix="a failed run has no metrics.json; rerun it")
    return write_run_report(d, metrics, provenance)
