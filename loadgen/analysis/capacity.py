"""Goodput capacity and capacity planning: how much SLO-meeting traffic one replica serves, and what N replicas cost.

Input: judged ``LevelSummary`` objects, the SLO attainment target, a target
rate and a price. Output: ``GoodputCapacity`` (interpolated, with its bracket)
and ``CapacityPlan`` (replicas, margin, cost per million output tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from loadgen.analysis.level import LevelSummary


@dataclass
class GoodputCapacity:
    """The highest rate at which at least ``attainment`` of requests meet every SLO."""

    attainment: float  # the target fraction
    rate_axis: str  # "achieved goodput req/s": every rate below is a goodput a level delivered, or between two
    rate: Optional[float] = None  # capacity, req/s: interpolated, or the lower bound when not bracketed (None: see reason)
    output_tok_s: Optional[float] = None  # output tok/s at that rate, interpolated the same way
    lower_level: Optional[int] = None  # bracket: the last level meeting the target ...
    upper_level: Optional[int] = None  # ... and the first level missing it
    lower_rate: Optional[float] = None
    upper_rate: Optional[float] = None
    lower_attainment: Optional[float] = None
    upper_attainment: Optional[float] = None
    at_least: bool = False  # not bracketed: every level met the target, capacity ≥ rate
    best_goodput: Optional[float] = None  # the highest goodput any judged level delivered (the cap on rate)
    reason: str = ""


def _rate(lv: LevelSummary) -> float:
    """The rate a level is placed at on the capacity axis: the goodput it achieved."""
    return lv.metrics.goodput_rps


def _load(lv: LevelSummary) -> str:
    return f"{lv.load:,.4g} req/s offered" if lv.open_loop else f"{lv.value:g} streams"


def goodput_capacity(levels: Sequence[LevelSummary], attainment: float) -> GoodputCapacity:
    """Interpolate on achieved goodput where attainment first drops below the target; never above what was served.

    Levels are scanned in increasing load. Each has an achieved goodput (ok
    completions meeting every SLO per second of its window) and an attainment
    (the fraction of its window's requests that did). Between the last level
    meeting the target and the first missing it, the capacity is interpolated
    linearly on achieved goodput (never below the passing level's goodput),
    then bounded by the highest goodput any level delivered: a capacity is a
    rate the server was seen to serve.
    """
    judged = [lv for lv in levels if lv.judged]
    open_loop = any(lv.open_loop for lv in judged)
    scan = sorted((lv for lv in judged if lv.open_loop == open_loop), key=lambda lv: lv.load)
    cap = GoodputCapacity(attainment=attainment, rate_axis="achieved goodput req/s")
    if not scan:
        cap.reason = "no level could be judged"
        return cap
    cap.best_goodput = max(lv.metrics.goodput_rps for lv in scan)
    prev: Optional[LevelSummary] = None
    for lv in scan:
        a = lv.metrics.attainment
        if a is not None and a >= attainment:
            prev = lv
            continue
        cap.upper_level, cap.upper_rate, cap.upper_attainment = lv.level, _rate(lv), a
        if prev is None:
            shown = "no requests" if a is None else f"{a:.1%}"
            cap.reason = f"even the lowest level ({_load(lv)}) met the SLOs for only {shown}: the capacity lies below it"
            return cap
        a0, a1 = prev.metrics.attainment or 0.0, a or 0.0
        frac = (a0 - attainment) / (a0 - a1) if a0 > a1 else 0.0
        cap.lower_level, cap.lower_rate, cap.lower_attainment = prev.level, _rate(prev), a0
        # The lower level met the target while delivering its goodput, so the capacity is at least that;
        # a goodput that collapses past it (every request too slow) does not pull the estimate down.
        interpolated = max(cap.lower_rate, cap.lower_rate + frac * (cap.upper_rate - cap.lower_rate))
        cap.rate = min(interpolated, cap.best_goodput)
        t0, t1 = prev.metrics.output_tok_s, lv.metrics.output_tok_s
        cap.output_tok_s = t0 + frac * (t1 - t0)
        cap.reason = f"interpolated on achieved goodput between levels {prev.level} and {lv.level}"
        if interpolated > cap.best_goodput:
            cap.reason += f", bounded by the best goodput any level delivered ({cap.best_goodput:,.4g} req/s)"
        return cap
    assert prev is not None
    cap.lower_level, cap.lower_rate, cap.lower_attainment = prev.level, _rate(prev), prev.metrics.attainment
    cap.rate = cap.lower_rate
    cap.output_tok_s = prev.metrics.output_tok_s
    cap.at_least = True
    cap.reason = f"not bracketed: every level met the target, so the capacity is ≥ {cap.lower_rate:,.4g} req/s: raise the levels"
    return cap


def _replicas(target_rps: float, per_replica_rps: float) -> int:
    # A hair of tolerance so that 400 / 20.000000001 does not ask for a 21st replica.
    return max(1, math.ceil(target_rps / per_replica_rps - 1e-9))


@dataclass
class CapacityPlan:
    """Replicas for a target rate and cost per million output tokens, from one replica's capacity."""

    per_replica_rps: float  # the capacity the plan is based on
    basis: str  # which verdict gave it: "goodput capacity" or "saturation throughput"
    lower_bound: bool  # the capacity is only a lower bound (the server never failed): replicas is an upper bound
    target_rps: Optional[float] = None
    replicas: Optional[int] = None  # ceil(target / per-replica capacity)
    margin: Optional[float] = None  # spare capacity at that count: replicas × capacity / target − 1
    output_tok_s: Optional[float] = None  # one replica's output tok/s at that capacity
    price_per_replica_hour: Optional[float] = None
    cost_per_hour: Optional[float] = None  # replicas × price
    cost_per_million_tokens: Optional[float] = None  # price / (output tok/s × 3600) × 1e6
    bracket: Optional[tuple[Optional[float], Optional[float]]] = None  # the goodputs the capacity lies between
    replicas_range: Optional[tuple[int, int]] = None  # replicas at the bracket's upper and lower goodput


def plan_capacity(
    per_replica_rps: float,
    basis: str,
    target_rps: Optional[float] = None,
    output_tok_s: Optional[float] = None,
    price_per_replica_hour: Optional[float] = None,
    lower_bound: bool = False,
    bracket: Optional[tuple[Optional[float], Optional[float]]] = None,
) -> CapacityPlan:
    """Replicas = ceil(target / capacity); cost per 1M output tokens = price / (tok/s × 3600) × 1e6."""
    plan = CapacityPlan(
        per_replica_rps=per_replica_rps,
        basis=basis,
        lower_bound=lower_bound,
        bracket=bracket,
        target_rps=target_rps,
        output_tok_s=output_tok_s,
        price_per_replica_hour=price_per_replica_hour,
    )
    if target_rps is not None and per_replica_rps > 0:
        plan.replicas = _replicas(target_rps, per_replica_rps)
        plan.margin = plan.replicas * per_replica_rps / target_rps - 1.0
        lo, hi = bracket or (None, None)
        if lo and hi:
            plan.replicas_range = (_replicas(target_rps, hi), _replicas(target_rps, lo))
        if price_per_replica_hour is not None:
            plan.cost_per_hour = plan.replicas * price_per_replica_hour
    if price_per_replica_hour is not None and output_tok_s:
        plan.cost_per_million_tokens = price_per_replica_hour / (output_tok_s * 3600.0) * 1e6
    return plan
