"""Capacity planning with a twin: the fewest replicas of an engine that serve a load at its SLOs.

Input: a ``LoadgenConfig`` (the traffic: workload, load levels, SLOs), a twin
``SimProfile``, a balancer and an upper bound on replicas. Output: ``ReplicaPlan``
(the fewest replicas for which every level of the predicted run *passes* —
judged, kept up, met its SLO percentile — and each count tried with its verdict).
Every count is one offline prediction (``loadgen.twin.predict``) into a
temporary directory; the search doubles until a count passes, then bisects.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Optional

from rich.console import Console

from loadgen.analysis import analyze_run
from loadgen.config import LoadgenConfig, SimProfile
from loadgen.twin.predict import predict


@dataclass
class ReplicaPlan:
    """The answer, and every replica count tried: count -> (passed, the first failure in words)."""

    replicas: Optional[int]
    tried: dict[int, tuple[bool, str]] = field(default_factory=dict)

    def render(self) -> str:
        """In words, for the terminal."""
        lines = [f"  {n:>5} replicas: {'pass' if ok else 'fail: ' + why}" for n, (ok, why) in sorted(self.tried.items())]
        head = f"fewest replicas that pass every level: {self.replicas}" if self.replicas else "no replica count up to the bound passes"
        return "\n".join([head] + lines)


def _passes(cfg: LoadgenConfig, profile: SimProfile, replicas: int, balancer: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="loadgen-twin-plan-") as out:
        predict(cfg, profile, out, replicas=replicas, balancer=balancer, console=Console(quiet=True), report=False)
        summary = analyze_run(out, slo=cfg.slo, analysis=cfg.analysis)
    for lv in summary.levels:
        if not lv.passed:
            why = "; ".join(lv.failures) or lv.not_judged or (lv.stopped_early or "failed")
            return False, f"level {lv.level} ({lv.value:g} {lv.mode.unit}): {why}"
    return bool(summary.levels), "" if summary.levels else "no level was predicted"


def plan_replicas(cfg: LoadgenConfig, profile: SimProfile, *, balancer: str = "least-outstanding", max_replicas: int = 1024) -> ReplicaPlan:
    """The fewest replicas (up to ``max_replicas``) for which every level of ``cfg`` passes on the twin."""
    plan = ReplicaPlan(None)
    lo, hi = 0, 1  # lo fails (0 trivially), hi is the next count to try
    while hi <= max_replicas:
        plan.tried[hi] = _passes(cfg, profile, hi, balancer)
        if plan.tried[hi][0]:
            break
        lo, hi = hi, hi * 2
    else:
        return plan
    while hi - lo > 1:
        mid = (lo + hi) // 2
        plan.tried[mid] = _passes(cfg, profile, mid, balancer)
        lo, hi = (lo, mid) if plan.tried[mid][0] else (mid, hi)
    plan.replicas = hi
    return plan
