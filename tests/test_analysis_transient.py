"""Step and burst response: time to first success and time to reach the new rate."""

from __future__ import annotations

import numpy as np

from loadgen.analysis.transient import step_response

S = 1_000_000_000


def test_step_response_on_a_server_that_warms_up():
    # Step at t=10 s to 10 req/s; the server answers nothing for 2 s, then keeps up.
    sched = np.arange(0, 100) * S // 10 + 10 * S
    end = np.maximum(sched + S // 20, 12 * S + np.arange(100) * S // 40)  # backlog drains at 40 req/s
    ok = np.ones(100, dtype=bool)
    r = step_response(sched, end, ok, 10 * S, 10.0, "step")
    assert r.first_success_s == 2.0
    # The first 1-s window with >= 9 completions ends at the 9th completion, 12 s + 8/40 s.
    assert abs(r.reach_rate_s - 2.2) < 1e-9
    assert r.completed == 100


def test_requests_before_the_step_and_failures_do_not_count():
    sched = np.array([0, 5 * S, 10 * S, 10 * S + 1, 11 * S])
    end = np.array([1 * S, 6 * S, 10 * S + S // 2, 12 * S, 13 * S])
    ok = np.array([True, True, False, True, True])
    r = step_response(sched, end, ok, 10 * S, 100.0, "step")
    assert r.first_success_s == 2.0 and r.reach_rate_s is None and r.completed == 2


def test_burst_reports_when_the_last_request_finished():
    sched = 3 * S + np.arange(50) * S // 50
    end = sched + np.linspace(0.1, 4.0, 50) * S
    r = step_response(sched, end.astype(np.int64), np.ones(50, bool), 3 * S, 50.0, "burst")
    assert abs(r.first_success_s - 0.1) < 1e-6
    assert abs(r.all_done_s - (49 / 50 + 4.0)) < 1e-6
    assert r.reach_rate_s is None
