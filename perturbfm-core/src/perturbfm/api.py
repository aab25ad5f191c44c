"""The Python API: AnnData in, data frames out (scverse conventions).

::

    import perturbfm as pfm

    ds = pfm.import_adata(adata, perturbation_key="condition", control="control", context_key="cell_type")
    split = pfm.make_split(ds, generator, seed=0, test_fraction=0.25)  # pfm.names("split_generator")
    run = pfm.run(model, split, n_components=8)                # pfm.names("model")
    run.metrics                      # tidy DataFrame: panel, metric, raw, calibrated, baseline, ...
    pfm.evaluate(pred_adata, truth_adata, perturbation_key="condition", context_key="cell_type")

Every function takes ``store=`` (a path or :class:`~perturbfm.store.ArtifactStore`;
default ``$PFM_HOME``); objects returned carry the store they came from. The
``pfm-bench`` commands are thin wrappers over these functions.

Length: the whole public API is one module on purpose (one page to read, one
``__all__``); each function only validates arguments and calls the core.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perturbfm.errors import ArtifactNotFoundError, ConfigError, PerturbFMError
from perturbfm.store import ArtifactStore

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

    from perturbfm.splits import Split

StoreLike = str | os.PathLike[str] | ArtifactStore | None
Progress = Callable[[str], None]

#: Columns of :func:`metrics_frame`.
METRIC_COLUMNS = ("panel", "metric", "raw", "calibrated", "baseline", "replicate", "indep_ctrl", "train_mean",
                  "higher_is_better", "n_unresolvable", "n_resolved", "n_not_applicable_groups", "note")


def _store(store: StoreLike) -> ArtifactStore:
    return store if isinstance(store, ArtifactStore) else ArtifactStore(store)


def _keys(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


# ----------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    """A dataset in the store (content-addressed; ``id`` is its hash)."""

    id: str
    manifest: dict[str, Any]
    store: ArtifactStore = field(repr=False)
    created: bool = False

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))

    @property
    def path(self) -> Path:
        """The stored ``data.h5ad``."""
        return self.store.datasets.get(self.id).h5ad

    def to_adata(self, *, backed: bool = False) -> ad.AnnData:
        """The canonical AnnData (file hash checked first)."""
        return self.store.datasets.get(self.id).load(backed=backed)

    def __str__(self) -> str:
        return self.id


def _dataset_id(dataset: Dataset | str, store: ArtifactStore) -> str:
    return dataset.id if isinstance(dataset, Dataset) else store.datasets.resolve(str(dataset))


def import_data(path: ad.AnnData | str | os.PathLike[str] | None = None, *, adapter: str | None = None,
                store: StoreLike = None, **options: Any) -> Dataset:
    """Import ``path`` with any dataset adapter (``options`` are the adapter's; see
    ``pfm-bench plugins``) and return the stored :class:`Dataset`. :func:`import_adata`
    is the AnnData-first form of this."""
    from perturbfm.datasets import import_dataset
    from perturbfm.defaults import load_defaults

    st = _store(store)
    name = adapter or load_defaults()["import"]["adapter"]
    source = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    stored, created = import_dataset(st, name, source, options)
    return Dataset(stored.hash, stored.manifest, st, created)


def import_adata(
    adata_or_path: ad.AnnData | str | os.PathLike[str],
    *,
    perturbation_key: str,
    control: str,
    context_key: str | Sequence[str] | None = None,
    layer: str | None = None,
    covariate_keys: str | Sequence[str] = (),
    expression: str = "auto",
    combo_delimiter: str | None = None,
    adapter: str | None = None,
    store: StoreLike = None,
    **options: Any,
) -> Dataset:
    """Import an AnnData (in memory, never modified) or an ``.h5ad`` file into the store.

    Args:
        adata_or_path: the screen.
        perturbation_key: obs column of the perturbation labels.
        control: label of control cells in that column.
        context_key: obs column(s) of the context (cell line / type); default one context.
        layer: layer holding the expression values (default ``X``).
        covariate_keys: obs column(s) defining groups beyond perturbation and context.
        expression: ``"auto"``, ``"counts"`` (normalised to 1e4 per cell, then log1p) or ``"log1p"``.
        combo_delimiter: separator of the genes of a combination (adapter default ``+``).
        adapter: dataset adapter (default from ``perturbfm/defaults.yaml``).
        store: the artifact store.
        **options: further adapter options (``obs_filter``, ``backed``, ``gene_name_key`` ...).

    Returns:
        The stored :class:`Dataset` (imports of equal content are idempotent).
    """
    import anndata as ad

    from perturbfm.defaults import load_defaults
    from perturbfm.plugins import get_registry

    st = _store(store)
    name = adapter or load_defaults()["import"]["adapter"]
    if isinstance(adata_or_path, ad.AnnData):
        cls = get_registry().get("dataset_adapter", name).cls
        if not getattr(cls, "accepts_anndata", False):
            raise ConfigError(f"the {name!r} dataset adapter reads files only, not an in-memory AnnData",
                              field="adapter", fix="write the AnnData to .h5ad and pass its path, or use an adapter "
                              "that accepts AnnData")
        source: Any = adata_or_path
    elif isinstance(adata_or_path, (str, os.PathLike)):
        source = os.fspath(adata_or_path)
    else:
        raise ConfigError(f"adata_or_path must be an AnnData or a path, got {type(adata_or_path).__name__}",
                          field="adata_or_path", fix="pass an anndata.AnnData or the path of an .h5ad file")
    opts: dict[str, Any] = {"perturbation_key": perturbation_key, "control": control, "expression": expression,
                            **options}
    if context_key is not None:
        opts["context_keys"] = _keys(context_key)
    if covariate_keys:
        opts["covariate_keys"] = _keys(covariate_keys)
    if layer is not None:
        opts["layer"] = layer
    if combo_delimiter is not None:
        opts["combo_delimiter"] = combo_delimiter
    return import_data(source, adapter=name, store=st, **opts)


def list_datasets(*, store: StoreLike = None) -> pd.DataFrame:
    """One row per stored dataset: id, adapter, cells, genes, groups, contexts, synthetic, source."""
    import pandas as pd

    rows = []
    for d in _store(store).datasets.list():
        m = d.manifest
        src = m.get("source") or {}
        rows.append({"id": d.hash, "adapter": m.get("adapter"), "n_obs": m.get("n_obs"), "n_vars": m.get("n_vars"),
                     "n_groups": m.get("n_groups"), "contexts": ",".join(m.get("contexts", [])),
                     "synthetic": bool(m.get("synthetic")),
                     "source": str(src.get("path") or src.get("simulator") or src.get("kind") or src)})
    return pd.DataFrame(rows, columns=["id", "adapter", "n_obs", "n_vars", "n_groups", "contexts", "synthetic",
                                       "source"])


# ----------------------------------------------------------------------------- splits
def make_split(dataset: Dataset | str, generator: str, *, seed: int = 0, store: StoreLike = None,
               **params: Any) -> Split:
    """Generate a split of ``dataset`` with ``generator`` (``params`` are the generator's
    parameters), store it hash-locked and return it (``split.id``; ``split.counts()``)."""
    from perturbfm.datasets import create_split

    st = dataset.store if isinstance(dataset, Dataset) and store is None else _store(store)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}", field="seed", fix="pass e.g. seed=0")
    _, _, split = create_split(st, _dataset_id(dataset, st), generator, dict(params), seed)
    return split


def list_splits(*, store: StoreLike = None) -> pd.DataFrame:
    """One row per stored split (full ids): id, dataset, generator, family, params, seed, counts."""
    import pandas as pd

    rows = []
    for sid, s in _store(store).splits.list():
        c = s.counts()
        rows.append({"id": sid, "dataset": s.dataset, "generator": s.generator, "family": s.family,
                     "params": json.dumps(s.params, sort_keys=True), "seed": s.seed, "train": c["train"],
                     "val": c["val"], "test": c["test"], "calibration": c["calibration"]})
    return pd.DataFrame(rows, columns=["id", "dataset", "generator", "family", "params", "seed", "train", "val",
                                       "test", "calibration"])


# ----------------------------------------------------------------------------- runs
def metrics_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """A ``metrics.json`` as a tidy frame: one row per (panel, metric) with the raw and
    calibrated global values beside the references (missing where undefined; ``note`` says why)."""
    import pandas as pd

    from perturbfm.references import metric_rows

    return pd.DataFrame(metric_rows(metrics), columns=list(METRIC_COLUMNS))


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``frame`` as JSON-ready dicts: Python scalars at full precision, missing as None."""
    import math

    def clean(v: Any) -> Any:
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return [{str(k): clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PerturbFMError(f"{path.name} of run {path.parent.name} is unreadable: {type(exc).__name__}: {exc}",
                             file=str(path), fix="the run directory is damaged; rerun the model") from exc


@dataclass
class Run:
    """A run directory and what it holds."""

    run_id: str
    run_dir: Path
    error: PerturbFMError | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        """``succeeded``, ``failed`` or ``running`` (from ``run_status.json``)."""
        path = self.run_dir / "run_status.json"
        if not path.is_file():
            return "unknown"
        data = _read_json(path)
        return str(data.get("status", "unknown")) if isinstance(data, dict) else "unknown"

    @property
    def metrics_json(self) -> dict[str, Any]:
        """The content of ``metrics.json`` (only a succeeded run has one)."""
        path = self.run_dir / "metrics.json"
        if not path.is_file():
            why = f": {self.error.message}" if self.error is not None else ""
            raise ArtifactNotFoundError(f"run {self.run_id} has no metrics.json (status {self.status}){why}",
                                        file=str(path), fix="see run_status.json in the run directory; fix the "
                                        "cause and run the model again")
        data = _read_json(path)
        if not isinstance(data, dict):
            raise PerturbFMError(f"metrics.json of run {self.run_id} is not an object", file=str(path),
                                 fix="the run directory is damaged; rerun the model")
        return data

    @property
    def metrics(self) -> pd.DataFrame:
        """Tidy metrics (see :func:`metrics_frame`)."""
        return metrics_frame(self.metrics_json)

    @property
    def predictions(self) -> ad.AnnData:
        """``predictions.h5ad``: one row per held-out group (X = control mean + predicted delta)."""
        import anndata as ad

        path = self.run_dir / "predictions.h5ad"
        if not path.is_file():
            raise ArtifactNotFoundError(f"run {self.run_id} has no predictions.h5ad (status {self.status})",
                                        file=str(path), fix="rerun the model")
        return ad.read_h5ad(path)

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"

    @property
    def provenance(self) -> dict[str, Any]:
        return _read_json(self.run_dir / "provenance.json")

    @property
    def model(self) -> str:
        return str(self.info().get("model") or "")

    def info(self) -> dict[str, Any]:
        """Summary: run id, model, split, dataset, status, start, synthetic flag, directory."""
        prov: dict[str, Any] = {}
        ppath = self.run_dir / "provenance.json"
        if ppath.is_file():
            try:
                loaded = json.loads(ppath.read_text())
                prov = loaded if isinstance(loaded, dict) else {}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                prov = {}
        status: dict[str, Any] = {}
        spath = self.run_dir / "run_status.json"
        if spath.is_file():
            try:
                loaded = json.loads(spath.read_text())
                status = loaded if isinstance(loaded, dict) else {}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                status = {"status": "unreadable"}

        def sub(key: str, name: str) -> Any:
            v = prov.get(key)
            return v.get(name) if isinstance(v, dict) else None

        return {"run_id": self.run_id, "model": sub("model", "name"), "split": sub("split", "id"),
                "dataset": sub("dataset", "hash"), "status": status.get("status", "unknown"),
                "started_at": status.get("started_at"), "synthetic": bool(prov.get("synthetic")),
                "has_metrics": (self.run_dir / "metrics.json").is_file(), "run_dir": str(self.run_dir)}

    def report(self) -> Path:
        """Regenerate ``report.html`` from the run's files and return its path."""
        from perturbfm.report import render_run_report_from_dir

        return render_run_report_from_dir(self.run_dir)


def _override_sets(config: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> list[str]:
    """``section.key=value`` strings (YAML values) for a config mapping and keyword overrides:
    ``model__n_components=3`` or ``{"model.n_components": 3}``; a plain key goes to
    ``run`` when it is a run parameter, else to ``model``."""
    import yaml

    from perturbfm.config import RUN_DEFAULTS, SECTIONS

    flat: dict[str, Any] = {}
    for section, values in (config or {}).items():
        if section not in SECTIONS or not isinstance(values, Mapping):
            raise ConfigError(f"config section {section!r} is not one of {', '.join(SECTIONS)} with a mapping",
                              field=f"config.{section}", fix="pass config={'model': {...}, 'run': {...}}")
        flat.update({f"{section}.{k}": v for k, v in values.items()})
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if "." not in key:
            key = f"run.{key}" if key in RUN_DEFAULTS else f"model.{key}"
        flat[key] = value
    out = []
    for key, value in flat.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        out.append(f"{key}={text}")
    return out


def run(model: str, split: Split | str, *, config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        store: StoreLike = None, progress: Progress | None = None, **overrides: Any) -> Run:
    """Fit ``model`` on ``split``, predict, evaluate and write a run directory.

    Args:
        model: model name (``perturbfm.api.names("model")``).
        split: a split (or its id / unique prefix).
        config: a YAML config file, or a mapping ``{"model": {...}, "run": {...}}``.
        progress: called with a short message at each stage.
        **overrides: parameters, e.g. ``ridge_lambda=0.5`` (model), ``ensemble=3`` (run),
            ``model__ridge_lambda=0.5`` (explicit section).

    Returns:
        The :class:`Run`; ``run.status`` is ``"failed"`` (and ``run.error`` says why) when the
        model or a panel failed after the run directory was created.
    """
    from perturbfm.run import execute_run

    st = _store(store)
    sid = split.id if hasattr(split, "id") and not isinstance(split, str) else str(split)
    config_file = None
    mapping: Mapping[str, Any] | None = None
    if isinstance(config, Mapping):
        mapping = config
    elif config is not None:
        config_file = os.fspath(config)
    result = execute_run(st, model=model, split=sid, config_file=config_file,
                         sets=_override_sets(mapping, overrides), progress=progress)
    return Run(result.run_id, Path(result.run_dir), result.error)


def load_run(run: str | os.PathLike[str], *, store: StoreLike = None) -> Run:
    """A run by id (in the store) or by directory."""
    p = Path(os.fspath(run))
    if p.is_dir() and ((p / "run_status.json").exists() or (p / "provenance.json").exists()):
        return Run(p.name, p.resolve())
    st = _store(store)
    d = st.run_dir(str(run))
    if not d.is_dir():
        raise ArtifactNotFoundError(f"no run {str(run)!r} in {st.runs_dir}", field="run",
                                    fix="see `pfm-bench runs list` (Python: perturbfm.list_runs())")
    return Run(d.name, d)


def list_runs(*, store: StoreLike = None) -> pd.DataFrame:
    """One row per run directory, newest first: run_id, model, split, dataset, status,
    started_at, synthetic, has_metrics, run_dir."""
    import pandas as pd

    st = _store(store)
    cols = ["run_id", "model", "split", "dataset", "status", "started_at", "synthetic", "has_metrics", "run_dir"]
    root = st.runs_dir
    if root.exists() and not root.is_dir():
        raise ArtifactNotFoundError(f"the runs folder of the store is not a directory: {root}", file=str(root),
                                    fix="move that file away; the store keeps one folder per run under runs/")
    rows = []
    if root.is_dir():
        for d in sorted(root.iterdir(), reverse=True):
            if d.is_dir() and not d.name.startswith("."):
                rows.append(Run(d.name, d).info())
    return pd.DataFrame(rows, columns=cols)


def compare(runs: Sequence[Run | str | os.PathLike[str]], *, reference: str | None = None,
            out: str | os.PathLike[str] | None = None, seed: int = 0, labels: Sequence[str | None] | None = None,
            store: StoreLike = None) -> pd.DataFrame:
    """Leaderboard of ``runs`` on the same split(s) with paired intervals and verdicts
    against ``reference`` (default: from ``perturbfm/defaults.yaml``). Writes
    ``compare.html/json/csv`` into ``out`` (default ``<store>/reports/compare_<hash>``)
    and returns the rows of ``compare.csv``; ``frame.attrs["files"]`` holds the paths."""
    import pandas as pd

    from perturbfm.compare import compare_runs
    from perturbfm.defaults import load_defaults
    from perturbfm.hashing import sha256_json

    st = _store(store)
    dirs = [str(r.run_dir) if isinstance(r, Run) else str(load_run(r, store=st).run_dir) for r in runs]
    target = Path(out) if out is not None else st.root / "reports" / f"compare_{sha256_json(sorted(dirs))[:12]}"
    ref = reference or load_defaults()["compare"]["reference"]
    res = compare_runs(dirs, target, reference=ref, labels=list(labels) if labels else None, seed=seed)
    frame = pd.read_csv(res["files"]["csv"])
    frame.attrs["files"] = res["files"]
    return frame


# ----------------------------------------------------------------------------- evaluation
def evaluate(
    pred: ad.AnnData | str | os.PathLike[str],
    truth: ad.AnnData | str | os.PathLike[str],
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    context_key: str | Sequence[str] | None = None,
    panels: str | Sequence[str] = "standard",
    expression: str = "log1p",
    layer: str | None = None,
    pred_layer: str | None = None,
    seed: int = 0,
    max_cells: int | None = None,
    backed: bool = False,
    out: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    context_keys: Sequence[str] | None = None,
    executor: str | None = None,
    workers: int | None = None,
    shard_by: str = "context",
    group_chunk: int | None = None,
) -> pd.DataFrame:
    """Score predicted cells against true cells (AnnData objects or ``.h5ad`` paths).

    Args:
        pred, truth: cells x genes with the perturbation (and context) in ``.obs``; the
            truth holds the control cells.
        perturbation_key, control, context_key: the obs columns and control label.
        panels: ``"standard"`` or panel names (``["basic", "vcc"]`` or ``"basic,vcc"``).
        expression: ``"log1p"`` (default; raw counts are refused), ``"counts"`` (both sides
            raw counts) or ``"auto"`` (the truth's space; the prediction must match).
        layer, pred_layer: read the truth's / prediction's values from a layer instead of X.
        seed, max_cells: cell subsampling of the cell-based metrics.
        backed: read the files with ``backed='r'`` (large files; log1p values).
        out: also write ``metrics.json`` there (atomically; never over an input file).
        executor, workers, shard_by, group_chunk: evaluate the panels in shards on this executor
            (``"serial"``, ``"process"``, ``"ray"``) with ``workers`` workers: one shard per context
            (``shard_by="context"``) or, for the panels scored group by group, chunks of
            ``group_chunk`` groups (``shard_by="group"``); the workers read both files backed (paths,
            log1p X). The result equals the unsharded one (see :mod:`perturbfm.shard`).

    Returns:
        The tidy metrics (see :func:`metrics_frame`); ``frame.attrs["metrics"]`` holds the
        whole ``metrics.json`` content (conventions, groups, references, synthetic flag).
    """
    from perturbfm.evaluation import DEFAULT_MAX_CELLS
    from perturbfm.fsio import atomic_write_json
    from perturbfm.scoring import check_out_path, evaluate_metrics

    keys = _keys(context_key) + [k for k in (context_keys or ()) if k not in _keys(context_key)]
    target = check_out_path(out, {"--pred": pred, "--truth": truth}) if out is not None else None
    metrics = evaluate_metrics(pred, truth, perturbation_key=perturbation_key, control=control, context_keys=keys,
                               panels=panels, seed=seed, expression=expression,
                               max_cells=DEFAULT_MAX_CELLS if max_cells is None else max_cells, backed=backed,
                               layer=layer, pred_layer=pred_layer, say=progress,
                               shard=None if executor is None else {
                                   "executor": executor, "workers": workers, "shard_by": shard_by,
                                   **({} if group_chunk is None else {"group_chunk": group_chunk})})
    if target is not None:
        try:
            atomic_write_json(target, metrics)
        except OSError as exc:
            raise PerturbFMError(f"cannot write metrics.json: {exc.strerror or exc}", file=str(target),
                                 field="--out (out=)", fix="choose a writable --out path") from exc
    frame = metrics_frame(metrics)
    frame.attrs["metrics"] = metrics
    return frame


# ----------------------------------------------------------------------------- registry
def names(kind: str) -> list[str]:
    """Installed implementations of ``kind`` (``model``, ``split_generator``,
    ``dataset_adapter``, ``metric_panel``), sorted."""
    from perturbfm.errors import PluginError
    from perturbfm.plugins import get_registry

    reg = get_registry()
    try:
        return reg.names(kind)
    except (KeyError, PluginError):
        raise ConfigError(f"unknown kind {kind!r}", field="kind",
                          fix="use model, split_generator, dataset_adapter or metric_panel") from None


# ----------------------------------------------------------------------------- model environments
def list_environments(*, store: StoreLike = None) -> pd.DataFrame:
    """Every installed model's own environment (built or not) and every environment folder
    under ``<store>/envs`` (see docs/environments.md); one row each."""
    import pandas as pd

    from perturbfm.envs.manage import environment_rows
    from perturbfm.plugins import get_registry

    return pd.DataFrame(environment_rows(get_registry(), _store(store).root))


def build_environments(models: str | Sequence[str] | None = None, *, store: StoreLike = None,
                       force: bool = False, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Build (``force``: rebuild) the environments of ``models`` (default: every installed
    model that declares one); returns hash, path, packages and build time of each."""
    from perturbfm.envs.manage import build_model_environments
    from perturbfm.plugins import get_registry

    return build_model_environments(get_registry(), _keys(models), store=_store(store).root, force=force,
                                    say=progress)


def remove_environment(ref: str, *, store: StoreLike = None) -> list[str]:
    """Remove a model environment (``ref``: model name, hash prefix, or ``"incomplete"``
    for every killed build); returns the hashes removed."""
    from perturbfm.envs.manage import remove_environments
    from perturbfm.plugins import get_registry

    return remove_environments(get_registry(), ref, store=_store(store).root)


__all__ = ["Dataset", "Run", "build_environments", "compare", "evaluate", "import_adata", "import_data",
           "list_datasets", "list_environments", "list_runs", "list_splits", "load_run", "make_split",
           "metrics_frame", "names", "remove_environment", "run"]
