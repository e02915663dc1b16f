"""Analysis: records → per-level metrics → saturation point, knee, goodput capacity, capacity plan, comparison.

Input: a run directory (run.json + Parquet records). Output: ``RunSummary``
objects and ``summary.json`` / ``summary.parquet``. Formulas and rules are
in ``docs/metrics.md``.
"""

from __future__ import annotations

from loadgen.analysis.capacity import CapacityPlan, GoodputCapacity, goodput_capacity, plan_capacity
from loadgen.analysis.compare import Comparison, ComparisonRow, compare
from loadgen.analysis.health import ClientBoundRule
from loadgen.analysis.level import LevelSummary, summarize_level
from loadgen.analysis.metrics import Dist, LevelMetrics, Window, level_metrics, quantiles
from loadgen.analysis.saturation import (
    Knee,
    Saturation,
    SearchPoint,
    knee_point,
    kneedle,
    next_search_level,
    queue_growing,
    queue_growing_records,
    saturation_point,
    search_bracket,
)
from loadgen.analysis.summary import RunSummary, analyze_level, analyze_run, write_summary

__all__ = [
    "CapacityPlan",
    "ClientBoundRule",
    "Comparison",
    "ComparisonRow",
    "Dist",
    "GoodputCapacity",
    "Knee",
    "LevelMetrics",
    "LevelSummary",
    "RunSummary",
    "Saturation",
    "SearchPoint",
    "Window",
    "analyze_level",
    "analyze_run",
    "compare",
    "goodput_capacity",
    "knee_point",
    "kneedle",
    "level_metrics",
    "next_search_level",
    "plan_capacity",
    "quantiles",
    "queue_growing",
    "queue_growing_records",
    "saturation_point",
    "search_bracket",
    "summarize_level",
    "write_summary",
]
