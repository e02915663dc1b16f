"""Several runs side by side: per-level values at the levels they share, whether each differs from the first beyond the noise, and the ratio.

Input: ``RunSummary`` objects (the first is the baseline A). Output:
``Comparison`` — long-form rows (one per common level and metric, plus the
saturation and capacity verdicts), each with every run's value, its 95 %
interval, value/A and a verdict against A ("different" when the intervals do
not overlap, else "within noise"), and one summary line per run. The rule is
in ``docs/metrics.md`` ("Comparison").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from loadgen.analysis.confidence import (
    DIFFERENT,
    TOO_FEW,
    WITHIN_NOISE,
    Interval,
    compare_intervals,
    poisson_rate_interval,
    scaled_rate_interval,
)
from loadgen.analysis.labels import run_labels as _run_labels
from loadgen.analysis.level import LevelSummary
from loadgen.analysis.summary import RunSummary

#: How to read a value, or its 95 % interval, from a level.
Value = Callable[[LevelSummary], Optional[float]]
Bounds = Callable[[LevelSummary], Optional[Interval]]


def _completions_interval(lv: LevelSummary) -> Interval:
    """achieved req/s: Poisson interval on the ok completions in the window."""
    return poisson_rate_interval(lv.metrics.completed, lv.metrics.window_s)


def _tokens_interval(lv: LevelSummary) -> Interval:
    """output tok/s: the relative noise of the completions, not of the tokens.

    Tokens arrive in requests, so their count varies as the number of
    requests does; a Poisson interval on the tokens themselves would be
    √(tokens per request) times too narrow.
    """
    return scaled_rate_interval(lv.metrics.output_tok_s, lv.metrics.completed)


def _goodput_interval(lv: LevelSummary) -> Interval:
    """goodput req/s: Poisson interval on the good completions in the window."""
    m = lv.metrics
    return poisson_rate_interval(m.goodput_rps * m.window_s, m.window_s)


def _error_interval(lv: LevelSummary) -> Optional[Interval]:
    """error rate: Poisson interval on the failed requests, over the requests in the window."""
    m = lv.metrics
    return poisson_rate_interval(m.error_rate * m.requests, m.requests) if m.requests else None


def _percentile(dist: str, stat: str) -> tuple[Value, Bounds]:
    """Value and order-statistic interval of one percentile of one distribution."""
    return (lambda lv: getattr(getattr(lv.metrics, dist), stat)), (lambda lv: getattr(lv.metrics, dist).ci.get(stat))


#: (name, value of a level, its 95 % interval) for the per-level rows.
LEVEL_METRICS: tuple[tuple[str, Value, Bounds], ...] = (
    ("achieved req/s", lambda lv: lv.metrics.achieved_rps, _completions_interval),
    ("output tok/s", lambda lv: lv.metrics.output_tok_s, _tokens_interval),
    ("goodput req/s", lambda lv: lv.metrics.goodput_rps, _goodput_interval),
    ("TTFT p50 ms", *_percentile("ttft", "p50")),
    ("TTFT p99 ms", *_percentile("ttft", "p99")),
    ("TPOT p50 ms", *_percentile("tpot", "p50")),
    ("TPOT p99 ms", *_percentile("tpot", "p99")),
    ("ITL p99 ms", *_percentile("itl", "p99")),
    ("E2E p99 ms", *_percentile("e2e", "p99")),
    ("error rate", lambda lv: lv.metrics.error_rate, _error_interval),
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
    intervals: list[Optional[Interval]] = field(default_factory=list)  # 95 % (low, high) per run; None: none
    verdicts: list[Optional[str]] = field(default_factory=list)  # vs the first run: different | within noise |
    # too few samples; None for the first run and for rows without intervals (the run-level verdicts)


@dataclass
class Comparison:
    """The comparison table of several runs."""

    runs: list[str]  # run labels, baseline first
    load_axis: str  # what ``load`` means: "req/s" or "streams"
    rows: list[ComparisonRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)  # per run after the first: how many metrics differ beyond noise


def run_labels(summaries: Sequence[RunSummary]) -> list[str]:
    """Distinct short names: ``label=``, a short directory name, or the overrides that differ (see analysis.labels)."""
    return _run_labels(summaries)


def _ratios(values: list[Optional[float]]) -> list[Optional[float]]:
    base = values[0]
    return [None if v is None or not base else v / base for v in values]


def _verdicts(intervals: list[Optional[Interval]]) -> list[Optional[str]]:
    """Each run's interval against the first run's (None for the first)."""
    return [None] + [compare_intervals(intervals[0], other) for other in intervals[1:]]


def _level_row(load: float, name: str, levels: list[LevelSummary], value: Value, bounds: Bounds) -> ComparisonRow:
    """One metric at one common level, over the runs' matching levels."""
    values = [value(lv) for lv in levels]
    intervals = [None if v is None else bounds(lv) for v, lv in zip(values, levels)]
    return ComparisonRow("level", load, name, values, _ratios(values), intervals, _verdicts(intervals))


def _where(row: ComparisonRow, axis: str) -> str:
    """'TTFT p99 ms at 10 req/s' (or the metric alone for a run-level row)."""
    return row.metric if row.load is None else f"{row.metric} at {row.load:g} {axis}"


def noise_summary(comparison: Comparison, run: int, shown: int = 4) -> str:
    """One line: how many of the judged metrics of run ``run`` differ from the first run beyond the noise.

    e.g. "B vs A: 2 of 20 metrics differ beyond noise (TTFT p99 ms at 10 req/s 2.00×, …); 3 had too few samples".
    """
    label, base = comparison.runs[run], comparison.runs[0]
    judged = [r for r in comparison.rows if r.verdicts and r.verdicts[run] in (DIFFERENT, WITHIN_NOISE, TOO_FEW)]
    differ = [r for r in judged if r.verdicts[run] == DIFFERENT]
    few = sum(1 for r in judged if r.verdicts[run] == TOO_FEW)
    which = [
        _where(r, comparison.load_axis) + ("" if r.ratios[run] is None else f" {r.ratios[run]:.2f}×")
        for r in differ[:shown]
    ]
    more = ", …" if len(differ) > shown else ""
    detail = f" ({', '.join(which)}{more})" if which else ""
    tail = f"; {few} had too few samples to tell" if few else ""
    return f"{label} vs {base}: {len(differ)} of {len(judged)} metrics differ beyond noise{detail}{tail}"


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
        for name, value, bounds in LEVEL_METRICS:
            out.rows.append(_level_row(key[1], name, [d[key] for d in by_run], value, bounds))
    for name, get_run in RUN_METRICS:
        values = [get_run(s) for s in summaries]
        out.rows.append(ComparisonRow("verdict", None, name, values, _ratios(values), [None] * len(values), [None] * len(values)))
    for label, d in zip(out.runs, by_run):
        only = sorted(k[1] for k in set(d) - set(common))
        if only:
            out.notes.append(f"{label}: levels {', '.join(f'{v:g}' for v in only)} are not in every run")
    if not common:
        out.notes.append("the runs share no level (same mode and value): only the verdicts are compared")
    out.summary = [noise_summary(out, i) for i in range(1, len(summaries))]
    return out
