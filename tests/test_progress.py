"""The live view: every field a person watching wants, in plain lines when the output is not a terminal."""

from __future__ import annotations

import io
from collections import deque
from types import SimpleNamespace

from rich.console import Console

from loadgen.progress import LevelProgress, errors_words
from loadgen.worker.core import WorkerCore


def _counters(done: int, tokens: int, ttft: list[float], tpot: list[float], errors: dict[str, int]) -> list[dict]:
    """Two workers' progress() dicts splitting the totals."""
    out = []
    for w in (0, 1):
        out.append({
            "worker_id": w, "level": 2, "sent": done // 2 + 3, "completed": done // 2, "errors": sum(errors.values()) if w == 0 else 0,
            "in_flight": 3, "loop_lag_ms": 1.0, "loop_lag_max_ms": 4.5 + w, "loop_lag_ms_p99": 2.0, "schedule_lag_ms_p99": 1.0,
            "output_tokens": tokens // 2, "errors_by_class": errors if w == 0 else {},
            "ttft_ms_recent": ttft[w::2], "tpot_ms_recent": tpot[w::2],
        })
    return out


def test_plain_lines_carry_every_field_when_not_a_terminal():
    out = io.StringIO()
    console = Console(file=out, width=400, force_terminal=False)
    ttft = [float(v) for v in range(1, 101)]  # p50 50.5, p99 ~99
    tpot = [8.0] * 100
    with LevelProgress(console, "level 2 (3/5)  24 req/s", 10.0, levels_after=2, past_level_s=[20.0, 22.0]) as progress:
        assert progress._live is None  # no live panel on a pipe
        progress.update(0.5, _counters(0, 0, [], [], {}))
        progress._last_plain = 0.0  # the next update prints again (one line per PLAIN_EVERY_S otherwise)
        progress.update(4.5, _counters(96, 12_000, ttft, tpot, {"timeout": 2, "http_error": 1}))
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2
    first, last = lines
    assert "rate — req/s" in first and "TTFT p50 — p99 — ms" in first  # nothing known yet, said so
    for field in ("sending 4.5/10.0s", "sent 102", "done 96", "in flight 6", "loop lag max 5.5 ms"):
        assert field in last, field
    # 96 completions and 12,000 tokens in the 4 s since the first poll.
    assert "rate 24.0 req/s" in last and "output 3,000 tok/s" in last
    assert "TTFT p50 50.5 p99 99.0 ms" in last and "TPOT p50 8.0 p99 8.0 ms" in last
    assert "errors 3 (timeout 2, http_error 1)" in last
    # ETA: 5.5 s left of this level + 2 levels × 21 s.
    assert "run ETA 48s" in last


def test_live_panel_on_a_terminal_holds_the_same_fields():
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    progress = LevelProgress(console, "level 0", 10.0, levels_after=0)
    progress.update(0.0, _counters(0, 0, [], [], {}))
    snap = progress.snapshot(2.0, _counters(40, 4_000, [30.0, 40.0], [7.0, 9.0], {"timeout": 1}))
    text = Console(file=io.StringIO(), width=200, record=True)
    text.print(progress.panel(snap))
    shown = text.export_text()
    for field in ("rate", "20.0 req/s", "2,000 tok/s", "TTFT p50/p99", "TPOT p50/p99", "1 (timeout 1)", "run ETA", "8s"):
        assert field in shown, field
    assert errors_words(0, {}) == "0"


def test_worker_keeps_recent_ttft_tpot_and_tokens():
    core = SimpleNamespace(output_tokens=0, recent_ttft_ms=deque(maxlen=2), recent_tpot_ms=deque(maxlen=2))
    ms = 1_000_000
    for k in range(3):  # the deque keeps the last two
        WorkerCore._note_latency(core, {"sent_ns": 0, "first_token_ns": (20 + k) * ms, "end_ns": (20 + k + 90) * ms, "output_tokens": 10})
    WorkerCore._note_latency(core, {"sent_ns": 0, "first_token_ns": None, "end_ns": 5 * ms, "output_tokens": 0})
    assert list(core.recent_ttft_ms) == [21.0, 22.0]
    assert list(core.recent_tpot_ms) == [10.0, 10.0]  # 90 ms over 9 gaps
    assert core.output_tokens == 30
