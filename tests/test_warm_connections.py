"""Warm connections: a level's connections open before t0, paced; connect time is its own column.

The server here is a bare asyncio one with a listen backlog of 1 that notes
when it accepted each connection, and answers every request with a two-token
SSE stream.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pyarrow as pa
import pytest

from loadgen.analysis.level import connect_notes
from loadgen.client.http import ConnectionPool
from loadgen.client.stream import execute
from loadgen.config import ClusterConfig, TargetConfig
from loadgen.rundir import RECORD_SCHEMA, read_records
from loadgen.worker import LevelRun, TargetSpec, WorkerCore
from loadgen.worker.level import DEFAULT_LATENCY_S, connections_needed
from loadgen.workload.table import REQUEST_SCHEMA

_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")
_EVENT = b'data: {"id":"c","choices":[{"text":" t"}]}\n\n'
_STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (_EVENT, _EVENT, b"data: [DONE]\n\n"))
    + b"0\r\n\r\n"
)


class CountingServer:
    """Accepts on a tiny backlog, remembers when (epoch ns) it accepted each connection, streams two tokens."""

    def __init__(self, tail_later: bool = False) -> None:
        self.accepted_ns: list[int] = []
        self.requests = 0
        self.tail_later = tail_later  # end the chunked body in a later write, after [DONE] (aiohttp does)

    async def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.server = await asyncio.get_running_loop().create_server(lambda: _Conn(self), sock=sock, backlog=1)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

    def close(self) -> None:
        self.server.close()


class _Conn(asyncio.Protocol):
    def __init__(self, server: CountingServer) -> None:
        self.server = server
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.accepted_ns.append(time.time_ns())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        m = _LENGTH.search(self.buf[:end])
        if len(self.buf) < end + 4 + (int(m.group(1)) if m else 0):
            return
        self.buf = b""
        self.server.requests += 1
        if not self.server.tail_later:
            self.transport.write(_STREAM)
            return
        self.transport.write(_STREAM[: -len(b"0\r\n\r\n")])
        asyncio.get_running_loop().call_later(0.002, self.transport.write, b"0\r\n\r\n")


def _shard(n: int) -> pa.Table:
    rows = [{"request_id": f"r{i}", "turn": 0, "input_tokens": 3, "output_tokens": 2, "prompt": f"p{i}"} for i in range(n)]
    table = pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)
    return table.append_column("scheduled_s", pa.nulls(n, pa.float64()))


async def _closed_level(
    tmp_path, streams: int, rate: float, tail_later: bool = False
) -> tuple[CountingServer, int, pa.Table, tuple]:
    """One closed-loop level of ``streams`` streams; (server, connections open at t0, records, the warm-up's result)."""
    server = CountingServer(tail_later)
    base = await server.start()
    cluster = ClusterConfig(flush_interval_s=0.2, connect_rate_per_worker=rate)
    core = WorkerCore(0, "run", "node", TargetSpec(base, "m", TargetConfig(kind="openai", url=base)), cluster, str(tmp_path))
    await core.start()
    try:
        run = LevelRun(level=0, mode="concurrency", value=streams, duration_s=0.3, drain_s=5, concurrency=streams,
                       max_requests=4 * streams)
        await core.prepare_level(run, _shard(streams))
        before_t0 = len(core.pool._all)  # open on the client's side when the level starts
        for _ in range(200):  # the server's loop accepts them in its own time (this same loop)
            if len(server.accepted_ns) >= before_t0:
                break
            await asyncio.sleep(0.01)
        await core.start_level(core.now())
        return server, before_t0, read_records(str(tmp_path)), core.warmed
    finally:
        await core.close()
        server.close()


def test_a_level_opens_its_connections_before_t0_and_its_requests_carry_no_connect_time(tmp_path):
    server, before_t0, recs, warmed = asyncio.run(_closed_level(tmp_path, streams=6, rate=200.0))
    assert warmed == (6, None)
    assert before_t0 == 6  # every stream's connection was open before the level started
    assert len(server.accepted_ns) == 6  # and the level opened none of its own
    assert recs.num_rows >= 6 and set(recs.column("status").to_pylist()) == {"ok"}
    assert recs.column("connect_ms").null_count == recs.num_rows
    assert connect_notes(recs) == []


def test_a_stream_waits_for_its_last_response_to_end_rather_than_open_a_connection(tmp_path):
    # [DONE] ends the request, the chunked body's end comes 2 ms later: the stream's next
    # request must reuse that connection, not open one during the level.
    server, before_t0, recs, _ = asyncio.run(_closed_level(tmp_path, streams=4, rate=200.0, tail_later=True))
    assert before_t0 == 4 and len(server.accepted_ns) == 4
    assert recs.num_rows >= 8 and set(recs.column("status").to_pylist()) == {"ok"}
    assert connect_notes(recs) == []


def test_the_warm_up_is_paced(tmp_path):
    # 8 connections at 40 per second: the first and the last are at least 7/40 s apart
    # (a lower bound only: a slow machine makes the span longer, never shorter).
    server, before_t0, _, _ = asyncio.run(_closed_level(tmp_path, streams=8, rate=40.0))
    assert before_t0 == 8
    span_s = (max(server.accepted_ns) - min(server.accepted_ns)) / 1e9
    assert span_s >= 7 / 40 * 0.95


def test_without_warm_up_the_level_opens_connections_and_says_so(tmp_path):
    server, before_t0, recs, warmed = asyncio.run(_closed_level(tmp_path, streams=5, rate=0.0))
    assert warmed == (0, None) and before_t0 == 0
    connect = recs.column("connect_ms").to_pylist()
    opened = [c for c in connect if c is not None]
    assert len(opened) == len(server.accepted_ns) == 5  # one per connection, on the request that opened it
    assert all(c >= 0 for c in opened)
    (note,) = connect_notes(recs)
    assert note.startswith("5 connections were opened during the level (p99 connect ")


def test_sent_ns_is_after_the_connect_and_connect_ms_holds_it():
    async def main():
        server = CountingServer()
        base = await server.start()
        host_port = base.split("/")[2]

        async def slow_resolver(host: str, port: int) -> list:
            await asyncio.sleep(0.3)  # the connect's name lookup: part of connect_ms, never of TTFT
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

        pool = ConnectionPool(f"http://localhost:{host_port.split(':')[1]}/v1", now=time.time_ns, resolver=slow_resolver)
        try:
            before = time.time_ns()
            rec: dict = {}
            await execute(pool, "/v1/completions", b"{}", {}, rec, api="completions", stream=True)
            warm_rec: dict = {}
            await execute(pool, "/v1/completions", b"{}", {}, warm_rec, api="completions", stream=True)
            return before, rec, warm_rec
        finally:
            await pool.close()
            server.close()

    before, rec, reused = asyncio.run(main())
    assert rec["status"] == "ok" and rec["output_tokens"] == 2
    assert rec["connect_ms"] >= 300 * 0.95
    assert rec["sent_ns"] - before >= 0.3e9 * 0.95  # sent once connected
    assert reused["status"] == "ok" and reused["connect_ms"] is None  # kept alive: no connect of its own


def test_warm_stops_at_the_first_failure_and_requests_still_connect_on_their_own():
    async def main():
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()  # nothing listens there: every connect is refused
        pool = ConnectionPool(f"http://127.0.0.1:{port}/v1", now=time.time_ns)
        try:
            opened, failure = await pool.warm(20, 1000.0)
            rec: dict = {}
            await execute(pool, "/v1/completions", b"{}", {}, rec, api="completions", stream=True)
            return opened, failure, rec
        finally:
            await pool.close()

    opened, failure, rec = asyncio.run(main())
    assert opened == 0 and "refused" in failure.lower()
    assert rec["status"] == "connection_error"
    assert rec["sent_ns"] is not None and rec["connect_ms"] is not None  # when the connect began, how long it took


@pytest.mark.parametrize(
    "kw, rows, latency, cap, want",
    [
        ({"mode": "concurrency", "concurrency": 64, "max_requests": 1000}, 100, None, 10_000, 64),
        ({"mode": "concurrency", "concurrency": 64, "max_requests": 10}, 100, None, 10_000, 10),
        ({"mode": "concurrency", "concurrency": 64, "max_requests": 1000}, 100, None, 16, 16),
        ({"mode": "rate"}, 100, 1.0, 10_000, 15),  # 10 req/s × 1 s × 1.5
        ({"mode": "rate"}, 100, None, 10_000, int(10 * DEFAULT_LATENCY_S * 1.5)),
        ({"mode": "rate", "max_concurrency": 4}, 100, 1.0, 10_000, 4),
        ({"mode": "rate"}, 5, 100.0, 10_000, 5),  # never more than the level sends
    ],
)
def test_connections_needed(kw, rows, latency, cap, want):
    run = LevelRun(level=0, value=1.0, duration_s=10.0, drain_s=1.0, **kw)
    assert connections_needed(run, rows, latency, cap) == want


def test_connect_ms_is_a_record_column_in_ms():
    field = RECORD_SCHEMA.field("connect_ms")
    assert field.type == pa.float32() and field.metadata[b"unit"] == b"ms"
