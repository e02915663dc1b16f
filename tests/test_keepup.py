"""Keeping up by Little's law, on synthetic levels whose truth is known; and a request cap that keeps the rate."""

from __future__ import annotations

import numpy as np

from loadgen.analysis.keepup import keep_up
from loadgen.analysis.metrics import RequestTimes, Window
from loadgen.config import LoadConfig
from loadgen.rundir import LoadMode
from loadgen.schedule import LevelSpec, RequestCursor, arrival_offsets, plan_open_loop
from loadgen.workload.table import REQUEST_SCHEMA, Workload

S = 1_000_000_000
T0 = 1_700_000_000 * S


def fifo_level(rate: float, slots: int, service_s: float, duration_s: float, ttft_s: float = 0.05, seed: int = 0) -> RequestTimes:
    """Poisson arrivals into a FIFO server with ``slots`` slots, each request holding one for ``service_s``."""
    rng = np.random.default_rng(seed)
    n = int(rate * duration_s)
    arrive = np.sort(rng.uniform(0, duration_s, n))
    free = np.zeros(slots)
    start = np.empty(n)
    for i, a in enumerate(arrive):
        k = int(np.argmin(free))
        start[i] = max(a, free[k])
        free[k] = start[i] + service_s
    end = start + service_s
    sched = (T0 + arrive * S).astype(np.int64)
    return RequestTimes(
        scheduled=sched, sent=sched, first_token=(T0 + (start + ttft_s) * S).astype(np.int64),
        end=(T0 + end * S).astype(np.int64), output_tokens=np.full(n, 100), ok=np.ones(n, bool), worker_id=np.zeros(n, np.int64),
    )


def window(warmup_s: float, duration_s: float) -> Window:
    return Window(T0 + int(warmup_s * S), T0 + int(duration_s * S))


def test_long_requests_well_below_capacity_keep_up():
    # 4 slots, 6 s per request: capacity 0.667 req/s. One third and two thirds of it keep up,
    # although a 2 s window after a 2 s warm-up would hold almost no completions.
    for rate in (0.222, 0.444):
        for duration in (60.0, 120.0):
            times = fifo_level(rate, slots=4, service_s=6.0, duration_s=duration)
            ku = keep_up(times, window(8.0, duration), T0, tolerance=0.9)
            assert ku.kept_up, ku  # never called saturated
            # 20 requests in 52 s of window may leave the in-flight slope beyond the tolerance by noise:
            # then the level is too short to judge, and twice as long is enough.
            assert ku.judgeable or duration == 60.0, ku


def test_a_mild_overload_is_not_called_kept_up_on_a_noisy_slope():
    """1.2 × capacity of 6 s requests for 60 s: by the in-flight count the server served under 0.9 of
    the offered rate, within its noise; most requests were late. Not kept up, or too short to judge
    with a longer level asked for, on every draw where the old rule said "kept up" on a slope within noise."""
    asked = []
    for seed in range(30):
        times = fifo_level(0.8, slots=4, service_s=6.0, duration_s=60.0, seed=seed)
        ku = keep_up(times, window(8.0, 60.0), T0, tolerance=0.9)
        if ku.ratio is not None and ku.ratio < 0.9:
            assert not (ku.judgeable and ku.kept_up), (seed, ku)
        if not ku.judgeable:
            assert ku.needed_s > 60.0 and "too short to judge" in ku.reason and "late" in ku.reason, ku
            asked.append(seed)
    assert asked  # the branch is taken on some draws (5 of these 30)


def test_a_growing_queue_is_not_keeping_up_and_the_served_rate_is_the_capacity():
    times = fifo_level(1.33, slots=4, service_s=6.0, duration_s=60.0)  # twice the 0.667 req/s capacity
    ku = keep_up(times, window(8.0, 60.0), T0, tolerance=0.9)
    assert ku.judgeable and not ku.kept_up
    assert abs(ku.served_rps - 4 / 6.0) < 0.2 and "grew" in ku.reason


def test_a_level_shorter_than_its_latency_is_too_short_to_judge_not_saturated():
    times = fifo_level(0.222, slots=4, service_s=6.0, duration_s=10.0)
    ku = keep_up(times, window(2.0, 10.0), T0, tolerance=0.9)
    assert not ku.judgeable and "too short to judge" in ku.reason
    assert ku.needed_s is not None and ku.needed_s >= 17.0  # warm-up ≥ 6 s + window ≥ 12 s


def test_a_request_cap_ends_the_level_early_at_the_named_rate():
    offsets = arrival_offsets("poisson", 100.0, 600.0, 400, seed=1)
    assert len(offsets) == 400 and offsets.max() < 4.5  # 400 arrivals at 100 req/s take 4 s, not 600 s
    table = REQUEST_SCHEMA.empty_table()
    rows = {name: [None] * 1000 for name in REQUEST_SCHEMA.names}
    rows["request_id"] = [f"r{i}" for i in range(1000)]
    import pyarrow as pa

    table = pa.Table.from_pydict(rows, schema=REQUEST_SCHEMA)
    load = LoadConfig(kind="rate", levels=[100.0], duration_s=600.0, max_requests=400, warmup_s=1.0)
    plan = plan_open_loop(RequestCursor(Workload(table=table, source="t", kind="synthetic", rows_read=1000)), LevelSpec(0, LoadMode.RATE, 100.0), load, 1)
    assert plan.planned == 400 and plan.duration_s < 5.0 and abs(plan.offered_rps - 100.0) < 15.0


def test_a_stable_long_queue_of_one_slot_at_ninety_percent_keeps_up():
    # One slot, 0.2 s per request: capacity 5 req/s. At 4.5 req/s requests wait several
    # service times, yet the queue does not grow: the server keeps up (a latency rule said not).
    # In 55 s its wandering in-flight count cannot rule out a 10 % overload (a queue falling behind
    # wanders as much): too short to judge, never saturated, and the length it asks for is enough.
    times = fifo_level(4.5, slots=1, service_s=0.2, duration_s=60.0, ttft_s=0.01)
    ku = keep_up(times, window(5.0, 60.0), T0, tolerance=0.9)
    assert ku.kept_up and not ku.judgeable and "wanders" in ku.reason, ku
    longer = ku.needed_s * 1.1  # what the driver runs next (runner.NEEDED_MARGIN)
    times = fifo_level(4.5, slots=1, service_s=0.2, duration_s=longer, ttft_s=0.01)
    ku = keep_up(times, window(5.0, longer), T0, tolerance=0.9)
    assert ku.judgeable and ku.kept_up, ku


def test_half_again_over_capacity_with_long_requests_is_seen():
    times = fifo_level(1.0, slots=4, service_s=6.0, duration_s=90.0)  # 1.5 × the 0.667 req/s capacity
    ku = keep_up(times, window(8.0, 90.0), T0, tolerance=0.9)
    assert ku.judgeable and not ku.kept_up and abs(ku.served_rps - 4 / 6.0) < 0.15, ku


def test_a_mild_overload_of_long_requests_asks_for_a_longer_level():
    """32 slots of 6 s requests (5.33 req/s) offered 1.2 × that for 21 s: no request is late yet (a
    request waits 0.2 s per second of level), so "answered in time" proves nothing. The rule before
    this one called all 30 draws kept up; now a draw whose in-flight count says served < 0.9 × offered
    is too short to judge, with the length at which lateness would show."""
    judged_kept_up = 0
    for seed in range(30):
        times = fifo_level(6.4, slots=32, service_s=6.0, duration_s=21.0, seed=seed)
        ku = keep_up(times, window(7.5, 21.0), T0, tolerance=0.9)
        if ku.ratio < 0.9:
            assert not ku.judgeable and "answered in time" in ku.reason, (seed, ku)
            assert ku.needed_s > 21.0
        judged_kept_up += ku.judgeable and ku.kept_up
    assert judged_kept_up <= 6, judged_kept_up  # 3 of 30 here: slopes that noise put within the tolerance
