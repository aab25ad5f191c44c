"""CGIO vs the simple baselines on the real data subsets (see shared/data/README.md).

Tasks:
  * devel-doubles: the 5 K562 doubles whose two singles are measured (explicit hold-out).
  * devel-glioma: each of A172/T98G/U87MG held out in turn (its 9 CRISPRi knock-downs are
    test, every other group trains); 27 held-out groups pooled.
  * papalexi: unseen single knock-outs, 5-fold over the 25 targets with >= 20 confident
    cells (raw counts -> log1p CP10k); 25 held-out groups pooled.

Metrics per held-out group (pseudobulk over all genes, delta vs the same context's
control mean): Pearson delta and L2. The table gives the mean over held-out groups
and, for cgio − best baseline, a bootstrap 95% CI over held-out groups.

``--inner`` replaces every task's test set by a seeded 25% slice of its *training*
groups (the real test groups are dropped entirely): use it for design and
hyper-parameter choices, so those never see the test groups.

Usage: .venv/bin/python benchmarks/cgio_vs_baselines.py [--inner] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from perturbfm.dataset import control_stats, ensure_group_column, group_table, grouped_moments
from perturbfm.training import TrainingData
from perturbfm_bench_adapters.anndata_adapter import AnnDataAdapter
from perturbfm_models.baselines import AdditiveModel, ControlMeanModel, LinearModel, TrainMeanModel
from perturbfm_models.cgio import CGIOModel

REPO = Path(__file__).resolve().parents[1]
BASELINES = [ControlMeanModel, TrainMeanModel, AdditiveModel, LinearModel]


def shared() -> Path:
    raw = Path(os.environ.get("PFM_SHARED_DATA", "../shared/data"))
    return (raw if raw.is_absolute() else REPO / raw).resolve()


def load_devel():
    return AnnDataAdapter().load(str(shared() / "perturbench_devel/norman19_mcfaline23_devel.h5ad"),
                                 perturbation_key="condition", control="control", context_keys="cell_type").adata


def load_papalexi():
    return AnnDataAdapter().load(str(shared() / "papalexi2021_thp1/papalexi2021_thp1_lowmoi.h5ad"),
                                 perturbation_key="perturbation", control="control",
                                 obs_filter="confident_assignment=True", expression="counts").adata


def devel_tasks(groups: dict) -> list[tuple[str, str, list[str]]]:
    """(family, task, test group ids) of the devel file."""
    k562 = {g.perturbation for g in groups.values() if g.context == "k562" and not g.is_control}
    singles = {p for p in k562 if "+" not in p}
    doubles = sorted(p for p in k562 if "+" in p and all(x in singles for x in p.split("+")))
    tasks = [("devel-doubles", "k562-doubles", [f"{d}@k562" for d in doubles])]
    for line in ("A172", "T98G", "U87MG"):
        tasks.append(("devel-glioma", f"holdout-{line}",
                      sorted(g for g, v in groups.items() if v.context == line and not v.is_control)))
    return tasks


def papalexi_tasks(groups: dict) -> list[tuple[str, str, list[str]]]:
    targets = sorted(g for g, v in groups.items() if not v.is_control and v.n_cells >= 20)
    perm = np.random.default_rng(0).permutation(len(targets))
    folds = np.array_split(perm, 5)
    return [("papalexi", f"fold{i}", sorted(targets[j] for j in f)) for i, f in enumerate(folds)]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) < 1e-12 or np.std(b) < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def run_family(adata, tasks, cgio_cfg: dict[str, Any], inner: bool, log: list) -> dict[str, dict[str, list]]:
    groups = group_table(adata)
    ctrl = control_stats(adata)
    labels = ensure_group_column(adata).astype(str).to_numpy()
    order = [g for g, v in groups.items() if not v.is_control]
    means = dict(zip(order, grouped_moments(adata, labels, order)[0]))
    res: dict[str, dict[str, list]] = {}
    for family, task, test in tasks:
        train_ids = [g for g in order if g not in set(test)]
        if inner:  # pseudo-test = seeded slice of the training groups; real test groups dropped
            rng = np.random.default_rng(1)
            pick = set(rng.choice(train_ids, max(1, len(train_ids) // 4), replace=False).tolist())
            test, train_ids = sorted(pick), [g for g in train_ids if g not in pick]
        train = TrainingData(adata, [groups[g] for g in train_ids], ctrl)
        queries = [groups[g] for g in test]
        truth = np.stack([means[g] - ctrl.mean(groups[g].context) for g in test])
        for cls in [*BASELINES, CGIOModel]:
            model = cls()
            cfg = {**model.default_config(), **(cgio_cfg if cls is CGIOModel else {})}
            t0 = time.perf_counter()
            model.fit(train, None, cfg)
            pred = model.predict(queries)
            dt = time.perf_counter() - t0
            r = res.setdefault(family, {}).setdefault(cls.name, [])
            for i, g in enumerate(test):
                r.append((g, pearson(pred.mean_delta[i], truth[i]), float(np.linalg.norm(pred.mean_delta[i] - truth[i]))))
            if cls is CGIOModel:
                d = model.diagnostics()
                log.append({"task": f"{family}/{task}", "fit_predict_s": round(dt, 2),
                            "nodes": d["node_universe"]["n_nodes"], "curve": d["training_curve"],
                            "gates": d["gates"], "notes": pred.notes})
                print(f"  {family}/{task}: cgio {dt:.1f}s, {len(test)} test groups", file=sys.stderr)
    return res


def bootstrap_ci(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, str]:
    """Paired 95% CI of the mean difference over groups (undefined groups left out), from
    :func:`perturbfm.stats.bootstrap_interval`: (low, high, method); NaN bounds when undefined."""
    from perturbfm.stats import bootstrap_interval

    iv = bootstrap_interval(diff, n_resamples=n, seed=seed)
    nan = float("nan")
    return (nan if iv.low is None else iv.low), (nan if iv.high is None else iv.high), iv.method


def table(res: dict[str, dict[str, list]]) -> str:
    lines = ["| task | model | Pearson delta | L2 |", "|---|---|---|---|"]
    for family, models in res.items():
        for name, rows in models.items():
            p = np.array([r[1] for r in rows]); l2 = np.array([r[2] for r in rows])
            ps = "–" if np.isnan(p).all() else f"{np.nanmean(p):.3f}"
            lines.append(f"| {family} (n={len(rows)}) | {name} | {ps} | {l2.mean():.3f} |")
        cg = models["cgio"]
        for col, label, better in ((1, "Pearson delta", max), (2, "L2", min)):
            cands = {n: np.nanmean([r[col] for r in rows]) for n, rows in models.items()
                     if n != "cgio" and not np.isnan([r[col] for r in rows]).all()}
            best = better(cands, key=cands.get)
            diff = np.array([a[col] - b[col] for a, b in zip(cg, models[best])])
            lo, hi, how = bootstrap_ci(diff)
            lines.append(f"| {family} | cgio − {best} ({label}) | " + (
                f"{np.nanmean(diff):+.3f} [{lo:+.3f}, {hi:+.3f}] ({how}) |  |" if col == 1 else
                f" | {np.nanmean(diff):+.3f} [{lo:+.3f}, {hi:+.3f}] ({how}) |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inner", action="store_true", help="evaluate on a slice of the training groups")
    ap.add_argument("--set", action="append", default=[], help="cgio config key=value (JSON value)")
    ap.add_argument("--only", default="", help="devel or papalexi")
    ap.add_argument("--json", default="", help="write per-group results and cgio logs here")
    args = ap.parse_args()
    cfg = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            cfg[k] = json.loads(v)
        except json.JSONDecodeError:
            cfg[k] = v
    res, log = {}, []
    if args.only in ("", "devel"):
        a = load_devel()
        res.update(run_family(a, devel_tasks(group_table(a)), cfg, args.inner, log))
    if args.only in ("", "papalexi"):
        a = load_papalexi()
        res.update(run_family(a, papalexi_tasks(group_table(a)), cfg, args.inner, log))
    print(("INNER VALIDATION (training groups only)\n" if args.inner else "") + table(res))
    print("cgio fit+predict seconds:", {e["task"]: e["fit_predict_s"] for e in log})
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, "cgio": log, "config": cfg}, indent=1, default=str))


if __name__ == "__main__":
    main()
