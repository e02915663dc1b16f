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
    rate_axis: str  # "offered req/s" (open loop) or "achieved req/s" (closed loop)
    rate: Optional[float] = None  # interpolated capacity, req/s (None: see reason)
    output_tok_s: Optional[float] = None  # output tok/s at that rate, interpolated the same way
    lower_level: Optional[int] = None  # bracket: the last level meeting the target ...
    upper_level: Optional[int] = None  # ... and the first level missing it
    lower_rate: Optional[float] = None
    upper_rate: Optional[float] = None
    lower_attainment: Optional[float] = None
    upper_attainment: Optional[float] = None
    at_least: bool = False  # every level met the target: capacity ≥ lower_rate
    reason: str = ""


def _rate(lv: LevelSummary) -> float:
    return lv.load if lv.open_loop else lv.metrics.achieved_rps


def goodput_capacity(levels: Sequence[LevelSummary], attainment: float) -> GoodputCapacity:
    """Scan levels in increasing load; interpolate linearly where attainment first drops below the target.

    Attainment is the fraction of requests scheduled in a level's steady window
    that completed ok within every SLO (errors and timeouts are misses).
    """
    open_loop = any(lv.open_loop for lv in levels)
    scan = sorted((lv for lv in levels if lv.open_loop == open_loop), key=lambda lv: lv.load)
    cap = GoodputCapacity(attainment=attainment, rate_axis="offered req/s" if open_loop else "achieved req/s")
    if not scan:
        cap.reason = "no levels were measured"
        return cap
    prev: Optional[LevelSummary] = None
    for lv in scan:
        a = lv.metrics.attainment
        if a is not None and a >= attainment:
            prev = lv
            continue
        cap.upper_level, cap.upper_rate, cap.upper_attainment = lv.level, _rate(lv), a
        if prev is None:
            shown = "no requests" if a is None else f"{a:.1%}"
            cap.reason = f"even the lowest level ({_rate(lv):,.4g} req/s) met the SLOs for only {shown}"
            return cap
        a0, a1 = prev.metrics.attainment or 0.0, a or 0.0
        frac = (a0 - attainment) / (a0 - a1) if a0 > a1 else 0.0
        cap.lower_level, cap.lower_rate, cap.lower_attainment = prev.level, _rate(prev), a0
        cap.rate = cap.lower_rate + frac * (cap.upper_rate - cap.lower_rate)
        t0, t1 = prev.metrics.output_tok_s, lv.metrics.output_tok_s
        cap.output_tok_s = t0 + frac * (t1 - t0)
        cap.reason = f"interpolated between levels {prev.level} and {lv.level}"
        return cap
    assert prev is not None
    cap.lower_level, cap.lower_rate, cap.lower_attainment = prev.level, _rate(prev), prev.metrics.attainment
    cap.at_least = True
    cap.reason = f"every level met the target: capacity ≥ {cap.lower_rate:,.4g} req/s (the highest level)"
    return cap


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


def plan_capacity(
    per_replica_rps: float,
    basis: str,
    target_rps: Optional[float] = None,
    output_tok_s: Optional[float] = None,
    price_per_replica_hour: Optional[float] = None,
    lower_bound: bool = False,
) -> CapacityPlan:
    """Replicas = ceil(target / capacity); cost per 1M output tokens = price / (tok/s × 3600) × 1e6."""
    plan = CapacityPlan(
        per_replica_rps=per_replica_rps,
        basis=basis,
        lower_bound=lower_bound,
        target_rps=target_rps,
        output_tok_s=output_tok_s,
        price_per_replica_hour=price_per_replica_hour,
    )
    if target_rps is not None and per_replica_rps > 0:
        # A hair of tolerance so that 400 / 20.000000001 does not ask for a 21st replica.
        plan.replicas = max(1, math.ceil(target_rps / per_replica_rps - 1e-9))
        plan.margin = plan.replicas * per_replica_rps / target_rps - 1.0
        if price_per_replica_hour is not None:
            plan.cost_per_hour = plan.replicas * price_per_replica_hour
    if price_per_replica_hour is not None and output_tok_s:
        plan.cost_per_million_tokens = price_per_replica_hour / (output_tok_s * 3600.0) * 1e6
    return plan
