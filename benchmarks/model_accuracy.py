"""Accuracy of CGIO, every baseline and optional peer models, run end to end THROUGH ``pfm-bench``.

Each task is a set of stored splits; every (split, model) is one subprocess call of
``.venv/bin/pfm-bench --store <tmp> run --set run.panels=basic`` (``--panels`` to change); the
per-group figures are read back from the run's ``metrics.json``:

* Pearson delta = ``panels.basic.metrics.pcc_delta.per_group``, missing (–) for the groups the
  panel lists in ``extra.undefined_r_groups`` (a constant delta, e.g. "no change");
* L2 = ``sqrt(G · mse)`` with ``mse = panels.basic.metrics.mse.per_group``, i.e. ``‖pred − true‖₂``
  over all ``G`` genes, the figure of ``shared/data/README.md``;
* calibrated ``pcc_delta`` / ``mse`` = ``(U − B) / (R − B)`` over the task's resolved groups pooled
  across its splits (0 = the mean-response baseline, 1 = a split-half replicate; see
  ``docs/calibrated-evaluation.md``), from each metric's ``baseline`` / ``replicate`` /
  ``calibrated.unresolvable`` entries; ``(k u)`` = k unresolvable groups left out;
* fit time = ``timing_seconds.fit`` per split.

Tasks (data from ``$PFM_SHARED_DATA``, default ``../shared/data``; ``--tasks`` selects):

* ``devel-doubles``: the 5 K562 doubles whose two singles are measured (explicit split);
* ``devel-glioma``: each glioma line (A172, T98G, U87MG) held out with ``context-ood``; 27 groups;
* ``papalexi``: unseen single knock-outs, 5 explicit folds over the 25 targets with >= 20 confident
  cells (raw counts -> log1p CP10k at import);
* ``glioblastoma``: panobinostat in a held-out patient, ``context-ood`` holding out each of the 5
  patients (raw counts -> log1p CP10k at import; ``var['symbol']`` passed as ``--gene-symbol-key``
  and the drug declared ``--perturbation-kind chemical`` where ``pfm-bench data import`` has those
  flags, else left out with a note);
* ``synthetic``: SYNTHETIC DATA, the simulator's non-additive doubles in ``ctx0`` held out (their
  singles, and the same doubles in other contexts, train);
* ``synthetic-context``: SYNTHETIC DATA, the simulator's baseline-dependent contexts
  (``context_model=baseline``: a response is a function of the context's baseline, so transfer to
  an unseen context is learnable from its control cells), ``context-ood`` holding out each context.

Comparisons (paired bootstrap 95 % intervals over the task's held-out groups, 2,000 resamples;
``*`` = excludes 0): CGIO − the best baseline (chosen per task and figure by its mean on the same
groups; named), CGIO − its own base where the CGIO run's ``predictions.h5ad`` has a
``base_delta`` layer (else omitted with a note), and for each ``--extra-models`` peer: peer − CGIO
and peer − the best baseline. A peer that refuses a task's split kind (its error says it refuses /
does not support it) is listed as "refuses" with its message; one that is not installed as
"not installed"; any other error as "failed".

Usage: .venv/bin/python benchmarks/model_accuracy.py [--tasks devel-doubles,glioblastoma]
       [--models ...] [--extra-models scgen,cpa,biolord,gears] [--set cgio-key=value | MODEL:key=value]
       [--jobs 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PFM = str(REPO / ".venv" / "bin" / "pfm-bench")
sys.path.insert(0, str(REPO / "benchmarks"))
from accuracy_report import BASELINES, markdown, summarise  # noqa: E402

MODELS = [*BASELINES, "cgio"]
TASKS = ("devel-doubles", "devel-glioma", "papalexi", "glioblastoma", "synthetic", "synthetic-context")
LABELS = {
    "devel-doubles": "devel K562 doubles, singles measured",
    "devel-glioma": "devel CRISPRi, one glioma line held out",
    "papalexi": "papalexi unseen knock-outs, 5 folds",
    "glioblastoma": "glioblastoma panobinostat, one patient held out",
    "synthetic": "SYNTHETIC non-additive doubles in ctx0",
    "synthetic-context": "SYNTHETIC baseline-dependent contexts, each held out",
}
SYN_OPTS = {"n_genes": 100, "n_contexts": 3, "n_singles": 12, "n_doubles": 16, "cells_per_group": 40,
            "n_control": 100, "interaction_fraction": 0.5, "seed": 0}
SYN_CTX_OPTS = {"n_genes": 100, "n_contexts": 5, "n_singles": 10, "n_doubles": 6, "cells_per_group": 40,
                "n_control": 150, "interaction_fraction": 0.3, "seed": 0, "context_model": "baseline"}
REFUSAL = re.compile(r"refus|does not support|not supported|unsupported|cannot predict|supports only", re.I)


def shared() -> Path:
    raw = Path(os.environ.get("PFM_SHARED_DATA", "../shared/data"))
    return (raw if raw.is_absolute() else REPO / raw).resolve()


class PfmError(RuntimeError):
    def __init__(self, args: tuple[str, ...], stdout: str, stderr: str) -> None:
        self.message = _error_message(stdout + "\n" + stderr)
        super().__init__(f"pfm-bench {' '.join(args)} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}")


def _error_message(text: str) -> str:
    """The user-facing error of a failed ``pfm-bench`` call (its ``Error:`` line(s), else the last line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.lower().startswith(("error", "fix:")) or "Error:" in ln]
    return " ".join(err[-3:]) if err else (lines[-1] if lines else "no output")


def pfm(store: Path, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([PFM, "--store", str(store), *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise PfmError(args, out.stdout, out.stderr)
    return out.stdout.strip().splitlines()[-1].strip()


def make_split(store: Path, dataset: str, generator: str, **params: Any) -> str:
    """Create a stored split in-process (what ``pfm-bench splits create`` does; saves a process
    start per split) and return its id."""
    from perturbfm.datasets import create_split
    from perturbfm.store import ArtifactStore

    sid, _created, _split = create_split(ArtifactStore(store), dataset, generator, params, 0)
    return sid


def import_flags() -> set[str]:
    """The ``--flags`` that ``pfm-bench data import`` accepts in this checkout."""
    out = subprocess.run([PFM, "data", "import", "--help"], capture_output=True, text=True)
    return set(re.findall(r"(--[a-z][a-z-]+)", out.stdout))


@dataclass(frozen=True)
class SplitRef:
    task: str
    sid: str
    n_genes: int


def build_tasks(store: Path, selected: list[str], notes: list[str]) -> list[SplitRef]:
    """Import the datasets and create the splits of the selected tasks."""
    from cgio_vs_baselines import devel_tasks, load_devel, load_papalexi, papalexi_tasks
    from perturbfm.builtin.synthetic import SyntheticAdapter
    from perturbfm.dataset import group_table

    out: list[SplitRef] = []
    if {"devel-doubles", "devel-glioma"} & set(selected):
        devel = shared() / "perturbench_devel/norman19_mcfaline23_devel.h5ad"
        h = pfm(store, "data", "import", str(devel), "--perturbation-key", "condition", "--control", "control",
                "--combo-delimiter", "+", "--context-key", "cell_type")
        a = load_devel()
        if "devel-doubles" in selected:
            for family, _task, test in devel_tasks(group_table(a)):
                if family == "devel-doubles":
                    sid = make_split(store, h, "explicit", test=",".join(test))
                    out.append(SplitRef("devel-doubles", sid, a.n_vars))
        if "devel-glioma" in selected:
            for line in ("A172", "T98G", "U87MG"):
                sid = make_split(store, h, "context-ood", context=line, val_fraction=0.0)
                out.append(SplitRef("devel-glioma", sid, a.n_vars))
    if "papalexi" in selected:
        pap = shared() / "papalexi2021_thp1/papalexi2021_thp1_lowmoi.h5ad"
        h = pfm(store, "data", "import", str(pap), "--perturbation-key", "perturbation", "--control", "control",
                "--expression", "counts", "--opt", "obs_filter=confident_assignment=True")
        a = load_papalexi()
        for _family, _task, test in papalexi_tasks(group_table(a)):
            sid = make_split(store, h, "explicit", test=",".join(test))
            out.append(SplitRef("papalexi", sid, a.n_vars))
    if "glioblastoma" in selected:
        gbm = shared() / "lemur_glioblastoma/zhao2021_glioblastoma_panobinostat.h5ad"
        flags = import_flags()
        extra: list[str] = []
        for flag, value in (("--gene-symbol-key", "symbol"), ("--perturbation-kind", "chemical")):
            if flag in flags:
                extra += [flag, value]
            else:
                notes.append(f"glioblastoma: `pfm-bench data import` has no {flag} here; imported without it")
        h = pfm(store, "data", "import", str(gbm), "--perturbation-key", "condition", "--control", "ctrl",
                "--context-key", "patient_id", "--expression", "counts", *extra)
        for patient in ("PW030", "PW032", "PW034", "PW036", "PW040"):
            sid = make_split(store, h, "context-ood", context=patient, val_fraction=0.0)
            out.append(SplitRef("glioblastoma", sid, 300))
    if "synthetic" in selected:
        syn = SyntheticAdapter().load(None, **SYN_OPTS)
        h = pfm(store, "data", "import", "--adapter", "synthetic",
                *[x for k, v in SYN_OPTS.items() for x in ("--opt", f"{k}={v}")])
        test = [f"{p}@ctx0" for p in syn.extra["non_additive_doubles"]]
        sid = make_split(store, h, "explicit", test=",".join(test))
        out.append(SplitRef("synthetic", sid, syn.adata.n_vars))
    if "synthetic-context" in selected:
        h = pfm(store, "data", "import", "--adapter", "synthetic",
                *[x for k, v in SYN_CTX_OPTS.items() for x in ("--opt", f"{k}={v}")])
        for i in range(int(SYN_CTX_OPTS["n_contexts"])):
            sid = make_split(store, h, "context-ood", context=f"ctx{i}", val_fraction=0.0)
            out.append(SplitRef("synthetic-context", sid, int(SYN_CTX_OPTS["n_genes"])))
    return out


def tasks(store: Path) -> list[tuple[str, str, int]]:
    """(task, split id, n genes) of every task (used by ``calibrated_scores.py``)."""
    return [(s.task, s.sid, s.n_genes) for s in build_tasks(store, list(TASKS), [])]


def _base_rows(store: Path, run_dir: Path, m: dict[str, Any]) -> dict[str, list[float | None]] | None:
    """Pearson delta and L2 of CGIO's own base, where its predictions carry a ``base_delta`` layer."""
    import anndata as ad
    from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, ensure_group_column, grouped_moments

    pred = ad.read_h5ad(run_dir / "predictions.h5ad")
    if "base_delta" not in pred.layers:
        return None
    data = ad.read_h5ad(store / "datasets" / m["dataset"] / "data.h5ad")
    labels = ensure_group_column(data).astype(str).to_numpy()
    ctx = data.obs[CONTEXT_COL].astype(str).to_numpy()
    is_ctrl = data.obs[CONTROL_COL].to_numpy(dtype=bool)
    gids = [str(g) for g in pred.obs_names]
    ctxs = [str(c) for c in pred.obs["context"]]
    true_mean = grouped_moments(data, labels, gids)[0]
    uctx = sorted(set(ctxs))
    cmean = dict(zip(uctx, grouped_moments(data, np.where(is_ctrl, ctx, "\x00"), uctx)[0]))
    base = np.asarray(pred.layers["base_delta"], dtype=np.float64)
    rows: dict[str, list[float | None]] = {}
    for i, g in enumerate(gids):
        t = true_mean[i] - cmean[ctxs[i]]
        b = base[i]
        r = None if np.ptp(b) <= 1e-12 or np.ptp(t) <= 1e-12 else float(np.corrcoef(b, t)[0, 1])
        rows[g] = [r, float(np.linalg.norm(b - t))]
    return rows


def run_one(store: Path, model: str, ref: SplitRef, sets: list[str], panels: str) -> dict[str, Any]:
    args = ["run", "--model", model, "--split", ref.sid, "--quiet", "--set", f"run.panels={panels}"]
    for kv in sets:
        target, _, rest = kv.partition(":") if ":" in kv.split("=", 1)[0] else ("cgio", "", kv)
        if target == model:
            args += ["--set", f"model.{rest}"]
    try:
        run_dir = Path(pfm(store, *args))
    except PfmError as e:
        status = "refuses" if REFUSAL.search(e.message) else "failed"
        return {"status": status, "message": e.message, "rows": {}, "fit_s": []}
    return parse_run(store, run_dir, ref.n_genes, model)


def parse_run(store: Path, run_dir: Path, n_genes: int, model: str) -> dict[str, Any]:
    """The per-group figures of one finished run (see the module docstring)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    basic = m["panels"]["basic"]["metrics"]
    pcc, mse = basic["pcc_delta"]["per_group"], basic["mse"]["per_group"]
    # r is undefined where a delta is constant (e.g. a "no change" prediction): the panel stores
    # 0.0 and lists the group; here it is missing (–), so it never counts as a Pearson of 0
    undefined = basic["pcc_delta"].get("extra", {}).get("undefined_r_groups", {})
    rows = {g: [None if g in undefined else pcc.get(g), float(np.sqrt(n_genes * mse[g]))] for g in mse}
    cal: dict[str, dict[str, Any]] = {}
    for key in ("pcc_delta", "mse"):
        e = basic[key]
        if "baseline" not in e or "replicate" not in e:
            continue
        unres = set(e.get("calibrated", {}).get("unresolvable", []))
        cal[key] = {g: {"u": u, "b": e["baseline"]["per_group"].get(g), "r": e["replicate"]["per_group"].get(g),
                        "resolved": g not in unres and e["replicate"]["per_group"].get(g) is not None}
                    for g, u in e["per_group"].items()}
    out = {"status": "ok", "message": "", "rows": rows, "cal": cal, "fit_s": [m["timing_seconds"].get("fit", 0.0)],
           "run": run_dir.name}
    if model == "cgio":
        base = _base_rows(store, run_dir, m)
        if base is not None:
            out["base_rows"] = base
    return out


def installed_models() -> set[str]:
    out = subprocess.run([PFM, "run", "--help"], capture_output=True, text=True).stdout
    hit = re.search(r"models\s+(.+?)\n\s*panels", out, re.S)
    return {x.strip() for x in hit.group(1).replace("\n", " ").split(",")} if hit else set()


def merge(results: dict[str, dict[str, dict[str, Any]]], task: str, model: str, o: dict[str, Any]) -> None:
    """Pool one split's result into its task's (statuses: a refusal or failure on any split wins)."""
    cur = results.setdefault(task, {}).get(model)
    if cur is None:
        results[task][model] = {**o, "rows": dict(o["rows"]), "cal": {k: dict(v) for k, v in o.get("cal", {}).items()},
                                "fit_s": list(o["fit_s"]), "base_rows": dict(o.get("base_rows") or {})}
        return
    if o["status"] != "ok" and cur["status"] == "ok":
        cur["status"], cur["message"] = o["status"], o["message"]
    cur["rows"].update(o["rows"])
    for k, v in o.get("cal", {}).items():
        cur["cal"].setdefault(k, {}).update(v)
    cur["fit_s"] += o["fit_s"]
    cur["base_rows"].update(o.get("base_rows") or {})


def commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", "--only", dest="tasks", default=",".join(TASKS),
                    help=f"comma-separated tasks (default: all of {', '.join(TASKS)})")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--extra-models", default="",
                    help="comma-separated optional peer models from installed plugins (e.g. scgen,cpa,biolord,gears), "
                         "run on every selected task; refusals are shown as such")
    ap.add_argument("--set", action="append", default=[],
                    help="model config: key=value (cgio) or MODEL:key=value (e.g. gears:epochs=5)")
    ap.add_argument("--panels", default="basic", help="run.panels of every run (default basic: the figures used)")
    ap.add_argument("--jobs", type=int, default=2, help="pfm-bench runs in parallel (thread pool)")
    ap.add_argument("--max-splits", type=int, default=0,
                    help="run only the first N splits of each task (a quick look; 0 = all, the benchmark)")
    ap.add_argument("--json", default="", help="write the summary and per-group results here")
    ap.add_argument("--from-json", nargs="+", default=[], metavar="FILE",
                    help="run nothing: print the table of earlier --json files (tasks merged in order)")
    args = ap.parse_args()
    if args.from_json:
        docs = [json.loads(Path(f).read_text()) for f in args.from_json]
        print(markdown({t: v for d in docs for t, v in d["tasks"].items()}, LABELS))
        for d in docs:
            print(f"{', '.join(d['tasks'])}: {d['date']}, commit {d['commit']}, {d['total_s']:.0f} s with "
                  f"{d['jobs']} runs in parallel" + "".join(f"; note: {n}" for n in d["notes"]))
        return
    selected = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(selected) - set(TASKS))
    if unknown:
        ap.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    models = [m for m in args.models.split(",") if m]
    extra = [m for m in args.extra_models.split(",") if m and m not in models]
    t0 = time.perf_counter()
    notes: list[str] = []
    results: dict[str, dict[str, dict[str, Any]]] = {}
    have = installed_models()
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="pfm-acc-") as tmp:
        store = Path(tmp) / "store"
        splits = build_tasks(store, selected, notes)
        if args.max_splits > 0:
            kept = [s for s in splits if sum(1 for o in splits[: splits.index(s)] if o.task == s.task) < args.max_splits]
            for t in selected:
                n_all, n_kept = sum(s.task == t for s in splits), sum(s.task == t for s in kept)
                if n_kept < n_all:
                    notes.append(f"{t}: only the first {n_kept} of its {n_all} splits were run (--max-splits)")
            splits = kept
        print(f"{len(splits)} splits of {len(selected)} tasks imported in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        jobs: list[tuple[SplitRef, str]] = []
        for m in models + extra:
            if m not in have:
                for task in selected:
                    results.setdefault(task, {})[m] = {"status": "not installed", "rows": {}, "fit_s": [],
                                                       "message": f"no installed plugin registers model {m!r}"}
                continue
            jobs += [(s, m) for s in splits]
        # task by task (a stopped run leaves whole tasks in --json), the slow fits first within a task
        jobs.sort(key=lambda j: (selected.index(j[0].task), j[1] not in ("cgio", *extra)))
        n_jobs = {t: sum(1 for j in jobs if j[0].task == t) for t in selected}
        done: dict[str, int] = {}

        def one(job: tuple[SplitRef, str]) -> None:
            ref, m = job
            t1 = time.perf_counter()
            o = run_one(store, m, ref, args.set, args.panels)
            with lock:
                merge(results, ref.task, m, o)
                done[ref.task] = done.get(ref.task, 0) + 1
                print(f"  {ref.task} {ref.sid[:7]} {m}: {o['status']} ({time.perf_counter() - t1:.0f} s)",
                      file=sys.stderr, flush=True)
                finished = [t for t in selected if done.get(t, 0) == n_jobs[t]]
                if args.json and done[ref.task] == n_jobs[ref.task]:  # a task is complete: save what is
                    write_json(args, models, extra, finished, results, notes, time.perf_counter() - t0,
                               complete=False)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(one, jobs))
    total = time.perf_counter() - t0
    summary, ordered = write_json(args, models, extra, selected, results, notes, total, complete=True)
    print(markdown(summary, LABELS))
    for n in notes:
        print(f"note: {n}")
    print(f"total {total:.0f} s, {args.jobs} runs in parallel; commit {commit()}; "
          f"L2 = sqrt(G * basic.mse) per group; * = 95 % interval excludes 0")
    if any(r["status"] == "failed" for t in ordered.values() for m, r in t.items() if m in models):
        sys.exit(1)


def write_json(args: argparse.Namespace, models: list[str], extra: list[str], tasks_done: list[str],
               results: dict[str, dict[str, dict[str, Any]]], notes: list[str], total: float, *,
               complete: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Summarise the finished tasks; write the ``--json`` document (``complete``: every selected task)."""
    ordered = {t: {m: results[t][m] for m in models + extra if m in results.get(t, {})} for t in tasks_done}
    summary = summarise(ordered, extra)
    if args.json:
        doc = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
               "complete": complete, "total_s": round(total, 1), "jobs": args.jobs, "panels": args.panels,
               "notes": notes, "synthetic_options": {"synthetic": SYN_OPTS, "synthetic-context": SYN_CTX_OPTS},
               "tasks": summary, "per_group": ordered}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=float))
    return summary, ordered


if __name__ == "__main__":
    main()
