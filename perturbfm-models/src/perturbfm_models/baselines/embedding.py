"""Reading a perturbation-embedding table (gene symbol + numeric columns)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from perturbfm.errors import ConfigError

FIELD = "pert_embedding_file"
_FIX = (
    "give a CSV (.csv) or TSV (.tsv/.tab/.txt) file whose first column is the gene symbol and "
    "whose remaining columns are numbers (an optional header row is allowed), one unique gene per row"
)


def _separator(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zip", ".xz")]
    last = suffixes[-1] if suffixes else ""
    if last == ".csv":
        return ","
    if last in (".tsv", ".tab", ".txt"):
        return "\t"
    return None  # let pandas sniff


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_embedding(path: str | Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Load ``path`` as gene symbol -> float64 embedding vector.

    Returns:
        ``(embedding, column_names)``; column names are ``dim0..`` without a header.

    Raises:
        ConfigError: naming the file, the field at fault and the fix, when the
            file is missing, unreadable, has fewer than two columns, non-numeric
            or non-finite values, empty or duplicate gene symbols, or no rows.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError("perturbation embedding file not found", file=str(p), field=FIELD, fix=_FIX)
    sep = _separator(p)
    try:
        df = pd.read_csv(
            p, sep=sep, header=None, dtype=str, keep_default_na=False, engine="python" if sep is None else "c"
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise ConfigError(
            f"cannot parse the perturbation embedding file: {exc}".strip(), file=str(p), field=FIELD, fix=_FIX
        ) from exc
    if df.shape[1] < 2:
        raise ConfigError(
            f"the perturbation embedding file has {df.shape[1]} column(s); it needs a gene-symbol column "
            "and at least one embedding column (wrong delimiter?)",
            file=str(p),
            field=FIELD,
            fix=_FIX,
        )
    columns = [f"dim{j}" for j in range(df.shape[1] - 1)]
    first_row = [str(x).strip() for x in df.iloc[0, 1:]] if len(df) else []
    row_offset = 1
    if first_row and not any(_is_number(x) for x in first_row):
        columns = first_row
        df = df.iloc[1:]
        row_offset = 2
    if len(df) == 0:
        raise ConfigError("the perturbation embedding file has no data rows", file=str(p), field=FIELD, fix=_FIX)
    genes = [str(g).strip() for g in df.iloc[:, 0]]
    values = np.empty((len(df), df.shape[1] - 1), dtype=np.float64)
    for j in range(1, df.shape[1]):
        col = df.iloc[:, j].astype(str).str.strip()
        conv = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(conv))
        if bad.size:
            r = int(bad[0])
            raise ConfigError(
                f"value {col.iloc[r]!r} in row {r + row_offset} of the perturbation embedding file is not a "
                f"finite number ({bad.size} such value(s) in this column)",
                file=str(p),
                field=f"{FIELD}: column {j + 1} ({columns[j - 1]!r})",
                fix=_FIX,
            )
        values[:, j - 1] = conv
    seen: set[str] = set()
    for r, g in enumerate(genes):
        if not g:
            raise ConfigError(
                f"row {r + row_offset} of the perturbation embedding file has an empty gene symbol",
                file=str(p),
                field=f"{FIELD}: column 1 (gene symbol)",
                fix=_FIX,
            )
        if g in seen:
            raise ConfigError(
                f"gene {g!r} appears more than once in the perturbation embedding file (row {r + row_offset})",
                file=str(p),
                field=f"{FIELD}: column 1 (gene symbol)",
                fix=_FIX,
            )
        seen.add(g)
    return {g: values[r] for r, g in enumerate(genes)}, columns
