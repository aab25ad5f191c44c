"""Parsing of the obs columns for the AnnData adapters: perturbation labels,
contexts, covariates and control checks. Every failure is a
:class:`~perturbfm.errors.DatasetValidationError` naming file, field and fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perturbfm.canonical.labels import split_combo
from perturbfm.dataset import COMBO_DELIMITER, CONTROL, canonical_perturbation, pert_genes
from perturbfm.errors import DatasetValidationError

FORBIDDEN = "@"  # separates the parts of a group id
_FORBIDDEN = FORBIDDEN


def head(items: Any, n: int = 8) -> str:
    """The first ``n`` items joined by commas, with a count of the rest."""
    items = [str(i) for i in items]
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


_head = head


def _empty_error(series: pd.Series, key: str, file: str, role: str) -> None:
    missing = series.isna().to_numpy() | (series.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        raise DatasetValidationError(
            f"{int(missing.sum())} cell(s) have an empty {role} in obs[{key!r}]", file=file, field=key,
            fix="fill in the missing labels or drop those cells before importing",
        )


def canonical_labels(
    series: pd.Series, control: str, delim: str, file: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical perturbation label and control flag of every cell."""
    _empty_error(series, key, file, "perturbation label")
    raw = series.astype(str).to_numpy()
    uniq, inverse = np.unique(raw, return_inverse=True)
    canon = []
    for label in uniq:
        genes = [g for g in split_combo(str(label), delim) if g and g != control]
        bad = [g for g in genes if _FORBIDDEN in g or g == CONTROL]
        if bad:
            raise DatasetValidationError(
                f"perturbation label {label!r} contains {bad[0]!r}, which is reserved "
                f"('@' separates group ids; {CONTROL!r} is the canonical control label)",
                file=file, field=key,
                fix=f"rename that gene, or pass control={bad[0]} if those are control cells",
            )
        label_out = canonical_perturbation(genes) if genes else CONTROL
        if genes and sorted(set(pert_genes(label_out))) != sorted(set(genes)):
            raise DatasetValidationError(
                f"perturbation label {label!r} gives the name(s) {', '.join(map(repr, genes))}, which cannot be "
                f"told apart from a combination in the canonical form {label_out!r} (names joined by "
                f"{COMBO_DELIMITER!r}; a {COMBO_DELIMITER!r} inside a name is kept only within brackets)",
                file=file, field=key,
                fix=f"pass the delimiter that separates the names of a combination (--combo-delimiter / "
                f"combo_delimiter; now {delim!r}), or rename those perturbations without {COMBO_DELIMITER!r} "
                "between two words (e.g. bracket it: 'Drug(+)')",
            )
        canon.append(label_out)
    labels = np.asarray(canon, dtype=object)[inverse]
    return labels, labels == CONTROL


def context_labels(obs: pd.DataFrame, keys: list[str], file: str) -> np.ndarray:
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


def covariates(
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
    return (out if out is not None else np.full(len(obs), "", dtype=object)), numeric


def check_controls(
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
