"""Scale benchmark: every step of PerturbFM as a fresh ``pfm-bench`` process on SYNTHETIC
screens of real sizes, with wall time and peak RSS (``/usr/bin/time -v``), repeated, with
spread; the eval scaling curve; the peers (cell-eval 0.8.2 full profile, cell-eval2 0.20.0 on
CPU) on the same files; and the per-shard cost of the sharded evaluation (for the Tahoe-100M
estimate in docs/scale.md).

Parts (``--parts``, default all):

``pipeline``
    Norman-size (91k cells x 5k genes, 280 groups) and Replogle-size (300k x 8k, 2k groups)
    screens (``--sizes``), written once per seed into ``--cache-dir`` by
    ``benchmarks/_synthetic_screen.py`` (the ``stream`` engineer's writer), then: ``data import``
    (in memory and ``--opt backed=true``), ``splits create`` (random-groups), ``run`` of
    ``linear``, ``additive`` and ``cgio`` with every default panel, and ``eval`` with every
    panel of a seeded noisy copy of the screen (the "prediction": same cells, values times a
    log-normal factor) against the screen, in memory and ``--backed``.
``curve``
    ``pfm-bench eval`` (every panel) at ``--curve`` groups (default 100, 1,000, 3,000, 10,000)
    x 100 cells x 2,000 genes (+1,000 controls), files from ``metrics_vs_celleval.make_files``;
    prints seconds and MB per 1,000 groups between points (the goal: linear within +-20 %).
``peers``
    Both input shapes of issue 17 (A: ``--peer-groups`` groups x 100 cells x 2,000 genes with
    1,000 controls; B: 1,000 groups with 100 controls), log1p of Poisson counts (float32):
    ``pfm-bench eval`` (every panel) vs cell-eval 0.8.2 ``profile="full"`` and cell-eval2
    0.20.0 (``vcc2026`` preset, CPU, on the counts twins), each a fresh process; prints the
    time and peak-memory ratios (goals: time <= 0.2x, memory <= 1x).
``shard``
    ``pfm-bench eval --executor process --workers W --shard-by context`` on a screen with
    ``--shard-contexts`` contexts: the per-shard wall time and worker peak RSS reported in
    metrics.json's ``sharding`` section (the inputs of docs/scale.md's estimate).

Peers run in ``--peer-python`` interpreters (``celleval=PATH``, ``celleval2=PATH``); by default
the interpreter running this script when it imports them, else a venv is made for each under
``--cache-dir/peers`` (``pip install -c constraints.txt``: torch comes from the local wheel,
never from PyPI). Every figure is the median of ``--repeats`` runs with its [min, max]; CPU
seconds (user + sys of the process and its children) are printed beside wall seconds, the
steadier figure on a loaded machine.
Nothing is asserted: this is a report. ``--quick`` runs every part on tiny sizes (a smoke run).

Usage::

    .venv/bin/python benchmarks/scale.py --quick
    .venv/bin/python benchmarks/scale.py --parts pipeline --sizes norman --repeats 3
    .venv/bin/python benchmarks/scale.py --parts curve,peers --repeats 3
    .venv/bin/python benchmarks/scale.py            # the full table (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

SIZES = {
    "norman": {"n_cells": 91_000, "n_genes": 5_000, "n_groups": 280, "n_controls": 11_000},
    "replogle": {"n_cells": 300_000, "n_genes": 8_000, "n_groups": 2_000, "n_controls": 10_000},
    "quick": {"n_cells": 3_000, "n_genes": 300, "n_groups": 30, "n_controls": 400},
    # the per-shard cost measurement: 4 contexts x ~15 groups x ~115 cells x 1,000 genes
    "mid": {"n_cells": 8_000, "n_genes": 1_000, "n_groups": 60, "n_controls": 1_000},
}
CURVE = (100, 1_000, 3_000, 10_000)
MODELS = ("linear", "additive", "cgio")
PARTS = ("pipeline", "curve", "peers", "shard")
PEER_PINS = {"celleval": "cell-eval==0.8.2", "celleval2": "cell-eval2==0.20.0"}
PEER_MODULES = {"celleval": "cell_eval", "celleval2": "cell_eval2"}


# ----------------------------------------------------------------------------- measuring
def _bin(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def measure(cmd: list[str], env: dict[str, str] | None = None, label: str = "") -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``; wall time, peak RSS (GB), exit code, stdout."""
    timer = shutil.which("time") or "/usr/bin/time"
    t0 = time.perf_counter()
    proc = subprocess.run([timer, "-v", *cmd], capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(m.group(1)) / 1024**2 if m else float("nan")
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", proc.stderr))
    out = {"label": label, "wall_s": wall, "cpu_s": cpu, "rss_gb": rss, "rc": proc.returncode, "stdout": proc.stdout}
    if proc.returncode != 0:
        tail = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("\t"))[-1500:]
        out["error"] = tail
        print(f"    ! {label} exited {proc.returncode} (peak {rss:.2f} GB): {tail[-400:]}", flush=True)
    return out


def _spread(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a"
    med = statistics.median(xs)
    return f"{med:8.1f} [{min(xs):.1f}, {max(xs):.1f}]" if len(xs) > 1 else f"{med:8.1f}"


def repeat(cmd: list[str], repeats: int, label: str, env: dict[str, str] | None = None,
           prepare: object = None) -> list[dict]:
    runs = []
    for _ in range(repeats):
        if callable(prepare):
            prepare()
        runs.append(measure(cmd, env, label))
    ok = [r for r in runs if r["rc"] == 0]
    print(f"  {label:<44} wall s {_spread([r['wall_s'] for r in ok])}   CPU s {_spread([r['cpu_s'] for r in ok])}"
          f"   peak GB "
          f"{_spread([r['rss_gb'] for r in runs])}" + ("" if len(ok) == len(runs) else
                                                      f"   ({len(runs) - len(ok)} of {len(runs)} FAILED)"),
          flush=True)
    return runs


def _median(runs: list[dict], key: str) -> float:
    xs = [r[key] for r in runs if r["rc"] == 0 and r[key] == r[key]]
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------- data
def screen(cache: Path, name: str, seed: int, n_contexts: int = 1) -> Path:
    """The seeded synthetic screen ``name`` (written once into ``cache``)."""
    try:
        from _synthetic_screen import write_synthetic_screen
    except ImportError as exc:
        raise SystemExit("benchmarks/_synthetic_screen.py is missing (it comes with the stream engineer's branch); "
                         "merge it, or run only --parts curve,peers") from exc
    dims = SIZES[name]
    path = cache / f"screen-{name}-ctx{n_contexts}-seed{seed}.h5ad"
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_suffix(".tmp.h5ad")
        write_synthetic_screen(tmp, seed=seed, n_contexts=n_contexts, **dims)
        tmp.rename(path)
        print(f"  wrote SYNTHETIC {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def prediction_of(truth: Path, seed: int = 1, chunk: int = 1 << 22) -> Path:
    """A SYNTHETIC "prediction" of ``truth``: the same cells and labels, every stored value
    multiplied by a seeded log-normal factor (sd 0.2), written once beside it in chunks."""
    import h5py
    import numpy as np

    out = truth.with_name(truth.stem + f"-pred{seed}.h5ad")
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp.h5ad")
    shutil.copyfile(truth, tmp)
    rng = np.random.default_rng(seed)
    with h5py.File(tmp, "r+") as f:
        d = f["X"]["data"]
        for s in range(0, d.shape[0], chunk):
            v = d[s:s + chunk]
            d[s:s + chunk] = (v * rng.lognormal(0.0, 0.2, v.size)).astype(v.dtype)
    tmp.rename(out)
    return out


def pair_files(cache: Path, n_pert: int, n_ctrl: int, n_cells: int = 100, n_genes: int = 2_000) -> tuple[Path, Path]:
    """truth/pred files (and counts twins) of ``metrics_vs_celleval.make_files``, written once."""
    from metrics_vs_celleval import make_files

    d = cache / f"pair-{n_pert}g-{n_cells}c-{n_genes}genes-{n_ctrl}ctrl"
    if not (d / "pred_counts.h5ad").exists():
        d.mkdir(parents=True, exist_ok=True)
        make_files(d, n_pert=n_pert, n_cells=n_cells, n_genes=n_genes, n_ctrl=n_ctrl, seed=0)
    return d / "truth.h5ad", d / "pred.h5ad"


# ----------------------------------------------------------------------------- parts
def part_pipeline(args: argparse.Namespace, cache: Path) -> None:
    pfm = _bin("pfm-bench")
    for size in args.sizes:
        print(f"\n== pipeline, {size}-size SYNTHETIC screen {SIZES[size]} ==", flush=True)
        truth = screen(cache, size, 0)
        pred = prediction_of(truth)
        store = cache / f"store-{size}"
        imp = [pfm, "--store", str(store), "data", "import", str(truth), "--perturbation-key", "perturbation",
               "--control", "control", "--context-key", "cell_type", "--expression", "log1p", "--json"]

        def fresh() -> None:
            shutil.rmtree(store, ignore_errors=True)

        runs = repeat(imp, args.repeats, "data import", prepare=fresh)
        repeat(imp + ["--opt", "backed=true"], args.repeats, "data import --opt backed=true", prepare=fresh)
        ok = [r for r in runs if r["rc"] == 0]
        if not ok or not store.exists():
            print("  import failed: the remaining steps need the dataset", flush=True)
        else:
            fresh()
            r = measure(imp, label="import (for the next steps)")
            dataset = json.loads(r["stdout"])["id"] if r["rc"] == 0 else None
            split_cmd = [pfm, "--store", str(store), "splits", "create", "--dataset", str(dataset), "--generator",
                         "random-groups", "--seed", "0", "--json"]
            sruns = repeat(split_cmd, args.repeats, "splits create (random-groups)")
            split = next((json.loads(s["stdout"]).get("id") for s in sruns if s["rc"] == 0), None)
            for model in args.models if split else ():
                repeat([pfm, "--store", str(store), "run", "--model", model, "--split", str(split), "--quiet"],
                       args.repeats, f"run {model} (every default panel)")
        for backed in (False, True):
            out = cache / f"metrics-{size}{'-backed' if backed else ''}.json"
            cmd = [pfm, "eval", "--pred", str(pred), "--truth", str(truth), "--context-key", "cell_type",
                   "--out", str(out)] + (["--backed"] if backed else [])
            repeat(cmd, args.repeats, f"eval, every panel{' --backed' if backed else ' (in memory)'}")


def part_curve(args: argparse.Namespace, cache: Path) -> None:
    pfm = _bin("pfm-bench")
    print(f"\n== eval scaling curve: groups x 100 cells x {args.curve_genes:,} genes, every panel (+1,000 controls) ==",
          flush=True)
    pts = []
    for n in args.curve:
        truth, pred = pair_files(cache, n, 1_000, n_genes=args.curve_genes)
        runs = repeat([pfm, "eval", "--pred", str(pred), "--truth", str(truth), "--out",
                       str(truth.parent / "metrics.json")] + (["--backed"] if args.curve_backed else []),
                      args.repeats, f"eval {n:>6} groups")
        pts.append((n, _median(runs, "cpu_s"), _median(runs, "rss_gb")))
    for (n0, t0, m0), (n1, t1, m1) in zip(pts, pts[1:]):
        print(f"  {n0:>6} -> {n1:>6} groups: {1000 * (t1 - t0) / (n1 - n0):7.1f} CPU s and "
              f"{1000 * (m1 - m0) / (n1 - n0):6.2f} GB per 1,000 more groups", flush=True)
    if len(pts) >= 2:
        per = [t / n for n, t, _ in pts]
        print("  CPU seconds per group: " + ", ".join(f"{n}: {p:.3f}" for (n, _, _), p in zip(pts, per)), flush=True)


def _peer_python(args: argparse.Namespace, cache: Path, side: str) -> str | None:
    given = dict(kv.split("=", 1) for kv in args.peer_python)
    if side in given:
        return given[side]
    probe = subprocess.run([sys.executable, "-c", f"import {PEER_MODULES[side]}"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    venv = cache / "peers" / side
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"  making a venv for {PEER_PINS[side]} in {venv} (pip -c constraints.txt)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        rc = subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"),
                             PEER_PINS[side], "anndata", "scipy"]).returncode
        if rc != 0:
            print(f"  ! could not install {PEER_PINS[side]}; skipped", flush=True)
            return None
    return str(py)


def part_peers(args: argparse.Namespace, cache: Path) -> None:
    pfm = _bin("pfm-bench")
    shapes = {"A": (args.peer_groups, 1_000), "B": (args.peer_groups_b, 100)}
    for shape, (n_pert, n_ctrl) in shapes.items():
        print(f"\n== peers, shape {shape}: {n_pert} groups x 100 cells x 2,000 genes, {n_ctrl} controls "
              "(SYNTHETIC, log1p of Poisson counts) ==", flush=True)
        truth, pred = pair_files(cache, n_pert, n_ctrl)
        res = {"ours": repeat([pfm, "eval", "--pred", str(pred), "--truth", str(truth), "--out",
                               str(truth.parent / "metrics.json")], args.repeats, "ours: pfm-bench eval, every panel")}
        for side in ("celleval", "celleval2"):
            py = _peer_python(args, cache, side)
            if py is None:
                continue
            outdir = truth.parent / f"out-{side}"
            outdir.mkdir(exist_ok=True)
            res[side] = repeat([py, str(HERE / "metrics_vs_celleval.py"), "--side", side, "--truth", str(truth),
                                "--pred", str(pred), "--outdir", str(outdir), "--threads", str(args.threads)],
                               args.repeats, {"celleval": "cell-eval 0.8.2 full profile",
                                              "celleval2": "cell-eval2 0.20.0 vcc2026 (CPU)"}[side])
        for side in ("celleval", "celleval2"):
            if side in res:
                t = _median(res["ours"], "wall_s") / _median(res[side], "wall_s")
                c = _median(res["ours"], "cpu_s") / _median(res[side], "cpu_s")
                m = _median(res["ours"], "rss_gb") / _median(res[side], "rss_gb")
                print(f"  ours / {side:<9}: wall {t:5.2f}x, CPU {c:5.2f}x (goal <= 0.2)   peak memory {m:5.2f}x "
                      "(goal <= 1)"
                      + ("" if t <= 0.2 and m <= 1 else "   MISSED"), flush=True)


def part_shard(args: argparse.Namespace, cache: Path) -> None:
    pfm = _bin("pfm-bench")
    size = args.shard_size
    print(f"\n== sharded eval: {size}-size screen over {args.shard_contexts} contexts, "
          f"--executor {args.shard_executor} --workers {args.workers} --shard-by context ==", flush=True)
    truth = screen(cache, size, 0, n_contexts=args.shard_contexts)
    pred = prediction_of(truth)
    for sharded in (False, True):
        out = cache / f"metrics-shard-{size}-{int(sharded)}.json"
        cmd = [pfm, "eval", "--pred", str(pred), "--truth", str(truth), "--context-key", "cell_type", "--backed",
               "--panels", args.shard_panels, "--out", str(out)]
        if sharded:
            cmd += ["--executor", args.shard_executor, "--workers", str(args.workers), "--shard-by", "context"]
        runs = repeat(cmd, args.repeats, "eval --backed, sharded" if sharded else "eval --backed, one process")
        if sharded and any(r["rc"] == 0 for r in runs):
            st = json.loads(out.read_text()).get("sharding", {})
            for s in st.get("shards", []):
                print(f"    {s['label'][:64]:<64} {s['wall_s']:7.1f} s wall {s.get('cpu_s', float('nan')):7.1f} s CPU"
                      f"  worker peak {s['worker_peak_rss_mb']:6.0f} MB", flush=True)
            walls = [s.get("cpu_s", s["wall_s"]) for s in st.get("shards", [])]
            groups = [s["n_groups"] for s in st.get("shards", [])]
            if walls:
                print(f"    per-shard cost: {sum(walls) / sum(groups):.3f} CPU s per group (sum over shards), "
                      f"map wall {st.get('map_wall_s')} s", flush=True)


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--sizes", default="norman,replogle", help="pipeline sizes: norman, replogle")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--curve", default=",".join(map(str, CURVE)), help="groups of the eval curve")
    ap.add_argument("--curve-genes", type=int, default=2_000)
    ap.add_argument("--curve-backed", action="store_true", help="the curve with eval --backed")
    ap.add_argument("--peer-groups", type=int, default=1_000, help="groups of peer shape A")
    ap.add_argument("--peer-groups-b", type=int, default=1_000, help="groups of peer shape B (100 controls)")
    ap.add_argument("--peer-python", action="append", default=[], metavar="SIDE=PYTHON",
                    help="interpreter of a peer: celleval=..., celleval2=...")
    ap.add_argument("--threads", type=int, default=2, help="threads given to the peers")
    ap.add_argument("--shard-size", default="mid", choices=sorted(SIZES))
    ap.add_argument("--shard-contexts", type=int, default=4)
    ap.add_argument("--shard-executor", default="process", help="process or ray")
    ap.add_argument("--shard-panels", default="standard")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "perturbfm-scale"))
    ap.add_argument("--quick", action="store_true", help="every part on tiny sizes, one repeat (a smoke run)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        ap.error(f"unknown parts {bad}; choose from {', '.join(PARTS)}")
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.curve = [int(x) for x in args.curve.split(",") if x.strip()]
    if args.quick:
        args.sizes, args.curve, args.curve_genes, args.repeats = ["quick"], [20, 60], 300, 1
        args.peer_groups = args.peer_groups_b = 20
        args.shard_size, args.shard_contexts = "quick", 3
    cache = Path(args.cache_dir) / ("quick" if args.quick else "full")
    cache.mkdir(parents=True, exist_ok=True)
    import platform

    print(f"scale benchmark (SYNTHETIC data), {os.cpu_count()} CPUs, load {os.getloadavg()}, "
          f"python {platform.python_version()}, cache {cache}", flush=True)
    t0 = time.perf_counter()
    for part in parts:
        {"pipeline": part_pipeline, "curve": part_curve, "peers": part_peers, "shard": part_shard}[part](args, cache)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
