"""The worker core: one event loop, one connection pool, one shard of each level's schedule.

Input: a level's ``LevelRun`` and this worker's Arrow shard of requests.
Output: records streamed to Parquet parts while the level runs, telemetry parts
(event-loop lag, CPU, in-flight), and a ``LevelReport`` for the driver. Plain
asyncio, testable without Ray; ``loadgen.worker.actor`` hosts it in a Ray actor.
How requests are started is the level's load strategy (``strategies``).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from loadgen import clock
from loadgen.client.endpoint import headers_for, open_pool
from loadgen.client.http import ConnectionPool, request_path
from loadgen.client.openai import request_body, url_for
from loadgen.client.stream import execute
from loadgen.collector import DirectSink, PartTarget, Sink
from loadgen.config import ClusterConfig, TargetConfig
from loadgen.rundir import TELEMETRY_SCHEMA, LoadMode, RecordBuffer, to_batch
from loadgen.worker.level import LevelReport, LevelRun, LevelState, connections_needed
from loadgen.worker.limits import check_socket_limits
from loadgen.worker.strategies import strategy_for

_LAG_INTERVAL_S = 0.05
_TELEMETRY_INTERVAL_S = 0.25
RECENT_SAMPLES = 1000  # TTFTs and TPOTs each worker keeps for the live view's percentiles


@dataclass
class TargetSpec:
    """The resolved target a worker sends to (the API key travels only in memory)."""

    base_url: str
    model: str
    config: TargetConfig
    api_key: Optional[str] = None
    headers: dict[str, str] = field(default_factory=dict)


class WorkerCore:
    """Runs levels on the current event loop; all state lives on that loop."""

    def __init__(
        self,
        worker_id: int,
        run_id: str,
        node_id: str,
        target: TargetSpec,
        cluster: ClusterConfig,
        run_uri: str,
        *,
        clock_skew_ns: int = 0,
        sink: Optional[Sink] = None,
    ) -> None:
        self.worker_id = worker_id
        self.run_id = run_id
        self.node_id = node_id
        self.target = target
        self.cluster = cluster
        self.run_uri = run_uri.rstrip("/")
        self.sink: Sink = sink or DirectSink(self.run_uri, cluster.records_uri)
        # Run clock = monotonic + base; base starts as the local epoch mapping (plus an
        # injected skew in tests) and later absorbs the offset the driver measured.
        self._epoch_base = clock.OFFSET_NS + clock_skew_ns
        self._base = self._epoch_base
        self.clock_uncertainty_ns = 0
        self.pool: Optional[ConnectionPool] = None
        self._path = ""  # the request path, fixed when the pool opens
        self.sent = 0
        self.completed = 0
        self.errors = 0
        self.in_flight = 0
        self.lag_ms = 0.0
        self.lag_max_ms = 0.0
        self._level = -1
        self._stop: Optional[asyncio.Event] = None
        self._stop_deadline_ns = 0
        self._telemetry: list[tuple] = []
        self._telemetry_writer: Optional[PartTarget] = None
        self._writing: Optional[asyncio.Future] = None  # the part write in flight, if any
        self._prepared: Optional[LevelState] = None  # the level prepare_level readied
        self.warmed = (0, None)  # the last warm-up: connections opened, first failure
        self._latency_sum_ns = 0  # the last level's ok requests' sent-to-end times, to size the next warm-up
        self._latency_n = 0
        self._running: Optional[LevelState] = None  # the level start_level runs
        # Live view only: the last ok requests' TTFT and TPOT (ms) and output tokens, reset per level.
        self.recent_ttft_ms: deque[float] = deque(maxlen=RECENT_SAMPLES)
        self.recent_tpot_ms: deque[float] = deque(maxlen=RECENT_SAMPLES)
        self.output_tokens = 0

    # ------------------------------------------------------------------ clock
    def now(self) -> int:
        """Now on the run clock (ns)."""
        return time.monotonic_ns() + self._base

    def local_now(self) -> int:
        """Now on this worker's own epoch clock, before offset correction (for clock sync)."""
        return time.monotonic_ns() + self._epoch_base

    def set_clock_offset(self, offset_ns: int, uncertainty_ns: int) -> None:
        """Map this worker's clock onto the run clock: run = local - offset."""
        self._base = self._epoch_base - offset_ns
        self.clock_uncertainty_ns = int(uncertainty_ns)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the connection pool (one per worker, keep-alive, sized for many streams)."""
        t = self.target.config
        self.pool = open_pool(  # as the probe built its own: TLS, proxy, timeouts, headers
            t,
            self.target.base_url,
            now=self.now,
            headers=headers_for(t, self.target.api_key, self.target.headers),
            limit=self.cluster.connections_per_worker or self.cluster.max_in_flight_per_worker,
            direct=t.kind == "sim",  # the embedded simulator is on this machine: never through a proxy
        )
        self._path = request_path(url_for(self.target.base_url, t.api))
        self._stop = asyncio.Event()
        self._telemetry_writer = self.sink.telemetry(self.worker_id)
        # The first Parquet write (thread pool, codec, writer set-up) stalls for tens of ms:
        # pay it now rather than in the middle of the first level.
        await asyncio.get_running_loop().run_in_executor(None, _warm_up_writer)

    async def close(self) -> None:
        """Close the worker's connections."""
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    def request_stop(self, grace_s: float) -> None:
        """Stop sending; in-flight requests get ``grace_s`` seconds, then are cancelled."""
        self._stop_deadline_ns = self.now() + int(grace_s * 1e9)
        if self._stop is not None:
            self._stop.set()

    def stopping(self) -> bool:
        """Whether a stop was requested during the running level."""
        return self._stop is not None and self._stop.is_set()

    def progress(self) -> dict[str, Any]:
        """Live counters for the driver's progress display, with the recent lag p99s."""
        st = self._running
        # The recent past only (about 2 s of loop samples, the last 500 sends): a warning is about now.
        loop_p99 = float(np.percentile(st.lag_samples[-40:], 99)) if st is not None and st.lag_samples else 0.0
        sched_p99 = float(np.percentile(st.lags[-500:], 99)) / 1e6 if st is not None and st.lags else 0.0
        return {
            "worker_id": self.worker_id,
            "level": self._level,
            "sent": self.sent,
            "completed": self.completed,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "loop_lag_ms": self.lag_ms,
            "loop_lag_max_ms": self.lag_max_ms,
            "loop_lag_ms_p99": loop_p99,
            "schedule_lag_ms_p99": sched_p99,
            "output_tokens": self.output_tokens,
            "errors_by_class": {k: n for k, n in st.statuses.items() if k != "ok"} if st is not None else {},
            "ttft_ms_recent": list(self.recent_ttft_ms),
            "tpot_ms_recent": list(self.recent_tpot_ms),
        }

    # ------------------------------------------------------------------ one level
    async def prepare_level(self, run: LevelRun, shard: pa.Table) -> None:
        """Take this worker's shard of a level and get ready to send it (the slow part).

        Opening the level's connections is part of it: the driver sets t0 only once
        every worker is prepared, so the warm-up is outside the level.
        """
        if run.mode is LoadMode.CONCURRENCY:
            check_socket_limits(run.concurrency, self.worker_id)
        self._prepared = LevelState(run, shard, self._body)
        await self._warm_up(run, shard.num_rows)
        # The level's rows and bodies live until its end: a full collection walking them
        # mid-level stalls the loop for tens of milliseconds, so they are exempted from it.
        gc.collect()
        gc.freeze()

    async def _warm_up(self, run: LevelRun, rows: int) -> None:
        """Open the connections the level will need, paced (``cluster.connect_rate_per_worker``)."""
        assert self.pool is not None
        latency_s = self._latency_sum_ns / self._latency_n / 1e9 if self._latency_n else None
        cap = self.cluster.connections_per_worker or self.cluster.max_in_flight_per_worker
        need = connections_needed(run, rows, latency_s, cap)
        self.warmed = await self.pool.warm(need, self.cluster.connect_rate_per_worker)

    def _body(self, cols: dict[str, list[Any]], k: int) -> bytes:
        t = self.target
        return request_body(
            t.config, t.model, prompt=cols["prompt"][k], messages=cols["messages"][k], output_tokens=cols["output_tokens"][k]
        )

    async def start_level(self, t0_ns: int) -> LevelReport:
        """Send the prepared level from ``t0_ns`` on; return its ledger and timing health."""
        assert self.pool is not None and self._stop is not None and self._prepared is not None
        state, self._prepared = self._prepared, None
        run = state.run
        state.start(t0_ns)
        self._stop.clear()
        self._level = run.level
        self._running = state
        self.sent = self.completed = self.errors = self.in_flight = self.output_tokens = 0
        self.recent_ttft_ms.clear()
        self.recent_tpot_ms.clear()
        self.lag_max_ms = 0.0
        self._latency_sum_ns = self._latency_n = 0  # the next warm-up is sized by this level's latency
        cpu0 = time.process_time()
        monitor = asyncio.ensure_future(self._monitor(state))
        flusher = asyncio.ensure_future(self._flush_loop(state))
        try:
            await strategy_for(run).send(self, state)
            await self._drain(state)
        finally:
            monitor.cancel()
            flusher.cancel()
            await asyncio.gather(monitor, flusher, return_exceptions=True)
            if self._writing is not None:
                await self._writing  # a periodic flush still in flight
            await self._flush(state)
            gc.unfreeze()  # the level's garbage is collectable again
        written = self.sink.records(run.level, self.worker_id).rows
        return state.report(self.worker_id, written, time.process_time() - cpu0)

    async def sleep_until(self, t_ns: int) -> bool:
        """Sleep until ``t_ns`` on the run clock; False if a stop came first."""
        assert self._stop is not None
        while True:
            if self._stop.is_set():
                return False
            delay = (t_ns - self.now()) / 1e9
            if delay <= 0:
                return True
            # Long gaps sleep in slices so a stop is noticed within half a second.
            await asyncio.sleep(min(delay, 0.5))

    def _base_record(self, st: LevelState, k: int, scheduled_ns: int, cycle: int) -> dict[str, Any]:
        """The fields of row ``k``'s record known before sending (``cycle``: k-th reuse of the row)."""
        c = st.cols
        run = st.run
        return {
            "run_id": self.run_id,
            "level": run.level,
            "level_value": run.value,
            "worker_id": self.worker_id,
            "node_id": self.node_id,
            "request_id": f"L{run.level}-{c['request_id'][k]}" + (f".c{cycle}" if cycle else ""),
            "session_id": c["session_id"][k],
            "turn": c["turn"][k],
            "scheduled_ns": scheduled_ns,
            "input_tokens": c["input_tokens"][k],
            "output_tokens_expected": c["output_tokens"][k],
            "clock_uncertainty_ns": self.clock_uncertainty_ns,
        }

    async def send(
        self, st: LevelState, k: int, scheduled_ns: int, sem: Optional[asyncio.Semaphore], cycle: int = 0
    ) -> dict[str, Any]:
        """Send row ``k`` of the shard, record it, whatever happens."""
        rec = self._base_record(st, k, scheduled_ns, cycle)
        self.sent += 1
        self.in_flight += 1
        lag_at_send = self.lag_ms
        try:
            if sem is not None:
                async with sem:
                    await self._execute(st, k, rec)
            else:
                await self._execute(st, k, rec)
        except asyncio.CancelledError:
            if rec.get("status") is None:  # not a request cancelled after it ended (while its connection settled)
                rec["status"] = "cancelled"
                rec["error"] = "cancelled when the level ended or the run was stopped"
                if rec.get("sent_ns") is None:
                    rec["sent_ns"] = self.now()
                rec["end_ns"] = self.now()
        finally:
            self.in_flight -= 1
        rec["loop_lag_ms"] = max(lag_at_send, self.lag_ms)
        st.statuses[rec["status"]] += 1
        if rec["status"] == "ok":
            self.completed += 1
        else:
            self.errors += 1
        st.buffer.append(rec)
        if rec["status"] == "ok":
            self._note_latency(rec)
        sent_ns = rec["sent_ns"]
        connect_ms = rec.get("connect_ms")
        # Late is when the request left (its connect began), not when its bytes went out after it.
        st.lags.append(sent_ns - scheduled_ns - (int(connect_ms * 1e6) if connect_ms else 0))
        if rec["status"] == "ok" and rec.get("end_ns"):
            self._latency_sum_ns += rec["end_ns"] - sent_ns
            self._latency_n += 1
        return rec

    def _note_latency(self, rec: dict[str, Any]) -> None:
        """Keep an ok request's TTFT, TPOT and output tokens for the live view (two appends: cheap per request)."""
        first, sent, end, n = rec.get("first_token_ns"), rec.get("sent_ns"), rec.get("end_ns"), rec.get("output_tokens") or 0
        self.output_tokens += n
        if first is None or sent is None:
            return
        self.recent_ttft_ms.append((first - sent) / 1e6)
        if end is not None and n > 1:
            self.recent_tpot_ms.append((end - first) / 1e6 / (n - 1))

    async def _execute(self, st: LevelState, k: int, rec: dict[str, Any]) -> None:
        assert self.pool is not None
        await execute(
            self.pool,
            self._path,
            st.body(k),
            {"X-Request-Id": rec["request_id"]},
            rec,
            api=self.target.config.api,
            stream=self.target.config.stream,
        )

    async def _drain(self, st: LevelState) -> None:
        """Let in-flight requests finish within the drain time (or the stop grace), then cancel."""
        assert self._stop is not None
        level_deadline = st.run.t0_ns + int((st.run.duration_s + st.run.drain_s) * 1e9)
        while st.tasks:
            deadline = level_deadline
            if self._stop.is_set():
                deadline = min(deadline, self._stop_deadline_ns)
            remaining = (deadline - self.now()) / 1e9
            if remaining <= 0:
                break
            await asyncio.wait(list(st.tasks), timeout=min(remaining, 0.2))
        for task in list(st.tasks):
            task.cancel()
        if st.tasks:
            await asyncio.gather(*st.tasks, return_exceptions=True)

    # ------------------------------------------------------------------ health and output
    async def _monitor(self, st: LevelState) -> None:
        """Sample event-loop lag (oversleep of a short timer) and CPU, into telemetry."""
        loop = asyncio.get_running_loop()
        cpu0, wall0 = time.process_time(), time.monotonic()
        next_tel = wall0 + _TELEMETRY_INTERVAL_S
        window_max = 0.0
        while True:
            t_before = loop.time()
            await asyncio.sleep(_LAG_INTERVAL_S)
            lag = max(0.0, (loop.time() - t_before - _LAG_INTERVAL_S) * 1e3)
            self.lag_ms = lag
            st.lag_samples.append(lag)
            window_max = max(window_max, lag)
            self.lag_max_ms = max(self.lag_max_ms, lag)
            wall = time.monotonic()
            if wall >= next_tel:
                cpu = time.process_time()
                pct = 100.0 * (cpu - cpu0) / max(wall - wall0, 1e-9)
                st.cpu_samples.append(pct)
                self._telemetry.append(
                    (self.now(), st.run.level, self.worker_id, window_max, pct, self.in_flight, self.sent, self.completed)
                )
                cpu0, wall0, window_max = cpu, wall, 0.0
                next_tel = wall + _TELEMETRY_INTERVAL_S

    async def _flush_loop(self, st: LevelState) -> None:
        while True:
            await asyncio.sleep(self.cluster.flush_interval_s)
            await self._flush(st)

    async def _flush(self, st: LevelState) -> None:
        """Hand buffered records and telemetry to the sink as new parts, off the event loop."""
        cols = st.buffer.take()
        tel, self._telemetry = self._telemetry, []
        if cols is None and not tel:
            return
        records = self.sink.records(st.run.level, self.worker_id)
        telemetry = self._telemetry_writer

        def write() -> None:
            if cols is not None:
                records.write(to_batch(cols))
            if tel and telemetry is not None:
                columns = [pa.array(c, type=f.type) for c, f in zip(zip(*tel), TELEMETRY_SCHEMA)]
                telemetry.write(pa.Table.from_arrays(columns, schema=TELEMETRY_SCHEMA))

        # Shielded: a flush the level's end cancels keeps writing, and the end waits for it.
        self._writing = asyncio.get_running_loop().run_in_executor(None, write)
        await asyncio.shield(self._writing)


def _warm_up_writer() -> None:
    """Write one record to memory the way a flush writes parts."""
    import pyarrow.parquet as pq

    buffer = RecordBuffer()
    buffer.append({"request_id": "warm-up", "chunk_ns": [0]})
    pq.write_table(pa.Table.from_batches([to_batch(buffer.take())]), pa.BufferOutputStream(), compression="zstd")
