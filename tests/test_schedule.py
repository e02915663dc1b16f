"""Arrival processes, level plans and sharding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from loadgen.config import LoadConfig
from loadgen.schedule import (
    LevelSpec,
    RequestCursor,
    arrival_offsets,
    plan_closed_loop,
    plan_open_loop,
    plan_trace,
    shaped_offsets,
    shard,
)
from loadgen.workload.table import REQUEST_SCHEMA, Workload


def make_workload(n: int, *, arrivals: bool = False, sessions: int = 0, turns: int = 3) -> Workload:
    """A request table of n rows, or of ``sessions`` conversations with ``turns`` turns each."""
    if sessions:
        rows = [
            {
                "request_id": f"s{s:03d}-t{t}",
                "session_id": f"s{s:03d}",
                "turn": t,
                "arrival_s": None,
                "input_tokens": 10 + t,
                "output_tokens": 5,
                "prompt": f"session {s} turn {t}",
            }
            for s in range(sessions)
            for t in range(turns)
        ]
    else:
        rows = [
            {
                "request_id": f"r{i:05d}",
                "arrival_s": float(i) * 0.5 if arrivals else None,
                "turn": 0,
                "input_tokens": 10,
                "output_tokens": 5,
                "prompt": f"prompt {i}",
            }
            for i in range(n)
        ]
    table = pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)
    return Workload(table=table)


def test_constant_spacing_is_exact():
    off = arrival_offsets("constant", 4.0, 10.0, 1000)
    assert len(off) == 40
    np.testing.assert_allclose(np.diff(off), 0.25, rtol=0, atol=1e-12)
    assert off[0] == 0.0


def test_poisson_count_is_exact_and_spacing_is_poisson():
    rate, duration = 50.0, 200.0
    off = arrival_offsets("poisson", rate, duration, 10**6, seed=3)
    assert len(off) == rate * duration  # a level offers exactly the load it names
    assert np.all(np.diff(off) >= 0) and 0 <= off[0] and off[-1] < duration
    gaps = np.diff(off)
    cv2 = gaps.var() / gaps.mean() ** 2
    assert 0.9 < cv2 < 1.1  # exponential gaps: CV^2 = 1
    # Counts per second are Poisson: index of dispersion ~ 1.
    counts = np.bincount(off.astype(int), minlength=int(duration))
    assert 0.8 < counts.var() / counts.mean() < 1.2


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_sets_gap_cv2(burstiness):
    off = arrival_offsets("gamma", 20.0, 500.0, 10**6, burstiness=burstiness, seed=11)
    assert len(off) == 20 * 500
    gaps = np.diff(off)
    assert abs(gaps.mean() - 1 / 20.0) < 0.01 / 20.0
    cv2 = gaps.var() / gaps.mean() ** 2
    assert abs(cv2 - burstiness) < 0.2 * burstiness


def test_seeded_draws_are_deterministic_and_seed_sensitive():
    a = arrival_offsets("poisson", 10, 10, 1000, seed=1)
    b = arrival_offsets("poisson", 10, 10, 1000, seed=1)
    c = arrival_offsets("poisson", 10, 10, 1000, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_max_count_and_duration_bound_the_schedule():
    assert len(arrival_offsets("constant", 100, 10, 37)) == 37
    off = arrival_offsets("poisson", 100, 2.0, 10**6, seed=0)
    assert off.max() < 2.0


def test_ramp_up_thins_the_start_and_keeps_the_rate_after():
    rate, ramp = 10.0, 4.0
    off = arrival_offsets("constant", rate, 20.0, 10**6, ramp_up_s=ramp)
    # Under a linear ramp the first half of the ramp holds a quarter of its arrivals.
    in_ramp = np.sum(off < ramp)
    assert in_ramp == pytest.approx(rate * ramp / 2, abs=1)
    assert np.sum(off < ramp / 2) == pytest.approx(rate * ramp / 8, abs=1)
    np.testing.assert_allclose(np.diff(off[off > ramp + 0.2]), 1 / rate, atol=1e-9)


def test_unknown_arrival_process_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of constant, poisson, gamma"):
        arrival_offsets("uniform", 1, 1, 1)


def test_open_loop_plan_covers_every_request_once_across_shards():
    wl = make_workload(500)
    load = LoadConfig(arrival="constant", duration_s=10, max_requests=10**6)
    plan = plan_open_loop(RequestCursor(wl), LevelSpec(0, "rate", 20.0), load, workers=3)
    assert plan.planned == 200
    assert plan.offered_rps == pytest.approx(20.0)
    ids = [i for s in plan.shards for i in s.column("request_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 200
    for s in plan.shards:
        sched = s.column("scheduled_s").to_numpy()
        assert np.all(np.diff(sched) > 0)  # each shard stays in time order


def test_cursor_continues_across_levels_and_renames_reused_rows():
    wl = make_workload(5)
    cur = RequestCursor(wl)
    first = cur.take(3).column("request_id").to_pylist()
    second = cur.take(4).column("request_id").to_pylist()
    assert first == ["r00000", "r00001", "r00002"]
    assert second == ["r00003", "r00004", "r00000.1", "r00001.1"]


def test_sessions_stay_whole_on_one_worker_and_in_turn_order():
    wl = make_workload(0, sessions=10, turns=3)
    load = LoadConfig(arrival="constant", duration_s=10, max_requests=10**6)
    plan = plan_open_loop(RequestCursor(wl), LevelSpec(0, "rate", 0.8), load, workers=3)
    seen = {}
    for w, s in enumerate(plan.shards):
        sid = s.column("session_id").to_pylist()
        turns = s.column("turn").to_pylist()
        sched = s.column("scheduled_s").to_pylist()
        for k, (a, t, off) in enumerate(zip(sid, turns, sched)):
            assert seen.setdefault(a, w) == w
            assert (off is not None) == (t == 0)  # only first turns carry an arrival
            if t > 0:
                assert sid[k - 1] == a and turns[k - 1] == t - 1  # contiguous, in order
    assert len(seen) == 8  # 0.8 req/s for 10 s = 8 sessions started


def test_shard_round_robin_without_sessions():
    wl = make_workload(7)
    parts = shard(wl.table, 3)
    assert [p.num_rows for p in parts] == [3, 2, 2]
    assert parts[1].column("request_id").to_pylist() == ["r00001", "r00004"]


def test_trace_plan_scales_time_and_cuts_at_duration():
    wl = make_workload(100, arrivals=True)  # one arrival every 0.5 s
    load = LoadConfig(duration_s=10, max_requests=10**6)
    plan = plan_trace(RequestCursor(wl), LevelSpec(0, "trace", 2.0), load, workers=1)
    sched = plan.shards[0].column("scheduled_s").to_numpy()
    np.testing.assert_allclose(np.diff(sched), 0.25)  # twice as fast
    assert plan.planned == 40 and sched.max() < 10


def test_trace_plan_needs_arrivals():
    with pytest.raises(ValueError, match="needs a workload with arrival times"):
        plan_trace(RequestCursor(make_workload(3)), LevelSpec(0, "trace", 1.0), LoadConfig(), workers=1)


def test_closed_loop_splits_streams_over_workers():
    wl = make_workload(50)
    load = LoadConfig(max_requests=30)
    plan = plan_closed_loop(RequestCursor(wl), LevelSpec(0, "concurrency", 5), load, workers=3)
    assert plan.concurrency == [2, 2, 1]
    assert sum(s.num_rows for s in plan.shards) == 30
    plan = plan_closed_loop(RequestCursor(wl), LevelSpec(0, "concurrency", 1), load, workers=3)
    assert plan.concurrency == [1, 0, 0]
    assert [s.num_rows for s in plan.shards][1:] == [0, 0]


def test_trace_plan_keeps_later_session_turns_behind_their_first():
    rows = []
    for s in range(4):
        for t in range(2):
            rows.append({"request_id": f"s{s}-t{t}", "session_id": f"s{s}", "turn": t,
                         "arrival_s": float(s) if t == 0 else None, "input_tokens": 1, "output_tokens": 1})
    wl = Workload(table=pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA))
    plan = plan_trace(RequestCursor(wl), LevelSpec(0, "trace", 1.0), LoadConfig(duration_s=2.5), workers=1)
    got = plan.shards[0]
    assert got.column("request_id").to_pylist() == ["s0-t0", "s0-t1", "s1-t0", "s1-t1", "s2-t0", "s2-t1"]
    assert got.column("scheduled_s").to_pylist() == [0.0, None, 1.0, None, 2.0, None]


def test_step_shape_changes_rate_at_the_step():
    load = LoadConfig(arrival="constant", shape="step", step_at_s=4.0, step_from=2.0, duration_s=10.0, max_requests=10**6)
    off = shaped_offsets(load, 10.0, seed=0)
    assert np.sum(off < 4.0) == 8 and np.sum(off >= 4.0) == 60
    np.testing.assert_allclose(np.diff(off[off >= 4.0]), 0.1)


def test_burst_shape_sends_n_requests_inside_one_second_after_idle():
    load = LoadConfig(arrival="poisson", shape="burst", step_at_s=3.0, duration_s=10.0, max_requests=10**6)
    off = shaped_offsets(load, 200.0, seed=1)
    assert len(off) == 200
    assert off.min() >= 3.0 and off.max() < 4.0


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_the_steady_window_offers_exactly_the_named_rate(arrival):
    """Random arrivals: the warm-up and the judged window each hold their exact count, on every seed."""
    load = LoadConfig(kind="rate", arrival=arrival, burstiness=4.0, duration_s=8.0, warmup_s=2.0)
    window_counts = set()
    for seed in range(40):
        offsets = shaped_offsets(load, 13.5, seed=seed)
        assert np.all(np.diff(offsets) >= 0)
        window_counts.add(int(np.count_nonzero(offsets >= 2.0)))
        assert np.count_nonzero(offsets < 2.0) == 27 and len(offsets) == 108
    assert window_counts == {81}  # 13.5 req/s × 6 s
    # Drawn over the whole level, the window's count varies from seed to seed (81 ± 9 for Poisson).
    whole = {int(np.count_nonzero(arrival_offsets(arrival, 13.5, 8.0, 10**6, burstiness=4.0, seed=s) >= 2.0)) for s in range(40)}
    assert len(whole) > 5
