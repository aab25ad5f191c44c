"""PerturbFM observer that logs each run to an MLflow tracking store.

Registered through the ``perturbfm`` entry-point group. Configuration (read at
every hook call, so it can change between runs of one process):

``PFM_MLFLOW_TRACKING_URI``
    MLflow tracking URI. Default: a local file store ``file:<store root>/mlruns``
    where the store root is the run directory's grandparent (``<root>/runs/<id>``).
``PFM_MLFLOW_EXPERIMENT``
    Experiment name (created when missing). Default ``perturbfm``.

For a file store the plugin sets ``MLFLOW_ALLOW_FILE_STORE=true`` in the process
environment when it is unset: MLflow >= 3.7 otherwise refuses file stores.

On ``pfm_run_started`` an MLflow run named after the PerturbFM run id is
created with params ``model``, ``split``, ``dataset`` and ``config.<flattened
key>`` and tags ``pfm.run_id``, ``pfm.synthetic``. On ``pfm_run_finished`` the
global metric values of ``metrics.json`` are logged as ``<panel>.<metric>``
(finite numbers only; not-applicable metrics become tags
``pfm.not_applicable.<panel>.<metric>`` holding the reason), the run's JSON
files and report are logged as artifacts and the MLflow run ends FINISHED
(``succeeded``) or FAILED (anything else).

An observer must never break a run: every hook catches its own exceptions,
writes a one-line warning to the ``perturbfm_mlflow`` logger (stderr by
default) and, when the MLflow run exists, records the error in the tag
``pfm.observer_error``. ``mlflow`` is imported lazily, so a missing ``mlflow``
never stops the plugin (or PerturbFM) from loading.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import Any

from perturbfm import hookimpl

log = logging.getLogger("perturbfm_mlflow")
if not log.handlers:  # a visible warning even where the host configured no logging
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("perturbfm-mlflow: %(message)s"))
    log.addHandler(_handler)
    log.propagate = False

ENV_URI = "PFM_MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "PFM_MLFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "perturbfm"
ARTIFACTS = ("run_status.json", "metrics.json", "calibration.json", "provenance.json", "report.html",
             "config.resolved.yaml")
TAG_RUN_ID = "pfm.run_id"
TAG_ERROR = "pfm.observer_error"
# MLflow's own limits (mlflow.utils.validation); values beyond them are truncated, never refused
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_KEY = 250
_BATCH = 100
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")

# PerturbFM run directory -> (tracking uri, MLflow run id); start and finish of one
# run happen in one process, possibly beside other runs in threads
_active: dict[str, tuple[str, str]] = {}
_lock = threading.Lock()


# -- pure helpers (no mlflow needed) -------------------------------------------------------------------


def tracking_uri(run_dir: str | Path) -> str:
    """``$PFM_MLFLOW_TRACKING_URI``, else ``file:`` URI of ``<store root>/mlruns``."""
    uri = os.environ.get(ENV_URI, "").strip()
    if uri:
        return uri
    root = Path(run_dir).resolve().parent.parent
    return (root / "mlruns").as_uri()


def experiment_name() -> str:
    return os.environ.get(ENV_EXPERIMENT, "").strip() or DEFAULT_EXPERIMENT


def safe_key(key: str) -> str:
    """An MLflow-valid key: forbidden characters become ``_``, at most 250 characters."""
    return _BAD_KEY_CHARS.sub("_", key)[:_MAX_KEY]


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 15] + "...[truncated]"


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float, str)):
        return json.dumps(value) if not isinstance(value, str) else value
    return json.dumps(value, sort_keys=True, default=str)


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings -> ``{"a.b.c": "value"}``; lists and other leaves as JSON text."""
    out: dict[str, str] = {}
    if isinstance(config, dict) and config:
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif prefix:
        out[prefix] = _scalar(config)
    return out


def run_params(run_dir: str | Path, run_info: dict[str, Any]) -> dict[str, str]:
    """The params logged at start: model, split, dataset and ``config.*``."""
    dataset = run_info.get("dataset")
    if dataset is None:  # run_info has no dataset; provenance.json is written before the run starts
        prov = _read_json(Path(run_dir) / "provenance.json") or {}
        dataset = (prov.get("dataset") or {}).get("hash")
    params = {f"config.{k}": v for k, v in flatten(run_info.get("config") or {}).items()}
    params.update({"model": _scalar(run_info.get("model")), "split": _scalar(run_info.get("split")),
                   "dataset": _scalar(dataset)})
    return {safe_key(k): _clip(v, _MAX_PARAM_VALUE) for k, v in params.items()}


def metric_values(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """``metrics.json`` -> (finite global values by ``panel.metric``, not-applicable reasons by key)."""
    values: dict[str, float] = {}
    not_applicable: dict[str, str] = {}
    for panel, section in (metrics.get("panels") or {}).items():
        for key, entry in ((section or {}).get("metrics") or {}).items():
            if not isinstance(entry, dict):
                continue
            name = safe_key(f"{panel}.{key}")
            if "not_applicable" in entry:
                not_applicable[name] = _clip(str(entry["not_applicable"]), _MAX_TAG_VALUE)
                continue
            v = entry.get("global")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(float(v)):
                values[name] = float(v)
    return values, not_applicable


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- mlflow side -----------------------------------------------------------------------------------------


def is_file_store(uri: str) -> bool:
    """A local file store URI: ``file:...`` or a plain path (a Windows drive letter included)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    return scheme in ("", "file") or len(scheme) == 1


def _client(uri: str) -> Any:
    if is_file_store(uri):
        # MLflow >= 3.7 puts the file store in "maintenance mode" and refuses it unless
        # MLFLOW_ALLOW_FILE_STORE is true; the sqlite backend it suggests needs SQLAlchemy,
        # which mlflow-skinny lacks. A user's explicit setting (even "false") is kept.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # created meanwhile by a concurrent run
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def _log_batch(client: Any, run_id: str, *, params: dict[str, str] | None = None,
               metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    items: list[Any] = [Param(k, v) for k, v in (params or {}).items()]
    items += [Metric(k, v, now, 0) for k, v in (metrics or {}).items()]
    items += [RunTag(k, v) for k, v in (tags or {}).items()]
    for i in range(0, len(items), _BATCH):
        chunk = items[i:i + _BATCH]
        client.log_batch(run_id, metrics=[x for x in chunk if isinstance(x, Metric)],
                         params=[x for x in chunk if isinstance(x, Param)],
                         tags=[x for x in chunk if isinstance(x, RunTag)])


def _find_run(client: Any, pfm_run_id: str) -> str | None:
    """The MLflow run of a PerturbFM run started in another process (fallback)."""
    exp = client.get_experiment_by_name(experiment_name())
    if exp is None:
        return None
    hits = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` = '{pfm_run_id}'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return hits[0].info.run_id if hits else None


def _record(client: Any, run_id: str | None, hook: str, exc: BaseException) -> None:
    msg = f"{hook} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] == "mlflow":
        msg += " (install it: pip install mlflow-skinny)"
    log.warning("%s (the PerturbFM run is not affected)", msg)
    if client is not None and run_id is not None:
        try:
            client.set_tag(run_id, TAG_ERROR, _clip(msg, _MAX_TAG_VALUE))
        except Exception:  # the store itself may be what failed
            pass


@hookimpl
def pfm_run_started(run_dir: str, run_info: dict[str, Any]) -> None:
    client = mlrun = None
    try:
        uri = tracking_uri(run_dir)
        client = _client(uri)
        exp_id = _experiment_id(client, experiment_name())
        pfm_id = str(run_info.get("run_id") or Path(run_dir).name)
        tags = {TAG_RUN_ID: pfm_id, "pfm.synthetic": str(bool(run_info.get("synthetic"))).lower(),
                "pfm.run_dir": str(Path(run_dir).resolve())}
        mlrun = client.create_run(exp_id, run_name=pfm_id, tags=tags).info.run_id
        with _lock:
            _active[str(run_dir)] = (uri, mlrun)
        _log_batch(client, mlrun, params=run_params(run_dir, run_info))
    except Exception as exc:  # never break the run
        _record(client, mlrun, "pfm_run_started", exc)


@hookimpl
def pfm_run_finished(run_dir: str, run_info: dict[str, Any], status: str) -> None:
    client = mlrun = None
    try:
        with _lock:
            known = _active.pop(str(run_dir), None)
        uri, mlrun = known if known else (tracking_uri(run_dir), None)
        client = _client(uri)
        if mlrun is None:
            mlrun = _find_run(client, str(run_info.get("run_id") or Path(run_dir).name))
        if mlrun is None:
            log.warning("no MLflow run for %s (did pfm_run_started fail?); nothing logged", run_dir)
            return
        errors: list[str] = []
        metrics = _read_json(Path(run_dir) / "metrics.json")
        if metrics is not None:
            try:
                values, not_applicable = metric_values(metrics)
                _log_batch(client, mlrun, metrics=values,
                           tags={f"pfm.not_applicable.{k}": v for k, v in not_applicable.items()})
            except Exception as exc:
                errors.append(f"metrics: {type(exc).__name__}: {exc}")
        for name in ARTIFACTS:
            path = Path(run_dir) / name
            if path.is_file():
                try:
                    client.log_artifact(mlrun, str(path))
                except Exception as exc:
                    errors.append(f"artifact {name}: {type(exc).__name__}: {exc}")
        client.set_tag(mlrun, "pfm.status", str(status))
        if errors:
            raise RuntimeError("; ".join(errors))
    except Exception as exc:  # never break the run
        _record(client, mlrun, "pfm_run_finished", exc)
    finally:
        if client is not None and mlrun is not None:
            try:
                client.set_terminated(mlrun, "FINISHED" if status == "succeeded" else "FAILED")
            except Exception as exc:
                log.warning("could not end MLflow run %s: %s: %s", mlrun, type(exc).__name__, exc)
