"""The ``vcc2026`` panel: the six scored Virtual Cell Challenge 2026 metrics (cell-eval2 0.20.0,
``vcc2026`` preset) and their mean on cell-eval2's frozen raw-value scale.

Definitions pinned against cell-eval2 0.20.0 (MIT, Arc Institute; re-implemented from the
formulas, no code taken). Conventions shared by every key:

Expression amounts
    cell-eval2's ``vcc2026`` preset takes raw counts. PerturbFM's ``X`` is log1p, so the panel
    uses ``y = expm1(x)`` per cell (negative log values, possible in constructed predictions,
    are clipped to 0 first). A block of cells whose ``y`` is integral to 1e-6 (cell-eval2's
    integrality tolerance, widened by float32 storage rounding of ``x``) is rounded, so
    ``X = log1p(counts)`` (float64 or float32) gives exactly cell-eval2's counts. With
    ``X = log1p(counts / total * 1e4)`` every per-cell quantity (CPM, the DE tests, the log2FC) is
    unchanged; only the group-sum pseudobulk differs (cells weighted equally instead of by depth).
DE (the four ``de_wilcoxon_*`` keys)
    Per cell ``CPM = y / (sum_g y / 1e6)``. CPM gate: a gene is kept when the mean CPM of the
    context's (true) control cells is ``> 5`` (the control alone decides; one gene set for every
    group and both sides). Per group and side (true cells, resp. predicted cells, each against
    the true control cells): two-sided Mann-Whitney U on ``log1p(CPM)`` (asymptotic, tie and
    continuity corrected: pdex/numba-mwu), Benjamini-Hochberg within the group over the kept
    genes, significant when ``p_adj < 0.05``; ``log2FC = log2((m_g + 1e-9) / (m_c + 1e-9))`` with
    ``m`` the arithmetic mean CPM. The group's perturbed genes are then removed from every set
    (after BH, as cell-eval2 #172 does).
Pseudobulk (``pds_cosine``, ``expr_mse_unbiased_capped_norm``)
    ``mu = log1p(5e4 * P / sum_g P)`` with ``P`` the group's summed amounts over all genes
    (cell-eval2 ``bulk_lognorm``, ``bulk_target_sum = 5e4``); sampling correction ``C`` = the
    delete-1 jackknife ``(n-1)/n * sum_g sum_i (v_ig - mean_i v_ig)^2``,
    ``v_ig = log1p(5e4 * (P_g - y_ig) / (S - lib_i))``, clamped at 0 (0 for fewer than 2 cells).
Panel
    cell-eval2 ranks / budgets over every perturbation of the truth file; PerturbFM does it per
    context over the context's evaluated groups (identical for a one-context evaluation).

Length (over 400 lines on purpose): the six metrics share the pinned count conventions,
DE tables and scale constants above; splitting them would separate each formula from the
convention it is pinned to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from perturbfm.interfaces import MetricPanel, MetricSpec, MetricValue, NotApplicable

from perturbfm_metrics.groupwise import row_blocks
from perturbfm_metrics.vcc import MWReference, bh_fdr, mannwhitney_batch

if TYPE_CHECKING:
    from perturbfm.evaluation import EvalData

CPM_TARGET = 1e6
#: the control group's mean CPM must exceed this for a gene to enter the DE tables
CPM_GATE = 5.0
ALPHA = 0.05
LFC_EPSILON = 1e-9
BULK_TARGET_SUM = 5e4
#: de_wilcoxon_lfc_nmae omits a group with fewer gated genes than this
MIN_GATE_SIZE = 10
#: purity floor of de_wilcoxon_direction_reach_raw (cell-eval2 REACH_PURITY_FLOOR)
REACH_PURITY_FLOOR = 0.9
#: the prediction's jackknife is capped at this multiple of the truth's (cell-eval2 #247)
PRED_CAP_K = 1.0
#: cell-eval2's absolute integrality tolerance for counts
INTEGRAL_TOL = 1e-6
#: cells x genes values per batch of Mann-Whitney tests (bounds memory)
BATCH_VALUES = 4_000_000
JACKKNIFE_CHUNK = 512

#: cell-eval2 frozen scale ``low-random_high-1_v10``: key -> (base, anchor, clamp_low, clamp_high).
#: score = (u - base) / (anchor - base), clipped; a missing aggregate takes clamp_low.
SCALE_NAME = "low-random_high-1_v10"
SCALE: dict[str, tuple[float, float, float, float]] = {
    "expr_mse_unbiased_capped_norm": (1.0, 0.0, -6.0, 1.0),
    "de_wilcoxon_lfc_nmae": (1.0, 0.0, -1.0, 1.0),
    "pds_cosine": (0.5, 1.0, -1.0, 1.0),
    "de_wilcoxon_direction_fidelity_yield_raw": (0.5, 1.0, -1.0, 1.0),
    "de_wilcoxon_direction_reach_raw": (0.0, 1.0, 0.0, 1.0),
    "de_wilcoxon_sig_jaccard": (0.0, 1.0, 0.0, 1.0),
}

_COMMON = (
    "expression amounts y = expm1(X) (rounded when integral to 1e-6 allowing for float32 storage of X, "
    "so X = log1p(counts) gives cell-eval2's counts exactly; cell-eval2 reads raw counts and refuses "
    "anything else)"
)
_DE_COMMON = (
    "DE as cell-eval2 vcc2026 with de.backend=pdex: two-sided asymptotic Mann-Whitney U (tie and "
    "continuity corrected) of log1p(CPM) of the group's cells vs the context's true control cells; "
    "CPM gate = control mean CPM > 5 (one gene set for both sides); BH within the group over the "
    "gated genes; significant = p_adj < 0.05; log2FC = log2((mean CPM + 1e-9) / (control mean CPM "
    "+ 1e-9)); the group's perturbed genes removed after BH. cell-eval2's default backend 'auto' "
    "uses gpudge on a CUDA host (numbers differ ~1e-5) and scanpy when pdex is absent; PerturbFM "
    "pins the pdex statistic. " + _COMMON + ". Target genes: every measured gene of the group's "
    "perturbation (cell-eval2 matches the perturbation label to a gene name, so it excludes nothing "
    "for a combination unless a target_gene_map says otherwise; identical for single-gene "
    "perturbations named by gene symbol). Predicted cells: all of the model's cells when it gives "
    "them (as cell-eval2); otherwise the harness's constructed cells (context control cells, at most "
    "max_cells, + predicted delta, clipped at 0)"
)


def _spec(definition: str, variant: str, higher: bool | None) -> MetricSpec:
    return MetricSpec(definition=definition, variant=variant, higher_is_better=higher)


# ----------------------------------------------------------------------------- cells -> statistics
def _amounts(X: np.ndarray) -> tuple[np.ndarray, int]:
    """``expm1(max(X, 0))``, rounded when the whole block is counts; and the number of negative
    log values clipped.

    A block is counts when every value is within :data:`INTEGRAL_TOL` of an integer, allowing for
    ``X`` having been stored as float32: ``|x - log1p(k)| <= x * 2**-24``, so ``expm1(x)`` may sit
    ``(k + 1) * x * 2**-24`` from ``k`` (twice that is allowed). Non-integer data (cp10k) never pass.
    """
    X = np.asarray(X, dtype=np.float64)
    neg = int(np.count_nonzero(X < 0))
    if neg:
        X = np.maximum(X, 0.0)
    Y = np.expm1(X)
    if Y.size:
        def integral(a: np.ndarray, x: np.ndarray) -> bool:
            return bool(np.all(np.abs(a - np.rint(a)) <= INTEGRAL_TOL + (a + 1.0) * x * 2.0**-23))

        # the first cell rejects non-integer data at once; only counts pay for the whole check
        if integral(Y[:1], X[:1]) and integral(Y, X):
            Y = np.rint(Y)
    return Y, neg


def _cpm(Y: np.ndarray) -> np.ndarray:
    """Per-cell CPM exactly as scanpy ``normalize_total(target_sum=1e6)``: ``y / (L / 1e6)``."""
    lib = Y.sum(axis=1)
    f = lib / CPM_TARGET
    return Y / np.where(f > 0, f, 1.0)[:, None]


def bulk_lognorm(sums: np.ndarray) -> np.ndarray:
    """``log1p(5e4 * P / sum_g P)`` of every row of group sums (an all-zero row gives zeros)."""
    sums = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    tot = sums.sum(axis=1)
    scale = np.zeros_like(tot)
    ok = tot > 0
    scale[ok] = BULK_TARGET_SUM / tot[ok]
    return np.log1p(sums * scale[:, None])


def jackknife(Y: np.ndarray, P: np.ndarray | None = None, lib: np.ndarray | None = None) -> float:
    """Delete-1 jackknife sampling correction of one group's ``bulk_lognorm`` pseudobulk.

    ``C = (n-1)/n * sum_g sum_i (v_ig - mean_i v_ig)^2`` with
    ``v_ig = log1p(5e4 * (P_g - y_ig) / (S - lib_i))`` (0 when the cell holds every count),
    clamped at 0; 0 for fewer than 2 cells or an empty group.
    """
    n = Y.shape[0]
    if n < 2:
        return 0.0
    P = Y.sum(axis=0) if P is None else P
    lib = Y.sum(axis=1) if lib is None else lib
    tot = float(P.sum())
    if tot <= 0.0:
        return 0.0
    b = np.log1p(BULK_TARGET_SUM * P / tot)
    s1 = np.zeros(Y.shape[1])
    s2 = np.zeros(Y.shape[1])
    for s in range(0, n, JACKKNIFE_CHUNK):
        r = tot - lib[s:s + JACKKNIFE_CHUNK]
        pos = r > 0
        V = np.log1p(BULK_TARGET_SUM * (P[None, :] - Y[s:s + JACKKNIFE_CHUNK]) / np.where(pos, r, 1.0)[:, None])
        V = np.where(pos[:, None], V, 0.0) - b[None, :]
        s1 += V.sum(axis=0)
        s2 += np.einsum("ij,ij->j", V, V)
    q = s2 - s1**2 / n
    return max((n - 1) / n * float(q.sum()), 0.0)


@dataclass
class _Side:
    """One side (true or predicted) of a batch of groups."""

    logcpm: list[np.ndarray] = field(default_factory=list)  # [n, K] per group
    lfc: list[np.ndarray] = field(default_factory=list)  # [K] per group
    n_cells: list[int] = field(default_factory=list)


@dataclass
class _Control:
    """A context's control cells, reduced to what every metric needs."""

    kept: np.ndarray  # gene indices passing the CPM gate
    ref: MWReference  # log1p(CPM) of the control cells on the kept genes
    mean_cpm: np.ndarray  # [K]
    mu: np.ndarray  # [G] bulk_lognorm
    jk: float


def _control(C: np.ndarray) -> _Control:
    Y, _ = _amounts(C)
    cpm = _cpm(Y)
    kept = np.flatnonzero((cpm.mean(axis=0) if Y.shape[0] else np.zeros(Y.shape[1])) > CPM_GATE)
    cpm = cpm[:, kept]
    # the reference mean is taken exactly as the groups' means (same slice, same reduction), so a
    # prediction pasting the control cells has log2FC exactly 0, as in cell-eval2
    ref = MWReference(np.log1p(cpm))
    P = Y.sum(axis=0)
    return _Control(kept=kept, ref=ref, mean_cpm=cpm.mean(axis=0), mu=bulk_lognorm(P)[0], jk=jackknife(Y, P))


def _lfc(mean_cpm: np.ndarray, ref_mean: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log2((mean_cpm + LFC_EPSILON) / (ref_mean + LFC_EPSILON))


# ----------------------------------------------------------------------------- DE metrics (vectorised)
@dataclass
class DEResult:
    """Per-group values of the four DE keys for a batch (NaN = not applicable, reason in ``why``)."""

    jaccard: np.ndarray
    fidelity: np.ndarray
    reach: np.ndarray
    nmae: np.ndarray
    n_true_sig: np.ndarray
    n_pred_sig: np.ndarray
    n_gate: np.ndarray
    why_fidelity: dict[int, str]
    why_reach: dict[int, str]
    why_nmae: dict[int, str]


def de_metrics(padj_r: np.ndarray, lfc_r: np.ndarray, padj_p: np.ndarray, p_p: np.ndarray, lfc_p: np.ndarray,
               scope: np.ndarray, name_rank: np.ndarray) -> DEResult:
    """The four DE keys for ``B`` groups over ``K`` gated genes.

    Args:
        padj_r, padj_p: ``[B, K]`` BH-adjusted p-values of the truth and of the prediction.
        p_p: ``[B, K]`` raw p-values of the prediction (a key of the reach ranking).
        lfc_r, lfc_p: ``[B, K]`` true and predicted log2FC.
        scope: ``[B, K]`` True where the gene is scored (the group's perturbed genes are False).
        name_rank: ``[K]`` rank of each gene's name (the last sort key of the reach ranking).
    """
    B = padj_r.shape[0]
    rs = (padj_r < ALPHA) & scope
    ps = (padj_p < ALPHA) & scope
    a, b = rs.sum(axis=1), ps.sum(axis=1)
    inter = (rs & ps).sum(axis=1)
    union = a + b - inter
    jaccard = np.where(union == 0, 1.0, inter / np.maximum(union, 1))

    in_denom = ~np.isnan(lfc_r) & (lfc_r != 0)
    committed = ~np.isnan(lfc_p) & (lfc_p != 0)
    match = in_denom & committed & (np.sign(lfc_p) == np.sign(lfc_r))
    scored = ps & in_denom
    n_pred = scored.sum(axis=1)
    k = (scored & match).sum(axis=1)
    n_conf = a
    den = np.maximum(n_pred, n_conf)
    fidelity = np.where(den > 0, k / np.maximum(den, 1), np.nan)
    why_f = {int(i): "no reference-significant and no predicted-significant adjudicable gene: "
             "k / max(n_pred, N_conf) = 0/0 (cell-eval2 emits NaN and leaves it out of the mean)"
             for i in np.flatnonzero(den == 0)}

    # reach: rank the reference-significant genes by the prediction's (sig, p_adj, p, |lfc| desc, name)
    abs_lfc = np.where(np.isnan(lfc_p), -np.inf, np.abs(lfc_p))
    sig_p = np.nan_to_num(padj_p, nan=np.inf) < ALPHA
    order = np.lexsort((np.broadcast_to(name_rank, padj_p.shape), -abs_lfc, np.nan_to_num(p_p, nan=np.inf),
                        np.nan_to_num(padj_p, nan=np.inf), ~sig_p), axis=-1)
    d = np.take_along_axis(in_denom & rs, order, axis=1)
    m = np.take_along_axis(match & rs, order, axis=1)
    nd = np.cumsum(d, axis=1)
    nm = np.cumsum(m, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (nd > 0) & (nm / np.where(nd > 0, nd, 1) >= REACH_PURITY_FLOOR)
    k_star = np.where(hit, nd, 0).max(axis=1) if nd.shape[1] else np.zeros(B, dtype=np.int64)
    reach = np.where(n_conf > 0, k_star / np.maximum(n_conf, 1), np.nan)
    why_r = {int(i): "no reference-significant gene (N_conf = 0): reach k*/N_conf is undefined (cell-eval2 "
             "emits NaN and leaves it out of the mean)" for i in np.flatnonzero(n_conf == 0)}

    # lfc_nmae over the real-side gate (reference-significant, finite real log2FC)
    gate = rs & np.isfinite(lfc_r)
    n_gate = gate.sum(axis=1)
    lp = np.where(np.isfinite(lfc_p), lfc_p, 0.0)
    lr = np.where(gate, lfc_r, 0.0)
    num = np.where(gate, np.abs(lp - lr), 0.0).sum(axis=1)
    dsum = np.abs(lr).sum(axis=1)
    nmae = np.full(B, np.nan)
    why_n: dict[int, str] = {}
    for i in range(B):
        if n_gate[i] == 0:
            why_n[i] = "empty gate: no reference-significant gene with a finite log2FC"
        elif n_gate[i] < MIN_GATE_SIZE:
            why_n[i] = (f"{int(n_gate[i])} gated genes, fewer than {MIN_GATE_SIZE} (cell-eval2 omits the "
                        "perturbation; real-side only, the same for every prediction)")
        elif not np.isfinite(dsum[i]) or dsum[i] == 0:
            why_n[i] = "mean |real log2FC| over the gate is zero or not finite"
        else:
            nmae[i] = (num[i] / n_gate[i]) / (dsum[i] / n_gate[i])
    return DEResult(jaccard=jaccard, fidelity=fidelity, reach=reach, nmae=nmae, n_true_sig=a, n_pred_sig=b,
                    n_gate=n_gate, why_fidelity=why_f, why_reach=why_r, why_nmae=why_n)


# ----------------------------------------------------------------------------- pseudobulk metrics
def midrank_pds(pred_eff: np.ndarray, real_eff: np.ndarray) -> np.ndarray:
    """``1 - midrank / (n - 1)`` of each row's own real effect among all real effects by cosine
    distance (zero-norm operand -> distance 1; clipped to [0, 2]); ``n = 1`` gives 1.0.

    The ``[n, n]`` distances are formed a block of rows at a time (memory O(block x n))."""
    n = real_eff.shape[0]
    if n - 1 <= 0:
        return np.ones(n)
    pn = np.sqrt(np.einsum("ig,ig->i", pred_eff, pred_eff))
    rn = np.sqrt(np.einsum("jg,jg->j", real_eff, real_eff))
    rank = np.empty(n)
    for rows in row_blocks(n, n):
        sim = pred_eff[rows] @ real_eff.T
        denom = pn[rows][:, None] * rn[None, :]
        cos = np.zeros_like(sim)
        nz = denom != 0
        cos[nz] = sim[nz] / denom[nz]
        dist = np.clip(1.0 - cos, 0.0, 2.0)
        own = dist[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)][:, None]
        less = (dist < own).sum(axis=1)
        equal = (dist == own).sum(axis=1)
        rank[rows] = less + (equal - 1) / 2.0
    return 1.0 - rank / (n - 1)


def across_budget(mu_pred: np.ndarray, excl: list[np.ndarray], w: np.ndarray) -> float:
    """cell-eval2 #348: the weighted centred sum of squares of the predicted pseudobulks across
    the groups, each row's own target genes left out (the total correction the prediction may claim)."""
    n_rows, G = mu_pred.shape
    dev = mu_pred - mu_pred.mean(axis=0)
    s1 = np.einsum("ij,i->j", dev, w)
    s2 = np.einsum("ij,ij,i->j", dev, dev, w)
    wsum = np.full(G, float(w.sum()))
    cnt = np.full(G, float(n_rows))
    for k, cols in enumerate(excl):
        if cols.size:
            v = dev[k, cols]
            s1[cols] -= w[k] * v
            s2[cols] -= w[k] * v * v
            wsum[cols] -= w[k]
            cnt[cols] -= 1.0
    ok = (cnt >= 2.0) & (wsum > 0.0)
    if not ok.any():
        return 0.0
    ss = s2[ok] - s1[ok] ** 2 / wsum[ok]
    return float(np.maximum(ss, 0.0).sum())


def expr_norm_parts(mu_pred: np.ndarray, jk_pred: np.ndarray, mu_real: np.ndarray, jk_real: np.ndarray,
                    mu_ctrl: np.ndarray, jk_ctrl: float, excl: list[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Per-group numerator (``expr_mse_unbiased_capped``) and denominator (``expr_distance_unbiased``)
    of ``expr_mse_unbiased_capped_norm`` for the groups of one context."""
    n, G = mu_real.shape
    n_row = np.array([G - c.size for c in excl], dtype=np.float64)
    w = np.divide(1.0, n_row, out=np.zeros_like(n_row), where=n_row > 0)
    term = np.minimum(jk_pred, PRED_CAP_K * jk_real)
    info = {"n_capped": int(np.count_nonzero(term < jk_pred)), "budget_ratio": 1.0}
    claim = float((term * w).sum())
    if claim > 0.0:
        budget = across_budget(mu_pred, excl, w)
        ratio = budget / claim
        info.update(budget=budget, claim=claim, budget_ratio=min(ratio, 1.0))
        if ratio < 1.0:
            term = term * ratio
    d = mu_pred - mu_real
    num = np.einsum("ij,ij->i", d, d) - term - jk_real
    e = mu_real - mu_ctrl[None, :]
    den = np.einsum("ij,ij->i", e, e) - jk_real - jk_ctrl
    for k, cols in enumerate(excl):
        for c in cols:
            num[k] -= d[k, c] ** 2
            den[k] -= e[k, c] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        num = np.where(n_row > 0, num / np.where(n_row > 0, n_row, 1.0), np.nan)
        den = np.where(n_row > 0, den / np.where(n_row > 0, n_row, 1.0), np.nan)
    return num, den, info


def scale_score(key: str, value: float | None) -> float:
    """cell-eval2 ``score_one`` on the frozen ``low-random_high-1_v10`` scale (missing -> clamp_low)."""
    base, anchor, lo, hi = SCALE[key]
    if value is None or not np.isfinite(value):
        return lo
    s = (1.0 - (value - anchor) / (base - anchor)) if anchor < base else (value - base) / (anchor - base)
    if not np.isfinite(s) or s <= lo:
        return lo
    return hi if s >= hi else float(s)


# ----------------------------------------------------------------------------- per-context state
_PER_GROUP = ("pds_cosine", "de_wilcoxon_direction_fidelity_yield_raw", "de_wilcoxon_direction_reach_raw",
              "de_wilcoxon_sig_jaccard", "de_wilcoxon_lfc_nmae")


@dataclass
class _Accumulator:
    """Per-group values, declarations and extras collected over the contexts."""

    ids: list[str]
    targets: list[np.ndarray]
    vals: dict[str, dict[str, float]] = field(default_factory=lambda: {k: {} for k in _PER_GROUP})
    na: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in _PER_GROUP})
    de_counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {"n_true_sig": {}, "n_pred_sig": {}, "n_gate": {}})
    empty_union: list[str] = field(default_factory=list)
    norm_ctx: dict[str, float] = field(default_factory=dict)
    norm_na_ctx: dict[str, str] = field(default_factory=dict)
    num: dict[str, float] = field(default_factory=dict)
    den: dict[str, float] = field(default_factory=dict)
    budget: dict[str, dict[str, float]] = field(default_factory=dict)
    n_kept: dict[str, int] = field(default_factory=dict)
    clipped: int = 0


class _DEBatch:
    """A batch of groups of one context whose DE tests run together (bounded memory)."""

    def __init__(self, ctrl: _Control, n_genes: int, kept_names: list[str]) -> None:
        self.ctrl = ctrl
        K = ctrl.kept.size
        self.kept_pos = np.full(n_genes, -1, dtype=np.int64)
        self.kept_pos[ctrl.kept] = np.arange(K)
        self.name_rank = np.empty(K, dtype=np.int64)
        self.name_rank[np.argsort(np.array(kept_names, dtype=str), kind="stable")] = np.arange(K)
        self.groups: list[int] = []
        self.sides = (_Side(), _Side())
        self.size = 0

    def add(self, is_pred: bool, Y: np.ndarray) -> None:
        """Add one group's amounts (true or predicted side)."""
        side = self.sides[int(is_pred)]
        cpm = _cpm(Y)[:, self.ctrl.kept]
        mean = cpm.mean(axis=0) if Y.shape[0] else np.full(self.ctrl.kept.size, np.nan)
        side.lfc.append(_lfc(mean, self.ctrl.mean_cpm))
        side.logcpm.append(np.log1p(cpm))
        side.n_cells.append(Y.shape[0])
        self.size += Y.shape[0] * max(self.ctrl.kept.size, 1)

    def flush(self, acc: _Accumulator) -> None:
        """Run the tests of the batch and record the four DE keys of its groups."""
        if not self.groups:
            return
        true_side, pred_side = self.sides
        K = self.ctrl.kept.size
        padj_true = bh_fdr(mannwhitney_batch(true_side.logcpm, self.ctrl.ref))
        p_pred = mannwhitney_batch(pred_side.logcpm, self.ctrl.ref)
        scope = np.ones((len(self.groups), K), dtype=bool)
        for b, i in enumerate(self.groups):
            t = self.kept_pos[acc.targets[i]]
            scope[b, t[t >= 0]] = False
        res = de_metrics(padj_true, np.stack(true_side.lfc).reshape(-1, K), bh_fdr(p_pred), p_pred,
                         np.stack(pred_side.lfc).reshape(-1, K), scope, self.name_rank)
        for b, i in enumerate(self.groups):
            gid = acc.ids[i]
            if pred_side.n_cells[b] == 0:
                for key in _PER_GROUP[1:]:
                    acc.na[key][gid] = "the prediction has no cells for this group"
                continue
            acc.vals["de_wilcoxon_sig_jaccard"][gid] = float(res.jaccard[b])
            if res.n_true_sig[b] == 0 and res.n_pred_sig[b] == 0:
                acc.empty_union.append(gid)
            for key, arr, why in (("de_wilcoxon_direction_fidelity_yield_raw", res.fidelity, res.why_fidelity),
                                  ("de_wilcoxon_direction_reach_raw", res.reach, res.why_reach),
                                  ("de_wilcoxon_lfc_nmae", res.nmae, res.why_nmae)):
                if b in why:
                    acc.na[key][gid] = why[b]
                else:
                    acc.vals[key][gid] = float(arr[b])
            acc.de_counts["n_true_sig"][gid] = int(res.n_true_sig[b])
            acc.de_counts["n_pred_sig"][gid] = int(res.n_pred_sig[b])
            acc.de_counts["n_gate"][gid] = int(res.n_gate[b])
        self.groups = []
        self.sides = (_Side(), _Side())
        self.size = 0


# ----------------------------------------------------------------------------- panel
class Vcc2026Panel(MetricPanel):
    """Virtual Cell Challenge 2026 metrics (cell-eval2 0.20.0 ``vcc2026``) and their raw-scale mean."""

    name: ClassVar[str] = "vcc2026"
    version: ClassVar[str] = "1"
    standard: ClassVar[bool] = True
    description: ClassVar[str] = (
        "Virtual Cell Challenge 2026 (cell-eval2 0.20.0 vcc2026 preset): pds_cosine, "
        "expr_mse_unbiased_capped_norm, de_wilcoxon_{direction_fidelity_yield_raw, direction_reach_raw, "
        "sig_jaccard, lfc_nmae} and vcc2026_overall (their mean on cell-eval2's frozen raw-value scale "
        f"{SCALE_NAME}); true control cells of the context as reference for both sides"
    )
    metrics: ClassVar[Mapping[str, MetricSpec]] = {
        "pds_cosine": _spec(
            "within a context of n groups: cosine distance of the group's predicted pseudobulk effect to every "
            "true pseudobulk effect (effect = bulk_lognorm(group) - bulk_lognorm(true control)), every target "
            "gene of the context's groups removed from all vectors; midrank (0-based) of the group's own true "
            "effect; score = 1 - rank / (n - 1)",
            "cell-eval2 pds_cosine (rank_denominator n-1, tie_policy midrank, exclusion_scope panel, "
            "control_source real; zero-norm operand -> distance 1, clipped to [0, 2]; n = 1 -> 1.0). "
            "bulk_lognorm = log1p(5e4 * summed amounts / their total), " + _COMMON + "; with X = "
            "log1p(cp10k) the group sum weights cells equally instead of by depth. Ranked within the "
            "context over its evaluated groups (cell-eval2: every perturbation of the truth file). Target "
            "genes: every measured gene of each perturbation (cell-eval2 resolves the label as a gene "
            "name; identical for single-gene perturbations named by gene symbol). A prediction pasting the "
            "control cells scores 0.5",
            True,
        ),
        "expr_mse_unbiased_capped_norm": _spec(
            "per context: sum_p num_p / sum_p den_p with num_p = (||mu_pred,p - mu_true,p||^2 - C'_pred,p - "
            "C_true,p) / |G_p| and den_p = (||mu_true,p - mu_ctrl||^2 - C_true,p - C_ctrl) / |G_p|; mu = "
            "bulk_lognorm pseudobulk (all genes), C = delete-1 jackknife, G_p = genes minus the group's "
            "perturbed genes, C'_pred,p = min(C_pred,p, C_true,p) scaled by min(1, budget/claim) where "
            "budget = the predictions' weighted across-group centred sum of squares (own target genes "
            "left out) and claim = sum_p C'_pred,p / |G_p|; sums over groups where both parts are finite. "
            "0 = perfect, 1 = the no-skill control paste (signed: a perfect paste reads below 0)",
            "cell-eval2 expr_mse_unbiased_capped_norm (ratio of sums of expr_mse_unbiased_capped over "
            "expr_distance_unbiased; bulk_target_sum 5e4, PRED_TRACE_CAP_K 1.0, #348 budget, #172 on-target "
            "exclusion with whole corrections). " + _COMMON + "; with X = log1p(cp10k) the group sums weight "
            "cells equally instead of by depth. A per-context value (no per-group value exists: the "
            "components are in extra); budget and ratio per context over its evaluated groups (cell-eval2: "
            "over the whole prediction file); a context whose denominator sum is not positive is left out "
            "and listed (cell-eval2 raises)",
            False,
        ),
        "de_wilcoxon_direction_fidelity_yield_raw": _spec(
            "k / max(n_pred, N_conf): N_conf = scored genes significant in the truth; n_pred = scored genes "
            "significant in the prediction whose true log2FC is non-zero; k = those of them whose predicted "
            "log2FC has the true sign",
            "cell-eval2 de_wilcoxon_direction_fidelity_yield_raw. " + _DE_COMMON + ". n_pred = N_conf = 0 "
            "(0/0) is declared not applicable for the group (cell-eval2: NaN, left out of the mean)",
            True,
        ),
        "de_wilcoxon_direction_reach_raw": _spec(
            "k* / N_conf: the truth-significant scored genes ranked by the prediction (significant first, then "
            "p_adj, p, |log2FC| descending, gene name); k* = the deepest prefix depth (counting genes with a "
            "non-zero true log2FC) whose share of sign matches is >= 0.9; N_conf = truth-significant scored "
            "genes",
            "cell-eval2 de_wilcoxon_direction_reach_raw (universe adjudicated, REACH_PURITY_FLOOR 0.9). "
            + _DE_COMMON + ". N_conf = 0 is declared not applicable (cell-eval2: NaN, left out of the mean)",
            True,
        ),
        "de_wilcoxon_sig_jaccard": _spec(
            "|R ∩ P| / |R ∪ P| of the scored genes significant in the truth (R) and in the prediction (P); "
            "1.0 when both are empty",
            "cell-eval2 de_wilcoxon_sig_jaccard, including its J(empty, empty) = 1 convention (a group with "
            "no significant gene on either side scores 1.0; such groups are listed in "
            "extra['empty_union_groups']). " + _DE_COMMON,
            True,
        ),
        "de_wilcoxon_lfc_nmae": _spec(
            "mean |log2FC_pred - log2FC_true| / mean |log2FC_true| over the gate (scored genes significant in "
            "the truth with a finite true log2FC; a non-finite predicted log2FC counts as 0); 1.0 = "
            "predicting no change",
            "cell-eval2 de_wilcoxon_lfc_nmae (min_gate_size 10). " + _DE_COMMON + ". A group with an empty "
            "gate, fewer than 10 gated genes or a zero denominator is declared not applicable (cell-eval2 "
            "omits it; real-side only, the same set for every prediction)",
            False,
        ),
        "vcc2026_overall": _spec(
            "per context: mean over the six keys above of cell-eval2's raw-value scale "
            f"{SCALE_NAME}: s = (u - b) / (a - b) clipped, with (base b, anchor a, clip): "
            "expr_mse_unbiased_capped_norm (1, 0, [-6, 1]), de_wilcoxon_lfc_nmae (1, 0, [-1, 1]), pds_cosine "
            "(0.5, 1, [-1, 1]), de_wilcoxon_direction_fidelity_yield_raw (0.5, 1, [-1, 1]), "
            "de_wilcoxon_direction_reach_raw (0, 1, [0, 1]), de_wilcoxon_sig_jaccard (0, 1, [0, 1]); u = the "
            "key's context aggregate (mean over the context's scored groups; ratio of sums for "
            "expr_mse_unbiased_capped_norm); an aggregate with no scored group takes the clip's low end",
            "equals cell-eval2 score_metrics(..., scale='low-random_high-1_v10') avg_score, the score cell-eval2 "
            "defines from raw values alone. NOT the competition's enrolled score: cell-eval2's from_baseline / "
            "from_replicate avg_score rescales each member between a measured baseline submission and a "
            "split-half replicate anchor of the same data (real bundle), which raw values cannot give; "
            "PerturbFM's own baseline/replicate calibration of every key (references) is the analogue. "
            "Aggregates are per context over its evaluated groups (cell-eval2: mean over every perturbation "
            "of the file; equal for one context)",
            True,
        ),
    }

    def compute(self, data: EvalData) -> dict[str, MetricValue | NotApplicable]:
        """Compute every key of the panel."""
        if data.adata is None:
            reason = "the evaluation inputs carry no cells (the vcc2026 metrics need true and control cells)"
            return {k: NotApplicable(reason) for k in self.metrics}
        ids = data.group_ids
        G = len(data.genes)
        targets = data.target_positions()  # by var name or recorded symbol; none for a drug
        acc = _Accumulator(ids=ids, targets=targets)

        for ctx, idx in data.context_indices().items():
            ctrl = _control(data.control_cells(ctx))
            acc.n_kept[ctx] = int(ctrl.kept.size)
            run = _DEBatch(ctrl, G, [data.genes[j] for j in ctrl.kept])
            mu_true = np.empty((idx.size, G))
            mu_pred = np.empty((idx.size, G))
            jk_true = np.empty(idx.size)
            jk_pred = np.empty(idx.size)
            has_pred = np.ones(idx.size, dtype=bool)
            for pos, i in enumerate(idx):
                for is_pred, X in ((False, data.all_true_cells(int(i))), (True, self._pred_cells(data, int(i)))):
                    Y, neg = _amounts(X)
                    P = Y.sum(axis=0)
                    mu, jk = bulk_lognorm(P)[0], jackknife(Y, P)
                    if is_pred:
                        acc.clipped += neg
                        mu_pred[pos], jk_pred[pos], has_pred[pos] = mu, jk, Y.shape[0] > 0
                    else:
                        mu_true[pos], jk_true[pos] = mu, jk
                    run.add(is_pred, Y)
                    del Y
                run.groups.append(int(i))
                if run.size >= BATCH_VALUES:
                    run.flush(acc)
            run.flush(acc)
            self._pds(acc, idx, targets, mu_true, mu_pred, has_pred, ctrl.mu, G)
            self._expr_norm(acc, ctx, idx, targets, mu_true, mu_pred, jk_true, jk_pred, has_pred, ctrl)
        return self._assemble(data, acc)

    @staticmethod
    def _pds(acc: _Accumulator, idx: np.ndarray, targets: list[np.ndarray], mu_true: np.ndarray,
             mu_pred: np.ndarray, has_pred: np.ndarray, mu_ctrl: np.ndarray, G: int) -> None:
        """pds_cosine of one context: effects against the true control pseudobulk, every target gene
        of the context's groups removed."""
        panel_cols = np.unique(np.concatenate([targets[i] for i in idx])) if idx.size else np.zeros(0, np.int64)
        keep = np.ones(G, dtype=bool)
        keep[panel_cols] = False
        vals, na = acc.vals["pds_cosine"], acc.na["pds_cosine"]
        if not keep.any():
            for i in idx:
                na[acc.ids[i]] = "every measured gene is a target of the context's groups: no feature is left"
            return
        pds = midrank_pds((mu_pred - mu_ctrl)[:, keep], (mu_true - mu_ctrl)[:, keep])
        for pos, i in enumerate(idx):
            if has_pred[pos]:
                vals[acc.ids[i]] = float(pds[pos])
            else:
                na[acc.ids[i]] = "the prediction has no cells for this group"

    @staticmethod
    def _expr_norm(acc: _Accumulator, ctx: str, idx: np.ndarray, targets: list[np.ndarray], mu_true: np.ndarray,
                   mu_pred: np.ndarray, jk_true: np.ndarray, jk_pred: np.ndarray, has_pred: np.ndarray,
                   ctrl: _Control) -> None:
        """expr_mse_unbiased_capped_norm of one context (ratio of sums over its groups)."""
        sel = np.flatnonzero(has_pred)
        num, den, info = expr_norm_parts(mu_pred[sel], jk_pred[sel], mu_true[sel], jk_true[sel], ctrl.mu, ctrl.jk,
                                         [targets[idx[s]] for s in sel])
        acc.budget[ctx] = info
        for s, nv, dv in zip(sel, num, den):
            acc.num[acc.ids[idx[s]]] = float(nv)
            acc.den[acc.ids[idx[s]]] = float(dv)
        ok = np.isfinite(num) & np.isfinite(den)
        dsum = float(den[ok].sum()) if ok.any() else float("nan")
        if ok.any() and np.isfinite(dsum) and dsum > 0:
            acc.norm_ctx[ctx] = float(num[ok].sum()) / dsum
        else:
            acc.norm_na_ctx[ctx] = (f"sum of expr_distance_unbiased over the context's groups is {dsum!r}: the "
                                    "truth carries no measurable aggregate effect (cell-eval2 raises)")

    @staticmethod
    def _pred_cells(data: EvalData, i: int) -> np.ndarray:
        """All of the model's cells for group ``i`` when given, else the harness's constructed cells."""
        if data.pred_cells_given is not None:
            return np.asarray(data.pred_cells_given[data.groups[i].group_id], dtype=np.float64)
        return data.pred_cells(i)

    def _assemble(self, data: EvalData, acc: _Accumulator) -> dict[str, MetricValue | NotApplicable]:
        common: dict[str, object] = {
            "cpm_gate": CPM_GATE, "alpha": ALPHA, "n_cpm_gated_genes": acc.n_kept,
            "groups_without_measured_target_gene": [gid for gid, t in zip(acc.ids, acc.targets) if t.size == 0],
        }
        if acc.clipped:
            common["negative_predicted_log_values_clipped"] = acc.clipped
        out: dict[str, MetricValue | NotApplicable] = {}
        for key in _PER_GROUP:
            extra: dict[str, object] = dict(common)
            if key == "de_wilcoxon_sig_jaccard":
                extra["empty_union_groups"] = sorted(acc.empty_union)
            if key.startswith("de_"):
                extra.update({k: dict(sorted(v.items())) for k, v in acc.de_counts.items()})
            out[key] = MetricValue(per_group=dict(acc.vals[key]), not_applicable_groups=dict(acc.na[key]),
                                   extra=extra)
        if acc.norm_ctx:
            out["expr_mse_unbiased_capped_norm"] = MetricValue(
                per_context=dict(acc.norm_ctx),
                extra={"expr_mse_unbiased_capped": dict(sorted(acc.num.items())),
                       "expr_distance_unbiased": dict(sorted(acc.den.items())),
                       "budget": acc.budget, "not_applicable_contexts": acc.norm_na_ctx,
                       "bulk_target_sum": BULK_TARGET_SUM},
            )
        else:
            out["expr_mse_unbiased_capped_norm"] = NotApplicable(
                "; ".join(f"{c}: {r}" for c, r in sorted(acc.norm_na_ctx.items())) or "no context to score")

        overall: dict[str, float] = {}
        members: dict[str, dict[str, float]] = {}
        for ctx, idx in data.context_indices().items():
            agg: dict[str, float | None] = {}
            for key in _PER_GROUP:
                v = [acc.vals[key][acc.ids[i]] for i in idx if acc.ids[i] in acc.vals[key]]
                agg[key] = float(np.mean(v)) if v else None
            agg["expr_mse_unbiased_capped_norm"] = acc.norm_ctx.get(ctx)
            members[ctx] = {k: scale_score(k, agg[k]) for k in SCALE}
            overall[ctx] = float(np.mean(list(members[ctx].values())))
        out["vcc2026_overall"] = MetricValue(per_context=overall,
                                             extra={"scale": SCALE_NAME, "member_scores": members})
        return out
