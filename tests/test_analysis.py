"""Analysis: each metric, the saturation/knee/goodput/capacity verdicts, ledger, client-bound and search on known input."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pytest

from loadgen.analysis import (
    LevelMetrics,
    LevelSummary,
    SearchPoint,
    Window,
    analyze_run,
    goodput_capacity,
    knee_point,
    kneedle,
    level_metrics,
    next_search_level,
    plan_capacity,
    quantiles,
    queue_growing,
    queue_growing_records,
    saturation_point,
    search_bracket,
    summarize_level,
)
from loadgen.analysis.keepup import KeepUp
from loadgen.analysis.level import judge
from loadgen.analysis.metrics import peak_in_flight
from loadgen.config import AnalysisConfig, ClusterConfig, LoadConfig, SLOConfig
from loadgen.rundir import RECORD_SCHEMA, Ledger, LevelEntry, PartWriter, WorkerHealth, part_dir, records_root

T0 = 1_700_000_000_000_000_000  # an epoch-like run clock origin, ns
MS = 1_000_000
NO_SLO = SLOConfig(ttft_ms=None, tpot_ms=None, e2e_ms=None)


def rec(sched_ms: float, sent_ms: float, chunks_ms: list[float], end_ms: float, out: Optional[int] = None,
        status: str = "ok", worker: int = 0, loop_lag: float = 0.0, level: int = 0) -> dict[str, Any]:
    """One record with times given in ms after T0."""
    chunks = [T0 + int(c * MS) for c in chunks_ms]
    return {
        "run_id": "t", "level": level, "level_value": 1.0, "worker_id": worker, "request_id": f"r{sched_ms}-{worker}",
        "scheduled_ns": T0 + int(sched_ms * MS), "sent_ns": T0 + int(sent_ms * MS),
        "first_token_ns": chunks[0] if chunks else None, "end_ns": T0 + int(end_ms * MS),
        "output_tokens": len(chunks) if out is None else out, "chunk_ns": chunks, "status": status,
        "loop_lag_ms": loop_lag,
    }


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([{n: r.get(n) for n in RECORD_SCHEMA.names} for r in rows], schema=RECORD_SCHEMA)


def window(start_ms: float, end_ms: float) -> Window:
    return Window(T0 + int(start_ms * MS), T0 + int(end_ms * MS))


# ----------------------------------------------------------------------------- percentiles


def test_unweighted_quantiles_are_numpy_linear():
    values = np.array([7.0, 1.0, 3.0, 10.0])
    # sorted 1, 3, 7, 10: p50 at position 1.5 -> 5; p90 at position 2.7 -> 7 + 0.7 * 3
    assert quantiles(values, [50, 90]) == pytest.approx([5.0, 9.1])


def test_weighted_quantiles_equal_the_expanded_sample():
    values = np.array([5.0, 1.0, 3.0, 9.0])
    weights = np.array([2.0, 1.0, 3.0, 1.0])
    expanded = np.repeat(values, weights.astype(int))  # 5,5,1,3,3,3,9
    qs = [0, 10, 50, 75, 90, 99, 99.9, 100]
    assert quantiles(values, qs, weights) == pytest.approx(np.percentile(expanded, qs))


def test_quantiles_keep_durations_beyond_int32_exact():
    values = np.array([3_000_000_000, 5, 2**40, 7], dtype=np.int64)  # 3 s and ~18 min do not fit int32
    assert quantiles(values, [0, 50, 100]) == pytest.approx(np.percentile(values, [0, 50, 100]))


def test_quantiles_of_nothing_are_nan():
    assert np.isnan(quantiles(np.array([]), [50])).all()


# ----------------------------------------------------------------------------- per-request metrics


def three_requests() -> pa.Table:
    return table([
        # TTFT 10, queued TTFT 11, gaps 10 and 15, TPOT (38-11)/2 = 13.5, E2E 37, queued E2E 38
        rec(0, 1, [11, 21, 36], 38),
        # TTFT 50, gap 10, TPOT (170-150)/1 = 20, E2E 70
        rec(100, 100, [150, 160], 170),
        # TTFT 58, single token: no TPOT, E2E 59
        rec(200, 202, [260], 261),
    ])


def test_latency_metrics_on_known_records():
    m = level_metrics(three_requests(), window(0, 1000), NO_SLO)
    assert m.requests == 3 and m.completed == 3
    assert m.ttft.count == 3
    assert m.ttft.p50 == pytest.approx(50.0)
    assert m.ttft.mean == pytest.approx((10 + 50 + 58) / 3)
    assert m.ttft.max == pytest.approx(58.0)
    # p99 of 10, 50, 58: position 2 * 0.99 = 1.98 -> 50 + 0.98 * 8
    assert m.ttft.p99 == pytest.approx(57.84)
    assert m.queued_ttft.mean == pytest.approx((11 + 50 + 60) / 3)
    assert m.e2e.mean == pytest.approx((37 + 70 + 59) / 3)
    assert m.queued_e2e.mean == pytest.approx((38 + 70 + 61) / 3)
    assert m.normalized.mean == pytest.approx((37 / 3 + 70 / 2 + 59 / 1) / 3)
    assert m.schedule_lag.max == pytest.approx(2.0)
    assert m.schedule_lag.p50 == pytest.approx(1.0)
    # ITL pools the gaps of all requests: 10, 15, 10
    assert m.itl.count == 3
    assert m.itl.mean == pytest.approx(35 / 3)
    assert m.itl.max == pytest.approx(15.0)


def test_tpot_excludes_the_first_token():
    # 500 ms to the first token, then 4 more tokens 10 ms apart, end with the last token.
    m = level_metrics(table([rec(0, 0, [500, 510, 520, 530, 540], 540)]), window(0, 1000), NO_SLO)
    assert m.tpot.mean == pytest.approx(10.0)  # (540 - 500) / (5 - 1), not 540 / 5
    assert m.normalized.mean == pytest.approx(108.0)  # E2E / tokens keeps the first token's wait


def test_throughput_and_token_rate_in_window():
    m = level_metrics(three_requests(), window(0, 1000), NO_SLO)
    assert m.window_s == pytest.approx(1.0)
    assert m.achieved_rps == pytest.approx(3.0)
    assert m.output_tok_s == pytest.approx(6.0)  # 3 + 2 + 1 tokens arrived inside the 1 s window


def test_itl_weights_multi_token_chunks_by_tokens():
    rows = [
        rec(0, 0, [100, 110, 120], 121, out=3),  # one token per chunk: gaps 10, 10
        rec(0, 0, [100, 140], 141, out=8),  # 4 tokens per chunk: gap 40 carried 4 tokens
    ]
    m = level_metrics(table(rows), window(0, 1000), NO_SLO)
    # Token-weighted sample: 10, 10, 40, 40, 40, 40
    assert m.itl.mean == pytest.approx(180 / 6)
    assert m.itl.p50 == pytest.approx(40.0)
    assert m.itl.max == pytest.approx(40.0)
    assert m.output_tok_s == pytest.approx(3 + 8)  # every chunk counts for its share of the usage tokens


def test_token_rate_counts_only_chunks_inside_the_window():
    # 4 chunks of 2 tokens: two arrive before the window ends at 1000 ms, two after.
    m = level_metrics(table([rec(0, 0, [900, 950, 1050, 1100], 1101, out=8)]), window(0, 1000), NO_SLO)
    assert m.output_tok_s == pytest.approx(4.0)
    assert m.completed == 0 and m.achieved_rps == 0.0


def test_non_streamed_requests_count_usage_tokens_at_completion():
    rows = [rec(0, 0, [], 300, out=50), rec(100, 100, [], 1200, out=70)]
    m = level_metrics(table(rows), window(0, 1000), NO_SLO)
    assert not m.streamed
    assert m.ttft.count == 0 and m.tpot.count == 0
    assert m.e2e.count == 2
    assert m.output_tok_s == pytest.approx(50.0)  # only the first ended inside the window
    assert m.completed == 1


def test_steady_window_excludes_warmup_and_drain():
    rows = [
        rec(100, 100, [5000], 5000),  # scheduled in warm-up: slow, must not count in latencies
        rec(2000, 2000, [2010], 2020),
        rec(3000, 3000, [3020], 3030),
        rec(9500, 9500, [9990], 12000),  # scheduled in the window, completes in the drain
        rec(10500, 10500, [10600], 10700),  # scheduled in the drain
    ]
    m = level_metrics(table(rows), window(2000, 10000), NO_SLO)
    assert m.requests == 3
    assert m.ttft.count == 3
    assert m.ttft.max == pytest.approx(490.0)  # 9990 - 9500; the warm-up request's 4900 ms is excluded
    # Completions inside the window: the warm-up request (ends at 5000) and the two quick ones.
    assert m.completed == 3
    assert m.achieved_rps == pytest.approx(3 / 8)
    assert m.scheduled_rps == pytest.approx(3 / 8)


def test_error_rate_by_class_and_goodput_counts_errors_as_misses():
    slo = SLOConfig(ttft_ms=100.0, tpot_ms=None, e2e_ms=None)
    rows = [
        rec(0, 0, [50, 60], 61),  # meets the SLO
        rec(100, 100, [150, 160], 161),  # meets the SLO
        rec(200, 200, [450, 460], 461),  # TTFT 250 ms: a miss
        rec(300, 300, [], 900, out=0, status="timeout"),
        rec(400, 400, [], 410, out=0, status="http_error"),
    ]
    m = level_metrics(table(rows), window(0, 2000), slo)
    assert m.errors == {"timeout": 1, "http_error": 1}
    assert m.error_rate == pytest.approx(2 / 5)
    assert m.good == 2
    assert m.attainment == pytest.approx(2 / 5)
    assert m.goodput_rps == pytest.approx(2 / 2.0)
    assert m.achieved_rps == pytest.approx(3 / 2.0)


def test_tpot_slo_ignores_single_token_answers():
    slo = SLOConfig(ttft_ms=None, tpot_ms=5.0, e2e_ms=None)
    rows = [rec(0, 0, [10], 11), rec(0, 0, [10, 30], 30)]  # no TPOT; TPOT 20 ms (miss)
    m = level_metrics(table(rows), window(0, 1000), slo)
    assert m.good == 1


def test_peak_in_flight_sweep():
    start = np.array([0, 5, 10, 12])
    end = np.array([10, 15, 20, 13])
    # At 12: [5,15), [10,20), [12,13) are open; the first closed at 10 as the third opened.
    assert peak_in_flight(start, end) == 3


# ----------------------------------------------------------------------------- levels, saturation, knee


def level(n: int, load: float, achieved: float, ttft_p99: float = 100.0, attainment: float = 1.0,
          tok_s: float = 0.0, e2e_p50: float = 1000.0, mode: str = "rate",
          slo: SLOConfig = SLOConfig(ttft_ms=500.0, tpot_ms=None), analysis: AnalysisConfig = AnalysisConfig()) -> LevelSummary:
    """A judged level built from its headline numbers."""
    m = LevelMetrics(window_s=10.0, requests=int(load * 10), expected=int(load * 10), completed=int(achieved * 10), achieved_rps=achieved,
                     scheduled_rps=load, output_tok_s=tok_s, attainment=attainment, goodput_rps=achieved * attainment,
                     slo_percentiles={"ttft_ms": ttft_p99})
    m.e2e.p50 = e2e_p50
    lv = LevelSummary(level=n, mode=mode, value=load, offered_rps=load if mode == "rate" else None,
                      window_start_ns=0, window_end_ns=10, metrics=m, ledger=Ledger())
    if mode == "rate":
        ratio = achieved / load
        lv.keep_up = KeepUp(offered_rps=load, served_rps=achieved, ratio=ratio, kept_up=ratio >= analysis.saturation_tolerance,
                            reason=f"served {achieved} of {load} req/s")
    lv.keep_up_ratio, lv.kept_up, lv.slo_met, lv.failures = judge(lv, slo, analysis)
    return lv


def test_saturation_is_last_level_before_first_failure():
    levels = [
        level(0, 2, 2.0),
        level(1, 4, 3.9),
        level(2, 8, 7.5, ttft_p99=450),
        level(3, 16, 12.0),  # 12 < 0.9 * 16: fell behind
        level(4, 24, 23.0),  # passes by chance past a failure: must not count
    ]
    sat = saturation_point(levels, 99.0, AnalysisConfig())
    assert sat.level == 2 and sat.load == 8 and sat.throughput_rps == 7.5
    assert sat.reached and sat.first_failing_level == 3
    assert "served 12.0 of 16 req/s" in sat.reason
    assert "kept up" in sat.rule


def test_saturation_fails_on_slo_even_when_keeping_up():
    levels = [level(0, 2, 2.0), level(1, 4, 4.0, ttft_p99=800)]
    sat = saturation_point(levels, 99.0, AnalysisConfig())
    assert sat.level == 0
    assert "p99 TTFT 800 ms > 500 ms" in sat.reason


def test_saturation_not_reached_and_lowest_failing():
    passing = saturation_point([level(0, 2, 2.0), level(1, 4, 4.0)], 99.0, AnalysisConfig())
    assert passing.level == 1 and not passing.reached
    failing = saturation_point([level(0, 2, 1.0), level(1, 4, 4.0)], 99.0, AnalysisConfig())
    assert failing.level is None and failing.first_failing_level == 0
    assert "lowest level" in failing.reason


def test_closed_loop_saturation_by_scaling_efficiency():
    levels = [level(i, c, x, mode="concurrency") for i, (c, x) in enumerate([(1, 10), (2, 19.5), (4, 38), (8, 50), (16, 52)])]
    # 2 -> 4 streams: +95% vs linear +100% (keeps scaling); 4 -> 8: +31.6% < 50% of linear
    sat = saturation_point(levels, 99.0, AnalysisConfig(scaling_efficiency=0.5))
    assert sat.level == 2 and sat.load == 4
    assert sat.first_failing_level == 3
    assert "linear" in sat.rule


def test_kneedle_on_constructed_curves():
    x = list(range(11))
    convex = [0.0] * 6 + [10.0, 20.0, 30.0, 40.0, 50.0]  # flat to x=5, then rising
    assert kneedle(x, convex, concave=False) == 5
    concave = [min(v, 5.0) for v in x]  # linear to x=5, then flat
    assert kneedle(x, concave, concave=True) == 5
    assert kneedle(x, [2.0 * v for v in x], concave=False) is None  # a straight line has no knee
    assert kneedle(x, concave, concave=False) is None  # a concave curve has no convex knee


def test_knee_point_uses_latency_vs_offered_load():
    p50 = {2: 100, 4: 100, 8: 105, 12: 110, 16: 400, 20: 900}
    levels = [level(i, load, load, e2e_p50=v) for i, (load, v) in enumerate(p50.items())]
    knee = knee_point(levels)
    assert knee.level == 3 and knee.x == 12
    assert "Kneedle" in knee.rule


# ----------------------------------------------------------------------------- goodput capacity and planning


def test_goodput_capacity_interpolates_between_bracketing_levels():
    levels = [
        level(0, 4, 4, attainment=1.0, tok_s=400),
        level(1, 8, 8, attainment=0.98, tok_s=800),
        level(2, 12, 11, attainment=0.80, tok_s=1100),
        level(3, 16, 12, attainment=0.50, tok_s=1200),
    ]
    cap = goodput_capacity(levels, 0.9)
    frac = (0.98 - 0.9) / (0.98 - 0.80)
    # on achieved goodput: 8 × 0.98 = 7.84 and 11 × 0.80 = 8.8 req/s
    assert cap.rate == pytest.approx(7.84 + frac * (8.8 - 7.84))
    assert cap.output_tok_s == pytest.approx(800 + frac * 300)
    assert (cap.lower_level, cap.upper_level) == (1, 2)
    assert (cap.lower_rate, cap.upper_rate) == (pytest.approx(7.84), pytest.approx(8.8))


def test_goodput_capacity_is_never_above_the_best_goodput_delivered():
    # The README's old run: 24 offered served 23.7; 30 offered served 22.0 (most requests too slow).
    # Interpolating on offered load gave 27.4 req/s, more than any level served.
    levels = [level(0, 18, 18.8, attainment=1.0), level(1, 24, 23.7, attainment=0.97), level(2, 30, 22.0, attainment=0.10)]
    cap = goodput_capacity(levels, 0.9)
    best = max(lv.metrics.goodput_rps for lv in levels)
    assert cap.rate is not None and cap.rate <= best and cap.best_goodput == best
    assert cap.rate <= 23.7


def test_goodput_capacity_edges():
    above = goodput_capacity([level(0, 4, 4, attainment=1.0), level(1, 8, 8, attainment=0.95)], 0.9)
    assert above.at_least and above.rate == above.lower_rate == pytest.approx(7.6) and "not bracketed" in above.reason
    below = goodput_capacity([level(0, 4, 4, attainment=0.5), level(1, 8, 8, attainment=0.95)], 0.9)
    assert below.rate is None and not below.at_least
    assert "lowest level" in below.reason


def test_replicas_and_cost_per_million_tokens():
    plan = plan_capacity(19.3, "goodput capacity", target_rps=400, output_tok_s=1000.0, price_per_replica_hour=2.0)
    assert plan.replicas == 21  # 400 / 19.3 = 20.7
    assert plan.margin == pytest.approx(21 * 19.3 / 400 - 1)
    assert plan.cost_per_million_tokens == pytest.approx(2.0 / (1000 * 3600) * 1e6)  # $0.556
    assert plan.cost_per_hour == pytest.approx(42.0)
    assert plan_capacity(20.0, "x", target_rps=400).replicas == 20


# ----------------------------------------------------------------------------- ledger, client-bound


def test_ledger_closes_and_names_what_does_not():
    meta = {"planned": 10, "sent": 9, "not_sent": {"deadline": 1}, "ok": 6,
            "errors": {"timeout": 1, "http_error": 1}, "cancelled": 1, "lost": 0}
    assert Ledger.from_dict(meta, records=9).closes
    broken = Ledger.from_dict({**meta, "ok": 5}, records=9)
    assert not broken.closes
    assert any("sent 9 ≠ ok 5" in p for p in broken.problems())
    missing_rows = Ledger.from_dict(meta, records=7)
    assert any("7 records on disk" in p for p in missing_rows.problems())
    total = Ledger.from_dict(meta) + Ledger.from_dict(meta)
    assert total.planned == 20 and total.errors == {"http_error": 2, "timeout": 2}


def test_client_bound_names_the_lagging_workers():
    rows = []
    for i in range(50):
        rows.append(rec(i * 10, i * 10 + 0.2, [i * 10 + 20], i * 10 + 21, worker=0))
        rows.append(rec(i * 10, i * 10 + 45, [i * 10 + 60], i * 10 + 61, worker=1))  # 45 ms behind schedule
        rows.append(rec(i * 10, i * 10, [i * 10 + 20], i * 10 + 21, worker=2, loop_lag=1.0))
    # worker 5 sent nothing on record but reported a lagging loop for the level in run.json
    meta = LevelEntry(level=0, mode="rate", value=100.0, offered_rps=100.0, workers=[WorkerHealth(5, sent=3, loop_lag_ms_p99=25.0)])
    telemetry = pa.table({"worker_id": [2, 2, 2], "loop_lag_ms": [30.0, 35.0, 40.0]})
    cluster = ClusterConfig(schedule_lag_warn_ms=20.0, loop_lag_warn_ms=20.0)
    lv = summarize_level(table(rows), meta, NO_SLO, AnalysisConfig(), cluster, telemetry)
    assert lv.client_bound
    # worker 5's lag is known only over the whole level (run.json), warm-up included: a note, not a flag
    assert lv.client_bound_workers == [1, 2]
    assert any("worker 5" in n and "start-up stall" in n for n in lv.notes)
    reasons = " | ".join(lv.client_bound_reasons)
    assert "worker 1: schedule lag p99 45.0 ms" in reasons
    assert "worker 2: event-loop lag" in reasons
    quiet = summarize_level(table([r for r in rows if r["worker_id"] == 0]), LevelEntry(level=0), NO_SLO, AnalysisConfig(), cluster)
    assert not quiet.client_bound and quiet.client_bound_workers == []


def test_stalls_during_warm_up_do_not_make_a_level_client_bound():
    rows = []
    for i in range(100):
        lagged = i < 20  # the first 200 ms: 40 ms behind schedule, a stalled loop
        rows.append(rec(i * 10, i * 10 + (40 if lagged else 0.2), [i * 10 + 60], i * 10 + 61, loop_lag=30.0 if lagged else 0.5))
    cluster = ClusterConfig(schedule_lag_warn_ms=10.0, loop_lag_warn_ms=10.0)
    warm = LevelEntry(level=0, mode="rate", value=100.0, offered_rps=100.0, start_ns=T0, steady_start_ns=T0 + 300 * MS, steady_end_ns=T0 + 1000 * MS)
    assert not summarize_level(table(rows), warm, NO_SLO, AnalysisConfig(), cluster).client_bound
    whole = LevelEntry(level=0, mode="rate", value=100.0, offered_rps=100.0, start_ns=T0, steady_start_ns=T0, steady_end_ns=T0 + 1000 * MS)
    assert summarize_level(table(rows), whole, NO_SLO, AnalysisConfig(), cluster).client_bound


# ----------------------------------------------------------------------------- queues and search


def test_queue_growing_on_in_flight_series():
    rng = np.random.default_rng(0)
    t = np.arange(60) * 500 * MS
    steady = 40 + rng.normal(0, 4, t.size)
    growing = 40 + 2.0 * np.arange(t.size) + rng.normal(0, 4, t.size)
    assert not queue_growing(t, steady)
    assert queue_growing(t, growing)
    assert not queue_growing(t[:4], growing[:4])  # too few samples to tell


def test_queue_growing_from_records():
    # Service at 10 req/s, arrivals at 20 req/s: each request waits 50 ms longer than the one before.
    growing = [rec(i * 50, i * 50, [i * 50 + 100 + i * 50], i * 50 + 200 + i * 50) for i in range(40)]
    steady = [rec(i * 50, i * 50, [i * 50 + 100 + (i % 3)], i * 50 + 200) for i in range(40)]
    assert queue_growing_records(table(growing))
    assert not queue_growing_records(table(steady))


def run_search(capacity: float, load: LoadConfig) -> list[SearchPoint]:
    points: list[SearchPoint] = []
    while (rate := next_search_level(points, load)) is not None:
        points.append(SearchPoint(rate, rate < capacity))
        assert len(points) <= load.search_max_levels
    return points


def test_search_converges_on_a_synthetic_capacity():
    load = LoadConfig(search_start=1.0, search_factor=2.0, search_tolerance=0.1, search_max_levels=12)
    points = run_search(13.7, load)
    # Geometric 1, 2, 4, 8, 16 (fails); bisection 12 (pass), 14 (fail), 13 (pass): [13, 14] is within 10 %.
    assert [p.rate for p in points] == [1, 2, 4, 8, 16, 12, 14, 13]
    lo, hi = search_bracket(points)
    assert lo < 13.7 <= hi and hi - lo <= 0.1 * lo


def test_search_steps_down_when_the_start_fails_and_respects_the_level_cap():
    load = LoadConfig(search_start=1.0, search_factor=2.0, search_tolerance=0.05, search_max_levels=12)
    points = run_search(0.3, load)
    assert [p.rate for p in points[:3]] == [1.0, 0.5, 0.25]
    lo, hi = search_bracket(points)
    assert lo < 0.3 <= hi and hi - lo <= 0.05 * lo
    capped = run_search(1000.0, LoadConfig(search_start=1.0, search_max_levels=5))
    assert len(capped) == 5 and all(p.passed for p in capped)


# ----------------------------------------------------------------------------- a run directory


def write_run(run_dir: str, levels: dict[int, list[dict[str, Any]]], meta_levels: Optional[list[dict]] = None,
              config: Optional[dict] = None, extra: Optional[dict] = None) -> None:
    for n, rows in levels.items():
        for w in sorted({r["worker_id"] for r in rows}):
            PartWriter(part_dir(records_root(run_dir), n, w)).write(table([r for r in rows if r["worker_id"] == w]))
    if meta_levels is not None:
        with open(os.path.join(run_dir, "run.json"), "w") as f:
            json.dump({"run_id": "t", "status": "complete", "config": config or {}, "levels": meta_levels, **(extra or {})}, f)


def test_analyze_run_uses_run_json_windows_and_slos(tmp_path):
    rows = [rec(t, t, [t + 30, t + 40], t + 41, level=0) for t in range(0, 10_000, 100)]  # 10 req/s for 10 s
    meta = [{"level": 0, "mode": "rate", "value": 10.0, "offered_rps": 10.0,
             "steady_start_ns": T0 + 2000 * MS, "steady_end_ns": T0 + 8000 * MS,
             "ledger": {"planned": 100, "sent": 100, "ok": 100}}]
    meta.append({"level": 1, "mode": "rate", "value": 20.0, "offered_rps": 20.0,  # started, nothing recorded
                 "ledger": {"planned": 5, "sent": 0, "not_sent": {"interrupted": 5}}})
    write_run(str(tmp_path), {0: rows}, meta, config={"slo": {"ttft_ms": 20.0, "tpot_ms": None}},
              extra={"workers": [{"worker_id": 0, "alive": True}, {"worker_id": 1, "alive": False, "lost_reason": "SIGKILL"}],
                     "workload": {"skipped": {"negative output_tokens": 3, "bad timestamp": 0}}})
    s = analyze_run(str(tmp_path))
    assert "worker 1 was lost during the run: SIGKILL" in s.notes
    assert "trace rows skipped: 3 (negative output_tokens)" in s.notes
    lv, empty = s.levels
    assert empty.metrics.requests == 0 and empty.ledger.closes and s.ledger.planned == 105
    assert any("level 1 has no requests" in n for n in s.notes)
    # Without the TTFT objective level 0 passes, and the empty level is left out rather than failed.
    loose = analyze_run(str(tmp_path), slo=NO_SLO)
    assert loose.saturation.level == 0 and not loose.saturation.reached
    assert lv.metrics.requests == 60  # scheduled in [2 s, 8 s)
    assert lv.metrics.achieved_rps == pytest.approx(10.0)
    assert s.slo.ttft_ms == 20.0
    assert lv.metrics.attainment == 0.0  # every TTFT is 30 ms > 20 ms
    assert not lv.slo_met
    assert lv.ledger.closes


def test_analyze_run_without_run_json_derives_everything_from_records(tmp_path):
    rows = [rec(t, t, [t + 30], t + 31, level=0) for t in range(0, 1000, 100)]
    rows += [rec(t, t, [t + 30], t + 31, level=1, status="ok" if t != 2000 else "timeout") for t in range(2000, 3000, 50)]
    write_run(str(tmp_path), {0: rows[:10], 1: rows[10:]})
    s = analyze_run(str(tmp_path))
    assert [lv.level for lv in s.levels] == [0, 1]
    assert s.levels[1].ledger.source == "records"
    assert s.levels[1].ledger.errors == {"timeout": 1}
    assert s.ledger.sent == 30 and s.ledger.closes
    assert any("run.json is missing" in n for n in s.notes)
    # No steady window: the span of scheduled times, first to last send.
    assert s.levels[0].metrics.window_s == pytest.approx(0.9, rel=1e-6)
    assert math.isfinite(s.levels[0].metrics.achieved_rps)


def test_a_request_late_because_its_connect_was_slow_is_not_loadgens_lag():
    rows = []
    for i in range(100):
        r = rec(i * 10, i * 10 + 45, [i * 10 + 70], i * 10 + 71)  # left 45 ms late ...
        r["connect_ms"] = 44.5  # ... because the server took 44.5 ms to accept the connection
        rows.append(r)
    cluster = ClusterConfig(schedule_lag_warn_ms=10.0, loop_lag_warn_ms=10.0)
    lv = summarize_level(table(rows), LevelEntry(level=0, mode="rate", value=100.0, offered_rps=100.0), NO_SLO, AnalysisConfig(), cluster)
    assert not lv.client_bound
    assert any("connections were opened during the level" in n for n in lv.notes)
    for r in rows:
        r["connect_ms"] = None
    assert summarize_level(table(rows), LevelEntry(level=0, mode="rate", value=100.0), NO_SLO, AnalysisConfig(), cluster).client_bound
