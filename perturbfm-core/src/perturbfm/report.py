"""A run's ``report.html``: metric tables, per-group plots, model notes,
calibration, the model's own sections and provenance, readable on its own
(plots embedded as PNG). :func:`render_run_report_from_dir` rebuilds it from
``metrics.json`` / ``provenance.json`` / ``calibration.json`` alone (no
predictions needed)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from perturbfm.fsio import atomic_write_text

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0 1.4em}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{background:#b00020;color:#fff;padding:.7em 1em;font-weight:bold;border-radius:4px}
code{background:#f5f5f5;padding:0 3px}.muted{color:#666;font-size:13px}
"""


class _Raw(str):
    """Trusted HTML that the table writes as is."""


def _fmt(v: Any) -> str:
    if isinstance(v, _Raw):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='num'>{_fmt(c)}</td>" if isinstance(c, (int, float)) else f"<td>{_fmt(c)}</td>" for c in r
        ) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/>"


def _per_group_plot(metrics: dict[str, Any], synthetic: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = []
    for pname, panel in metrics["panels"].items():
        for key, entry in panel["metrics"].items():
            if "per_group" in entry:
                keys.append((pname, key, entry))
    if not keys:
        return ""
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


def _banner_html(texts: list[str]) -> str:
    return "".join(f"<p class='banner'>{html.escape(t)}</p>" for t in texts)


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
        return ", ".join(f"{k}: {_fmt(x) if isinstance(x, float) else x}" for k, x in v.items())
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
        return float(v)
    return "not recorded" if v is None else str(v)


def render_calibration(cal: dict[str, Any]) -> str:
    """Calibration tables and risk-coverage / reliability plots. Missing or
    unexpected keys are tolerated: the report says what it could not show."""
    try:
        return _render_calibration(cal)
    except Exception as exc:  # a report must never fail a run  # noqa: BLE001
        return f"<h2>Calibration</h2><p>calibration.json could not be rendered: {html.escape(repr(exc))}</p>"


def _render_calibration(cal: dict[str, Any]) -> str:
    parts = ["<h2>Calibration</h2>"]
    rows, reliab, ctx_rows = [], {}, []
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
    parts.append(_table(["method", "empirical coverage at nominal levels", "reliability points"], rows))
    if ctx_rows:
        parts.append(_table(["method", "nominal", "context", "empirical coverage"], ctx_rows))
    parts.append(_table(["quantity", "value"], [[k, _scalar_cell(cal.get(k))] for k in ("nll", "aurc", "ood_auroc")]))
    rc = _curves(cal.get("risk_coverage") or [])
    if rc:
        parts.append(_curve_plot("risk-coverage", rc, "coverage", "risk"))
    if reliab:
        parts.append(_curve_plot("reliability", reliab, "nominal coverage", "empirical coverage", diagonal=True))
    return "\n".join(parts)


def render_sections(sections: Any) -> str:
    """Model-specific sections (:class:`perturbfm.interfaces.ReportSection`): heading, text,
    a table and optionally a heatmap of its numeric cells. A section that cannot be
    rendered says so; a report never fails a run."""
    parts = []
    for sec in sections or []:
        title = str(getattr(sec, "title", "") or "Model section")
        try:
            parts.append(_render_section(sec))
        except Exception as exc:  # a report must never fail a run  # noqa: BLE001
            parts.append(f"<h2>{html.escape(title)}</h2><p>this section could not be rendered: "
                         f"{html.escape(repr(exc))}</p>")
    return "\n".join(parts)


def _num(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    return float(v) if ok else None


def _render_section(sec: Any) -> str:
    parts = [f"<h2>{html.escape(str(sec.title))}</h2>"]
    if sec.text:
        parts.append(f"<p class='muted'>{html.escape(str(sec.text))}</p>")
    rows = [list(r) for r in (sec.rows or [])]
    if sec.headers or rows:
        parts.append(_table([str(h) for h in sec.headers], [
            [c if isinstance(c, (int, float)) and not isinstance(c, bool) else str(c) for c in r] for r in rows]))
    if getattr(sec, "heatmap", False) and rows and len(sec.headers) > 1:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        cols = [str(h) for h in sec.headers[1:]]
        labels = [str(r[0]) for r in rows]
        arr = np.array([[(_num(c) if _num(c) is not None else np.nan) for c in r[1:]] for r in rows], dtype=float)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 0.8 + 0.35 * len(labels)))
        top = float(np.nanmax(arr)) if np.isfinite(arr).any() else 1.0
        im = ax.imshow(arr, cmap="viridis", vmin=0.0, vmax=max(1.0, top), aspect="auto")
        ax.set_xticks(range(len(cols)), cols, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        fig.colorbar(im, ax=ax)
        ax.set_title(str(sec.title), fontsize=9)
        parts.append(_png(fig))
    return "\n".join(parts)


def render_calibrated_metrics(metrics: dict[str, Any]) -> str:
    """The metrics table of a run: raw and calibrated side by side, with the references."""
    from perturbfm.references import fmt, metric_rows

    refs = metrics.get("references") or {}
    sel = (metrics.get("panel_selection") or {}).get("selection", "")
    out = ["<h2>Metrics: raw and calibrated</h2>",
           "<p>Raw: mean over groups, per context, weighted by true cells. Calibrated = (raw − baseline) / "
           "(replicate − baseline) over the resolved groups: <b>0</b> scores like the mean-response baseline (the "
           "average true response of the evaluated groups given to every group), <b>1</b> like a split-half "
           "replicate of the experiment; higher is always better, not clipped. Indep. ctrl: the delta-based "
           "metric with prediction and truth referenced to disjoint control halves (a large drop from raw is "
           "shared-control inflation).</p>"]
    if sel.startswith("narrower"):
        out.append(f"<p class='banner'>Panels: {html.escape(sel)} — not the standard set</p>")
    rows = []
    for r in metric_rows(metrics):
        direction = {True: "↑", False: "↓"}.get(r["higher_is_better"], "")
        if r["raw"] is None:
            rows.append([r["panel"], r["metric"], direction, "n/a: " + r["note"], "", "", "", "", "", "", ""])
            continue
        rows.append([r["panel"], r["metric"], direction, fmt(r["raw"]), fmt(r["calibrated"], 3), fmt(r["baseline"]),
                     fmt(r["replicate"]), fmt(r["indep_ctrl"]), fmt(r["train_mean"]),
                     "" if r["n_unresolvable"] is None else f"{r['n_unresolvable']} / {r['n_resolved']}",
                     r["n_not_applicable_groups"] or ""])
    out.append(_table(["panel", "metric", "better", "raw", "calibrated", "baseline", "replicate", "indep. ctrl",
                       "training mean", "unresolvable / resolved groups", "groups declared n/a"], rows))
    unsplit = refs.get("unsplittable_groups") or {}
    if unsplit:
        out.append(f"<p>{len(unsplit)} groups could not be split for the replicate: "
                   + html.escape("; ".join(f"{k}: {v}" for k, v in list(unsplit.items())[:20])) + "</p>")
    if refs.get("definitions"):
        out.append(_table(["reference", "definition"], [[k, v] for k, v in refs["definitions"].items()]))
    return "\n".join(out)


def render_run_report(metrics: dict[str, Any], provenance: dict[str, Any],
                      calibration: dict[str, Any] | None = None, sections: Any = None) -> str:
    """The HTML text of a run report; ``sections`` are the model's own
    (:meth:`perturbfm.interfaces.Model.report_sections`)."""
    synthetic = bool(metrics.get("synthetic"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>PerturbFM run {html.escape(metrics['run_id'])}"
             f"</title><style>{_CSS}</style></head><body>"]
    parts.append(_banner_html(banners(metrics, provenance)))
    parts.append(f"<h1>Run {html.escape(metrics['run_id'])}</h1>")
    ds = provenance["dataset"]
    sp = provenance["split"]
    parts.append(_table(["item", "value"], [
        ["model", f"{metrics['model']} ({provenance['model']['distribution']} {provenance['model']['version']})"],
        ["dataset", f"{ds['hash'][:12]} ({'synthetic' if synthetic else 'real'}; {ds.get('expression_space')})"],
        ["dataset source", str(ds.get("source"))[:300]],
        ["citation / licence", f"{ds.get('citation')} / {ds.get('licence')}"],
        ["split", f"{sp['id'][:12]} — generator {sp['generator']}, params {sp['params']}, seed {sp['seed']}"],
        ["split sizes (groups)", ", ".join(f"{k} {v}" for k, v in sp["counts"].items() if v)],
        ["evaluated groups / true cells", f"{metrics['n_groups']} / {metrics['n_true_cells']}"],
        ["config hash", provenance["config_hash"][:12]],
        ["git", str(provenance["git"])],
    ]))
    parts.append(render_calibrated_metrics(metrics))
    parts.append("<h3>Raw values per context</h3>")
    contexts = sorted({c for p in metrics["panels"].values() for e in p["metrics"].values()
                       for c in e.get("per_context", {})})
    rows = []
    for pname, panel in metrics["panels"].items():
        for key, e in panel["metrics"].items():
            if "not_applicable" in e:
                rows.append([pname, key, "n/a: " + e["not_applicable"]] + [""] * len(contexts))
            else:
                rows.append([pname, key, e["global"]] + [e["per_context"].get(c, "–") for c in contexts])
    parts.append(_table(["panel", "metric", "global"] + [f"context {c}" for c in contexts], rows))
    parts.append("<h3>Definitions</h3>")
    parts.append(_table(["metric", "definition", "variant", "higher is better"], [
        [k, e["definition"], e.get("variant", ""), e.get("higher_is_better")]
        for p in metrics["panels"].values() for k, e in p["metrics"].items()
    ]))
    parts.append("<h2>Per group</h2>")
    parts.append(_per_group_plot(metrics, synthetic))
    group_keys = [(p, k) for p, panel in metrics["panels"].items() for k, e in panel["metrics"].items()
                  if "per_group" in e]
    grows = []
    for g in metrics["groups"]:
        gid = g["group_id"]
        grows.append([gid, g["context"], g["n_true_cells"]]
                     + [metrics["panels"][p]["metrics"][k]["per_group"].get(gid, "n/a") for p, k in group_keys]
                     + [metrics["model_notes"].get(gid, "")])
    parts.append(_table(["group", "context", "true cells"] + [k for _, k in group_keys] + ["model note"], grows))
    if metrics.get("model_info"):
        parts.append("<h2>Model declarations</h2>")
        parts.append(_table(["item", "value"], [[k, str(v)] for k, v in metrics["model_info"].items()]))
    if sections:
        parts.append(render_sections(sections))
    if calibration is not None:
        parts.append(render_calibration(calibration))
    parts.append("<h2>Conventions</h2>")
    parts.append(_table(["convention", "value"], [[k, str(v)] for k, v in metrics["conventions"].items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


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

        cls = get_registry().get("model", model).cls
        return list(cls.report_sections(diagnostics) or [])
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
