"""Perturbation kinds at import: which perturbations are gene sets and which are not.

A dataset records each perturbation's kind in ``obs['pfm_perturbation_kind']``
(:data:`perturbfm.dataset.KIND_COL`): ``genetic`` (a gene set entering at graph
nodes), ``chemical`` (a drug or compound) or ``other`` (a stimulus, a cytokine
...); control cells carry ``control``. The kind is set for the whole dataset
(``perturbation_kind`` / ``--perturbation-kind``) or per perturbation from an obs
column (``perturbation_kind_key`` / ``--perturbation-kind-key``). Messages about
unmeasured genes count only genetic perturbations: a drug is never "a perturbed
gene that is not measured".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from perturbfm.canonical.obs import head
from perturbfm.dataset import CONTROL, GENETIC, KIND_COL, PERTURBATION_KINDS, pert_genes
from perturbfm.errors import DatasetValidationError

_FIX = "pass perturbation_kind=genetic|chemical|other (--perturbation-kind)"


def parse_kind(value: Any, *, file: str | None, field: str = "perturbation_kind") -> str:
    """``value`` as one of :data:`PERTURBATION_KINDS` (case-insensitive), else a clear error."""
    kind = str(value).strip().lower()
    if kind not in PERTURBATION_KINDS:
        raise DatasetValidationError(
            f"perturbation kind {value!r} is not one of {', '.join(PERTURBATION_KINDS)}", file=file, field=field,
            fix=f"{_FIX}: genetic for CRISPR/RNAi gene targets, chemical for drugs and compounds, other for "
            "stimuli such as cytokines")
    return kind


def perturbation_kinds(
    obs: pd.DataFrame, pert: np.ndarray, is_ctrl: np.ndarray, *, kind: Any = None, kind_key: str | None = None,
    default: str = GENETIC, file: str | None, processing: list[str],
) -> np.ndarray:
    """The kind of every cell's perturbation (``control`` for control cells).

    Args:
        obs: the cells' obs table (rows aligned with ``pert``).
        pert: canonical perturbation label of every cell.
        is_ctrl: control flag of every cell.
        kind: the kind of every perturbation (None: ``default``, or the column).
        kind_key: obs column holding each cell's kind; cells where it is empty take
            ``kind`` (or ``default``). One perturbation must have one kind.
        default: the adapter's default kind.
    """
    fallback = parse_kind(kind if kind is not None and str(kind).strip() else default, file=file)
    out = np.full(len(pert), fallback, dtype=object)
    if kind_key is not None and str(kind_key).strip():
        key = str(kind_key).strip()
        if key not in obs.columns:
            raise DatasetValidationError(f"obs has no column {key!r} (given as perturbation_kind_key)", file=file,
                                         field=key, fix=f"name one of the obs columns: {head(obs.columns, 30)}")
        s = obs[key]
        raw = s.astype(str).str.strip().str.lower().where(~s.isna(), "").to_numpy(dtype=object)
        given = (raw != "") & ~is_ctrl
        bad = sorted(set(raw[given]) - set(PERTURBATION_KINDS))
        if bad:
            raise DatasetValidationError(
                f"obs[{key!r}] holds value(s) {head(bad, 5)} that are not perturbation kinds "
                f"({', '.join(PERTURBATION_KINDS)})", file=file, field=key,
                fix="recode the column to genetic / chemical / other, or drop perturbation_kind_key")
        out[given] = raw[given]
        mixed = pd.DataFrame({"p": pert[~is_ctrl], "k": out[~is_ctrl]}).groupby("p")["k"].nunique()
        mixed = mixed[mixed > 1]
        if len(mixed):
            raise DatasetValidationError(
                f"perturbation(s) {head(mixed.index, 5)} have cells of more than one kind in obs[{key!r}]",
                file=file, field=key, fix="give every cell of one perturbation the same kind")
        processing.append(f"perturbation kind from obs[{key!r}]"
                          + (f" ({fallback} where it is empty)" if (~given & ~is_ctrl).any() else ""))
    else:
        source = "given" if kind is not None and str(kind).strip() else "the adapter's default"
        processing.append(f"perturbation kind {fallback!r} for every perturbation ({source})")
    out[is_ctrl] = CONTROL
    return out


def kind_counts(pert: np.ndarray, kinds: np.ndarray) -> dict[str, int]:
    """Number of distinct non-control perturbations of each kind."""
    pairs = {(str(p), str(k)) for p, k in zip(pert, kinds) if k != CONTROL}
    return {k: sum(1 for _, kk in pairs if kk == k) for k in PERTURBATION_KINDS if any(kk == k for _, kk in pairs)}


def genetic_targets(pert: np.ndarray, kinds: np.ndarray) -> list[str]:
    """The genes of the genetic perturbations among ``pert`` (sorted, unique)."""
    labels = {str(p) for p, k in zip(pert, kinds) if k == GENETIC}
    return sorted({g for p in labels for g in pert_genes(p)})


def unmeasured_message(missing: Sequence[str], n_targets: int, counts: dict[str, int]) -> str:
    """What import says about perturbations outside the measured genes: genetic targets only,
    chemical / other perturbations named as what they are."""
    parts = [f"{len(missing)} of {n_targets} perturbed genes (genetic perturbations) are not measured"
             if n_targets else "no genetic perturbations (no perturbed genes)"]
    for k in ("chemical", "other"):
        if counts.get(k):
            parts.append(f"{counts[k]} {k} perturbation(s) (not genes)")
    return "; ".join(parts)


__all__ = ["KIND_COL", "genetic_targets", "kind_counts", "parse_kind", "perturbation_kinds", "unmeasured_message"]
