"""Where the server saturates: the saturation point, the knee, growing queues and the adaptive search.

Input: judged ``LevelSummary`` objects (or plain series for the pure helpers).
Output: ``Saturation`` and ``Knee`` verdicts, each naming the rule that
produced it; ``queue_growing`` for stopping an over-saturated level early;
``next_search_level`` for ``load=search``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from loadgen.analysis.keepup import GROWTH_SIGMAS
from loadgen.analysis.level import LevelSummary
from loadgen.analysis.metrics import MISSING, RequestTimes
from loadgen.config import AnalysisConfig, LoadConfig

OPEN_RULE = (
    "highest offered load, scanning upwards, up to which every judged level kept up (not both: requests in "
    "flight growing, served < {tol:g} × offered by Little's law less {sig:g}σ, and fewer than {tol:g} of the window's "
    "requests answered within two service times) and met its p{pct:g} SLOs"
)
CLOSED_RULE = (
    "highest concurrency, scanning upwards, up to which every level met its p{pct:g} SLOs and "
    "raised throughput by ≥ {eff:.0%} of linear scaling over the previous level"
)


@dataclass
class Saturation:
    """The saturation point: the last level of the initial run of passing levels."""

    rule: str
    level: Optional[int] = None  # the saturation level (None: even the lowest level failed)
    load: Optional[float] = None  # its offered req/s (open loop) or concurrency (closed loop)
    throughput_rps: Optional[float] = None  # achieved req/s there
    output_tok_s: Optional[float] = None  # output tok/s there
    reached: bool = False  # a higher level failed; False also when every level passed
    first_failing_level: Optional[int] = None
    reason: str = ""  # why the next level failed, or why there is no answer


@dataclass
class Knee:
    """The knee of the load curve found by Kneedle, or why there is none."""

    rule: str
    x_label: str  # e.g. "offered load (req/s)"
    y_label: str  # e.g. "p50 E2E latency (ms)"
    level: Optional[int] = None
    x: Optional[float] = None
    y: Optional[float] = None
    reason: str = ""


def _closed_loop_scaling(prev: LevelSummary, cur: LevelSummary, efficiency: float) -> Optional[str]:
    """Why ``cur`` no longer scales over ``prev`` (None when it does)."""
    x0, x1 = prev.metrics.achieved_rps, cur.metrics.achieved_rps
    linear = cur.value / prev.value - 1.0
    gain = x1 / x0 - 1.0 if x0 > 0 else 0.0
    if x0 > 0 and gain >= efficiency * linear:
        return None
    return (
        f"throughput rose {gain:.0%} from {prev.value:g} to {cur.value:g} streams "
        f"(linear scaling: {linear:.0%}; needed ≥ {efficiency * linear:.0%})"
    )


def saturation_point(levels: Sequence[LevelSummary], slo_percentile: float, analysis: AnalysisConfig) -> Saturation:
    """The saturation point over open-loop levels if any, else over closed-loop levels.

    Levels are scanned in increasing load; the answer is the last level before
    the first failing one, so a level past a failure never counts even if it
    passes by chance.
    """
    unjudged = [lv for lv in levels if not lv.judged]
    levels = [lv for lv in levels if lv.judged]
    open_levels = sorted((lv for lv in levels if lv.open_loop), key=lambda lv: lv.load)
    if open_levels:
        scan = open_levels
        rule = OPEN_RULE.format(tol=analysis.saturation_tolerance, pct=slo_percentile, sig=GROWTH_SIGMAS)
    else:
        scan = sorted(levels, key=lambda lv: lv.value)
        rule = CLOSED_RULE.format(pct=slo_percentile, eff=analysis.scaling_efficiency)
    if not scan:
        why = "; ".join(f"level {lv.level}: {lv.not_judged}" for lv in unjudged) or "no levels were measured"
        return Saturation(rule=rule, reason=f"cannot tell: no level could be judged ({why})")
    last: Optional[LevelSummary] = None
    for i, lv in enumerate(scan):
        reasons = list(lv.failures)
        if not open_levels and i > 0:
            why = _closed_loop_scaling(scan[i - 1], lv, analysis.scaling_efficiency)
            reasons += [why] if why else []
        if reasons or not lv.passed:
            reason = f"level {lv.level} ({_load_words(lv)}): " + "; ".join(reasons)
            if last is None:
                return Saturation(
                    rule=rule,
                    first_failing_level=lv.level,
                    reason="even the lowest level failed — " + reason,
                )
            return _at(last, rule, reached=True, first_failing=lv.level, reason=reason)
        last = lv
    assert last is not None
    return _at(last, rule, reached=False, first_failing=None, reason="every level passed: the server saturates above the highest level")


def _at(lv: LevelSummary, rule: str, reached: bool, first_failing: Optional[int], reason: str) -> Saturation:
    return Saturation(
        rule=rule,
        level=lv.level,
        load=lv.load,
        throughput_rps=lv.metrics.achieved_rps,
        output_tok_s=lv.metrics.output_tok_s,
        reached=reached,
        first_failing_level=first_failing,
        reason=reason,
    )


def _load_words(lv: LevelSummary) -> str:
    return f"{lv.load:,.4g} req/s offered" if lv.open_loop else f"{lv.value:g} streams"


def kneedle(x: Sequence[float], y: Sequence[float], concave: bool, sensitivity: float = 1.0) -> Optional[int]:
    """Index of the knee of an increasing curve by offline Kneedle (Satopää et al., 2011), or None.

    Both axes are scaled to [0, 1]; the knee is the maximum of the difference
    curve (y − x for a concave curve such as throughput vs concurrency, x − y
    for a convex one such as latency vs load), kept only if the difference
    later falls by more than ``sensitivity`` × the mean x spacing (otherwise
    the curve is still bending at its end and the knee may lie beyond it).
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return None
    order = np.argsort(xa)
    xn = (xa[order] - xa.min()) / np.ptp(xa)
    yn = (ya[order] - ya.min()) / np.ptp(ya)
    diff = yn - xn if concave else xn - yn
    i = int(np.argmax(diff))
    threshold = diff[i] - sensitivity * float(np.mean(np.diff(xn)))
    if diff[i] <= 0 or not np.any(diff[i + 1 :] < threshold):
        return None
    return int(order[i])


def knee_point(levels: Sequence[LevelSummary]) -> Knee:
    """Kneedle on p50 E2E latency vs offered load (open loop) or throughput vs concurrency (closed loop)."""
    open_levels = [lv for lv in levels if lv.open_loop and lv.metrics.e2e.p50 is not None]
    if open_levels:
        scan = sorted(open_levels, key=lambda lv: lv.load)
        knee = Knee(
            rule="Kneedle on p50 E2E latency vs offered load (convex curve)",
            x_label="offered load (req/s)",
            y_label="p50 E2E latency (ms)",
        )
        xs, ys = [lv.load for lv in scan], [lv.metrics.e2e.p50 for lv in scan]
        concave = False
    else:
        scan = sorted(levels, key=lambda lv: lv.value)
        knee = Knee(
            rule="Kneedle on throughput vs concurrency (concave curve)",
            x_label="concurrency (streams)",
            y_label="achieved throughput (req/s)",
        )
        xs, ys = [lv.value for lv in scan], [lv.metrics.achieved_rps for lv in scan]
        concave = True
    if len(scan) < 3:
        knee.reason = "needs at least 3 levels"
        return knee
    i = kneedle(xs, ys, concave=concave)
    if i is None:
        knee.reason = "no knee within the measured levels (the curve is straight or still bending at its end)"
        return knee
    knee.level, knee.x, knee.y = scan[i].level, float(xs[i]), float(ys[i])
    return knee


def queue_growing(
    t_ns: np.ndarray, values: np.ndarray, rel_rise: float = 0.5, min_rise: float = 0.0, min_samples: int = 8
) -> bool:
    """Whether a series (in-flight count, or per-request queued latency) trends up over its span.

    The least-squares line through (t, value) must rise, from the first to the
    last time, by more than ``rel_rise`` × the series' median and by more than
    ``min_rise`` (in the values' unit). A queue that keeps growing over a level
    means arrivals outpace the server: the level is over-saturated.
    """
    t = np.asarray(t_ns, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.size < min_samples or np.ptp(t) == 0:
        return False
    slope = np.polyfit(t - t.min(), v, 1)[0]
    rise = slope * np.ptp(t)
    return bool(rise > rel_rise * abs(float(np.median(v))) and rise > min_rise)


def queue_growing_records(records: pa.Table, rel_rise: float = 1.0, min_samples: int = 32) -> bool:
    """``queue_growing`` over a level's records so far: queued TTFT (or queued E2E unstreamed) vs schedule.

    Requests still in flight have no record yet, so this sees the trend late
    but never invents one.
    """
    times = RequestTimes.from_table(records)
    latency, valid = times.queued_ttft()
    if not np.any(valid & times.ok):
        latency, valid = times.queued_e2e()
    keep = valid & times.ok & (times.scheduled != MISSING)
    return queue_growing(times.scheduled[keep], latency[keep], rel_rise=rel_rise, min_samples=min_samples)


@dataclass(frozen=True)
class SearchPoint:
    """One measured level of an adaptive search: its offered rate and whether it passed."""

    rate: float
    passed: bool

    @classmethod
    def of(cls, level: LevelSummary) -> SearchPoint:
        """A judged level as a search point (passed: kept up, met SLOs, queues not growing)."""
        return cls(rate=level.load, passed=level.passed)


def search_bracket(points: Sequence[SearchPoint]) -> tuple[Optional[float], Optional[float]]:
    """(highest passing rate below the lowest failing one, lowest failing rate); None where absent."""
    failing = [p.rate for p in points if not p.passed]
    hi = min(failing) if failing else None
    passing = [p.rate for p in points if p.passed and (hi is None or p.rate < hi)]
    return (max(passing) if passing else None), hi


def next_search_level(measured: Sequence[SearchPoint], load: LoadConfig) -> Optional[float]:
    """The next rate for ``load=search`` to measure, or None when the search is done.

    Geometric steps (× ``search_factor`` from ``search_start``; ÷ while even the
    start fails) until a level fails, then bisection between the highest
    passing and the lowest failing rate until the bracket is within
    ``search_tolerance`` × the passing rate, at most ``search_max_levels`` levels.
    """
    if len(measured) >= load.search_max_levels:
        return None
    if not measured:
        return load.search_start
    lo, hi = search_bracket(measured)
    if hi is None:
        return max(p.rate for p in measured) * load.search_factor
    if lo is None:
        return min(p.rate for p in measured) / load.search_factor
    if hi - lo <= load.search_tolerance * lo:
        return None
    return (lo + hi) / 2.0
