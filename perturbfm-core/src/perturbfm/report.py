"""A run's ``report.html``: metric tables, per-group plots, model notes and
provenance, readable on its own (plots embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
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
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 0.25 * max(
        len(keys[0][2]["per_group"]), 8) + 1.2), squeeze=False)
    for ax, (pname, key, entry) in zip(axes[0], keys):
        items = sorted(entry["per_group"].items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
        ax.set_title(f"{pname}: {key}", fontsize=9)
        ax.tick_params(labelsize=7)
    if synthetic:
        fig.suptitle("SYNTHETIC DATA", color="#b00020", fontsize=10)
    return _png(fig)


def render_run_report(metrics: dict[str, Any], provenance: dict[str, Any]) -> str:
    """The HTML text of a run report."""
    synthetic = bool(metrics.get("synthetic"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>PerturbFM run {html.escape(metrics['run_id'])}"
             f"</title><style>{_CSS}</style></head><body>"]
    if synthetic:
        parts.append(f"<p class='banner'>{html.escape(metrics.get('synthetic_note', 'SYNTHETIC DATA'))}</p>")
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
    parts.append("<h2>Metrics (global = mean over groups weighted by true cells)</h2>")
    contexts = sorted({c for p in metrics["panels"].values() for e in p["metrics"].values()
                       for c in e.get("per_context", {})})
    rows = []
    for pname, panel in metrics["panels"].items():
        for key, e in panel["metrics"].items():
            if "not_applicable" in e:
                rows.append([pname, key, "n/a: " + e["not_applicable"]] + [""] * len(contexts))
            else:
                rows.append([pname, key, e["global"]] + [e["per_context"].get(c, "") for c in contexts])
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
                     + [metrics["panels"][p]["metrics"][k]["per_group"][gid] for p, k in group_keys]
                     + [metrics["model_notes"].get(gid, "")])
    parts.append(_table(["group", "context", "true cells"] + [k for _, k in group_keys] + ["model note"], grows))
    if metrics.get("model_info"):
        parts.append("<h2>Model declarations</h2>")
        parts.append(_table(["item", "value"], [[k, str(v)] for k, v in metrics["model_info"].items()]))
    parts.append("<h2>Conventions</h2>")
    parts.append(_table(["convention", "value"], [[k, str(v)] for k, v in metrics["conventions"].items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_run_report(run_dir: Path, metrics: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write ``report.html`` atomically and return its path."""
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, render_run_report(metrics, provenance))
    return path


def write_comparison_report(path: Path, metrics_list: list[dict[str, Any]], run_dirs: list[str]) -> Path:
    """An HTML page comparing several runs on the same split (global values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synthetic = any(m.get("synthetic") for m in metrics_list)
    keys = [(p, k) for p, panel in metrics_list[0]["panels"].items() for k, e in panel["metrics"].items()
            if "not_applicable" not in e]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>PerturbFM comparison</title>"
             f"<style>{_CSS}</style></head><body>"]
    if synthetic:
        parts.append("<p class='banner'>SYNTHETIC DATA: these results come from simulated data, "
                     "not from a real screen</p>")
    parts.append(f"<h1>Model comparison on split {html.escape(metrics_list[0]['split'][:12])}</h1>")
    rows = [[m["model"]] + [m["panels"][p]["metrics"][k]["global"] for p, k in keys]
            + [_Raw(f"<a href='{html.escape(d)}/report.html'>{html.escape(Path(d).name)}</a>")]
            for m, d in zip(metrics_list, run_dirs)]
    parts.append(_table(["model"] + [k for _, k in keys] + ["run"], rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, (p, k) in zip(axes[0], keys):
        ax.bar([m["model"] for m in metrics_list], [m["panels"][p]["metrics"][k]["global"] for m in metrics_list],
               color="#4c72b0")
        ax.set_title(k, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    if synthetic:
        fig.suptitle("SYNTHETIC DATA", color="#b00020", fontsize=10)
    parts.append(_png(fig))
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path
