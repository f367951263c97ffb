"""Statistics of the evidence benchmark (issue 21 item 2): bootstrap intervals, paired tests, Holm correction and
the verdict rule of the claim table.

* `bootstrap_mean`: mean of the finite values with a 95% percentile bootstrap interval (seeded resamples).
* `paired_test`: two-sided paired test of the differences b - a: Wilcoxon signed-rank (zeros dropped, scipy's
  default) unless the data are binary or more than half of the differences are zero, where the ranks say little
  and the sign test (exact binomial on the non-zero signs) is used instead.
* `holm`: Holm's step-down adjustment of a family of p-values (NaN entries are not tests and stay NaN).
* `verdict`: "supported" when the Holm-adjusted p < alpha and the effect has the sign the paper predicts,
  "reversed" when significant with the opposite sign, else "not supported".
Nothing here knows about images; rows are plain dicts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

N_RESAMPLES = 2000
LEVEL = 0.95
ALPHA = 0.05


def finite(values: Sequence[float]) -> np.ndarray:
    """The finite values as float64 (None, NaN and +-inf dropped)."""
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    return v[np.isfinite(v)]


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                       n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = 0
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (default: the mean along the last axis) of the finite values;
    (nan, nan) with fewer than 2 values."""
    v = finite(values)
    if len(v) < 2:
        return math.nan, math.nan
    statistic = statistic or (lambda x: x.mean(axis=-1))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_resamples, len(v)))
    boot = statistic(v[idx])                                        # [n_resamples]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n: int

    def fmt(self, digits: int = 2) -> str:
        if not math.isfinite(self.mean):
            return "n/a"
        ci = f" [{self.lo:.{digits}f}, {self.hi:.{digits}f}]" if math.isfinite(self.lo) else ""
        return f"{self.mean:.{digits}f}{ci}"


def bootstrap_mean(values: Sequence[float], seed: int = 0, n_resamples: int = N_RESAMPLES) -> Estimate:
    v = finite(values)
    mean = float(v.mean()) if len(v) else math.nan
    return Estimate(mean, *bootstrap_interval(v, n_resamples=n_resamples, seed=seed), n=len(v))


@dataclass(frozen=True)
class PairedResult:
    diff: Estimate              # mean of b - a over the pairs where both are finite, with its bootstrap interval
    p: float                    # two-sided, unadjusted; nan when there is nothing to test
    test: str                   # "wilcoxon" | "sign" | "none"
    n_nonzero: int


def sign_test(diffs: np.ndarray) -> float:
    """Two-sided exact sign test of the non-zero differences (1.0 if all are zero)."""
    pos, neg = int((diffs > 0).sum()), int((diffs < 0).sum())
    if pos + neg == 0:
        return 1.0
    return float(stats.binomtest(pos, pos + neg, 0.5).pvalue)


def paired_test(a: Sequence[float], b: Sequence[float], seed: int = 0,
                n_resamples: int = N_RESAMPLES) -> PairedResult:
    """Paired comparison of b against a (same units, same order: a[i] and b[i] are one task)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_test: {a.shape} and {b.shape} values are not pairs")
    ok = np.isfinite(a) & np.isfinite(b)
    d = b[ok] - a[ok]
    diff = Estimate(float(d.mean()) if len(d) else math.nan,
                    *bootstrap_interval(d, n_resamples=n_resamples, seed=seed), n=len(d))
    nonzero = int((d != 0).sum())
    if len(d) == 0:
        return PairedResult(diff, math.nan, "none", 0)
    binary = np.isin(np.concatenate([a[ok], b[ok]]), (0.0, 1.0)).all()
    if nonzero == 0:
        return PairedResult(diff, 1.0, "sign", 0)
    if binary or nonzero < len(d) / 2:
        return PairedResult(diff, sign_test(d), "sign", nonzero)
    return PairedResult(diff, float(stats.wilcoxon(d).pvalue), "wilcoxon", nonzero)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order; NaN stays NaN and is not counted as a test)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out.tolist()


VERDICTS = ("supported", "not supported", "reversed")


def verdict(effect: float, p_adjusted: float, expected_sign: int, alpha: float = ALPHA) -> str:
    """The claim table's rule: significant (Holm-adjusted p < alpha) with the predicted sign -> supported; significant
    with the opposite sign -> reversed; otherwise (incl. no data or a zero effect) not supported."""
    if expected_sign not in (-1, 1):
        raise ValueError(f"expected_sign must be -1 or +1, got {expected_sign}")
    if not (math.isfinite(effect) and math.isfinite(p_adjusted)) or p_adjusted >= alpha or effect == 0:
        return "not supported"
    return "supported" if np.sign(effect) == expected_sign else "reversed"
