"""Several runs side by side: per-level values at the levels they share, and the ratio of each to the first.

Input: ``RunSummary`` objects (the first is the baseline A). Output:
``Comparison`` — long-form rows (one per common level and metric, plus the
saturation and capacity verdicts), each with every run's value and value/A.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from loadgen.analysis.level import LevelSummary
from loadgen.analysis.summary import RunSummary

#: (name, how to get it from a level) for the per-level rows.
LEVEL_METRICS: tuple[tuple[str, Callable[[LevelSummary], Optional[float]]], ...] = (
    ("achieved req/s", lambda lv: lv.metrics.achieved_rps),
    ("output tok/s", lambda lv: lv.metrics.output_tok_s),
    ("goodput req/s", lambda lv: lv.metrics.goodput_rps),
    ("TTFT p50 ms", lambda lv: lv.metrics.ttft.p50),
    ("TTFT p99 ms", lambda lv: lv.metrics.ttft.p99),
    ("TPOT p50 ms", lambda lv: lv.metrics.tpot.p50),
    ("TPOT p99 ms", lambda lv: lv.metrics.tpot.p99),
    ("ITL p99 ms", lambda lv: lv.metrics.itl.p99),
    ("E2E p99 ms", lambda lv: lv.metrics.e2e.p99),
    ("error rate", lambda lv: lv.metrics.error_rate),
)
#: (name, how to get it from a run) for the verdict rows.
RUN_METRICS: tuple[tuple[str, Callable[[RunSummary], Optional[float]]], ...] = (
    ("saturation load", lambda s: s.saturation.load),
    ("req/s at saturation", lambda s: s.saturation.throughput_rps),
    ("output tok/s at saturation", lambda s: s.saturation.output_tok_s),
    ("goodput capacity req/s", lambda s: s.goodput_capacity.rate),
)


@dataclass
class ComparisonRow:
    """One metric at one common level (or a run-level verdict when ``load`` is None)."""

    group: str  # "level" or "verdict"
    load: Optional[float]  # the common level's configured value (req/s or streams)
    metric: str
    values: list[Optional[float]]  # one per run, in run order
    ratios: list[Optional[float]]  # value / first run's value (None where undefined)


@dataclass
class Comparison:
    """The comparison table of several runs."""

    runs: list[str]  # run labels, baseline first
    load_axis: str  # what ``load`` means: "req/s" or "streams"
    rows: list[ComparisonRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_labels(summaries: Sequence[RunSummary]) -> list[str]:
    """Distinct short names: each run directory's name, with its parent's when names repeat."""
    labels = [s.label for s in summaries]
    if len(set(labels)) == len(labels):
        return labels
    return [os.path.join(*os.path.normpath(s.run_dir).split(os.sep)[-2:]) for s in summaries]


def _ratios(values: list[Optional[float]]) -> list[Optional[float]]:
    base = values[0]
    return [None if v is None or not base else v / base for v in values]


def _key(lv: LevelSummary) -> tuple[bool, float]:
    return lv.open_loop, round(lv.value, 9)


def compare(summaries: Sequence[RunSummary]) -> Comparison:
    """Compare runs at the levels they all measured (same mode and configured value) and at saturation."""
    if len(summaries) < 2:
        raise ValueError("a comparison needs at least two runs")
    by_run = [{_key(lv): lv for lv in s.levels} for s in summaries]
    common = sorted(set.intersection(*(set(d) for d in by_run)), key=lambda k: (not k[0], k[1]))
    open_loop = any(k[0] for k in common) or any(lv.open_loop for lv in summaries[0].levels)
    out = Comparison(runs=run_labels(summaries), load_axis="req/s" if open_loop else "streams")
    for key in common:
        for name, get in LEVEL_METRICS:
            values = [get(d[key]) for d in by_run]
            out.rows.append(ComparisonRow("level", key[1], name, values, _ratios(values)))
    for name, get_run in RUN_METRICS:
        values = [get_run(s) for s in summaries]
        out.rows.append(ComparisonRow("verdict", None, name, values, _ratios(values)))
    for label, d in zip(out.runs, by_run):
        only = sorted(k[1] for k in set(d) - set(common))
        if only:
            out.notes.append(f"{label}: levels {', '.join(f'{v:g}' for v in only)} are not in every run")
    if not common:
        out.notes.append("the runs share no level (same mode and value): only the verdicts are compared")
    return out
