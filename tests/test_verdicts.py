"""Verdicts that say what happened: diluted and capped levels, interrupted levels, and verdicts that agree."""

from __future__ import annotations

import io

from rich.console import Console

from loadgen.analysis import LevelSummary, summarize_level
from loadgen.analysis.capacity import goodput_capacity
from loadgen.analysis.saturation import knee_point, saturation_point
from loadgen.analysis.summary import RunSummary
from loadgen.config import AnalysisConfig, ClusterConfig, LoadConfig, SLOConfig
from loadgen.report.terminal import render_terminal
from loadgen.report.verdicts import capacity_sentence
from loadgen.rundir import Ledger, LevelEntry
from loadgen.schedule import LevelSpec, RequestCursor, plan_trace
from test_analysis import NO_SLO, T0, level, rec, table
from test_schedule import make_workload


def test_a_trace_shorter_than_the_level_reports_the_rate_it_offered():
    wl = make_workload(20, arrivals=True)  # one arrival every 0.5 s: 10 s of trace
    plan = plan_trace(RequestCursor(wl), LevelSpec(0, "trace", 1.0), LoadConfig(duration_s=60, max_requests=10**6), workers=1)
    assert plan.planned == 20
    assert abs(plan.offered_rps - 2.0) < 0.1  # not 20 / 60 = 0.33 req/s
    assert plan.duration_s < 11 and "ran out of arrivals" in plan.notes[0]


def test_an_interrupted_level_is_labelled_so_and_not_judged():
    rows = [rec(i * 10, i * 10, [i * 10 + 20], i * 10 + 30) for i in range(50)]
    entry = LevelEntry(level=0, mode="rate", value=100.0, offered_rps=100.0, start_ns=T0, stopped_early="interrupted",
                       steady_start_ns=T0, steady_end_ns=T0 + 500 * 1_000_000)
    lv = summarize_level(table(rows), entry, NO_SLO, AnalysisConfig(), ClusterConfig())
    assert not lv.judged and "interrupted" in lv.not_judged and not any("stopped early" in f for f in lv.failures)
    summary = _summary([lv])
    assert not summary.saturated(lv)
    out = io.StringIO()
    render_terminal(summary, Console(file=out, width=250))
    assert "interrupted" in out.getvalue() and "saturated" not in out.getvalue().split("•")[0]


def test_a_lowest_level_failing_its_p99_while_most_requests_met_the_slo_is_explained_not_contradicted():
    slo = SLOConfig(ttft_ms=500.0, tpot_ms=None, attainment=0.9)
    levels = [level(0, 2, 2.0, ttft_p99=900, attainment=0.95, slo=slo), level(1, 4, 3.9, ttft_p99=1500, attainment=0.5, slo=slo)]
    summary = _summary(levels, slo)
    assert summary.saturation.level is None  # even the lowest level failed its p99 TTFT
    text = capacity_sentence(summary)
    assert "Goodput capacity" in text and "saturation rule failed even the lowest level" in text


def _summary(levels: list[LevelSummary], slo: SLOConfig = NO_SLO) -> RunSummary:
    analysis = AnalysisConfig()
    return RunSummary(
        run_id="t", run_dir="/nonexistent/t", status="complete", info={}, config={}, slo=slo, analysis=analysis,
        levels=levels, saturation=saturation_point(levels, slo.percentile, analysis), knee=knee_point(levels),
        goodput_capacity=goodput_capacity(levels, slo.attainment), ledger=Ledger(),
    )
