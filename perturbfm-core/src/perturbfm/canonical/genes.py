"""Gene identifiers at import: symbols beside the dataset's own gene ids.

Gene graphs and the GO table are keyed by gene symbol. A dataset whose
``var_names`` are other ids (versioned Ensembl ids such as ``ENSG00000118785.13``)
keeps them as its ids and records each gene's symbol in
``var['pfm_gene_symbol']`` (:data:`perturbfm.dataset.SYMBOL_COL`) from a var
column (``gene_symbol_key`` / ``--gene-symbol-key``). Without one, Ensembl ids
are detected and the import says which var column to pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from perturbfm.canonical.obs import head
from perturbfm.errors import DatasetValidationError

#: An Ensembl gene id (human ENSG, mouse ENSMUSG, ...), optionally versioned.
ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def is_ensembl(name: str) -> bool:
    return bool(ENSEMBL_RE.match(str(name).strip()))


def strip_version(name: str) -> str:
    """``ENSG00000118785.13`` -> ``ENSG00000118785``; other names unchanged."""
    n = str(name).strip()
    return n.split(".", 1)[0] if is_ensembl(n) else n


def ensembl_fraction(names: Iterable[str]) -> float:
    """The fraction of ``names`` that are Ensembl gene ids."""
    items = [str(n) for n in names]
    return sum(map(is_ensembl, items)) / len(items) if items else 0.0


def symbol_like_columns(var: pd.DataFrame) -> list[str]:
    """var columns whose values look like gene symbols (strings, mostly not Ensembl ids)."""
    out = []
    for c in var.columns:
        s = var[c]
        if not (pd.api.types.is_object_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype)
                or pd.api.types.is_string_dtype(s)):
            continue
        vals = s.dropna().astype(str)
        if len(vals) and ensembl_fraction(vals.head(200)) < 0.5 and vals.str.match(r"^[A-Za-z]").mean() > 0.9:
            out.append(str(c))
    return out


def ensembl_hint(var_names: Sequence[str], var: pd.DataFrame) -> str | None:
    """What to tell the user when most var names are Ensembl ids and no symbol column was
    named (None otherwise): the graphs and the GO table are keyed by symbol."""
    if ensembl_fraction(list(var_names)[:2000]) < 0.5:
        return None
    cols = symbol_like_columns(var)
    which = (f"pass --gene-symbol-key {cols[0]} (var columns that look like symbols: {', '.join(cols[:5])})"
             if cols else "add a var column of gene symbols and pass --gene-symbol-key COLUMN")
    return ("var names are Ensembl gene ids: gene graphs and the GO table are keyed by gene symbol, so a model "
            f"finds no prior for these genes; {which} (graphs keyed by unversioned Ensembl ids still match: "
            "versions are stripped when looking them up)")


def symbols_from(var: pd.DataFrame, key: str, *, file: str | None, processing: list[str]) -> np.ndarray:
    """The gene symbol of every var entry from column ``key`` (empty where it has none).

    Duplicated symbols are allowed (the var names stay the dataset's ids); an empty
    column or a missing one is refused."""
    key = str(key).strip()
    if key not in var.columns:
        raise DatasetValidationError(f"var has no column {key!r} (given as gene_symbol_key)", file=file,
                                     field=key, fix=f"use one of the var columns: {head(var.columns, 20)}"
                                     + (f" (these look like symbols: {', '.join(symbol_like_columns(var))})"
                                        if symbol_like_columns(var) else ""))
    s = var[key]
    vals = s.astype(str).str.strip().where(~s.isna(), "")
    vals = vals.where(~vals.str.lower().isin(["nan", "none"]), "")
    n_empty = int((vals == "").sum())
    if n_empty == len(vals):
        raise DatasetValidationError(f"var[{key!r}] is empty: no gene has a symbol", file=file, field=key,
                                     fix="name the var column that holds gene symbols")
    n_dup = int(vals[vals != ""].duplicated().sum())
    processing.append(f"gene symbols from var[{key!r}] recorded in var['pfm_gene_symbol'] (var names kept as the "
                      f"dataset's gene ids)" + (f"; {n_empty} gene(s) without a symbol keep their id" if n_empty
                                                 else "")
                      + (f"; {n_dup} duplicated symbol(s)" if n_dup else ""))
    if ensembl_fraction(vals[vals != ""].head(2000)) > 0.5:
        processing.append(f"warning: var[{key!r}] holds mostly Ensembl ids, not symbols")
    return vals.to_numpy(dtype=object)
