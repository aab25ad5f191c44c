"""The ``anndata`` dataset adapter: imports any perturbation-screen ``.h5ad``.

The user names the obs columns that hold the perturbation, the context (cell
line / type) and the group-defining covariates; the adapter writes the
canonical columns of :mod:`perturbfm.dataset`, converts ``X`` to float64 CSR in
log1p space and refuses malformed input with a
:class:`~perturbfm.errors.DatasetValidationError` naming file, field and fix.

Format adapters (:mod:`perturbfm_bench_adapters.formats`) subclass it: they
change defaults and may derive the perturbation column first (``prepare``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
from perturbfm.canonical.expression import (
    EXPRESSION_MODES,
    check_matrix_type,
    matrix_of,
    prepare_expression,
    prepare_expression_chunked,
)
from perturbfm.canonical.genes import ensembl_hint, symbols_from
from perturbfm.canonical.kinds import genetic_targets, kind_counts, perturbation_kinds, unmeasured_message
from perturbfm.canonical.obs import (
    canonical_labels,
    check_controls,
    context_labels,
    covariates,
    head,
)
from perturbfm.dataset import (
    COMBO_DELIMITER,
    CONTEXT_COL,
    CONTROL,
    CONTROL_COL,
    COVARIATES_COL,
    GENETIC,
    GROUP_COL,
    KIND_COL,
    PERT_COL,
    SYMBOL_COL,
    pert_genes,
)
from perturbfm.errors import DatasetValidationError
from perturbfm.hashing import sha256_file
from perturbfm.interfaces import AdapterResult, DatasetAdapter

from perturbfm_bench_adapters._options import as_bool, as_str_list

#: ``prepare(obs, file, processing) -> (obs, overrides)``: a format's hook that
#: may add a derived perturbation column before parsing; ``overrides`` may set
#: ``perturbation_key`` and ``context_keys`` (e.g. defaults that depend on the columns).
Prepare = Callable[[pd.DataFrame, str, list[str]], tuple[pd.DataFrame, dict[str, Any]]]
DEFAULT_CHUNK = 10_000
#: What error messages name as the "file" of an in-memory AnnData.
IN_MEMORY = "<in-memory AnnData>"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def gene_universe(var_names: Any, perturbations: Any, symbols: Any = None) -> tuple[list[str], list[str]]:
    """The measured genes (in order) followed by the perturbed genes that are not
    measured (sorted); and that second list on its own. Pass only genetic
    perturbations: a drug is not a gene. A perturbed gene counts as measured when
    it is a var name or the symbol of one (``symbols``)."""
    measured = [str(g) for g in var_names]
    known = set(measured) | {str(s) for s in (symbols if symbols is not None else ()) if str(s)}
    perturbed = sorted({g for p in set(map(str, perturbations)) for g in pert_genes(p)})
    missing = [g for g in perturbed if g not in known]
    return measured + missing, missing


class AnnDataAdapter(DatasetAdapter):
    """Import an ``.h5ad`` perturbation screen (log1p or raw counts)."""

    name: ClassVar[str] = "anndata"
    #: ``load`` takes an in-memory AnnData as well as a path (see :func:`perturbfm.api.import_adata`).
    accepts_anndata: ClassVar[bool] = True
    #: the kind of every perturbation unless ``perturbation_kind`` / ``perturbation_kind_key`` say otherwise.
    default_kind: ClassVar[str] = GENETIC
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
        "backed": "read the file with anndata backed='r' and convert X in row chunks, for files "
        "larger than memory (default False)",
        "chunk_size": f"rows per chunk in backed mode (default {DEFAULT_CHUNK})",
        "layer": "name of the layer holding the expression values (e.g. 'counts'); default: X",
        "gene_name_key": "optional var column holding the gene symbols to use as gene names "
        "(e.g. GEARS' 'gene_name' when var_names are Ensembl ids)",
        "gene_symbol_key": "optional var column holding each gene's symbol, recorded beside the var names "
        "(which stay the dataset's gene ids); gene graphs and the GO table are looked up by symbol",
        "perturbation_kind": "kind of every perturbation: genetic (default: gene sets), chemical (drugs, "
        "compounds) or other (stimuli); hashed into the dataset id",
        "perturbation_kind_key": "optional obs column holding each cell's perturbation kind (genetic / chemical / "
        "other; empty: perturbation_kind)",
        "licence": "licence of the source data, recorded in the manifest",
        "citation": "citation of the source data, recorded in the manifest",
    }

    def load(
        self,
        path: str | Path | ad.AnnData | None = None,
        *,
        perturbation_key: str = "perturbation",
        control: str = CONTROL,
        combo_delimiter: str = COMBO_DELIMITER,
        context_keys: Any = (),
        covariate_keys: Any = (),
        expression: str = "auto",
        obs_filter: str | None = None,
        backed: Any = False,
        chunk_size: Any = DEFAULT_CHUNK,
        gene_name_key: str | None = None,
        layer: str | None = None,
        licence: str | None = None,
        citation: str | None = None,
        gene_symbol_key: str | None = None,
        perturbation_kind: str | None = None,
        perturbation_kind_key: str | None = None,
        **unknown: Any,
    ) -> AdapterResult:
        """Read ``path`` (an ``.h5ad`` file or an in-memory :class:`anndata.AnnData`,
        never modified) and return the canonical dataset (see the class ``options``)."""
        return self._load(
            path, unknown, perturbation_key=perturbation_key, control=control,
            combo_delimiter=combo_delimiter, context_keys=context_keys, covariate_keys=covariate_keys,
            expression=expression, obs_filter=obs_filter, backed=backed, chunk_size=chunk_size,
            gene_name_key=gene_name_key, layer=layer, licence=licence, citation=citation,
            gene_symbol_key=gene_symbol_key, perturbation_kind=perturbation_kind,
            perturbation_kind_key=perturbation_kind_key,
        )

    # ------------------------------------------------------------------ shared core
    def _load(
        self,
        path: str | Path | ad.AnnData | None,
        unknown: dict[str, Any],
        *,
        perturbation_key: str,
        control: str,
        combo_delimiter: str,
        context_keys: Any,
        covariate_keys: Any,
        expression: str,
        obs_filter: str | None,
        backed: Any,
        chunk_size: Any,
        gene_name_key: str | None,
        licence: str | None,
        citation: str | None,
        layer: str | None = None,
        prepare: Prepare | None = None,
        extra: dict[str, Any] | None = None,
        gene_symbol_key: str | None = None,
        perturbation_kind: str | None = None,
        perturbation_kind_key: str | None = None,
    ) -> AdapterResult:
        """The parsing every AnnData-based adapter shares (validated options in,
        canonical dataset out); ``prepare`` may derive the perturbation column."""
        in_memory = isinstance(path, ad.AnnData)
        file = IN_MEMORY if in_memory else str(Path(path).resolve()) if path is not None else None
        if unknown:
            bad = sorted(unknown)
            raise DatasetValidationError(
                f"unknown option(s) for the {self.name} adapter: {', '.join(bad)}",
                file=file, field=bad[0], fix=f"use only: {', '.join(self.options)}",
            )
        if file is None:
            raise DatasetValidationError(
                f"the {self.name} adapter needs the path of an .h5ad file (or an AnnData)", field="path",
                fix=f"pass the file, e.g. `pfm-bench data import --adapter {self.name} data.h5ad`",
            )
        expression = str(expression).strip().lower()
        if expression not in EXPRESSION_MODES:
            raise DatasetValidationError(
                f"expression must be one of {', '.join(EXPRESSION_MODES)}, got {expression!r}",
                file=file, field="expression", fix="pass expression=auto, counts or log1p",
            )
        is_backed = as_bool(backed)
        if is_backed is None:
            raise DatasetValidationError(f"backed must be true or false, got {backed!r}", file=file,
                                         field="backed", fix="pass backed=true or backed=false")
        if in_memory and is_backed:
            raise DatasetValidationError("backed=true reads a file, but an in-memory AnnData was given",
                                         file=file, field="backed",
                                         fix="drop backed=true, or pass the path of the .h5ad file")
        try:
            chunk = int(chunk_size)
        except (TypeError, ValueError):
            raise DatasetValidationError(f"chunk_size must be an integer, got {chunk_size!r}", file=file,
                                         field="chunk_size", fix="pass e.g. chunk_size=10000") from None
        control, delim = str(control).strip(), str(combo_delimiter)
        for opt, val in (("control", control), ("combo_delimiter", delim), ("perturbation_key", perturbation_key)):
            if not (val if opt == "combo_delimiter" else str(val).strip()):
                raise DatasetValidationError(f"option {opt} is empty", file=file, field=opt,
                                             fix=f"pass a non-empty {opt}")
        ctx_keys, cov_keys = as_str_list(context_keys), as_str_list(covariate_keys)

        src = path if isinstance(path, ad.AnnData) else self._read(file, backed=is_backed)
        try:
            processing = [f"read {'an in-memory AnnData' if in_memory else Path(file).name} "
                          f"({src.n_obs} cells x {src.n_vars} genes)"
                          + (" in backed mode (anndata backed='r')" if is_backed else "")]
            self._check_shape_and_names(src, file)
            rows: np.ndarray | None = None
            if obs_filter is not None and str(obs_filter).strip():
                rows = np.flatnonzero(self._filter_mask(src, str(obs_filter).strip(), file, processing))
            obs = (src.obs if rows is None else src.obs.iloc[rows]).copy()
            if prepare is not None:
                obs, overrides = prepare(obs, file, processing)
                perturbation_key = str(overrides.get("perturbation_key", perturbation_key))
                ctx_keys = as_str_list(overrides.get("context_keys", ctx_keys))
            for key in [perturbation_key, *ctx_keys, *cov_keys]:
                if key not in obs.columns:
                    role = ("perturbation_key" if key == perturbation_key
                            else "context_keys" if key in ctx_keys else "covariate_keys")
                    raise DatasetValidationError(
                        f"obs has no column {key!r} (given as {role})", file=file, field=key,
                        fix=f"pass {role} naming one of the obs columns: {head(obs.columns, 30)}",
                    )
            pert, is_ctrl = canonical_labels(obs[perturbation_key], control, delim, file, perturbation_key)
            processing.append(f"perturbation from obs[{perturbation_key!r}], combos split on {delim!r}, "
                              f"control label {control!r}; genes sorted and joined by '+'")
            context = context_labels(obs, ctx_keys, file)
            processing.append(f"context from obs {ctx_keys} joined by '/'" if ctx_keys
                              else "no context key given: one context 'all'")
            covs, numeric = covariates(obs, cov_keys, file, processing)
            check_controls(pert, is_ctrl, context, control, perturbation_key, ctx_keys, file)
            kinds = perturbation_kinds(obs, pert, is_ctrl, kind=perturbation_kind, kind_key=perturbation_kind_key,
                                       default=self.default_kind, file=file, processing=processing)

            X_src, label = _expression_source(src, layer, file, processing)
            names = obs.index.astype(str)
            if is_backed:
                X, space, expr_lines = prepare_expression_chunked(
                    X_src, rows, expression, file=file, source_label=label, chunk_rows=chunk, cell_names=names)
            else:
                check_matrix_type(X_src, file=file, source_label=label)
                X, space, expr_lines = prepare_expression(
                    X_src if rows is None else X_src[rows], expression, file=file, source_label=label,
                    cell_names=names)
            processing += expr_lines
            obsm = {k: _take_rows(v, rows) for k, v in src.obsm.items()}
            varm = {k: copy.deepcopy(v) for k, v in src.varm.items()}
            var, uns = _gene_names(src.var, gene_name_key, file, processing), copy.deepcopy(dict(src.uns))
            if gene_symbol_key is not None and str(gene_symbol_key).strip():
                var[SYMBOL_COL] = symbols_from(var, str(gene_symbol_key), file=file, processing=processing)
            elif (hint := ensembl_hint(var.index, var)) is not None:
                processing.append("warning: " + hint)
            dropped = [k for k in ("layers", "obsp", "varp") if len(getattr(src, k))]
        finally:
            if is_backed and not in_memory and getattr(src, "file", None) is not None:
                src.file.close()

        overwritten = [c for c in (PERT_COL, CONTROL_COL, CONTEXT_COL, COVARIATES_COL, GROUP_COL,
                                   "pfm_dose", "pfm_time", KIND_COL) if c in obs.columns]
        if overwritten:
            obs = obs.drop(columns=overwritten)
            processing.append(f"replaced input obs columns {overwritten}")
        obs[PERT_COL] = pert
        obs[CONTROL_COL] = is_ctrl
        obs[CONTEXT_COL] = context
        obs[COVARIATES_COL] = covs
        obs[KIND_COL] = pd.Categorical(kinds)
        for col, values in numeric.items():
            obs[col] = values
        if dropped:
            processing.append(f"not carried over: {', '.join(dropped)}")
        adata = ad.AnnData(X=X, obs=obs, var=var, obsm=obsm, varm=varm, uns=uns)
        targets = sorted({str(p) for p, k in zip(pert, kinds) if k == GENETIC})
        universe, missing = gene_universe(adata.var_names, targets,
                                          var[SYMBOL_COL] if SYMBOL_COL in var.columns else None)
        counts = kind_counts(pert, kinds)
        processing.append(f"gene universe: {adata.n_vars} measured genes + {len(missing)} perturbed "
                          "genes that are not measured (genetic perturbations only)")
        processing.append(unmeasured_message(missing, len(genetic_targets(pert, kinds)), counts))
        source = ({"path": None, "kind": "in-memory AnnData", "format": "AnnData"} if in_memory
                  else {"path": file, "file_sha256": sha256_file(file), "format": "h5ad"})
        if layer:
            source["layer"] = str(layer)
        return AdapterResult(
            adata=adata,
            source=source,
            synthetic=False, expression_space=space, processing=processing,
            licence=licence, citation=citation,
            extra={"obs_filter": obs_filter, "n_obs": int(adata.n_obs), "backed": is_backed,
                   "gene_universe": universe, "perturbed_genes_not_measured": missing,
                   "perturbation_kinds": counts, "perturbation_kind_source": (
                       {"obs_column": str(perturbation_kind_key)} if perturbation_kind_key
                       else {"option": str(perturbation_kind)} if perturbation_kind
                       else {"adapter_default": self.default_kind}),
                   "gene_symbol_key": str(gene_symbol_key) if gene_symbol_key else None, **(extra or {})},
        )

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _read(file: str, *, backed: bool = False) -> ad.AnnData:
        p = Path(file)
        if not p.is_file():
            raise DatasetValidationError(
                "input file does not exist" if not p.exists() else "input path is not a file",
                file=file, field="path", fix="check the path of the .h5ad file",
            )
        try:
            return ad.read_h5ad(p, backed="r" if backed else None)
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
                    f"{len(dup)} duplicate {what} name(s), e.g. {head(pd.unique(dup), 5)}",
                    file=file, field=f"{what}_names", fix=fix,
                )

    @staticmethod
    def _filter_mask(src: ad.AnnData, spec: str, file: str, processing: list[str]) -> np.ndarray:
        col, sep, value = spec.partition("=")
        col, value = col.strip(), value.strip().lstrip("=").strip()
        if not sep or not col:
            raise DatasetValidationError(f"obs_filter {spec!r} is not 'column=value'", file=file,
                                         field="obs_filter", fix="pass e.g. obs_filter=confident_assignment=True")
        if col not in src.obs.columns:
            raise DatasetValidationError(
                f"obs_filter names no obs column {col!r}", file=file, field=col,
                fix=f"use one of the obs columns: {head(src.obs.columns, 30)}",
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
                fix=f"values of {col!r} include: {head(series.astype(str).value_counts().index, 10)}",
            )
        processing.append(f"kept {int(mask.sum())} of {src.n_obs} cells where obs[{col!r}] == {value!r}")
        return mask


def _gene_names(var: pd.DataFrame, key: str | None, file: str, processing: list[str]) -> pd.DataFrame:
    """``var`` re-indexed by the gene symbols of column ``key`` (unchanged if no key)."""
    var = var.copy()
    if not key:
        return var
    if key not in var.columns:
        raise DatasetValidationError(f"var has no column {key!r} (given as gene_name_key)", file=file,
                                     field=key, fix=f"use one of the var columns: {head(var.columns, 20)}")
    names = var[key].astype(str).str.strip()
    dup = names[names.duplicated()]
    if len(dup) or (names == "").any():
        raise DatasetValidationError(
            f"var[{key!r}] holds duplicated or empty gene names, e.g. {head(pd.unique(dup), 5)}",
            file=file, field=key, fix="aggregate duplicated genes first, or leave gene_name_key unset")
    var.index = pd.Index(names.to_numpy(), name=None)
    processing.append(f"gene names from var[{key!r}]")
    return var


def _expression_source(src: ad.AnnData, layer: str | None, file: str, processing: list[str]) -> tuple[Any, str]:
    """The matrix holding the expression values (``X`` or ``layers[layer]``) and its label."""
    matrix, label = matrix_of(src, layer, file=file)
    if label != "X":
        processing.append(f"expression values from {label} (X not used)")
    return matrix, label


def _take_rows(value: Any, rows: np.ndarray | None) -> Any:
    """A copy of an obsm entry, restricted to ``rows`` when given."""
    if rows is None:
        return copy.deepcopy(value)
    if isinstance(value, pd.DataFrame):
        return value.iloc[rows].copy()
    return copy.deepcopy(value[rows])
