"""The harness side of the file protocol (protocol 1) between the harness and a
model running in its own environment.

One call (``fit`` or ``predict``) is one folder ``CALL_DIR`` and one subprocess
``<env python> -I worker_host.py CALL_DIR`` (:mod:`perturbfm.envs.worker_host`):

request (harness -> env)
    ``request.json``: ``{"protocol": 1, "call", "worker", "state_dir"}`` and, for
    ``fit``, ``"config"`` (the model section) and ``"train"`` (``genes``, ``groups``,
    ``control_contexts``, ``max_cells_per_group``, ``arrays``); for ``predict``,
    ``"queries"`` (group dicts). Arrays: ``X.npy`` (float32 ``[n_cells, n_genes]``,
    absolute expression) and ``cell_group.npy`` (str ``[n_cells]``).
response (env -> harness)
    ``response.json``: ``{"protocol": 1, "call", "arrays", "notes", "diagnostics"}``
    (+ ``"info"`` for predict) and ``mean_delta.npy`` / ``var_delta.npy``; or
    ``error.json`` (``kind``, ``message``, ``traceback``) with exit status 3.

Everything coming back is checked here: protocol number, known keys only, types,
array shapes against the queries and genes, finiteness; anything else is an
:class:`EnvProtocolError` naming the file and the field.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perturbfm.errors import PerturbFMError, PluginError

PROTOCOL = 1
WORKER_HOST = Path(__file__).with_name("worker_host.py")
_TAIL_CHARS = 3000
_FIT_KEYS = {"protocol", "call", "arrays", "notes", "diagnostics"}
_PREDICT_KEYS = {"protocol", "call", "arrays", "notes", "info", "diagnostics"}


class EnvCallError(PluginError):
    """The model's subprocess crashed (exit status, stderr tail or the worker's traceback)."""


class EnvProtocolError(PluginError):
    """The model's subprocess returned malformed output (which file, which field)."""


class EnvTimeoutError(PerturbFMError):
    """A fit or predict call in a model environment ran past its time limit (a run
    failed by it is recorded as timed out, like one past ``run.timeout_s``)."""

    timed_out = True


# --------------------------------------------------------------------------- requests
def group_dict(g: Any, split: str | None = None, n_sent: int | None = None) -> dict[str, Any]:
    """A group as the worker sees it (``split`` and cell counts only for training groups)."""
    out: dict[str, Any] = {"group_id": g.group_id, "perturbation": g.perturbation, "genes": list(g.genes),
                           "context": g.context, "covariates": g.covariates,
                           "dose": None if g.dose is None else float(g.dose),
                           "time": None if g.time is None else float(g.time), "is_control": bool(g.is_control),
                           # 'genetic' | 'chemical' | 'other' | 'control'; target_genes: the genes a genetic
                           # perturbation hits (empty for a drug or stimulus, whose names are not genes)
                           "kind": str(getattr(g, "kind", "genetic")),
                           "target_genes": list(getattr(g, "target_genes", g.genes))}
    if split is not None:
        out["split"] = split
    if n_sent is not None:
        out["n_cells"] = int(n_sent)
        out["n_cells_total"] = int(g.n_cells)
    return out


def _pick(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the rows kept: all, or ``cap`` of them uniformly without replacement (sorted)."""
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))


class _Rows:
    """Row indices of every group and of each context's controls, computed once (reading the
    group column per group is quadratic in the number of groups)."""

    def __init__(self, adata: Any) -> None:
        import pandas as pd

        from perturbfm.dataset import CONTEXT_COL, CONTROL_COL, ensure_group_column

        self.adata = adata
        col = pd.Categorical(ensure_group_column(adata))
        codes = np.asarray(col.codes)
        order = np.argsort(codes, kind="stable")
        bounds = np.cumsum(np.bincount(codes[codes >= 0], minlength=len(col.categories)))[:-1]
        self.groups = {str(c): idx for c, idx in zip(col.categories, np.split(order[codes[order] >= 0], bounds))}
        obs = adata.obs
        is_ctrl = obs[CONTROL_COL].to_numpy(dtype=bool)
        ctx = obs[CONTEXT_COL].astype(str).to_numpy()
        self.controls = {c: np.flatnonzero(is_ctrl & (ctx == c)) for c in sorted(set(ctx[is_ctrl]))}

    def read(self, idx: np.ndarray) -> np.ndarray:
        import scipy.sparse as sp

        X = self.adata.X[idx] if idx.size else self.adata.X[:0]
        return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)


def training_payload(train: Any, val: Any | None, *, max_cells_per_group: int,
                     seed: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(metadata, X, cell_group) of the training (and validation) groups and the control
    cells of every context the harness exposes, each group capped at
    ``max_cells_per_group`` cells (uniform without replacement, ``seed``)."""
    from perturbfm.dataset import CONTROL, GroupInfo, group_id

    rng = np.random.default_rng(seed)
    rows = _Rows(train._adata) if hasattr(train, "_adata") else None
    blocks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    groups: list[dict[str, Any]] = []

    def add(gid: str, cells: np.ndarray) -> None:
        blocks.append(cells)
        labels.append(np.full(cells.shape[0], gid))

    for split, data in (("train", train), ("val", val)):
        if data is None:
            continue
        for g in data.groups:
            if rows is not None and data._adata is train._adata:
                idx = rows.groups.get(g.group_id, np.zeros(0, dtype=np.intp))
                cells = rows.read(idx[_pick(idx.size, max_cells_per_group, rng)])
            else:
                all_cells = np.asarray(data.cells(g.group_id), dtype=np.float32)
                cells = all_cells[_pick(all_cells.shape[0], max_cells_per_group, rng)]
            add(g.group_id, cells)
            groups.append(group_dict(g, split, cells.shape[0]))
    control_contexts = [c for c in train.control.contexts if train.control.has(c)]
    for ctx in control_contexts:
        gid = group_id(CONTROL, ctx)
        if rows is not None:
            idx = rows.controls.get(ctx, np.zeros(0, dtype=np.intp))
            n_total = idx.size
            cells = rows.read(idx[_pick(idx.size, max_cells_per_group, rng)])
        else:
            all_cells = np.asarray(train.control_cells(ctx), dtype=np.float32)
            n_total = all_cells.shape[0]
            cells = all_cells[_pick(n_total, max_cells_per_group, rng)]
        info = GroupInfo(group_id=gid, perturbation=CONTROL, context=ctx, covariates="", n_cells=int(n_total))
        add(gid, cells)
        groups.append(group_dict(info, "control", cells.shape[0]))
    n_genes = len(train.genes)
    X = np.concatenate(blocks, axis=0) if blocks else np.zeros((0, n_genes), dtype=np.float32)
    cell_group = np.concatenate(labels).astype(str) if labels else np.zeros(0, dtype="<U1")
    meta = {"genes": list(train.genes), "groups": groups, "control_contexts": control_contexts,
            "max_cells_per_group": int(max_cells_per_group), "synthetic": bool(getattr(train, "synthetic", False))}
    return meta, X, cell_group


def write_request(call_dir: Path, request: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    call_dir.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for key, arr in (arrays or {}).items():
        names[key] = f"{key}.npy"
        np.save(call_dir / names[key], arr, allow_pickle=False)
    body = {"protocol": PROTOCOL, **request}
    if arrays is not None:
        body["train"] = {**body["train"], "arrays": names}
    (call_dir / "request.json").write_text(json.dumps(body, allow_nan=False))


# --------------------------------------------------------------------------- the subprocess
def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data[-_TAIL_CHARS:].decode("utf-8", errors="replace").strip()
    return text


def run_call(python: Path, call_dir: Path, *, call: str, where: str, timeout_s: float | None,
             option: str = "run.env_call_timeout_s") -> float:
    """Run one call in the environment's Python; returns the seconds it took.

    Raises :class:`EnvTimeoutError` past ``timeout_s`` (the process group is killed),
    :class:`EnvCallError` when it exits non-zero. The subprocess is killed whatever
    interrupts the wait (the run's own time limit included)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                             "PYTHONSTARTUP")}
    cmd = [str(python), "-I", str(WORKER_HOST), str(call_dir)]
    t0 = time.perf_counter()
    with open(call_dir / "stdout.log", "wb") as out, open(call_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=call_dir, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            what = (f"run.env_call_timeout_s = {timeout_s:g} s" if option == "run.env_call_timeout_s" else
                    f"the {timeout_s:.3g} s left under {option}")
            raise EnvTimeoutError(
                f"{where}: {call}() did not finish within {what} (timed out; the process was killed)",
                field=option, fix=f"raise it (--set {option}=SECONDS, or null for no limit) or make the model "
                "faster") from None
        finally:
            _kill(proc)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise _crash(call_dir, call, where, rc)
    return seconds


def _crash(call_dir: Path, call: str, where: str, rc: int) -> PluginError:
    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    detail = ""
    err_file = call_dir / "error.json"
    if err_file.is_file():
        try:
            err = json.loads(err_file.read_text())
            detail = f"\n{err.get('message', '')}\n{str(err.get('traceback', ''))[-_TAIL_CHARS:]}".rstrip()
            if err.get("kind") == "unserialisable_output":
                return EnvProtocolError(f"{where}: {call}() returned malformed output: {err.get('message')}",
                                        field=f"{call}() return value",
                                        fix="return arrays as numeric ndarrays and the rest as JSON values "
                                        "(see docs/environments.md)")
        except (OSError, ValueError):
            detail = ""
    if not detail:
        stderr = _tail(call_dir / "stderr.log")
        detail = f"\nstderr (last lines):\n{stderr}" if stderr else "\n(no output on stderr)"
    return EnvCallError(f"{where}: the {call}() subprocess {how}.{detail}", field=f"{call}()",
                        fix="fix the worker (the traceback above is the env side's), or rebuild the environment "
                        "(pfm-bench envs build MODEL --force) if a package is broken")


# --------------------------------------------------------------------------- responses
def _bad(where: str, path: Path, field: str, problem: str) -> EnvProtocolError:
    return EnvProtocolError(f"{where}: malformed output from the environment: {field} {problem}", file=str(path),
                            field=field, fix="fix the worker's return value (see docs/environments.md, "
                            "'Worker API')")


def _response(call_dir: Path, call: str, where: str, allowed: set[str]) -> dict[str, Any]:
    path = call_dir / "response.json"
    if not path.is_file():
        raise _bad(where, path, "response.json", "was not written (the subprocess exited 0 without a response)")
    try:
        resp = json.loads(path.read_text())
    except ValueError as exc:
        raise _bad(where, path, "response.json", f"is not valid JSON ({exc})") from None
    if not isinstance(resp, dict):
        raise _bad(where, path, "response.json", f"is a {type(resp).__name__}, not an object")
    if resp.get("protocol") != PROTOCOL:
        raise _bad(where, path, "protocol", f"is {resp.get('protocol')!r}, expected {PROTOCOL}")
    if resp.get("call") != call:
        raise _bad(where, path, "call", f"is {resp.get('call')!r}, expected {call!r}")
    unknown = sorted(set(resp) - allowed)
    if unknown:
        raise _bad(where, path, ", ".join(unknown), f"{'is not a' if len(unknown) == 1 else 'are not'} known "
                   f"key(s) of a {call}() result (allowed: {', '.join(sorted(allowed - {'protocol', 'call', 'arrays'}))}"
                   + (", mean_delta, var_delta" if call == "predict" else "") + ")")
    if not isinstance(resp.get("arrays", {}), dict):
        raise _bad(where, path, "arrays", "is not an object")
    for key in ("notes", "diagnostics", "info"):
        if key in resp and not isinstance(resp[key], dict):
            raise _bad(where, path, key, f"is a {type(resp[key]).__name__}, expected a dict")
    return resp


def read_fit_response(call_dir: Path, where: str) -> dict[str, Any]:
    """``{"notes": {...}, "diagnostics": {...}}`` of a fit call."""
    resp = _response(call_dir, "fit", where, _FIT_KEYS)
    if resp.get("arrays"):
        raise _bad(where, call_dir / "response.json", ", ".join(resp["arrays"]), "are arrays, which fit() cannot "
                   "return (keep the model's state in state_dir)")
    return {"notes": resp.get("notes", {}), "diagnostics": resp.get("diagnostics", {})}


def _array(call_dir: Path, resp: dict[str, Any], key: str, shape: tuple[int, int], where: str) -> np.ndarray | None:
    name = resp.get("arrays", {}).get(key)
    if name is None:
        return None
    path = call_dir / str(name)
    if Path(str(name)).name != str(name) or not path.is_file():
        raise _bad(where, call_dir / "response.json", key, f"names a file {name!r} that is not in the call folder")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise _bad(where, path, key, f"cannot be read as a .npy array ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise _bad(where, path, key, f"has dtype {arr.dtype}, expected numbers")
    if arr.shape != shape:
        raise _bad(where, path, key, f"has shape {arr.shape}, expected {shape} (queries x genes)")
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise _bad(where, path, key, f"has {int(bad.sum())} non-finite value(s) (first in row {row})")
    if key == "var_delta" and (arr < 0).any():
        raise _bad(where, path, key, "has negative variances")
    return np.asarray(arr, dtype=np.float64)


def read_predict_response(call_dir: Path, where: str, query_ids: Sequence[str],
                          n_genes: int) -> dict[str, Any]:
    """``mean_delta``, ``var_delta`` (or None), ``notes``, ``info``, ``diagnostics`` of a predict call,
    each checked against the queries and genes."""
    resp = _response(call_dir, "predict", where, _PREDICT_KEYS)
    path = call_dir / "response.json"
    unknown = sorted(set(resp.get("arrays", {})) - {"mean_delta", "var_delta"})
    if unknown:
        raise _bad(where, path, ", ".join(unknown), "are not arrays predict() may return (mean_delta, var_delta)")
    shape = (len(query_ids), n_genes)
    mean = _array(call_dir, resp, "mean_delta", shape, where)
    if mean is None:
        raise _bad(where, path, "mean_delta", "is missing (predict() must return it)")
    var = _array(call_dir, resp, "var_delta", shape, where)
    notes = resp.get("notes", {})
    stray = sorted(set(notes) - set(query_ids))
    if stray:
        raise _bad(where, path, "notes", f"names group(s) that were not queried: {', '.join(stray[:5])}")
    if not all(isinstance(v, str) for v in notes.values()):
        raise _bad(where, path, "notes", "must map group ids to strings")
    return {"mean_delta": mean, "var_delta": var, "notes": notes, "info": resp.get("info", {}),
            "diagnostics": resp.get("diagnostics", {})}
