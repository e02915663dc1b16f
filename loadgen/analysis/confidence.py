"""Confidence intervals: distribution-free bounds on a percentile, Poisson bounds on a rate, and the noise test.

Input: sample sizes and quantile levels (percentiles), or event counts and
window lengths. Output: the ranks of the order statistics that bound a
quantile at 95 % confidence, the minimum sample size for an upper bound, an
interval for a rate, and whether two intervals overlap. numpy only (no scipy).
The method is written out in ``docs/metrics.md`` ("Confidence intervals").
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import numpy as np

#: Two-sided confidence of every interval loadgen reports.
CONFIDENCE = 0.95
#: Standard normal quantile at 1 − (1 − CONFIDENCE) / 2 (97.5 %): the half-width of a 95 % interval in σ.
Z = 1.959963984540054
#: Probability allowed in each tail.
TAIL = (1.0 - CONFIDENCE) / 2.0
#: Up to this many samples the binomial is summed exactly; above it the normal approximation is used.
EXACT_MAX_N = 10_000

#: An interval (low, high); None on a side that the data cannot bound.
Interval = tuple[Optional[float], Optional[float]]
#: Verdicts of a comparison of two intervals.
DIFFERENT, WITHIN_NOISE, TOO_FEW = "different", "within noise", "too few samples"


def binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(K = k) for k = 0..n, K ~ Binomial(n, p), 0 < p < 1.

    Built from the ratio pmf(k+1)/pmf(k) = (n−k)/(k+1) · p/(1−p) in log space,
    then normalised, so neither huge binomial coefficients nor underflow of
    p**n get in the way.
    """
    k = np.arange(n, dtype=np.float64)
    steps = np.log(n - k) - np.log(k + 1.0) + math.log(p) - math.log1p(-p)
    log_pmf = np.concatenate(([0.0], np.cumsum(steps)))
    pmf = np.exp(log_pmf - log_pmf.max())
    return pmf / pmf.sum()


def exact_ranks(n: int, p: float) -> tuple[Optional[int], Optional[int]]:
    """1-based ranks (l, u) of the order statistics bounding the p-quantile of n samples, exactly.

    K ~ Binomial(n, p) counts the samples at or below the true quantile, so
    x_(l) lies above it with probability P(K ≤ l−1) and x_(u) below it with
    probability P(K ≥ u). l is the largest rank with P(K ≤ l−1) ≤ TAIL, u the
    smallest with P(K ≥ u) ≤ TAIL; None when no rank in 1..n qualifies.
    """
    pmf = binomial_pmf(n, p)
    cdf = np.cumsum(pmf)  # cdf[k] = P(K ≤ k)
    sf = np.cumsum(pmf[::-1])[::-1]  # sf[k] = P(K ≥ k), summed from the small end for precision
    low = int(np.count_nonzero(cdf[:n] <= TAIL))  # l − 1 = the last k with P(K ≤ k) ≤ TAIL
    above = np.flatnonzero(sf[1:] <= TAIL)
    return (low if low >= 1 else None), (int(above[0]) + 1 if above.size else None)


def normal_ranks(n: int, p: float) -> tuple[Optional[int], Optional[int]]:
    """The ranks of ``exact_ranks`` from the normal approximation to the binomial, with continuity correction.

    P(K ≤ l−1) ≈ Φ((l − ½ − np)/σ) and P(K ≥ u) ≈ 1 − Φ((u − ½ − np)/σ), σ = √(np(1−p)).
    """
    mu, sd = n * p, math.sqrt(n * p * (1.0 - p))
    low = math.floor(mu + 0.5 - Z * sd)
    high = math.ceil(mu + 0.5 + Z * sd)
    return (low if low >= 1 else None), (high if high <= n else None)


@lru_cache(maxsize=4096)
def order_stat_ranks(n: int, percentile: float) -> tuple[Optional[int], Optional[int]]:
    """1-based ranks bounding the ``percentile`` (0–100) of n samples at 95 %: exact up to EXACT_MAX_N."""
    p = percentile / 100.0
    if n < 1 or not 0.0 < p < 1.0:
        return None, None
    return exact_ranks(n, p) if n <= EXACT_MAX_N else normal_ranks(n, p)


@lru_cache(maxsize=64)
def min_samples_for_upper(percentile: float) -> int:
    """The fewest samples whose largest can bound the ``percentile`` from above at 95 %.

    x_(n) bounds it when P(K ≥ n) = p**n ≤ TAIL, i.e. n ≥ ln(TAIL)/ln(p)
    (p99: 368; p99.9: 3,688); above EXACT_MAX_N the normal ranks decide.
    """
    p = percentile / 100.0
    n = max(1, math.ceil(math.log(TAIL) / math.log(p)))
    while order_stat_ranks(n, percentile)[1] is None:
        n += 1
    return n


def effective_count(weights: Optional[np.ndarray], size: int) -> int:
    """Kish's effective sample size (Σw)² / Σw² of a weighted sample (the size itself when unweighted)."""
    if weights is None or size == 0:
        return size
    total = float(weights.sum())
    return int((total * total) / float(np.dot(weights, weights))) if total > 0 else 0


def poisson_rate_interval(count: float, seconds: float) -> Interval:
    """A rate's 95 % interval from its event count: (count ± Z·√count) / seconds, the low end floored at 0."""
    if seconds <= 0 or not math.isfinite(seconds) or count < 0:
        return None, None
    half = Z * math.sqrt(count)
    return max(0.0, count - half) / seconds, (count + half) / seconds


def scaled_rate_interval(rate: float, count: float) -> Interval:
    """A rate whose noise is that of ``count`` independent events (e.g. tokens that come in requests).

    The relative half-width is Z/√count, the same as the Poisson interval of
    the count itself; None when nothing was counted.
    """
    if count <= 0:
        return None, None
    half = Z / math.sqrt(count)
    return max(0.0, rate * (1.0 - half)), rate * (1.0 + half)


def compare_intervals(base: Optional[Interval], other: Optional[Interval]) -> Optional[str]:
    """Whether ``other`` differs from ``base`` beyond the noise: DIFFERENT, WITHIN_NOISE or TOO_FEW.

    Different when the intervals do not overlap; a missing side is unbounded.
    When they overlap but a side is missing the answer is TOO_FEW (more
    samples could still separate them). None when either has no interval.
    """
    if base is None or other is None or base == (None, None) or other == (None, None):
        return None
    (a_lo, a_hi), (b_lo, b_hi) = base, other
    if (b_lo is not None and a_hi is not None and b_lo > a_hi) or (b_hi is not None and a_lo is not None and b_hi < a_lo):
        return DIFFERENT
    return TOO_FEW if None in (a_lo, a_hi, b_lo, b_hi) else WITHIN_NOISE


def too_few_notes(percentile: float, counts: dict[str, int]) -> list[str]:
    """One note naming the metrics whose ``percentile`` rests on fewer samples than an upper bound needs.

    Input: the SLO percentile and {metric label: sample count}. Output: e.g.
    ["p99 TTFT from 120 samples, TPOT from 118: too few to bound (needs ≥ 368)"],
    or [] when every metric has enough. An empty sample is left to the verdict ("no data").
    """
    need = min_samples_for_upper(percentile)
    short = [(label, n) for label, n in counts.items() if 0 < n < need]
    if not short:
        return []
    (first, n0), rest = short[0], short[1:]
    named = [f"p{percentile:g} {first} from {n0:,} samples"] + [f"{label} from {n:,}" for label, n in rest]
    return [f"{', '.join(named)}{TOO_FEW_MARK}{need:,})"]


#: How every note of ``too_few_notes`` ends, before the sample count it needs.
TOO_FEW_MARK = ": too few to bound (needs ≥ "


def is_too_few_note(note: str) -> bool:
    """Whether ``note`` is one of ``too_few_notes``'s."""
    return TOO_FEW_MARK in note
