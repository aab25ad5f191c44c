"""Peak memory and wall time of each step on a SYNTHETIC Replogle-size screen, each step a
fresh ``pfm-bench`` process measured with ``/usr/bin/time -v``.

Steps: write the synthetic file once (``benchmarks/_synthetic_screen.py``, seeded; kept in
``--dir``), ``data import`` (``backed=true`` unless ``--in-memory``), ``splits create``
(random groups, 20 % test), then ``run`` of each ``--models`` with every default panel
(or ``--panels``). Prints one line per step (seconds, peak RSS in GB) and a Markdown
table at the end. Not part of the test suite.

Usage::

    .venv/bin/python benchmarks/stream_memory.py --dir /tmp/replogle          # 300k x 8k, 2k groups
    .venv/bin/python benchmarks/stream_memory.py --dir /tmp/small --cells 30000 --genes 2000 --groups 200
    PYTHONPATH=<old checkout's src dirs> .venv/bin/python benchmarks/stream_memory.py ...   # "before" figures
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _synthetic_screen import REPLOGLE, write_synthetic_screen  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in GB, last stdout line) of ``cmd`` in a fresh process."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    rss = int(m.group(1)) / 1e6 if m else float("nan")
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-25:])
        raise SystemExit(f"step failed ({p.returncode}): {' '.join(cmd)}\n{tail}")
    lines = p.stdout.strip().splitlines()
    return wall, rss, lines[-1].strip() if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True, help="folder for the synthetic file and the store")
    ap.add_argument("--cells", type=int, default=REPLOGLE["n_cells"])
    ap.add_argument("--genes", type=int, default=REPLOGLE["n_genes"])
    ap.add_argument("--groups", type=int, default=REPLOGLE["n_groups"])
    ap.add_argument("--controls", type=int, default=REPLOGLE["n_controls"])
    ap.add_argument("--models", default="linear,additive")
    ap.add_argument("--panels", default=None, help="e.g. basic,vcc (default: every default panel)")
    ap.add_argument("--in-memory", action="store_true", help="import without backed=true")
    ap.add_argument("--label", default="", help="a tag printed with the figures (e.g. before/after)")
    ap.add_argument("--set", action="append", default=[], help="extra --set for the runs")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    src = d / f"synthetic_{a.cells}x{a.genes}_{a.groups}g.h5ad"
    if not src.exists():
        t0 = time.perf_counter()
        info = write_synthetic_screen(src.with_suffix(".tmp"), n_cells=a.cells, n_genes=a.genes, n_groups=a.groups,
                                      n_controls=a.controls)
        src.with_suffix(".tmp").rename(src)
        print(f"wrote SYNTHETIC {src} {info} in {time.perf_counter() - t0:.0f} s", flush=True)
    store = d / f"store{('-' + a.label) if a.label else ''}"
    env = dict(os.environ)
    bench = [sys.executable, "-m", "perturbfm.cli", "--store", str(store)]
    rows: list[tuple[str, float, float]] = []

    def step(name: str, args: list[str]) -> str:
        wall, rss, out = timed(bench + args, env)
        rows.append((name, wall, rss))
        print(f"{a.label:8s} {name:34s} {wall:8.1f} s {rss:6.2f} GB", flush=True)
        return out

    opts = ["--opt", "perturbation_key=perturbation", "--opt", "context_keys=cell_type"]
    if not a.in_memory:
        opts += ["--opt", "backed=true"]
    ds = step("data import" + (" (in memory)" if a.in_memory else " (backed)"),
              ["data", "import", "--adapter", "anndata", str(src), *opts])
    sp = step("splits create (random 20 % test)", ["splits", "create", "--dataset", ds, "--generator",
                                                    "random-groups", "--test-fraction", "0.2"])
    sets = [x for s in a.set for x in ("--set", s)]
    if a.panels:
        sets += ["--set", f"run.panels=[{a.panels}]"]
    for model in [m for m in a.models.split(",") if m]:
        step(f"run {model} ({a.panels or 'every default panel'})", ["run", "--model", model, "--split", sp, *sets])
    print(f"\n| step ({a.cells:,} cells x {a.genes:,} genes, {a.groups:,} groups) {a.label} | seconds | peak RSS (GB) |")
    print("|---|---|---|")
    for name, wall, rss in rows:
        print(f"| {name} | {wall:.0f} | {rss:.2f} |")


if __name__ == "__main__":
    main()
