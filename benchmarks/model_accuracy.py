"""Accuracy of CGIO and every baseline, run end to end THROUGH ``pfm-bench``.

Each task is a set of stored splits; every (split, model) is one subprocess call of
``.venv/bin/pfm-bench --store <tmp> run``; the per-group figures are read back from
the run's ``metrics.json``:

* Pearson delta = ``panels.basic.metrics.pcc_delta.per_group``, missing (–) for the groups the
  panel lists in ``extra.undefined_r_groups`` (a constant delta, e.g. "no change");
* L2 = ``sqrt(G · mse)`` with ``mse = panels.basic.metrics.mse.per_group`` (the mean
  squared error of the predicted vs true group mean over all ``G`` genes), i.e.
  ``‖pred − true‖₂`` over all genes, the figure of ``shared/data/README.md``.

Tasks (data from ``$PFM_SHARED_DATA``, default ``../shared/data``):

* ``devel-doubles``: the 5 K562 doubles whose two singles are measured (explicit split);
* ``devel-glioma``: each glioma line (A172, T98G, U87MG) held out with ``context-ood``;
  27 held-out groups pooled;
* ``papalexi``: unseen single knock-outs, 5 explicit folds over the 25 targets with
  >= 20 confident cells (raw counts -> log1p CP10k at import);
* ``synthetic``: the embedded simulator; its non-additive doubles in ``ctx0`` held
  out (their singles, and the same doubles in other contexts, train).

The table gives means over held-out groups, CGIO's (and optional models') fit time per
task (sum of ``timing_seconds.fit``), and for CGIO − the best other model a paired
bootstrap 95% CI over held-out groups. ``--extra-models gears`` adds the optional GEARS
plugin (``plugins/perturbfm-gears``) on ``--extra-tasks`` (default: the devel doubles).

Usage: .venv/bin/python benchmarks/model_accuracy.py [--models ...] [--set cgio-key=value ...]
       [--extra-models gears [--set gears:epochs=20]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PFM = str(REPO / ".venv" / "bin" / "pfm-bench")
MODELS = ["control-mean", "train-mean", "additive", "linear", "cgio"]
SYN_OPTS = {"n_genes": 100, "n_contexts": 3, "n_singles": 12, "n_doubles": 16, "cells_per_group": 40,
            "n_control": 100, "interaction_fraction": 0.5, "seed": 0}
README = {  # shared/data/README.md: (Pearson delta, L2)
    "devel-doubles": {"control-mean": (None, 1.374), "additive": (0.870, 0.446)},
    "devel-glioma": {"control-mean": (None, 2.079)},
    "papalexi": {"control-mean": (None, 2.548), "train-mean": (0.285, 2.641)},
}

sys.path.insert(0, str(REPO / "benchmarks"))


def shared() -> Path:
    raw = Path(os.environ.get("PFM_SHARED_DATA", "../shared/data"))
    return (raw if raw.is_absolute() else REPO / raw).resolve()


def pfm(store: Path, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([PFM, "--store", str(store), *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"pfm-bench {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return out.stdout.strip().splitlines()[-1].strip()


def tasks(store: Path) -> list[tuple[str, str, int]]:
    """(task, split id, n genes) for every split of every task."""
    from cgio_vs_baselines import devel_tasks, load_devel, load_papalexi, papalexi_tasks
    from perturbfm.builtin.synthetic import SyntheticAdapter
    from perturbfm.dataset import group_table

    out: list[tuple[str, str, int]] = []
    devel = shared() / "perturbench_devel/norman19_mcfaline23_devel.h5ad"
    h = pfm(store, "data", "import", str(devel), "--perturbation-key", "condition", "--control", "control",
            "--combo-delimiter", "+", "--context-key", "cell_type")
    a = load_devel()
    for family, _task, test in devel_tasks(group_table(a)):
        if family == "devel-doubles":
            sid = pfm(store, "splits", "create", "--dataset", h, "--generator", "explicit", "--test", ",".join(test))
            out.append((family, sid, a.n_vars))
    for line in ("A172", "T98G", "U87MG"):
        sid = pfm(store, "splits", "create", "--dataset", h, "--generator", "context-ood", "--context", line,
                  "--val-fraction", "0")
        out.append(("devel-glioma", sid, a.n_vars))
    pap = shared() / "papalexi2021_thp1/papalexi2021_thp1_lowmoi.h5ad"
    h = pfm(store, "data", "import", str(pap), "--perturbation-key", "perturbation", "--control", "control",
            "--expression", "counts", "--opt", "obs_filter=confident_assignment=True")
    a = load_papalexi()
    for _family, _task, test in papalexi_tasks(group_table(a)):
        sid = pfm(store, "splits", "create", "--dataset", h, "--generator", "explicit", "--test", ",".join(test))
        out.append(("papalexi", sid, a.n_vars))
    syn = SyntheticAdapter().load(None, **SYN_OPTS)
    h = pfm(store, "data", "import", "--adapter", "synthetic", *[x for k, v in SYN_OPTS.items()
                                                                  for x in ("--opt", f"{k}={v}")])
    test = [f"{p}@ctx0" for p in syn.extra["non_additive_doubles"]]
    sid = pfm(store, "splits", "create", "--dataset", h, "--generator", "explicit", "--test", ",".join(test))
    out.append(("synthetic", sid, syn.adata.n_vars))
    return out


def run_one(store: Path, model: str, sid: str, n_genes: int, sets: list[str]) -> dict:
    args = ["run", "--model", model, "--split", sid]
    for kv in sets:
        target, _, rest = kv.partition(":") if ":" in kv.split("=", 1)[0] else ("cgio", "", kv)
        if target == model:
            args += ["--set", f"model.{rest}"]
    run_dir = Path(pfm(store, *args))
    m = json.loads((run_dir / "metrics.json").read_text())
    basic = m["panels"]["basic"]["metrics"]
    pcc, mse = basic["pcc_delta"]["per_group"], basic["mse"]["per_group"]
    # r is undefined where a delta is constant (e.g. a "no change" prediction): the panel stores
    # 0.0 and lists the group; here it is missing (–), so it never counts as a Pearson of 0
    undefined = basic["pcc_delta"].get("extra", {}).get("undefined_r_groups", {})
    rows = {g: (None if g in undefined else pcc.get(g), float(np.sqrt(n_genes * mse[g]))) for g in mse}
    return {"rows": rows, "fit_s": m["timing_seconds"].get("fit", float("nan"))}


def bootstrap_ci(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, str]:
    """Paired 95% CI of the mean difference over groups (undefined groups left out), from
    :func:`perturbfm.stats.bootstrap_interval`: (low, high, method); NaN bounds when undefined."""
    from perturbfm.stats import bootstrap_interval

    iv = bootstrap_interval(diff, n_resamples=n, seed=seed)
    nan = float("nan")
    return (nan if iv.low is None else iv.low), (nan if iv.high is None else iv.high), iv.method


def _f(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def table(res: dict[str, dict[str, dict]], fit: dict[tuple[str, str], float]) -> str:
    lines = ["| task | model | Pearson delta | L2 | README (Pearson / L2) |", "|---|---|---|---|---|"]
    for task, models in res.items():
        ids = sorted(next(iter(models.values())))
        for name, rows in models.items():
            p = np.array([_f(rows[g][0]) for g in ids]); l2 = np.array([rows[g][1] for g in ids])
            ref = README.get(task, {}).get(name)
            refs = "" if ref is None else f"{'–' if ref[0] is None else f'{ref[0]:.3f}'} / {ref[1]:.3f}"
            n_undef = int(np.isnan(p).sum())
            ps = "–" if np.isnan(p).all() else f"{np.nanmean(p):.3f}" + (f" ({n_undef} r undefined)" if n_undef else "")
            extra = f" (fit {fit[(task, name)]:.1f} s)" if (task, name) in fit else ""
            lines.append(f"| {task} (n={len(ids)}) | {name}{extra} | {ps} | {l2.mean():.3f} | {refs} |")
        if "cgio" not in models:
            continue
        for col, label, better in ((0, "Pearson delta", max), (1, "L2", min)):
            cands = {n: np.nanmean([_f(r[g][col]) for g in ids]) for n, r in models.items()
                     if n != "cgio" and not np.isnan([_f(r[g][col]) for g in ids]).all()}
            if not cands:
                continue
            best = better(cands, key=cands.get)
            diff = np.array([_f(models["cgio"][g][col]) - _f(models[best][g][col]) for g in ids])
            lo, hi, how = bootstrap_ci(diff)
            cell = f"{np.nanmean(diff):+.3f} [{lo:+.3f}, {hi:+.3f}] ({how})"
            lines.append(f"| {task} | cgio − {best} ({label}) | " + (f"{cell} |  |  |" if col == 0 else f" | {cell} |  |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--set", action="append", default=[],
                    help="model config: key=value (cgio) or MODEL:key=value (e.g. gears:epochs=5)")
    ap.add_argument("--extra-models", default="",
                    help="comma-separated optional plugin models (e.g. gears), run only on --extra-tasks")
    ap.add_argument("--extra-tasks", default="devel-doubles",
                    help="tasks for --extra-models (GEARS: its GO graph has no node for the synthetic genes, "
                         "and it fits no model for a held-out context)")
    ap.add_argument("--jobs", type=int, default=2, help="pfm-bench runs in parallel")
    ap.add_argument("--only", default="", help="comma-separated task names")
    ap.add_argument("--json", default="", help="write per-group results here")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pfm-acc-") as tmp:
        store = Path(tmp) / "store"
        splits = [t for t in tasks(store) if not args.only or t[0] in args.only.split(",")]
        print(f"{len(splits)} splits imported in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        extra = [m for m in args.extra_models.split(",") if m]
        jobs = [(task, sid, g, m) for task, sid, g in splits for m in models]
        jobs += [(task, sid, g, m) for task, sid, g in splits for m in extra if task in args.extra_tasks.split(",")]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            def one(j: tuple) -> dict:
                o = run_one(store, j[3], j[1], j[2], args.set)
                if args.json:  # progress, one line per finished run
                    with open(args.json + ".partial.jsonl", "a") as fh:
                        fh.write(json.dumps({"task": j[0], "model": j[3], **o}) + "\n")
                return o

            outs = list(pool.map(one, jobs))
    res: dict[str, dict[str, dict]] = {}
    fit: dict[tuple[str, str], float] = {}
    for (task, _sid, _g, m), o in zip(jobs, outs):
        res.setdefault(task, {}).setdefault(m, {}).update(o["rows"])
        if m not in MODELS[:4]:  # fit time of CGIO and the optional models, summed over a task's splits
            fit[(task, m)] = fit.get((task, m), 0.0) + o["fit_s"]
    print(table(res, fit))
    print(f"total {time.perf_counter() - t0:.0f} s; L2 = sqrt(G * basic.mse) per group")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, "fit_s": {f"{t}/{m}": v for (t, m), v in fit.items()}},
                                              indent=1))


if __name__ == "__main__":
    main()
