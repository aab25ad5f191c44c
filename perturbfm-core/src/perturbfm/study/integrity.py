"""Which run directories a study trusts, and reading their files back safely.

A study never takes a run directory on its word. A cell's run is trusted only when

* its run id is a plain directory name and the run lies directly in the store's
  ``runs/`` folder (a ``run_dir`` recorded elsewhere, or a symlink out of the store,
  is not trusted: the run is looked up by its id in this store instead);
* its ``provenance.json`` names this cell's config hash
  (``sha256_json({"model_name": model, **resolved config})``, the hash the run
  computed itself) and this cell's split id.

A trusted run that says ``succeeded`` must also read back: ``run_status.json``,
``provenance.json`` and ``metrics.json`` parse as JSON objects and every metric's
``global`` value is a finite number (or the metric is declared not applicable).
Otherwise the run is **damaged** (:class:`RunDamaged` names the file and the
reason), and the study runs the cell again (see :mod:`perturbfm.study.status`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perturbfm.hashing import sha256_json

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class RunDamaged(Exception):
    """A file of a finished run does not read back; ``file`` and ``reason`` say which and why."""

    def __init__(self, file: Path, reason: str) -> None:
        self.file = Path(file)
        self.reason = reason
        super().__init__(f"{file}: {reason}")


@dataclass
class RunCheck:
    """The state of one run directory as seen from a cell.

    ``state``: ``succeeded``, ``failed``, ``interrupted`` (running, or stopped
    without a result), ``missing`` (no such run in the store), ``damaged`` (a
    file does not read back) or ``foreign`` (not a run of this cell: another
    config hash or split, or a path outside the store).
    """

    state: str
    run_dir: Path | None = None
    reason: str | None = None
    file: str | None = None


def expected_config_hash(model: str, config: dict[str, Any]) -> str:
    """The config hash a run of ``model`` with the resolved ``config`` records in its provenance."""
    return sha256_json({"model_name": model, **config})


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or :class:`RunDamaged` saying why not (missing,
    unreadable, truncated, not JSON, not an object)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise RunDamaged(path, "the file is missing") from exc
    except IsADirectoryError as exc:
        raise RunDamaged(path, "a directory stands where the file should be") from exc
    except UnicodeDecodeError as exc:
        raise RunDamaged(path, f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise RunDamaged(path, f"the file cannot be read ({exc.strerror or exc})") from exc
    if not text.strip():
        raise RunDamaged(path, "the file is empty")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise RunDamaged(path, f"the file is not valid JSON (truncated or corrupt{where})") from exc
    if not isinstance(data, dict):
        raise RunDamaged(path, f"the file holds a JSON {type(data).__name__}, not an object")
    return data


def _check_values(path: Path, where: str, vals: Any) -> None:
    if vals is None:
        return
    if not isinstance(vals, dict):
        raise RunDamaged(path, f"{where} is a {type(vals).__name__}, not a mapping of group -> number")
    for g, v in vals.items():
        if v is not None and not _finite(v):
            raise RunDamaged(path, f"{where}[{g!r}] is {v!r}, not a finite number")


def read_run_metrics(run_dir: str | Path, *, require_global: bool = True) -> dict[str, Any]:
    """``metrics.json`` of a run, checked: an object whose ``panels`` map panel ->
    ``metrics`` -> entries with a finite ``global`` (or ``not_applicable``), finite
    calibrated and per-group values. Raises :class:`RunDamaged` otherwise.
    ``require_global=False``: a reader of per-group values only (claims) lets an entry
    without ``global`` through; a ``global`` that is there must still be finite."""
    path = Path(run_dir) / "metrics.json"
    m = read_json_object(path)
    panels = m.get("panels")
    if not isinstance(panels, dict):
        raise RunDamaged(path, f"`panels` is {type(panels).__name__ if panels is not None else 'absent'}, "
                               "not a mapping of panel -> metrics")
    for pname, panel in panels.items():
        metrics = panel.get("metrics") if isinstance(panel, dict) else None
        if not isinstance(metrics, dict):
            raise RunDamaged(path, f"panels.{pname}.metrics is not a mapping of metric -> entry")
        for key, e in metrics.items():
            where = f"panels.{pname}.metrics.{key}"
            if not isinstance(e, dict):
                raise RunDamaged(path, f"{where} is a {type(e).__name__}, not a metric entry")
            if "not_applicable" not in e and not _finite(e.get("global")) and (require_global or "global" in e):
                raise RunDamaged(path, f"{where}.global is {e.get('global')!r}, not a finite number")
            cal = e.get("calibrated")
            if cal is not None:
                if not isinstance(cal, dict):
                    raise RunDamaged(path, f"{where}.calibrated is a {type(cal).__name__}, not a mapping")
                if cal.get("global") is not None and not _finite(cal.get("global")):
                    raise RunDamaged(path, f"{where}.calibrated.global is {cal.get('global')!r}, not a finite number")
            _check_values(path, f"{where}.per_group", e.get("per_group"))
            _check_values(path, f"{where}.per_context", e.get("per_context"))
    if "synthetic" in m and not isinstance(m["synthetic"], bool):
        raise RunDamaged(path, f"`synthetic` is {m['synthetic']!r}, not true or false")
    return m


def read_run_provenance(run_dir: str | Path) -> dict[str, Any]:
    """``provenance.json`` of a run, checked to carry a config hash and a split id."""
    path = Path(run_dir) / "provenance.json"
    p = read_json_object(path)
    if not isinstance(p.get("config_hash"), str):
        raise RunDamaged(path, "`config_hash` is missing or not a string")
    split = p.get("split")
    if not isinstance(split, dict) or not isinstance(split.get("id"), str):
        raise RunDamaged(path, "`split.id` is missing or not a string")
    return p


#: (path, size, mtime_ns) -> the problem of a metrics.json, or None: the status monitor
#: checks every finished cell each second, a file is parsed again only when it changed.
_METRICS_CHECKED: dict[tuple[str, int, int], str | None] = {}


def _metrics_problem(path: Path) -> str | None:
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _METRICS_CHECKED:
        return _METRICS_CHECKED[key]
    try:
        read_run_metrics(path.parent)
        problem = None
    except RunDamaged as exc:
        problem = exc.reason
    if key is not None:
        if len(_METRICS_CHECKED) > 100_000:
            _METRICS_CHECKED.clear()
        _METRICS_CHECKED[key] = problem
    return problem


def safe_run_id(run_id: Any) -> bool:
    """A run id is a plain directory name (no separator, no ``..``)."""
    return isinstance(run_id, str) and bool(_RUN_ID.match(run_id)) and ".." not in run_id


def locate_run(runs_dir: Path, run_id: Any, recorded_dir: Any) -> tuple[Path | None, str | None]:
    """(the run dir in this store for ``run_id``, or None; a note when the recorded
    ``run_dir`` was not trusted)."""
    if not safe_run_id(run_id):
        return None, f"run id {run_id!r} is not a plain run directory name; not trusted"
    d = runs_dir / run_id
    note = None
    if recorded_dir is not None:
        if not isinstance(recorded_dir, str) or Path(recorded_dir) != d:
            note = (f"recorded run_dir {recorded_dir!r} is not {d} (outside this store's runs/ folder); "
                    f"not trusted, run {run_id} looked up in the store instead")
    try:
        inside = d.resolve().parent == runs_dir.resolve()
    except OSError:  # a symlink loop
        inside = False
    if d.is_symlink() or not inside:
        return None, f"run {run_id} in {runs_dir} is a link out of the store; not trusted"
    return d, note


def check_run(runs_dir: Path, run_id: Any, recorded_dir: Any, *, model: str, config: dict[str, Any],
              split_id: str, config_hash: str | None = None) -> tuple[RunCheck, str | None]:
    """(the state of the cell's run ``run_id``, a note on an untrusted recorded path)."""
    d, note = locate_run(runs_dir, run_id, recorded_dir)
    if d is None:
        return RunCheck("foreign", None, note), None
    if not d.is_dir():
        return RunCheck("missing", d, f"run dir {d} is gone"), note
    return check_run_dir(d, model=model, config=config, split_id=split_id, config_hash=config_hash), note


def check_run_dir(d: Path, *, model: str, config: dict[str, Any], split_id: str,
                  config_hash: str | None = None) -> RunCheck:
    """The state of run dir ``d`` (already located inside the store) for a cell."""
    want = config_hash or expected_config_hash(model, config)
    try:
        st = read_json_object(d / "run_status.json")
    except RunDamaged as exc:
        if not (d / "run_status.json").exists() and not (d / "metrics.json").exists():
            return RunCheck("interrupted", d, "the run never wrote run_status.json")
        return RunCheck("damaged", d, exc.reason, str(exc.file))
    try:
        prov = read_run_provenance(d)
    except RunDamaged as exc:
        if st.get("status") == "succeeded":
            return RunCheck("damaged", d, exc.reason, str(exc.file))
        return RunCheck("interrupted" if st.get("status") != "failed" else "failed", d, exc.reason)
    if prov["split"]["id"] != split_id or (prov["config_hash"] != want
                                           and not _same_config(d, model, config, prov["config_hash"])):
        return RunCheck("foreign", d, f"run {d.name} is not a run of this cell (config hash "
                                      f"{prov['config_hash'][:12]}, split {prov['split']['id'][:12]}; the cell wants "
                                      f"config hash {want[:12]}, split {split_id[:12]}); not trusted")
    status = st.get("status")
    if status == "succeeded":
        problem = _metrics_problem(d / "metrics.json")
        if problem is not None:
            return RunCheck("damaged", d, problem, str(d / "metrics.json"))
        return RunCheck("succeeded", d)
    if status == "failed":
        return RunCheck("failed", d, str(st.get("error") or "")[:500] or None)
    return RunCheck("interrupted", d)


def _subset(part: Any, whole: Any) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _subset(v, whole[k]) for k, v in part.items())
    return bool(part == whole)


def _same_config(d: Path, model: str, config: dict[str, Any], recorded_hash: str) -> bool:
    """A run whose config hash differs from the cell's (e.g. the resolver now adds a
    default) is still this cell's run when its ``config.resolved.yaml`` hashes to the
    hash its provenance records and agrees with every value the cell sets."""
    import yaml

    try:
        resolved = yaml.safe_load((d / "config.resolved.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(resolved, dict) or resolved.get("model_name") != model:
        return False
    body = {k: v for k, v in resolved.items() if k != "split"}
    return sha256_json(body) == recorded_hash and _subset(config, body)


def scan_runs(runs_dir: Path) -> dict[tuple[str, str], list[Path]]:
    """(config hash, split id) -> run dirs in ``runs_dir`` whose provenance reads back,
    newest first (run ids begin with their UTC start time)."""
    out: dict[tuple[str, str], list[Path]] = {}
    try:
        entries = sorted(runs_dir.iterdir(), reverse=True)
    except OSError:
        return out
    for d in entries:
        if d.is_symlink() or not d.is_dir() or not safe_run_id(d.name):
            continue
        try:
            p = read_run_provenance(d)
        except RunDamaged:
            continue
        out.setdefault((p["config_hash"], p["split"]["id"]), []).append(d)
    return out
