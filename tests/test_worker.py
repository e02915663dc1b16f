"""The worker core against a small local SSE server: schedules, sessions, ledger, stop, limits."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pyarrow as pa
import pytest
from aiohttp import web

from loadgen.config import ClusterConfig, TargetConfig
from loadgen.rundir import part_dir, read_records, records_root, telemetry_parts
from loadgen.worker import ClientLimitError, LevelRun, TargetSpec, WorkerCore, check_socket_limits
from loadgen.workload.table import REQUEST_SCHEMA
from loopback import serve_app


class FakeServer:
    """Streams `max_tokens` tokens, `token_s` apart; remembers concurrency and request order."""

    def __init__(self, token_s: float = 0.005) -> None:
        self.token_s = token_s
        self.active = 0
        self.peak = 0
        self.seen: list[tuple[str, str]] = []

    async def handler(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.headers["X-Request-Id"], body.get("prompt", "")))
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for _ in range(body["max_tokens"]):
                await asyncio.sleep(self.token_s)
                await resp.write(b'data: {"id":"c","choices":[{"text":" t"}]}\n\n')
            usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": body["max_tokens"]}}
            await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
            return resp
        finally:
            self.active -= 1

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handler)
        self.runner, base = await serve_app(app)
        return base


def shard(n: int, offsets=None, *, sessions: int = 0, turns: int = 1, out: int = 4) -> pa.Table:
    rows = []
    if sessions:
        for s in range(sessions):
            for t in range(turns):
                rows.append({"request_id": f"s{s}-t{t}", "session_id": f"s{s}", "turn": t, "input_tokens": 3,
                             "output_tokens": out, "prompt": f"s{s} t{t}"})
    else:
        rows = [{"request_id": f"r{i}", "turn": 0, "input_tokens": 3, "output_tokens": out, "prompt": f"p{i}"} for i in range(n)]
    table = pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)
    if offsets is None:
        col = pa.nulls(table.num_rows, pa.float64())
    else:
        col = pa.array(offsets, pa.float64())
    return table.append_column("scheduled_s", col)


async def run_level(tmp_path, table, run_kw, server=None, stop_after=None, cluster=None):
    server = server or FakeServer()
    base = await server.start()
    core = WorkerCore(0, "run", "node", TargetSpec(base, "m", TargetConfig(kind="openai", url=base)),
                      cluster or ClusterConfig(flush_interval_s=0.2), str(tmp_path))
    await core.start()
    run = LevelRun(level=0, **run_kw)
    try:
        await core.prepare_level(run, table)
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, core.request_stop, 0.1)
        ledger = await core.start_level(core.now() + 50_000_000)
    finally:
        await core.close()
        await server.runner.cleanup()
    return ledger, server, run


def test_open_loop_sends_on_schedule_and_records_everything(tmp_path):
    offsets = np.arange(20) * 0.02
    ledger, server, run = asyncio.run(
        run_level(tmp_path, shard(20, offsets), dict(mode="rate", value=50, duration_s=0.5, drain_s=5))
    )
    assert ledger.planned == 20 and ledger.sent == 20 and ledger.statuses == {"ok": 20}
    recs = read_records(str(tmp_path)).sort_by("scheduled_ns")
    assert recs.num_rows == 20
    sched = np.array(recs.column("scheduled_ns").to_pylist())
    np.testing.assert_array_equal(sched - run.t0_ns, (offsets * 1e9).astype(np.int64))
    lag_ms = (np.array(recs.column("sent_ns").to_pylist()) - sched) / 1e6
    assert np.median(lag_ms) < 20  # sent on time (loose bound: a shared, noisy machine)
    assert recs.column("output_tokens").to_pylist() == [4] * 20
    assert all(len(c) == 4 for c in recs.column("chunk_ns").to_pylist())
    assert recs.column("request_id").to_pylist()[0] == "L0-r0"
    assert [h for h, _ in server.seen][:3] == ["L0-r0", "L0-r1", "L0-r2"]  # X-Request-Id sent


def test_records_are_flushed_while_the_level_runs(tmp_path):
    offsets = np.arange(30) * 0.05
    asyncio.run(run_level(tmp_path, shard(30, offsets), dict(mode="rate", value=20, duration_s=1.5, drain_s=5)))
    parts = part_dir(records_root(str(tmp_path)), 0, 0).files()
    assert len(parts) >= 3  # flush interval 0.2 s over ~1.6 s
    assert not list((tmp_path / "records").rglob("*.tmp"))
    tel = telemetry_parts(str(tmp_path), 0).files()
    assert tel


def test_closed_loop_keeps_exactly_n_streams(tmp_path):
    ledger, server, _ = asyncio.run(
        run_level(tmp_path, shard(20), dict(mode="concurrency", value=4, concurrency=4, duration_s=0.6, drain_s=5, max_requests=10**6))
    )
    assert server.peak == 4
    assert ledger.sent == ledger.planned == ledger.statuses["ok"]
    assert ledger.sent > 20  # the 20-row pool was cycled
    ids = read_records(str(tmp_path)).column("request_id").to_pylist()
    assert len(set(ids)) == len(ids) and "L0-r0.c1" in ids


def test_closed_loop_stops_at_its_request_cap(tmp_path):
    ledger, _, _ = asyncio.run(
        run_level(tmp_path, shard(5), dict(mode="concurrency", value=2, concurrency=2, duration_s=5, drain_s=5, max_requests=7))
    )
    assert ledger.sent == ledger.planned == 7


def test_open_loop_concurrency_ceiling_queues_on_the_client(tmp_path):
    offsets = np.zeros(12)
    ledger, server, _ = asyncio.run(
        run_level(tmp_path, shard(12, offsets), dict(mode="rate", value=1, duration_s=0.2, drain_s=5, max_concurrency=3))
    )
    assert server.peak == 3 and ledger.statuses == {"ok": 12}
    recs = read_records(str(tmp_path))
    queued = np.array(recs.column("sent_ns").to_pylist()) - np.array(recs.column("scheduled_ns").to_pylist())
    assert queued.max() > 20_000_000  # the last ones waited for a free slot, and it shows


def test_session_turns_go_in_order_after_the_previous_answer(tmp_path):
    offsets = [0.0, None, None, 0.01, None, None]
    ledger, server, _ = asyncio.run(
        run_level(tmp_path, shard(0, offsets, sessions=2, turns=3), dict(mode="rate", value=1, duration_s=0.5, drain_s=5, think_time_s=0.05))
    )
    assert ledger.statuses == {"ok": 6}
    recs = read_records(str(tmp_path)).to_pylist()
    by_session: dict[str, list] = {}
    for r in sorted(recs, key=lambda r: r["sent_ns"]):
        by_session.setdefault(r["session_id"], []).append(r)
    for turns in by_session.values():
        assert [r["turn"] for r in turns] == [0, 1, 2]
        for prev, nxt in zip(turns, turns[1:]):
            assert nxt["sent_ns"] >= prev["end_ns"] + 50_000_000  # after the answer plus think time


def test_stop_cancels_in_flight_and_counts_unsent(tmp_path):
    offsets = np.arange(40) * 0.05  # 2 s of schedule
    slow = FakeServer(token_s=0.2)
    ledger, _, _ = asyncio.run(
        run_level(tmp_path, shard(40, offsets, out=20), dict(mode="rate", value=20, duration_s=2, drain_s=10), server=slow, stop_after=0.5)
    )
    assert ledger.statuses.get("cancelled", 0) > 0
    assert ledger.not_sent["stopped"] > 0
    assert ledger.sent + ledger.not_sent["stopped"] == ledger.planned == 40
    recs = read_records(str(tmp_path))
    assert recs.num_rows == ledger.sent
    assert set(recs.column("status").to_pylist()) == {"cancelled"}


def test_socket_limit_error_names_the_fix():
    with pytest.raises(ClientLimitError, match="ulimit -n"):
        check_socket_limits(10**7, worker_id=3)


def test_a_worker_with_no_streams_in_a_closed_loop_level_just_finishes(tmp_path):
    ledger, server, _ = asyncio.run(
        run_level(tmp_path, shard(0), dict(mode="concurrency", value=1, concurrency=0, duration_s=0.3, drain_s=1, max_requests=0))
    )
    assert ledger.sent == ledger.planned == 0 and server.seen == []
