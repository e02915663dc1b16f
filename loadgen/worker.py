"""The load worker: one event loop, one connection pool, one shard of each level's schedule.

Input: a level spec and an Arrow shard of requests with ``scheduled_s`` offsets.
Output: records streamed to Parquet parts while the level runs, telemetry parts
(event-loop lag, CPU, in-flight), and a per-level ledger returned to the driver.
``WorkerCore`` is plain asyncio (testable without Ray); ``Worker`` hosts it in
a Ray actor on its own uvloop thread so the driver can poll and stop it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from loadgen import clock
from loadgen.client.http import ConnectionPool, Timeouts, request_path
from loadgen.client.openai import request_body, url_for
from loadgen.client.stream import execute
from loadgen.collector import DirectSink, OutputSpec, PartTarget, Sink
from loadgen.config import ClusterConfig, TargetConfig
from loadgen.records import RecordBuffer, to_batch

TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("t_ns", pa.int64()),
        pa.field("level", pa.int32()),
        pa.field("worker_id", pa.int32()),
        pa.field("loop_lag_ms", pa.float32()),
        pa.field("cpu_percent", pa.float32()),
        pa.field("in_flight", pa.int32()),
        pa.field("sent", pa.int64()),
        pa.field("completed", pa.int64()),
    ]
)

_LAG_INTERVAL_S = 0.05
_TELEMETRY_INTERVAL_S = 0.25
_FD_RESERVE = 64
#: How often a worker actor checks that the Ray process that started it is still alive.
_PARENT_CHECK_S = 0.2


class ClientLimitError(RuntimeError):
    """The OS would refuse the sockets this worker needs; the message names the fix."""


@dataclass
class LevelRun:
    """What the driver tells a worker about one level."""

    level: int  # level index
    mode: str  # rate | concurrency | trace
    value: float  # the level's load value
    duration_s: float  # sending phase
    drain_s: float  # how long in-flight requests may finish after sending stops
    concurrency: int = 0  # closed loop: streams on this worker
    think_time_s: float = 0.0  # closed loop / sessions: pause before the next request
    max_concurrency: Optional[int] = None  # open loop: in-flight ceiling on this worker
    max_requests: int = 0  # closed loop: cap on requests this worker sends (its pool is cycled)
    t0_ns: int = 0  # common start on the run clock, set by start_level


@dataclass
class TargetSpec:
    """The resolved target a worker sends to (the API key travels only in memory)."""

    base_url: str
    model: str
    config: TargetConfig
    api_key: Optional[str] = None
    headers: dict[str, str] = field(default_factory=dict)


def fd_limit() -> int:
    """The open-files limit, raised to the hard limit when the soft one is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def local_port_range() -> int:
    """How many ephemeral ports the OS hands out per destination (Linux), else a large number."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
        return hi - lo + 1
    except (OSError, ValueError):
        return 1 << 16


def check_socket_limits(streams: int, worker_id: int) -> None:
    """Raise ClientLimitError when ``streams`` concurrent connections would exceed an OS limit."""
    limit = fd_limit()
    if streams + _FD_RESERVE > limit:
        raise ClientLimitError(
            f"worker {worker_id} needs about {streams + _FD_RESERVE} open files for {streams} concurrent "
            f"streams, but the open-files limit (ulimit -n) is {limit}. Raise it (e.g. `ulimit -n "
            f"{max(65536, streams * 2)}` before starting Ray/loadgen) or spread the load over more "
            f"workers (cluster.workers=N)."
        )
    ports = local_port_range()
    if streams > ports:
        raise ClientLimitError(
            f"worker {worker_id} needs {streams} concurrent connections to one server, but the "
            f"ephemeral port range allows {ports}. Widen it (sysctl -w "
            f"net.ipv4.ip_local_port_range='1024 65535') or spread the load over more nodes."
        )


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
        self._prepared: Optional[_LevelState] = None  # the level prepare_level readied

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
        headers = {"Content-Type": "application/json", **t.headers, **self.target.headers}
        if self.target.api_key:
            headers["Authorization"] = f"Bearer {self.target.api_key}"
        self.pool = ConnectionPool(
            self.target.base_url,
            now=self.now,
            headers=headers,
            limit=self.cluster.connections_per_worker or self.cluster.max_in_flight_per_worker,
            timeouts=Timeouts(total_s=t.timeout_s, stall_s=t.stall_timeout_s, connect_s=t.connect_timeout_s),
            keep_alive=not t.new_connection_per_request,
        )
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

    def progress(self) -> dict[str, Any]:
        """Counters for the driver's progress display."""
        return {
            "worker_id": self.worker_id,
            "level": self._level,
            "sent": self.sent,
            "completed": self.completed,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "loop_lag_ms": self.lag_ms,
            "loop_lag_max_ms": self.lag_max_ms,
        }

    # ------------------------------------------------------------------ one level
    async def prepare_level(self, run: LevelRun, shard: pa.Table) -> None:
        """Take this worker's shard of a level and get ready to send it (the slow part)."""
        if run.mode == "concurrency":
            check_socket_limits(run.concurrency, self.worker_id)
        self._prepared = _LevelState(run, self, shard)
        # The level's rows and bodies live until its end: a full collection walking them
        # mid-level stalls the loop for tens of milliseconds, so they are exempted from it.
        gc.collect()
        gc.freeze()

    async def start_level(self, t0_ns: int) -> dict[str, Any]:
        """Send the prepared level from ``t0_ns`` on; return its ledger and timing health."""
        assert self.pool is not None and self._stop is not None and self._prepared is not None
        state, self._prepared = self._prepared, None
        run = state.run
        state.start(t0_ns)
        self._stop.clear()
        self._level = run.level
        self.sent = self.completed = self.errors = self.in_flight = 0
        self.lag_max_ms = 0.0
        cpu0 = time.process_time()
        monitor = asyncio.ensure_future(self._monitor(state))
        flusher = asyncio.ensure_future(self._flush_loop(state))
        try:
            if run.mode == "concurrency":
                await self._closed_loop(state)
            else:
                await self._open_loop(state)
            await self._drain(state)
        finally:
            monitor.cancel()
            flusher.cancel()
            await asyncio.gather(monitor, flusher, return_exceptions=True)
            if self._writing is not None:
                await self._writing  # a periodic flush still in flight
            await self._flush(state)
            gc.unfreeze()  # the level's garbage is collectable again
        return {**state.ledger(), "cpu_s": time.process_time() - cpu0}

    async def _sleep_until(self, t_ns: int) -> bool:
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

    async def _open_loop(self, st: "_LevelState") -> None:
        """Start each request (or session) at t0 + its offset; behind schedule, send at once."""
        run = st.run
        sched = st.scheduled_ns
        sem = asyncio.Semaphore(run.max_concurrency) if run.max_concurrency else None
        i, n = 0, len(sched)
        while i < n:
            if not await self._sleep_until(sched[i]):
                break
            j = i + 1
            while j < n and sched[j] < 0:  # later turns of the session started by row i
                j += 1
            if j - i == 1:
                st.spawn(self._one(st, i, sched[i], sem))
            else:
                st.spawn(self._session(st, list(range(i, j)), sched[i], sem))
            i = j
        st.not_sent_rows(range(i, n), "stopped")

    async def _closed_loop(self, st: "_LevelState") -> None:
        """Keep ``concurrency`` streams busy: each sends its next request when the last ends."""
        run = st.run
        end_ns = run.t0_ns + int(run.duration_s * 1e9)
        if not await self._sleep_until(run.t0_ns):
            return
        think_ns = int(run.think_time_s * 1e9)

        async def stream() -> None:
            assert self._stop is not None
            while not self._stop.is_set():
                scheduled = self.now()
                if scheduled >= end_ns:
                    return
                row = st.next_row()
                if row is None:
                    return
                await self._one(st, row[0], scheduled, None, cycle=row[1])
                if think_ns and not await self._sleep_until(self.now() + think_ns):
                    return

        streams = [st.spawn(stream()) for _ in range(run.concurrency)]
        # Return when sending should stop; requests still in flight are the drain's business.
        while streams and not self._stop.is_set():
            remaining = (end_ns - self.now()) / 1e9
            if remaining <= 0:
                break
            _, pending = await asyncio.wait(streams, timeout=min(remaining, 0.25))
            if not pending:
                break

    async def _session(self, st: "_LevelState", rows: list[int], start_ns: int, sem) -> None:
        """A multi-turn conversation: turn k goes out after turn k-1 answered (plus think time)."""
        think_ns = int(st.run.think_time_s * 1e9)
        scheduled = start_ns
        for pos, k in enumerate(rows):
            rec = await self._one(st, k, scheduled, sem)
            if rec["status"] != "ok":
                st.not_sent_rows(rows[pos + 1 :], "previous turn failed")
                return
            scheduled = self.now() + think_ns
            if pos + 1 < len(rows) and not await self._sleep_until(scheduled):
                st.not_sent_rows(rows[pos + 1 :], "stopped")
                return

    async def _one(self, st: "_LevelState", k: int, scheduled_ns: int, sem, cycle: int = 0) -> dict[str, Any]:
        """Send row ``k`` of the shard, record it, whatever happens."""
        rec = st.base_record(k, scheduled_ns, cycle)
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
        st.lags.append(rec["sent_ns"] - scheduled_ns)
        return rec

    async def _execute(self, st: "_LevelState", k: int, rec: dict[str, Any]) -> None:
        assert self.pool is not None
        await execute(
            self.pool,
            st.path,
            st.body(k),
            {"X-Request-Id": rec["request_id"]},
            rec,
            api=self.target.config.api,
            stream=self.target.config.stream,
        )

    async def _drain(self, st: "_LevelState") -> None:
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
    async def _monitor(self, st: "_LevelState") -> None:
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

    async def _flush_loop(self, st: "_LevelState") -> None:
        while True:
            await asyncio.sleep(self.cluster.flush_interval_s)
            await self._flush(st)

    async def _flush(self, st: "_LevelState") -> None:
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


class _LevelState:
    """Per-level bookkeeping of one worker: rows, bodies, tasks, ledger, lag samples."""

    def __init__(self, run: LevelRun, core: WorkerCore, shard: pa.Table) -> None:
        self.run = run
        self.core = core
        t = core.target
        self.path = request_path(url_for(t.base_url, t.config.api))
        self.shard = shard
        n = shard.num_rows
        offsets = shard.column("scheduled_s").to_numpy(zero_copy_only=False) if n else np.empty(0)
        self._offsets_ns = np.round(np.asarray(offsets, dtype=np.float64) * 1e9)
        self.scheduled_ns: list[int] = []
        cols = shard.select(["request_id", "session_id", "turn", "input_tokens", "output_tokens", "prompt", "messages"]).to_pydict() if n else {}
        self.cols = cols
        self._bodies: dict[int, bytes] = {}
        self.tasks: set[asyncio.Future] = set()
        self.buffer = RecordBuffer()
        self.not_sent: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.lags: list[int] = []
        self.lag_samples: list[float] = []
        self.cpu_samples: list[float] = []
        self._next = 0
        self.planned = n if run.mode != "concurrency" else 0

    def start(self, t0_ns: int) -> None:
        """Fix the common start; absolute send times follow (-1: no own time, e.g. a later turn)."""
        self.run.t0_ns = t0_ns
        offs = self._offsets_ns
        missing = np.isnan(offs)
        # Integer arithmetic: epoch nanoseconds do not fit a float64 exactly.
        absolute = np.where(missing, 0, offs).astype(np.int64) + np.int64(t0_ns)
        self.scheduled_ns = np.where(missing, -1, absolute).tolist()

    def body(self, k: int) -> bytes:
        """The request body of row ``k`` (built once)."""
        body = self._bodies.get(k)
        if body is None:
            c = self.cols
            t = self.core.target
            body = request_body(
                t.config,
                t.model,
                prompt=c["prompt"][k],
                messages=c["messages"][k],
                output_tokens=c["output_tokens"][k],
            )
            self._bodies[k] = body
        return body

    def base_record(self, k: int, scheduled_ns: int, cycle: int = 0) -> dict[str, Any]:
        """The fields of row ``k``'s record known before sending (``cycle``: k-th reuse of the row)."""
        c = self.cols
        core = self.core
        run = self.run
        return {
            "run_id": core.run_id,
            "level": run.level,
            "level_value": run.value,
            "worker_id": core.worker_id,
            "node_id": core.node_id,
            "request_id": f"L{run.level}-{c['request_id'][k]}" + (f".c{cycle}" if cycle else ""),
            "session_id": c["session_id"][k],
            "turn": c["turn"][k],
            "scheduled_ns": scheduled_ns,
            "input_tokens": c["input_tokens"][k],
            "output_tokens_expected": c["output_tokens"][k],
            "clock_uncertainty_ns": core.clock_uncertainty_ns,
        }

    def next_row(self) -> Optional[tuple[int, int]]:
        """Closed loop: (row, reuse count) of the next request, cycling the pool; None at the cap."""
        n = self.shard.num_rows
        if n == 0 or self._next >= self.run.max_requests:
            return None
        k, cycle = self._next % n, self._next // n
        self._next += 1
        self.planned += 1
        return k, cycle

    def spawn(self, coro) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def not_sent_rows(self, rows, reason: str) -> None:
        n = len(rows)
        if n:
            self.not_sent[reason] += n

    def ledger(self) -> dict[str, Any]:
        """This worker's accounting of the level, plus its timing health."""
        statuses = self.statuses
        lags = np.asarray(self.lags, dtype=np.float64) / 1e6 if self.lags else np.zeros(1)
        loop_lag = np.asarray(self.lag_samples) if self.lag_samples else np.zeros(1)
        return {
            "worker_id": self.core.worker_id,
            "planned": self.planned,
            "sent": sum(statuses.values()),
            "not_sent": dict(self.not_sent),
            "statuses": dict(statuses),
            "schedule_lag_ms_p50": float(np.percentile(lags, 50)),
            "schedule_lag_ms_p99": float(np.percentile(lags, 99)),
            "schedule_lag_ms_max": float(lags.max()),
            "loop_lag_ms_p99": float(np.percentile(loop_lag, 99)),
            "loop_lag_ms_max": float(loop_lag.max()),
            "cpu_percent": float(np.mean(self.cpu_samples)) if self.cpu_samples else None,
            "records_written": self.core.sink.records(self.run.level, self.core.worker_id).rows,
        }


def _warm_up_writer() -> None:
    """Write one record to memory the way a flush writes parts."""
    import pyarrow.parquet as pq

    buffer = RecordBuffer()
    buffer.append({"request_id": "warm-up", "chunk_ns": [0]})
    pq.write_table(pa.Table.from_batches([to_batch(buffer.take())]), pa.BufferOutputStream(), compression="zstd")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()


class Worker:
    """Ray actor body: a WorkerCore on its own uvloop thread, callable from the driver."""

    def __init__(
        self,
        worker_id: int,
        run_id: str,
        target: TargetSpec,
        cluster: ClusterConfig,
        run_uri: str,
        clock_skew_ns: int = 0,
        output: Optional[OutputSpec] = None,
    ) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"loadgen-worker-{worker_id}", daemon=True)
        self._thread.start()
        output = output or OutputSpec(run_uri, cluster.records_uri)
        self._collected = output.collector is not None
        self.core = WorkerCore(
            worker_id, run_id, self.node_id, target, cluster, run_uri, clock_skew_ns=clock_skew_ns, sink=output.open()
        )
        self._call(self.core.start())
        threading.Thread(target=self._stop_when_orphaned, args=(os.getppid(),), name="loadgen-orphan-watch", daemon=True).start()

    def _stop_when_orphaned(self, parent: int) -> None:
        # A SIGKILLed driver or raylet leaves this process sending for seconds before Ray
        # notices; stop at once (in-flight requests are recorded as cancelled and flushed).
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_S)
        self._loop.call_soon_threadsafe(self.core.request_stop, 0.0)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def info(self) -> dict[str, Any]:
        """Where this worker runs."""
        import ray

        return {
            "worker_id": self.core.worker_id,
            "node_id": self.node_id,
            "ip": ray._private.worker.global_worker.node_ip_address,
            "pid": os.getpid(),
            "url": self.core.target.base_url,
            "output": "collector" if self._collected else "direct",
        }

    def clock_ns(self) -> int:
        """This worker's uncorrected clock, for the driver's offset measurement."""
        return self.core.local_now()

    def set_clock_offset(self, offset_ns: int, uncertainty_ns: int) -> None:
        """Apply the offset the driver measured (on the loop's thread; returns once applied)."""

        async def apply() -> None:
            self.core.set_clock_offset(offset_ns, uncertainty_ns)

        self._call(apply())

    def prepare_level(self, run: LevelRun, shard: pa.Table) -> None:
        """Receive a level's shard and get ready (returns when ready to start)."""
        self._call(self.core.prepare_level(run, shard))

    def start_level(self, t0_ns: int) -> dict[str, Any]:
        """Run the prepared level from ``t0_ns``, its parts all stored (blocks this actor thread, not the loop)."""
        ledger = self._call(self.core.start_level(t0_ns))
        self.core.sink.drain()
        return ledger

    def progress(self) -> dict[str, Any]:
        """Live counters."""
        return self.core.progress()

    def stop(self, grace_s: float) -> None:
        """Stop sending now; cancel what is still in flight after ``grace_s``."""
        self._loop.call_soon_threadsafe(self.core.request_stop, grace_s)

    def close(self) -> None:
        """Close the connections and the loop."""
        self._call(self.core.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
