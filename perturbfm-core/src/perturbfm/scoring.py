"""Score a prediction against a truth outside the store (``pfm-bench eval``,
:func:`perturbfm.api.evaluate`).

Control cells come from the truth (the true control mean of each context is
the reference for both sides); predicted groups are the prediction's non-control
cells grouped by (perturbation, context). Both sides are read and checked by one
function (:func:`open_input`), in memory or backed: duplicate names, obs keys,
labels, and the expression matrix (type, NaN/inf, negatives, and its expression
space: raw counts are never scored as log1p, and a prediction in another space
than the truth is refused).

Length: reading, checking and scoring share the :class:`EvalInput` of both sides and
both modes (in memory, backed); splitting them would spread one contract over modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from perturbfm.canonical.expression import (
    COUNTS_SPACE,
    LOG1P_MAX,
    LOG1P_SPACE,
    check_matrix_type,
    classify_space,
    iter_row_blocks,
    matrix_of,
    prepare_expression,
    scan_matrix,
)
from perturbfm.canonical.obs import canonical_labels, check_controls, context_labels, head
from perturbfm.dataset import (
    CONTEXT_COL,
    CONTROL_COL,
    COVARIATES_COL,
    PERT_COL,
    control_stats,
    group_id,
    group_table,
    grouped_moments,
)
from perturbfm.errors import ConfigError, DatasetValidationError, PredictionError
from perturbfm.evaluation import CONVENTIONS, DEFAULT_MAX_CELLS, build_eval_data, select_panels
from perturbfm.hashing import sha256_file
from perturbfm.interfaces import Prediction
from perturbfm.references import evaluate_with_references

IN_MEMORY = "<in-memory AnnData>"
EXPRESSIONS = ("log1p", "counts", "auto")
Say = Callable[[str], None]


# ----------------------------------------------------------------------------- options
def parse_panels(panels: str | Sequence[str] | None) -> list[str] | str:
    """``"standard"`` or a non-empty list of panel names, from a comma-separated
    string or a sequence; an empty selection (``""``, ``","``, ``[]``) is an error."""
    if panels is None:
        return "standard"
    items = panels.split(",") if isinstance(panels, str) else list(panels)
    if not all(isinstance(p, str) for p in items):
        raise ConfigError(f"--panels must name panels (strings), got {panels!r}", field="--panels (panels=)",
                          fix="pass --panels basic,vcc (Python: panels=['basic', 'vcc']) or omit it for 'standard'")
    names = [p.strip() for p in items if p.strip()]
    if not names:
        raise ConfigError(f"--panels {panels!r} names no panel", field="--panels (panels=)",
                          fix="omit --panels for every standard panel, or name them: --panels basic,vcc")
    return "standard" if names == ["standard"] else names


def check_options(*, seed: Any, max_cells: Any, expression: Any) -> tuple[int, int, str]:
    """Validated ``(seed, max_cells, expression)``; each error names its option."""
    def integer(value: Any, opt: str, low: int, example: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{opt} must be an integer, got {value!r}", field=opt, fix=f"pass e.g. {example}")
        if value < low:
            raise ConfigError(f"{opt} must be >= {low}, got {value}", field=opt, fix=f"pass e.g. {example}")
        return int(value)

    seed = integer(seed, "--seed (seed=)", 0, "--seed 0")
    max_cells = integer(max_cells, "--max-cells (max_cells=)", 1, f"--max-cells {DEFAULT_MAX_CELLS}")
    if expression not in EXPRESSIONS:
        raise ConfigError(f"expression must be one of {', '.join(EXPRESSIONS)}, got {expression!r}",
                          field="expression (--counts)", fix="pass expression='log1p' (default), 'counts' or 'auto'")
    return seed, max_cells, str(expression)


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def check_out_path(out: str | os.PathLike[str], inputs: Mapping[str, Any]) -> Path:
    """Refuse an output path that is (through a symlink, a relative path or a hard
    link) one of the input files; ``inputs`` maps an option name to its path."""
    out_real = _real(out)
    for opt, src in inputs.items():
        if src is None or not isinstance(src, (str, os.PathLike)):
            continue
        same = _real(src) == out_real
        if not same and os.path.exists(out_real) and os.path.exists(src):
            try:
                same = os.path.samefile(out_real, src)
            except OSError:
                same = False
        if same:
            raise ConfigError(f"--out {os.fspath(out)!r} is the {opt} file {_real(src)}: it would be overwritten",
                              file=str(out), field="--out (out=)",
                              fix="write the metrics elsewhere, e.g. --out metrics.json in another folder")
    if os.path.isdir(out_real):
        raise ConfigError(f"--out {os.fspath(out)!r} is a directory", file=str(out), field="--out (out=)",
                          fix="name a file, e.g. --out results/metrics.json")
    return Path(out)


# ----------------------------------------------------------------------------- reading one side
@dataclass
class EvalInput:
    """One side (prediction or truth) of an evaluation, read and checked."""

    adata: Any
    file: str
    option: str
    pert: np.ndarray
    is_ctrl: np.ndarray
    context: np.ndarray
    matrix: Any
    matrix_label: str
    stats: dict[str, Any]
    space: str
    sha256: str | None
    synthetic: bool
    backed: bool
    _owned: bool = field(default=False, repr=False)

    @property
    def role(self) -> str:
        return "prediction" if self.option.startswith("--pred") else "truth"

    def close(self) -> None:
        if self._owned and self.backed and getattr(self.adata, "file", None) is not None:
            self.adata.file.close()


def _is_synthetic(adata: Any) -> bool:
    uns = adata.uns
    try:
        pfm = uns.get("perturbfm")
        flag = (pfm.get("synthetic") if isinstance(pfm, Mapping) else None) or uns.get("synthetic")
    except Exception:  # a malformed uns never blocks scoring
        return False
    return bool(np.asarray(flag).any()) if flag is not None else False


def _read(src: Any, option: str, backed: bool) -> tuple[Any, str, bool]:
    import anndata as ad

    if isinstance(src, ad.AnnData):
        return src, IN_MEMORY + f" ({option})", False
    if not isinstance(src, (str, os.PathLike)):
        raise DatasetValidationError(f"{option} must be an AnnData or the path of an .h5ad file, got "
                                     f"{type(src).__name__}", field=option, fix="pass an AnnData or a path")
    file = _real(src)
    p = Path(file)
    if not p.is_file():
        what = "file does not exist" if not p.exists() else "path is not a regular file"
        raise DatasetValidationError(f"{option} {what}", file=file, field=option, fix="check the path of the .h5ad file")
    try:
        return ad.read_h5ad(file, backed="r" if backed else None), file, True
    except Exception as exc:  # anndata/h5py raise many types for corrupt files
        raise DatasetValidationError(f"cannot read the file as AnnData (.h5ad): {type(exc).__name__}: {exc}",
                                     file=file, field=option, fix="pass an .h5ad written by anndata") from exc


def open_input(src: Any, *, option: str, perturbation_key: str, control: str, context_keys: Sequence[str],
               backed: bool = False, layer: str | None = None) -> EvalInput:
    """Read ``src`` (AnnData or path; ``backed`` opens a file with ``backed='r'``) and check
    it the same way in either mode. The caller closes the result."""
    adata, file, owned = _read(src, option, backed)
    is_backed = owned and backed
    try:
        for what, names in (("obs", adata.obs_names), ("var", adata.var_names)):
            dup = names[names.duplicated()]
            if len(dup):
                raise DatasetValidationError(f"{len(dup)} duplicate {what} name(s), e.g. {head(list(dup), 5)}",
                                             file=file, field=f"{what}_names", fix=f"make the {what} names unique")
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise DatasetValidationError(f"the file holds {adata.n_obs} cells x {adata.n_vars} genes", file=file,
                                         field="X", fix="pass a file with cells and genes")
        for key, opt in [(perturbation_key, "--perturbation-key")] + [(k, "--context-key") for k in context_keys]:
            if key not in adata.obs.columns:
                raise DatasetValidationError(f"obs has no column {key!r} (given as {opt})", file=file, field=key,
                                             fix=f"pass {opt} naming one of: {head(list(adata.obs.columns), 30)}")
        pert, is_ctrl = canonical_labels(adata.obs[perturbation_key], control, "+", file, perturbation_key)
        ctx = context_labels(adata.obs, list(context_keys), file)
        matrix, label = matrix_of(adata, layer, file=file)
        check_matrix_type(matrix, file=file, source_label=label)
        stats = scan_matrix(matrix, file=file, source_label=label)
        inp = EvalInput(adata, file, option, np.asarray(pert, dtype=object), np.asarray(is_ctrl, dtype=bool),
                        np.asarray(ctx, dtype=object), matrix, label, stats, classify_space(stats),
                        sha256_file(file) if owned else None, _is_synthetic(adata), is_backed, owned)
        if stats["nonfinite"]:
            _refuse_nonfinite(inp)
        if stats["negative"]:
            raise DatasetValidationError(
                f"{label} holds {stats['negative']} negative value(s), impossible for raw counts or "
                "log1p-normalised expression", file=file, field=label,
                fix="give raw counts or log1p-normalised values (not scaled / z-scored data)")
        return inp
    except BaseException:
        if is_backed:
            adata.file.close()
        raise


def _refuse_nonfinite(inp: EvalInput) -> None:
    gids = _group_ids(inp)
    genes = [str(g) for g in inp.adata.var_names]
    bad_rows: set[int] = set()
    bad_cols: set[int] = set()
    for start, block in iter_row_blocks(inp.matrix, file=inp.file, source_label=inp.matrix_label):
        coo = block.tocoo()
        bad = ~np.isfinite(coo.data)
        bad_rows.update((coo.row[bad] + start).tolist())
        bad_cols.update(coo.col[bad].tolist())
    groups = sorted({gids[r] or "control" for r in bad_rows})
    cls = PredictionError if inp.role == "prediction" else DatasetValidationError
    raise cls(f"the {inp.role} holds {inp.stats['nonfinite']} NaN or infinite value(s) in groups "
              f"{head(groups, 10)} at genes {head(sorted(genes[c] for c in bad_cols), 10)}",
              file=inp.file, field=inp.matrix_label, fix="give finite values for every cell and gene")


def _group_ids(inp: EvalInput) -> np.ndarray:
    return np.array(["" if c else group_id(p, x) for p, c, x in zip(inp.pert, inp.is_ctrl, inp.context)],
                    dtype=object)


_SPACE_WORDS = {"counts": "raw counts (integer values up to {max:g})",
                "log1p": "log1p-normalised values (non-integers up to {max:g})",
                "unknown": "values up to {max:g}, beyond log1p-normalised expression (max ~" + f"{LOG1P_MAX:g})",
                "empty": "only zeros and ones"}


def _space_text(inp: EvalInput) -> str:
    return _SPACE_WORDS[inp.space].format(max=inp.stats["max"])


_ALLOWED = {"log1p": ("log1p", "empty"), "counts": ("counts", "unknown", "empty")}


def resolve_expression(truth: EvalInput, pred: EvalInput, expression: str) -> str:
    """The expression space both sides are scored in (``"log1p"`` or ``"counts"``).

    ``log1p``: raw counts (or values beyond log1p's range) are refused; ``counts``:
    log1p-normalised values are refused; ``auto``: the truth's space. When one side
    fits and the other does not, the two are in different spaces and the misfit is
    refused with the other side's space as the fix; when neither fits, the fix is the
    other mode (``--counts`` or dropping it).
    """
    mode = expression
    if mode == "auto":
        mode = "counts" if truth.space in ("counts", "unknown") else "log1p"
    allowed = _ALLOWED[mode]
    for side, other in ((pred, truth), (truth, pred)):
        if side.space in allowed:
            continue
        cls = PredictionError if side is pred else DatasetValidationError
        if other.space in allowed:
            target = ("log1p-normalised values, e.g. log1p(counts / total * 1e4)" if mode == "log1p"
                      else "raw counts")
            raise cls(f"the {side.role} holds {_space_text(side)} but the {other.role} holds {_space_text(other)}: "
                      "they are in different expression spaces", file=side.file, field=side.matrix_label,
                      fix=f"give the {side.role} in the {other.role}'s space ({target})")
        both = f"; the {other.role} ({other.file}) holds {_space_text(other)}"
        if mode == "log1p":
            raise cls(f"the {side.role} holds {_space_text(side)}{both}; scoring them as log1p-normalised "
                      "expression would be wrong", file=side.file, field=side.matrix_label,
                      fix="if both files hold raw counts, pass --counts (Python: expression='counts'); otherwise "
                      "give log1p-normalised values in both files")
        raise cls(f"the {side.role} holds {_space_text(side)}, not raw counts{both}", file=side.file,
                  field=side.matrix_label,
                  fix="both files are log1p-normalised: drop --counts (Python: expression='log1p')")
    return mode


# ----------------------------------------------------------------------------- evaluation
def evaluate_metrics(pred: Any, truth: Any, *, perturbation_key: str = "perturbation", control: str = "control",
                     context_keys: Sequence[str] = (), panels: str | Sequence[str] | None = "standard",
                     seed: int = 0, expression: str = "log1p", max_cells: int = DEFAULT_MAX_CELLS,
                     backed: bool = False, layer: str | None = None, pred_layer: str | None = None,
                     say: Say | None = None, shard: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score ``pred`` against ``truth`` (AnnData objects or ``.h5ad`` paths) and return the
    content of ``metrics.json``.

    ``expression``: ``"log1p"`` (both log1p-normalised; raw counts are refused),
    ``"counts"`` (both raw counts, normalised to 10,000 per cell and log1p'd) or
    ``"auto"`` (the truth's space). With ``backed=True`` both files are opened with
    ``backed="r"`` and never read whole (moments in row chunks, cells per group);
    the same checks apply, and the values must be log1p.

    ``shard``: evaluate the panels in shards on an executor (see :mod:`perturbfm.shard`):
    ``{"executor": "ray", "workers": 2, "shard_by": "context", "group_chunk": 256}``; the
    workers read both files backed, so both must be ``.h5ad`` paths with log1p X.

    Raises:
        PerturbFMError subclasses for bad input; PanelIncompleteError when a panel is incomplete.
    """
    from perturbfm.plugins import get_registry

    say = say or (lambda _msg: None)
    names = parse_panels(panels)
    seed, max_cells, expression = check_options(seed=seed, max_cells=max_cells, expression=expression)
    if backed and (layer or pred_layer):
        raise ConfigError("--backed reads X; layers are read in memory only", field="layer",
                          fix="drop --backed, or store the values in X")
    keys = [str(k) for k in context_keys]
    panel_objs = select_panels(get_registry(), names, gives_variance=False)
    say("reading the truth")
    tin = open_input(truth, option="--truth", perturbation_key=perturbation_key, control=control,
                     context_keys=keys, backed=backed, layer=layer)
    try:
        say("reading the prediction")
        pin = open_input(pred, option="--pred", perturbation_key=perturbation_key, control=control,
                         context_keys=keys, backed=backed, layer=pred_layer)
        try:
            mode = resolve_expression(tin, pin, expression)
            if backed and mode != "log1p":
                raise ConfigError("--backed reads X as stored and needs log1p-normalised values; these are raw "
                                  "counts", field="--backed", fix="drop --backed to normalise the counts in memory, "
                                  "or store log1p-normalised X")
            check_controls(tin.pert, tin.is_ctrl, tin.context, control, perturbation_key, keys, tin.file)
            if shard is not None:
                _check_shardable(tin, pin, mode, layer, pred_layer)
            out = _score(tin, pin, mode, panel_objs, names, seed, max_cells, say, perturbation_key, shard)
        finally:
            pin.close()
    finally:
        tin.close()
    return out


def _canonical_obs(inp: EvalInput) -> Any:
    import pandas as pd

    obs = pd.DataFrame(index=inp.adata.obs_names)
    obs[PERT_COL], obs[CONTROL_COL], obs[CONTEXT_COL], obs[COVARIATES_COL] = inp.pert, inp.is_ctrl, inp.context, ""
    return obs


def _check_shardable(tin: EvalInput, pin: EvalInput, mode: str, layer: str | None, pred_layer: str | None) -> None:
    """Sharded workers reopen both files backed and read X as stored: refuse what they could not."""
    for side in (tin, pin):
        if not side._owned:
            raise ConfigError(f"sharded evaluation passes file paths to its workers; the {side.role} is an "
                              "in-memory AnnData", field="--executor",
                              fix="write it to an .h5ad file and pass the path, or evaluate without --executor")
    if layer or pred_layer:
        raise ConfigError("sharded evaluation reads X; layers are not supported", field="--executor",
                          fix="store the values in X, or evaluate without --executor")
    if mode != "log1p":
        raise ConfigError("sharded evaluation reads X as stored and needs log1p-normalised values; these are raw "
                          "counts", field="--executor",
                          fix="store log1p-normalised X, or evaluate without --executor")


def _score(tin: EvalInput, pin: EvalInput, mode: str, panel_objs: list[Any], names: list[str] | str, seed: int,
           max_cells: int, say: Say, perturbation_key: str,
           shard: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import anndata as ad

    truth_genes = [str(g) for g in tin.adata.var_names]
    pred_genes = [str(g) for g in pin.adata.var_names]
    cols = _align_genes(pred_genes, truth_genes, pin.file)
    gids = _group_ids(pin).astype(str)
    processing: list[str]
    if tin.backed:
        tad = tin.adata
        tad.obs = _canonical_obs(tin)  # canonical columns, in memory (the file is not written)
        processing = ["read in backed mode (anndata backed='r'); moments in row chunks; cells read per group "
                      "from the file"]
        tspace = "log1p (as stored, backed mode)"
    else:
        say("normalising the truth" if mode == "counts" else "converting the truth")
        X, tspace, processing = prepare_expression(tin.matrix, mode, file=tin.file, source_label=tin.matrix_label,
                                                   cell_names=tin.adata.obs_names.astype(str))
        tad = ad.AnnData(X=X, obs=_canonical_obs(tin), var=tin.adata.var[[]].copy())
    groups = [g for g in group_table(tad).values() if not g.is_control]
    want, have = {g.group_id for g in groups}, set(gids[~pin.is_ctrl])
    _check_group_coverage(want, have, pin.file, perturbation_key)
    say("control statistics")
    ctrl = control_stats(tad)
    ids = [g.group_id for g in groups]
    rows_of = _rows_by_label(gids)
    rows_of = {g: rows_of[g] for g in ids}
    if pin.backed:
        say("prediction moments (chunked)")
        pmean, _, pcount = grouped_moments(pin.adata, gids, ids)
        if cols is not None:
            pmean = pmean[:, cols]
        cells = _LazyCells(pin.matrix, rows_of, cols)
    else:
        say("normalising the prediction" if mode == "counts" else "converting the prediction")
        PX, _, _ = prepare_expression(pin.matrix, mode, file=pin.file, source_label=pin.matrix_label,
                                      cell_names=pin.adata.obs_names.astype(str))
        if cols is not None:
            PX = PX[:, cols]
        cells = _LazyCells(PX, rows_of, None)
        pos = {g: k for k, g in enumerate(ids)}
        code = np.array([pos.get(g, -1) for g in gids], dtype=np.int64)
        keep = np.flatnonzero(code >= 0)
        ind = sp.csr_matrix((np.ones(keep.size), (code[keep], keep)), shape=(len(ids), PX.shape[0]))
        sums = ind @ PX
        sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
        pcount = np.array([rows_of[g].size for g in ids], dtype=np.float64)
        pmean = sums / pcount[:, None]
    prediction = Prediction(group_ids=ids, mean_delta=pmean - np.stack([ctrl.mean(g.context) for g in groups]),
                            cells=cells)  # type: ignore[arg-type]
    data = build_eval_data(tad, groups, ctrl, prediction, seed=seed, max_cells=max_cells)
    if shard is not None:
        from perturbfm.shard import ShardSource, evaluate_sharded

        source = ShardSource(truth_path=tin.file, pred_path=pin.file, truth_obs=None, pred_rows=rows_of, pred_cols=cols)
        shard_stats: dict[str, Any] = {}
        panels_out, references = evaluate_sharded(panel_objs, data, source, say=say, stats=shard_stats, **shard)
    else:
        panels_out, references = evaluate_with_references(panel_objs, data, say=say)
    synthetic = tin.synthetic or pin.synthetic
    conventions: dict[str, Any] = {
        **CONVENTIONS,
        "predicted_cells": "the prediction's cells, grouped by (perturbation, context)"
        + (", read per group from the backed file" if pin.backed else "")
        + f"; its control cells ({int(pin.is_ctrl.sum())}) are ignored",
        "predicted_delta": "mean of the predicted cells - the true control mean of the context",
        "gene_order": "prediction columns reordered by name to the truth's order" if cols is not None
        else "same genes in the same order",
        "cell_subsampling": {"max_cells_per_group": max_cells, "seed": seed},
        "expression": {"mode": mode, "truth": _space_text(tin), "prediction": _space_text(pin)},
    }
    if tin.backed:
        conventions["backed"] = True
    out: dict[str, Any] = {
        "schema": 1,
        "kind": "eval",
        "synthetic": synthetic,
        "prediction": {"path": pin.file if pin.sha256 else None, "sha256": pin.sha256,
                       "expression_space": COUNTS_SPACE if mode == "counts" else LOG1P_SPACE,
                       "synthetic": pin.synthetic},
        "truth": {"path": tin.file if tin.sha256 else None, "sha256": tin.sha256, "expression_space": tspace,
                  "processing": processing, "synthetic": tin.synthetic},
        "n_groups": len(groups),
        "n_true_cells": int(data.n_true.sum()),
        "conventions": conventions,
        "groups": [{"group_id": g.group_id, "context": g.context, "n_true_cells": g.n_cells,
                    "n_pred_cells": int(n)} for g, n in zip(data.groups, pcount)],
        "panel_selection": {"panels": [p.name for p in panel_objs],
                            "selection": "standard (every installed standard panel)" if names == "standard"
                            else "narrower set requested (--panels)"},
        "references": references,
        "panels": panels_out,
    }
    if shard is not None:
        out["sharding"] = shard_stats
    if synthetic:
        side = "truth" if tin.synthetic else "prediction"
        out["synthetic_note"] = f"SYNTHETIC DATA: the {side} comes from simulated data, not from a real screen"
    return out


def _check_group_coverage(want: set[str], have: set[str], pred_file: str, perturbation_key: str) -> None:
    """Refuse predictions that miss groups of the truth or add groups it lacks."""
    if want - have:
        missing = sorted(want - have)
        raise PredictionError(f"{len(missing)} group(s) of the truth have no predicted cells: {head(missing, 10)}",
                              file=pred_file, field=perturbation_key,
                              fix="predict cells for every perturbation (and context) of the truth")
    if have - want:
        extra = sorted(have - want)
        raise PredictionError(f"{len(extra)} predicted group(s) are not in the truth: {head(extra, 10)}",
                              file=pred_file, field=perturbation_key,
                              fix="predict only the truth's groups (same labels, control label and context keys)")


def _align_genes(pred_genes: list[str], truth_genes: list[str], pred_file: str) -> list[int] | None:
    """Column order taking the prediction to the truth's genes (None: already aligned);
    refuses differing gene sets."""
    if pred_genes == truth_genes:
        return None
    only_t = sorted(set(truth_genes) - set(pred_genes))
    only_p = sorted(set(pred_genes) - set(truth_genes))
    if only_t or only_p:
        raise PredictionError(
            "the prediction's genes differ from the truth's: "
            + (f"{len(only_t)} only in the truth ({head(only_t, 10)})" if only_t else "")
            + ("; " if only_t and only_p else "")
            + (f"{len(only_p)} only in the prediction ({head(only_p, 10)})" if only_p else ""),
            file=pred_file, field="var_names", fix="predict exactly the truth's genes (their order does not matter)",
        )
    pos = {g: j for j, g in enumerate(pred_genes)}
    return [pos[g] for g in truth_genes]


class _LazyCells(Mapping):
    """Group id -> that group's predicted cells (dense float64, truth's gene order), read on
    access from a (sparse, or backed) matrix; nothing is cached."""

    def __init__(self, X: Any, rows: dict[str, np.ndarray], col_order: list[int] | None) -> None:
        self._X, self._rows, self._cols = X, rows, col_order

    def __getitem__(self, gid: str) -> np.ndarray:
        M = self._X[self._rows[gid]]
        M = np.asarray(M.toarray() if hasattr(M, "toarray") else M, dtype=np.float64)
        return M if self._cols is None else M[:, self._cols]

    def __iter__(self):  # noqa: ANN204
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _rows_by_label(labels: np.ndarray) -> dict[str, np.ndarray]:
    import pandas as pd

    codes, uniq = pd.factorize(labels)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(uniq)))])
    return {str(u): order[bounds[k]:bounds[k + 1]] for k, u in enumerate(uniq)}
