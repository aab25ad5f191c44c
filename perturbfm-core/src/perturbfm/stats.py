"""Statistics of model comparisons: one value per held-out group, bootstrap
intervals, the paired Wilcoxon signed-rank test and better / worse / tie verdicts.

The unit of every interval and test here is the **held-out group**. A model run
several times (seeds, ensemble members, splits that hold the same group out) is
first reduced to one value per group, the mean over its runs
(:func:`group_means`): identical seeds of a deterministic model are one
observation, not several, so ``n`` is always the number of groups.

Intervals are ``scipy.stats.bootstrap`` intervals of the mean over groups: BCa
where it is defined, else the percentile interval, and the method used is
recorded in :attr:`Interval.method` (with the reason in :attr:`Interval.note`).
Nothing here raises on degenerate input: an empty sample, a single group or a
test without informative pairs gives an *undefined* result (``None`` values and
a reason), never a number that looks like a finding. Results are deterministic
given ``seed``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Default confidence level and number of bootstrap resamples.
CONFIDENCE = 0.95
N_RESAMPLES = 2000
#: Below this many groups the BCa jackknife acceleration is too unstable; the percentile interval is used.
BCA_MIN_GROUPS = 5
#: Below this many groups an interval is flagged as approximate.
FEW_GROUPS = 10
#: Up to this many non-zero differences without ties the Wilcoxon p-value is exact.
EXACT_MAX = 50
VERDICTS = ("better", "worse", "tie", "undefined")


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x: Any) -> float | None:
    return float(x) if _finite(x) else None


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Interval:
    """A statistic over groups with its bootstrap confidence interval.

    ``estimate`` is the statistic (the mean over groups) on the data; ``low`` /
    ``high`` the interval, ``None`` where it is undefined (``method`` starts with
    ``"undefined"`` and ``note`` says why).
    """

    estimate: float | None
    low: float | None
    high: float | None
    n_groups: int
    method: str
    confidence_level: float = CONFIDENCE
    n_resamples: int = 0
    statistic: str = "mean over groups"
    note: str = ""

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None

    def contains(self, value: float) -> bool | None:
        """Whether ``value`` lies in the closed interval (None when undefined)."""
        if not self.defined:
            return None
        return bool(self.low <= value <= self.high)  # type: ignore[operator]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WilcoxonResult:
    """Two-sided paired Wilcoxon signed-rank test of the differences against 0."""

    statistic: float | None
    p_value: float | None
    n_groups: int
    n_nonzero: int
    method: str
    zero_method: str = "wilcox"
    note: str = ""

    @property
    def defined(self) -> bool:
        return self.p_value is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """``a`` vs ``b`` on the groups both have a value for (difference = a - b, raw orientation)."""

    a: str
    b: str
    n_groups: int
    mean_a: float | None
    mean_b: float | None
    difference: Interval
    wilcoxon: WilcoxonResult
    higher_is_better: bool | None
    verdict: str
    verdict_reason: str
    groups: list[str] = field(default_factory=list)

    def to_dict(self, *, with_groups: bool = False) -> dict[str, Any]:
        out = {"a": self.a, "b": self.b, "n_groups": self.n_groups, "mean_a": self.mean_a, "mean_b": self.mean_b,
               "difference": self.difference.to_dict(), "wilcoxon": self.wilcoxon.to_dict(),
               "higher_is_better": self.higher_is_better, "verdict": self.verdict,
               "verdict_reason": self.verdict_reason}
        if with_groups:
            out["groups"] = list(self.groups)
        return out


# --------------------------------------------------------------------------- one value per group
def group_means(runs: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """One value per group: the mean over ``runs`` (seeds, ensemble members, splits
    holding the group out) of each group's finite values. ``None`` / NaN values are
    left out; a group with no finite value in any run is absent."""
    acc: dict[str, list[float]] = {}
    for run in runs:
        for g, v in run.items():
            if _finite(v):
                acc.setdefault(str(g), []).append(float(v))
    return {g: float(np.mean(v)) for g, v in sorted(acc.items())}


def paired(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The groups with a finite value in both ``a`` and ``b`` (sorted) and their values."""
    gids = sorted(g for g in a if g in b and _finite(a[g]) and _finite(b[g]))
    return gids, np.array([float(a[g]) for g in gids]), np.array([float(b[g]) for g in gids])


# --------------------------------------------------------------------------- bootstrap
_BATCH_FLOATS = 8_000_000  # resampled values held at once by one scipy call (about 64 MB)


def _rng_kw(seed: int) -> dict[str, Any]:
    from scipy.stats import bootstrap

    params = inspect.signature(bootstrap).parameters
    return {"rng" if "rng" in params else "random_state": np.random.default_rng(seed)}


def _clean(values: Iterable[Any] | np.ndarray) -> np.ndarray:
    vals = np.asarray(values).ravel() if isinstance(values, np.ndarray) else list(values)
    return np.asarray([float(v) for v in vals if _finite(v)], dtype=np.float64)


def _scipy_bootstrap(x: np.ndarray, method: str, confidence: float, n_resamples: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, str]:
    """Intervals of the mean of each row of ``x`` ``[k, n]`` (one scipy call; the
    resampling indices depend only on ``seed`` and ``n``, so a row's interval does
    not depend on the other rows)."""
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = bootstrap((x,), np.mean, n_resamples=int(n_resamples), confidence_level=float(confidence),
                            method=method, vectorized=True, axis=-1, **_rng_kw(seed))
        except Exception as exc:  # noqa: BLE001 - reported as a fallback, never raised
            nan = np.full(x.shape[0], np.nan)
            return nan, nan, f"{method} failed: {type(exc).__name__}: {exc}"
    return (np.atleast_1d(np.asarray(res.confidence_interval.low, dtype=np.float64)),
            np.atleast_1d(np.asarray(res.confidence_interval.high, dtype=np.float64)), "")


def bootstrap_intervals(samples: Sequence[Iterable[Any] | np.ndarray], *, confidence: float = CONFIDENCE,
                        n_resamples: int = N_RESAMPLES, seed: int = 0,
                        statistic: str = "mean over groups") -> list[Interval]:
    """:func:`bootstrap_interval` of each sample; samples of equal size share one
    vectorised ``scipy.stats.bootstrap`` call (the same result as one call each, up to
    floating-point rounding)."""
    xs = [_clean(s) for s in samples]
    out: list[Interval | None] = [None] * len(xs)
    base: dict[str, Any] = {"confidence_level": float(confidence), "statistic": statistic}
    pending: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        n = int(x.size)
        if n == 0:
            out[i] = Interval(None, None, None, 0, "undefined", note="no group has a value", **base)
        elif n == 1:
            out[i] = Interval(float(x[0]), None, None, 1, "undefined", note="a single group gives no interval", **base)
        elif np.all(x == x[0]):
            out[i] = Interval(float(x.mean()), float(x[0]), float(x[0]), n, "percentile", n_resamples=0,
                              note="all values are equal: the bootstrap distribution is a single point (degenerate)",
                              **base)
        else:
            pending.setdefault(n, []).append(i)
    for n, idx in sorted(pending.items()):
        first = "BCa" if n >= BCA_MIN_GROUPS else "percentile"
        pre = [] if first == "BCa" else [f"n = {n} < {BCA_MIN_GROUPS} groups: too few for BCa"]
        step = max(1, _BATCH_FLOATS // (int(n_resamples) * n))
        for c0 in range(0, len(idx), step):
            chunk = idx[c0:c0 + step]
            lo, hi, err = _scipy_bootstrap(np.stack([xs[i] for i in chunk]), first, confidence, n_resamples, seed)
            for j, i in enumerate(chunk):
                notes = list(pre)
                method, lj, hj = first, float(lo[j]), float(hi[j])
                if first == "BCa" and not (math.isfinite(lj) and math.isfinite(hj)):
                    notes.append(err or "BCa undefined (degenerate jackknife or bootstrap distribution); "
                                 "percentile used")
                    l2, h2, err2 = _scipy_bootstrap(xs[i][None, :], "percentile", confidence, n_resamples, seed)
                    method, lj, hj = "percentile", float(l2[0]), float(h2[0])
                    if err2:
                        notes.append(err2)
                est = float(xs[i].mean())
                if not (math.isfinite(lj) and math.isfinite(hj)):
                    out[i] = Interval(est, None, None, n, "undefined", n_resamples=int(n_resamples),
                                      note="; ".join(notes) or "the bootstrap gave no finite interval", **base)
                    continue
                if n < FEW_GROUPS:
                    notes.append(f"only {n} groups: the interval is approximate")
                out[i] = Interval(est, lj, hj, n, method, n_resamples=int(n_resamples), note="; ".join(notes), **base)
    return [o for o in out if o is not None]


def bootstrap_interval(values: Iterable[Any] | np.ndarray, *, confidence: float = CONFIDENCE,
                       n_resamples: int = N_RESAMPLES, seed: int = 0) -> Interval:
    """Bootstrap interval of the mean of ``values`` (one per group; non-finite dropped).

    BCa when there are at least :data:`BCA_MIN_GROUPS` values and it is defined,
    else the percentile interval (the reason is in ``note``). All values equal:
    the point itself, method ``"percentile"``, noted as degenerate. Fewer than two
    values: undefined (``low`` / ``high`` None).
    """
    return bootstrap_intervals([values], confidence=confidence, n_resamples=n_resamples, seed=seed)[0]


def paired_interval(a: Mapping[str, Any], b: Mapping[str, Any], **kw: Any) -> Interval:
    """Bootstrap interval of the mean paired difference ``a - b`` over the groups both
    have (``a`` and ``b``: group -> one value, see :func:`group_means`)."""
    _, xa, xb = paired(a, b)
    return bootstrap_intervals([xa - xb], statistic="mean paired difference over groups", **kw)[0]


# --------------------------------------------------------------------------- Wilcoxon
def _wilcoxon_call(d: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = wilcoxon(d, zero_method="wilcox", alternative="two-sided", method=method, axis=-1)
        except ValueError:
            if method != "asymptotic":
                raise
            res = wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="approx", axis=-1)
    return np.atleast_1d(np.asarray(res.statistic, dtype=np.float64)), np.atleast_1d(
        np.asarray(res.pvalue, dtype=np.float64))


def wilcoxon_tests(samples: Sequence[Iterable[Any] | np.ndarray]) -> list[WilcoxonResult]:
    """:func:`wilcoxon_test` of each sample of differences (batched scipy calls)."""
    out: list[WilcoxonResult | None] = [None] * len(samples)
    pending: dict[tuple[int, str], list[tuple[int, np.ndarray, int]]] = {}
    for i, s in enumerate(samples):
        d = _clean(s)
        n, nz = int(d.size), int(np.count_nonzero(d))
        if n == 0:
            out[i] = WilcoxonResult(None, None, 0, 0, "undefined", note="no paired group")
        elif nz == 0:
            out[i] = WilcoxonResult(None, None, n, 0, "undefined",
                                    note="all differences are zero: the test is undefined")
        else:
            d = d[d != 0]
            ties = np.unique(np.abs(d)).size < nz
            method = "exact" if nz <= EXACT_MAX and not ties else "asymptotic"
            pending.setdefault((nz, method), []).append((i, d, n))
    for (nz, method), items in pending.items():
        try:
            st, pv = _wilcoxon_call(np.stack([d for _, d, _ in items]), method)
        except Exception as exc:  # noqa: BLE001
            for i, _, n in items:
                out[i] = WilcoxonResult(None, None, n, nz, "undefined", note=f"{type(exc).__name__}: {exc}")
            continue
        how = ("exact" if method == "exact" else
               "normal approximation" + (" (tied |differences|)" if nz <= EXACT_MAX else ""))
        for j, (i, _, n) in enumerate(items):
            note = f"{n - nz} zero differences dropped" if nz < n else ""
            p = _num(pv[j])
            out[i] = WilcoxonResult(_num(st[j]), p, n, nz, f"two-sided signed-rank, {how}" if p is not None
                                    else "undefined", note=note if p is not None else (note or "non-finite p-value"))
    return [o for o in out if o is not None]


def wilcoxon_test(differences: Iterable[Any] | np.ndarray) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired differences (one per group;
    non-finite dropped; zeros dropped, ``zero_method="wilcox"``): exact null
    distribution up to :data:`EXACT_MAX` non-zero differences without ties, the
    normal approximation otherwise. All differences zero, or none: undefined
    (``p_value`` None)."""
    return wilcoxon_tests([differences])[0]


# --------------------------------------------------------------------------- verdicts
def verdict(interval: Interval, higher_is_better: bool | None) -> tuple[str, str]:
    """(``better`` / ``worse`` / ``tie`` / ``undefined``, reason) of a paired
    difference ``a - b``: ``tie`` when the interval contains 0; otherwise the
    metric's direction decides. Without a declared direction an interval that
    excludes 0 is ``undefined``."""
    if not interval.defined:
        return "undefined", f"no interval ({interval.note or interval.method})"
    lo, hi = float(interval.low), float(interval.high)  # type: ignore[arg-type]
    level = f"{interval.confidence_level:.0%}"
    if lo <= 0.0 <= hi:
        return "tie", f"the {level} interval of the difference [{lo:.4g}, {hi:.4g}] contains 0"
    if higher_is_better is None:
        return "undefined", "the metric declares no direction (higher_is_better is null)"
    up = lo > 0.0
    good = up if higher_is_better else not up
    return ("better" if good else "worse"), (
        f"the {level} interval of the difference [{lo:.4g}, {hi:.4g}] is {'above' if up else 'below'} 0 "
        f"({'higher' if higher_is_better else 'lower'} is better)")


def compare_paired_many(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                        higher_is_better: Sequence[bool | None], *, labels: Sequence[tuple[str, str]] | None = None,
                        confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                        seed: int = 0) -> list[PairedComparison]:
    """:func:`compare_paired` of each ``(a, b)`` pair, the bootstrap and the tests batched."""
    prepared = [paired(a, b) for a, b in pairs]
    ivs = bootstrap_intervals([xa - xb for _, xa, xb in prepared], confidence=confidence, n_resamples=n_resamples,
                              seed=seed, statistic="mean paired difference over groups")
    tests = wilcoxon_tests([xa - xb for _, xa, xb in prepared])
    out = []
    for k, ((gids, xa, xb), iv, w, hib) in enumerate(zip(prepared, ivs, tests, higher_is_better)):
        v, why = verdict(iv, hib)
        la, lb = labels[k] if labels else ("a", "b")
        out.append(PairedComparison(la, lb, len(gids), float(xa.mean()) if gids else None,
                                    float(xb.mean()) if gids else None, iv, w, hib, v, why, gids))
    return out


def compare_paired(a: Mapping[str, Any], b: Mapping[str, Any], *, higher_is_better: bool | None,
                   labels: tuple[str, str] = ("a", "b"), confidence: float = CONFIDENCE,
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedComparison:
    """``a`` vs ``b`` (each: group -> one value; reduce seeds with :func:`group_means`
    first): paired bootstrap interval of the mean difference, Wilcoxon test and verdict."""
    return compare_paired_many([(a, b)], [higher_is_better], labels=[labels], confidence=confidence,
                               n_resamples=n_resamples, seed=seed)[0]
