"""The linear baseline of Ahlmann-Eltze, Huber & Anders (Nature Methods 2025).

On the pseudobulk training deltas ``Y`` (genes x training perturbations) it fits
``Y ≈ G W Pᵀ + b`` in closed form, with ridge penalty ``λ`` on both sides::

    W = (GᵀG + λI)⁻¹ Gᵀ (Y − b) P (PᵀP + λI)⁻¹

``b`` is the per-gene mean of the training deltas (of the column's context where
that context has training groups, else over all of them); ``G`` holds the top-K
principal components of the centred ``Y`` (a gene embedding, genes x K, from a
numpy SVD); ``P`` holds one row per training perturbation: the sum of the rows of
``G`` (or of the supplied embedding file) for its perturbed genes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from perturbfm.errors import ConfigError
from perturbfm.interfaces import Model, Prediction
from perturbfm.options import ConfigModel, FilePath, Float, Int, defaults_of, file_field
from perturbfm.training import TrainingData
from pydantic import Field

from .common import DeltaSummary, join_notes, read_model_config, require_fitted
from .embedding import FIELD as EMB_FIELD
from .embedding import load_embedding

if TYPE_CHECKING:
    from perturbfm.dataset import GroupInfo


def _ridge_inverse(m: np.ndarray, lam: float) -> np.ndarray:
    """``(m + λI)⁻¹``; the pseudo-inverse where that is singular (λ = 0)."""
    a = m + lam * np.eye(m.shape[0])
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(a)


class LinearConfig(ConfigModel):
    """The ``linear`` model's parameters."""

    n_components: Int = Field(10, ge=1, description="K: principal components of the training deltas kept as "
                              "the gene embedding G (capped by the rank)")
    ridge_lambda: Float = Field(0.1, ge=0.0, description="λ: ridge penalty on both sides of W")
    pert_embedding_file: FilePath = file_field(
        None, description="CSV/TSV of gene -> embedding for P (null: use the rows of G)")


class LinearModel(Model):
    """Bilinear ridge model ``Y ≈ G W Pᵀ + b`` (Ahlmann-Eltze et al. 2025).

    Perturbed genes without an embedding (not measured, or absent from the
    embedding file) contribute nothing: training perturbations with no embedded
    gene are left out of the fit (listed in ``info``); a query with no embedded
    gene predicts ``b`` (the train-mean), and a combo with some embedded genes
    uses those; both are noted.
    """

    name = "linear"
    description = (
        "Ahlmann-Eltze et al. 2025 linear baseline: Y ≈ G W Pᵀ + b with PCA gene embedding G, "
        "perturbation embedding P = sum of its genes' rows, closed-form ridge."
    )

    def __init__(self) -> None:
        self._summary: DeltaSummary | None = None
        self._G: np.ndarray = np.zeros((0, 0))
        self._W: np.ndarray | None = None
        self._emb: dict[str, np.ndarray] = {}
        self._emb_source = ""
        self._unfit_reason: str | None = None
        self._info: dict[str, Any] = {}

    config_model: ClassVar[type[ConfigModel]] = LinearConfig

    def default_config(self) -> dict[str, Any]:
        """``n_components`` (K), ``ridge_lambda`` (λ), ``pert_embedding_file`` (None: use G rows)."""
        return defaults_of(LinearConfig)

    # ------------------------------------------------------------------ fit
    def _embed(self, genes: Sequence[str]) -> tuple[np.ndarray | None, list[str]]:
        """Sum of the embeddings of ``genes`` (None if none has one) and the genes without one."""
        used = [g for g in genes if g in self._emb]
        missing = [g for g in genes if g not in self._emb]
        if not used:
            return None, missing
        return np.sum([self._emb[g] for g in used], axis=0), missing

    def fit(self, train: TrainingData, val: TrainingData | None, config: Mapping[str, Any]) -> None:
        """Compute b, G (SVD of the centred training deltas), P and W in float64."""
        cfg = read_model_config(LinearConfig, config, model=self.name)
        k_req, lam, emb_file = cfg.n_components, cfg.ridge_lambda, cfg.pert_embedding_file
        if emb_file is not None and not emb_file.strip():
            raise ConfigError(
                f"model {self.name!r}: pert_embedding_file must be a path or null, got {emb_file!r}",
                field=EMB_FIELD,
                fix="set pert_embedding_file to a CSV/TSV path, or null to use the PCA gene embedding",
            )
        file_emb = load_embedding(emb_file) if emb_file else None

        s = DeltaSummary(train)
        self._summary = s
        Y = s.deltas.T  # genes x perturbations
        B = np.stack([s.context_mean[g.context] for g in s.groups], axis=1) if s.groups else Y
        Yc = Y - B
        if Yc.size:
            U, S, _ = np.linalg.svd(Yc, full_matrices=False)
            tol = (S.max() if S.size else 0.0) * max(Yc.shape) * np.finfo(np.float64).eps
            rank = int(np.sum(S > tol))
        else:
            U, rank = np.zeros((s.n_genes, 0)), 0
        k = min(k_req, rank)
        self._G = U[:, :k]

        if file_emb is not None:
            self._emb, cols = file_emb
            self._emb_source = f"file {emb_file} ({len(self._emb)} genes x {len(cols)} dimensions)"
        else:
            self._emb = {g: self._G[i] for i, g in enumerate(s.genes)}
            self._emb_source = "rows of G (PCA gene embedding; only measured genes have one)"

        rows, cols_idx, excluded, partial = [], [], [], {}
        for j, g in enumerate(s.groups):
            p, missing = self._embed(g.genes)
            if p is None:
                excluded.append(g.group_id)
                continue
            if missing:
                partial[g.group_id] = missing
            rows.append(p)
            cols_idx.append(j)

        self._W, self._unfit_reason = None, None
        if k == 0:
            self._unfit_reason = f"the centred training delta matrix has rank 0 ({len(s.groups)} training groups)"
        elif not rows:
            self._unfit_reason = "no training perturbation has an embedded gene"
        else:
            P = np.asarray(rows, dtype=np.float64)  # perturbations x D
            Ysub = Yc[:, cols_idx]
            G = self._G
            left = _ridge_inverse(G.T @ G, lam) @ G.T @ Ysub  # K x n
            self._W = left @ P @ _ridge_inverse(P.T @ P, lam)  # K x D

        self._info = {
            "model": "Y ≈ G W Pᵀ + b, W = (GᵀG + λI)⁻¹ Gᵀ (Y − b) P (PᵀP + λI)⁻¹ (closed form, float64)",
            "b": "per-gene mean of the training deltas of the query's context; over all training groups "
            "where the context has none",
            "G": f"top-{k} left singular vectors of the centred training delta matrix (numpy SVD)",
            "P": "per perturbation, the sum of the embedding rows of its perturbed genes (a single: its row; "
            "a combo: the sum over its embedded genes)",
            "embedding_source": self._emb_source,
            "n_components_requested": k_req,
            "n_components_used": k,
            "rank_of_centred_Y": rank,
            "ridge_lambda": lam,
            "n_training_perturbations": len(s.groups),
            "n_training_perturbations_fitted": len(rows),
            "excluded_training_perturbations_without_embedding": excluded,
            "training_perturbations_with_partial_embedding": partial,
            "fallback": "query without any embedded gene -> b (train-mean), noted per group",
            "unfit_reason": self._unfit_reason,
        }

    # ------------------------------------------------------------------ predict
    def predict(self, queries: list[GroupInfo]) -> Prediction:
        """``b + G W p`` per query, ``p`` the summed embedding of its genes; ``b`` where none has one."""
        s: DeltaSummary = require_fitted(self, "_summary", self.name)
        out = np.zeros((len(queries), s.n_genes), dtype=np.float64)
        notes: dict[str, str] = {}
        what = "not in the embedding file" if self._emb_source.startswith("file") else "not among the measured genes"
        for i, q in enumerate(queries):
            b, ctx_note = s.mean_for(q.context)
            out[i] = b
            parts: list[str | None] = [ctx_note]
            if self._W is None:
                parts.append(f"linear model not fitted ({self._unfit_reason}): predicted b (the train-mean)")
            else:
                p, missing = self._embed(q.genes)
                # a drug or stimulus is not a gene: say what it is (GroupInfo.kind)
                genetic = getattr(q, "kind", "genetic") == "genetic"
                noun = "perturbed gene(s)" if genetic else f"{q.kind} perturbation(s)"
                why = what if genetic or self._emb_source.startswith("file") else (
                    "not genes: the embeddings are rows of measured genes; pass pert_embedding_file to embed them")
                if p is None:
                    parts.append(
                        f"no embedding for {noun} {', '.join(missing) or '(none)'} ({why}): "
                        "predicted b (the train-mean)"
                    )
                else:
                    out[i] = b + self._G @ (self._W @ p)
                    if missing:
                        parts.append(
                            f"no embedding for {noun} {', '.join(missing)} ({why}): "
                            "used only the embedded gene(s) "
                            + ", ".join(g for g in q.genes if g not in missing)
                        )
            note = join_notes(parts)
            if note:
                notes[q.group_id] = note
        return Prediction(
            group_ids=[q.group_id for q in queries], mean_delta=out, notes=notes, info=dict(self._info)
        )

    def diagnostics(self) -> dict[str, Any]:
        """The fit's declarations (components, excluded perturbations ...)."""
        return dict(self._info)
