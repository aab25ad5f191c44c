"""The ``anndata`` dataset adapter: imports any perturbation-screen ``.h5ad``.

The user names the obs columns that hold the perturbation, the context (cell
line / type) and the group-defining covariates; the adapter writes the
canonical columns of :mod:`perturbfm.dataset`, converts ``X`` to float64 CSR in
log1p space and refuses malformed input with a
:class:`~perturbfm.errors.DatasetValidationError` naming file, field and fix.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd

from perturbfm.dataset import (
    COMBO_DELIMITER,
    CONTEXT_COL,
    CONTROL,
    CONTROL_COL,
    COVARIATES_COL,
    GROUP_COL,
    PERT_COL,
    canonical_perturbation,
)
from perturbfm.errors import DatasetValidationError
from perturbfm.hashing import sha256_file
from perturbfm.interfaces import AdapterResult, DatasetAdapter

from perturbfm_bench_adapters._expression import EXPRESSION_MODES, prepare_expression
from perturbfm_bench_adapters._options import as_bool, as_str_list

_FORBIDDEN = "@"  # separates the parts of a group id


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _head(items: Any, n: int = 8) -> str:
    items = [str(i) for i in items]
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


class AnnDataAdapter(DatasetAdapter):
    """Import an ``.h5ad`` perturbation screen (log1p or raw counts)."""

    name: ClassVar[str] = "anndata"
    description: ClassVar[str] = (
        "any .h5ad perturbation screen: name the perturbation, context and covariate obs columns"
    )
    options: ClassVar[dict[str, str]] = {
        "perturbation_key": "obs column holding the perturbation label (default 'perturbation')",
        "control": "label of control cells in that column (default 'control'); also dropped "
        "from combos, so 'A+ctrl' with control=ctrl means A",
        "combo_delimiter": "separator of the genes of a combination (default '+')",
        "context_keys": "obs column(s) defining the context (cell line/type), comma-separated; "
        "values joined by '/'; default: one context 'all'",
        "covariate_keys": "obs column(s) defining groups beyond perturbation and context "
        "(dose, time ...), comma-separated; numeric 'dose'/'time' columns also fill pfm_dose/pfm_time",
        "expression": "'auto' (default: counts if every value is a non-negative integer), "
        "'counts' (normalise to 10,000 per cell, then log1p) or 'log1p' (used as provided)",
        "obs_filter": "optional 'column=value': keep only cells where that column equals the value "
        "(e.g. confident_assignment=True)",
        "licence": "licence of the source data, recorded in the manifest",
        "citation": "citation of the source data, recorded in the manifest",
    }

    def load(  # type: ignore[override]
        self,
        path: str | Path | None = None,
        *,
        perturbation_key: str = "perturbation",
        control: str = CONTROL,
        combo_delimiter: str = COMBO_DELIMITER,
        context_keys: Any = (),
        covariate_keys: Any = (),
        expression: str = "auto",
        obs_filter: str | None = None,
        licence: str | None = None,
        citation: str | None = None,
        **unknown: Any,
    ) -> AdapterResult:
        """Read ``path`` and return the canonical dataset (see the class ``options``)."""
        file = str(Path(path).resolve()) if path is not None else None
        if unknown:
            bad = sorted(unknown)
            raise DatasetValidationError(
                f"unknown option(s) for the anndata adapter: {', '.join(bad)}",
                file=file, field=bad[0], fix=f"use only: {', '.join(self.options)}",
            )
        if file is None:
            raise DatasetValidationError(
                "the anndata adapter needs the path of an .h5ad file", field="path",
                fix="pass the file, e.g. `pfm-bench import anndata data.h5ad`",
            )
        expression = str(expression).strip().lower()
        if expression not in EXPRESSION_MODES:
            raise DatasetValidationError(
                f"expression must be one of {', '.join(EXPRESSION_MODES)}, got {expression!r}",
                file=file, field="expression", fix="pass expression=auto, counts or log1p",
            )
        control, delim = str(control).strip(), str(combo_delimiter)
        for opt, val in (("control", control), ("combo_delimiter", delim), ("perturbation_key", perturbation_key)):
            if not str(val).strip():
                raise DatasetValidationError(f"option {opt} is empty", file=file, field=opt,
                                             fix=f"pass a non-empty {opt}")
        ctx_keys, cov_keys = as_str_list(context_keys), as_str_list(covariate_keys)

        src = self._read(file)
        processing = [f"read {Path(file).name} ({src.n_obs} cells x {src.n_vars} genes)"]
        self._check_shape_and_names(src, file)
        if obs_filter is not None and str(obs_filter).strip():
            src = self._apply_filter(src, str(obs_filter).strip(), file, processing)
        obs = src.obs
        for key in [perturbation_key, *ctx_keys, *cov_keys]:
            if key not in obs.columns:
                role = ("perturbation_key" if key == perturbation_key
                        else "context_keys" if key in ctx_keys else "covariate_keys")
                raise DatasetValidationError(
                    f"obs has no column {key!r} (given as {role})", file=file, field=key,
                    fix=f"pass {role} naming one of the obs columns: {_head(obs.columns, 30)}",
                )

        pert, is_ctrl = _canonical_labels(obs[perturbation_key], control, delim, file, perturbation_key)
        processing.append(f"perturbation from obs[{perturbation_key!r}], combos split on {delim!r}, "
                          f"control label {control!r}; genes sorted and joined by '+'")
        context = _context(obs, ctx_keys, file)
        if ctx_keys:
            processing.append(f"context from obs {ctx_keys} joined by '/'")
        else:
            processing.append("no context key given: one context 'all'")
        covs, numeric = _covariates(obs, cov_keys, file, processing)
        _check_controls(pert, is_ctrl, context, control, perturbation_key, ctx_keys, file)

        X, space, expr_lines = prepare_expression(src.X, expression, file=file, source_label="X")
        processing += expr_lines

        new_obs = obs.copy()
        overwritten = [c for c in (PERT_COL, CONTROL_COL, CONTEXT_COL, COVARIATES_COL, GROUP_COL,
                                   "pfm_dose", "pfm_time") if c in new_obs.columns]
        if overwritten:
            new_obs = new_obs.drop(columns=overwritten)
            processing.append(f"replaced input obs columns {overwritten}")
        new_obs[PERT_COL] = pert
        new_obs[CONTROL_COL] = is_ctrl
        new_obs[CONTEXT_COL] = context
        new_obs[COVARIATES_COL] = covs
        for col, values in numeric.items():
            new_obs[col] = values
        dropped = [k for k in ("layers", "obsp", "varp") if len(getattr(src, k))]
        if dropped:
            processing.append(f"not carried over: {', '.join(dropped)}")
        adata = ad.AnnData(
            X=X, obs=new_obs, var=src.var.copy(),
            obsm={k: copy.deepcopy(v) for k, v in src.obsm.items()},
            varm={k: copy.deepcopy(v) for k, v in src.varm.items()},
            uns=copy.deepcopy(dict(src.uns)),
        )
        return AdapterResult(
            adata=adata,
            source={"path": file, "file_sha256": sha256_file(file), "format": "h5ad"},
            synthetic=False, expression_space=space, processing=processing,
            licence=licence, citation=citation,
            extra={"obs_filter": obs_filter, "n_obs": int(adata.n_obs)},
        )

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _read(file: str) -> ad.AnnData:
        p = Path(file)
        if not p.is_file():
            raise DatasetValidationError(
                "input file does not exist" if not p.exists() else "input path is not a file",
                file=file, field="path", fix="check the path of the .h5ad file",
            )
        try:
            return ad.read_h5ad(p)
        except Exception as exc:  # anndata/h5py raise many types for corrupt files
            raise DatasetValidationError(
                f"cannot read the file as AnnData (.h5ad): {type(exc).__name__}: {exc}",
                file=file, field="path", fix="pass an .h5ad written by anndata (AnnData.write_h5ad)",
            ) from exc

    @staticmethod
    def _check_shape_and_names(src: ad.AnnData, file: str) -> None:
        if src.n_obs == 0:
            raise DatasetValidationError("the file holds zero cells", file=file, field="obs",
                                         fix="import a file with cells")
        if src.n_vars == 0:
            raise DatasetValidationError("the file holds zero genes", file=file, field="var",
                                         fix="import a file with genes (var)")
        for what, names, fix in (
            ("obs", src.obs_names, "make cell names unique (AnnData.obs_names_make_unique())"),
            ("var", src.var_names, "make gene names unique (AnnData.var_names_make_unique()) or "
             "aggregate duplicated genes"),
        ):
            dup = names[names.duplicated()]
            if len(dup):
                raise DatasetValidationError(
                    f"{len(dup)} duplicate {what} name(s), e.g. {_head(pd.unique(dup), 5)}",
                    file=file, field=f"{what}_names", fix=fix,
                )

    @staticmethod
    def _apply_filter(src: ad.AnnData, spec: str, file: str, processing: list[str]) -> ad.AnnData:
        col, sep, value = spec.partition("=")
        col, value = col.strip(), value.strip().lstrip("=").strip()
        if not sep or not col:
            raise DatasetValidationError(f"obs_filter {spec!r} is not 'column=value'", file=file,
                                         field="obs_filter", fix="pass e.g. obs_filter=confident_assignment=True")
        if col not in src.obs.columns:
            raise DatasetValidationError(
                f"obs_filter names no obs column {col!r}", file=file, field=col,
                fix=f"use one of the obs columns: {_head(src.obs.columns, 30)}",
            )
        series = src.obs[col]
        if pd.api.types.is_bool_dtype(series):
            want = as_bool(value)
            if want is None:
                raise DatasetValidationError(f"obs column {col!r} is boolean; cannot compare to {value!r}",
                                             file=file, field=col, fix=f"use {col}=True or {col}=False")
            mask = series.to_numpy(dtype=bool) == want
        elif pd.api.types.is_numeric_dtype(series) and _is_number(value):
            mask = (series.to_numpy(dtype=np.float64) == float(value))
        else:
            mask = (series.astype(str).str.strip() == value).to_numpy()
        if not mask.any():
            raise DatasetValidationError(
                f"obs_filter {spec!r} keeps zero cells", file=file, field=col,
                fix=f"values of {col!r} include: {_head(series.astype(str).value_counts().index, 10)}",
            )
        processing.append(f"kept {int(mask.sum())} of {src.n_obs} cells where obs[{col!r}] == {value!r}")
        return src[mask].copy()


# ---------------------------------------------------------------------- helpers
def _empty_error(series: pd.Series, key: str, file: str, role: str) -> None:
    missing = series.isna().to_numpy() | (series.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        raise DatasetValidationError(
            f"{int(missing.sum())} cell(s) have an empty {role} in obs[{key!r}]", file=file, field=key,
            fix="fill in the missing labels or drop those cells before importing",
        )


def _canonical_labels(
    series: pd.Series, control: str, delim: str, file: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical perturbation label and control flag of every cell."""
    _empty_error(series, key, file, "perturbation label")
    raw = series.astype(str).to_numpy()
    uniq, inverse = np.unique(raw, return_inverse=True)
    canon = []
    for label in uniq:
        genes = [p.strip() for p in str(label).split(delim)]
        genes = [g for g in genes if g and g != control]
        bad = [g for g in genes if _FORBIDDEN in g or g == CONTROL]
        if bad:
            raise DatasetValidationError(
                f"perturbation label {label!r} contains {bad[0]!r}, which is reserved "
                f"('@' separates group ids; {CONTROL!r} is the canonical control label)",
                file=file, field=key,
                fix=f"rename that gene, or pass control={bad[0]} if those are control cells",
            )
        canon.append(canonical_perturbation(genes) if genes else CONTROL)
    labels = np.asarray(canon, dtype=object)[inverse]
    return labels, labels == CONTROL


def _context(obs: pd.DataFrame, keys: list[str], file: str) -> np.ndarray:
    if not keys:
        return np.full(len(obs), "all", dtype=object)
    parts = []
    for key in keys:
        _empty_error(obs[key], key, file, "context value")
        vals = obs[key].astype(str).str.strip()
        if vals.str.contains(_FORBIDDEN, regex=False).any():
            raise DatasetValidationError(f"context values in obs[{key!r}] contain '@'", file=file,
                                         field=key, fix="rename the contexts without '@'")
        parts.append(vals.to_numpy(dtype=object))
    out = parts[0]
    for p in parts[1:]:
        out = out + "/" + p
    return out


def _numeric_target(key: str) -> str | None:
    k = key.lower()
    return "pfm_dose" if "dose" in k else "pfm_time" if "time" in k else None


def _covariates(
    obs: pd.DataFrame, keys: list[str], file: str, processing: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``key=value;...`` strings (keys sorted) and the numeric dose/time columns."""
    if not keys:
        return np.full(len(obs), "", dtype=object), {}
    numeric: dict[str, np.ndarray] = {}
    out = None
    for key in sorted(keys):
        s = obs[key]
        vals = s.astype(str).str.strip().where(~s.isna(), "")
        if vals.str.contains(r"[@;=]", regex=True).any():
            raise DatasetValidationError(f"covariate values in obs[{key!r}] contain '@', ';' or '='",
                                         file=file, field=key, fix="recode the covariate without those characters")
        part = (f"{key}=" + vals).to_numpy(dtype=object)
        out = part if out is None else out + ";" + part
        target = _numeric_target(key)
        if target is None or target in numeric:
            continue
        parsed = pd.to_numeric(s.astype(object).where(~s.isna(), np.nan), errors="coerce")
        if (parsed.isna() & ~s.isna()).any():
            processing.append(f"covariate {key!r} is not numeric (e.g. {_head(vals[parsed.isna()].unique(), 3)}); "
                              f"kept only in pfm_covariates, {target} not written")
            continue
        numeric[target] = parsed.to_numpy(dtype=np.float64)
        processing.append(f"{target} from obs[{key!r}]")
    processing.append(f"covariates from obs {sorted(keys)} as 'key=value;...'")
    return out, numeric


def _check_controls(
    pert: np.ndarray, is_ctrl: np.ndarray, context: np.ndarray, control: str,
    key: str, ctx_keys: list[str], file: str,
) -> None:
    if not is_ctrl.any():
        common = pd.Series(pert).value_counts().head(10)
        raise DatasetValidationError(
            f"no control cells: no label in obs[{key!r}] equals {control!r}; most common labels: "
            + ", ".join(f"{k} ({v})" for k, v in common.items()),
            file=file, field=key, fix="pass control=<the label of your control cells>",
        )
    with_ctrl = set(context[is_ctrl])
    lacking = sorted(set(context[~is_ctrl]) - with_ctrl)
    if lacking:
        raise DatasetValidationError(
            f"context(s) {_head(lacking, 5)} have perturbed cells but no control cells",
            file=file, field=",".join(ctx_keys) or key,
            fix="drop those cells (obs_filter or beforehand), or choose context_keys so every "
            "context has controls",
        )
