"""One worker's share of one level: what the driver asks for, and the bookkeeping while it runs.

Input: a ``LevelRun`` and the worker's Arrow shard of requests (with
``scheduled_s`` offsets). Output: ``LevelState`` (rows, request bodies, tasks,
record buffer, statuses, lag samples) and, at the end, a ``LevelReport``: the
worker's ledger of the level and its raw timing health.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from loadgen.rundir import LoadMode, RecordBuffer, WorkerHealth


@dataclass
class LevelRun:
    """What the driver tells a worker about one level."""

    level: int  # level index
    mode: LoadMode
    value: float  # the level's load value
    duration_s: float  # sending phase
    drain_s: float  # how long in-flight requests may finish after sending stops
    concurrency: int = 0  # closed loop: streams on this worker
    think_time_s: float = 0.0  # pause between an answer and the same user's next request (streams, session turns)
    max_concurrency: Optional[int] = None  # open loop: in-flight ceiling on this worker
    max_requests: int = 0  # closed loop: cap on requests this worker sends (its pool is cycled)
    t0_ns: int = 0  # common start on the run clock, set by start_level

    def __post_init__(self) -> None:
        self.mode = LoadMode(self.mode)


@dataclass
class LevelReport:
    """A worker's account of one level, returned to the driver: its ledger and raw timing health."""

    worker_id: int
    planned: int
    not_sent: dict[str, int]  # reason -> count
    statuses: dict[str, int]  # status -> count of sent requests
    health: WorkerHealth
    records_written: int

    @property
    def sent(self) -> int:
        """Requests sent (each ended with exactly one status)."""
        return sum(self.statuses.values())


#: Open loop before any request has ended: the latency assumed for sizing the warm-up (s).
DEFAULT_LATENCY_S = 2.0
#: Open loop: headroom over rate × latency, for the bursts of random arrivals.
_WARM_HEADROOM = 1.5


def connections_needed(run: LevelRun, rows: int, latency_s: Optional[float], cap: int) -> int:
    """How many connections a worker should open before ``run`` starts (never above ``cap``).

    Closed loop: one per stream. Open loop: the requests in flight at once by
    Little's law, rate × expected latency (``latency_s``, the worker's last
    measured mean; ``DEFAULT_LATENCY_S`` before it has one) with headroom,
    within ``max_concurrency`` and the ``rows`` the level sends.
    """
    if run.mode is LoadMode.CONCURRENCY:
        want = min(run.concurrency, run.max_requests or run.concurrency)
    else:
        rate = rows / run.duration_s if run.duration_s > 0 else rows
        want = math.ceil(rate * (latency_s or DEFAULT_LATENCY_S) * _WARM_HEADROOM)
        want = min(want, rows, run.max_concurrency or rows)
    return max(0, min(want, cap))


#: Shard columns the worker reads per request.
SHARD_COLUMNS = ["request_id", "session_id", "turn", "input_tokens", "output_tokens", "prompt", "messages"]


class LevelState:
    """Per-level bookkeeping of one worker: rows, bodies, tasks, records, ledger, lag samples."""

    def __init__(self, run: LevelRun, shard: pa.Table, build_body: Callable[[dict[str, list[Any]], int], bytes]) -> None:
        self.run = run
        self.shard = shard
        n = shard.num_rows
        offsets = shard.column("scheduled_s").to_numpy(zero_copy_only=False) if n else np.empty(0)
        self._offsets_ns = np.round(np.asarray(offsets, dtype=np.float64) * 1e9)
        self.scheduled_ns: list[int] = []
        self.cols: dict[str, list[Any]] = shard.select(SHARD_COLUMNS).to_pydict() if n else {}
        self._build_body = build_body
        self._bodies: dict[int, bytes] = {}
        self.tasks: set[asyncio.Future] = set()
        self.buffer = RecordBuffer()
        self.not_sent: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.lags: list[int] = []  # send lag behind schedule per request, ns
        self.lag_samples: list[float] = []  # event-loop lag samples, ms
        self.cpu_samples: list[float] = []
        self._next = 0
        self.planned = n if run.mode.open_loop else 0

    def start(self, t0_ns: int) -> None:
        """Fix the common start; absolute send times follow (-1: no own time, e.g. a later turn)."""
        self.run.t0_ns = t0_ns
        offs = self._offsets_ns
        missing = np.isnan(offs)
        # Integer arithmetic: epoch nanoseconds do not fit a float64 exactly.
        absolute = np.where(missing, 0, offs).astype(np.int64) + np.int64(t0_ns)
        self.scheduled_ns = np.where(missing, -1, absolute).tolist()

    def body(self, k: int) -> bytes:
        """The request body of row ``k``, built the first time it is sent (during the level)."""
        body = self._bodies.get(k)
        if body is None:
            body = self._bodies[k] = self._build_body(self.cols, k)
        return body

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
        """Run ``coro`` as one of the level's tasks (the drain waits for it, or cancels it)."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def not_sent_rows(self, rows, reason: str) -> None:
        """Count planned rows that will not be sent, and why."""
        n = len(rows)
        if n:
            self.not_sent[reason] += n

    def schedule_lag_ms(self) -> np.ndarray:
        """Send lag behind schedule of every request so far, in ms."""
        return np.asarray(self.lags, dtype=np.float64) / 1e6

    def report(self, worker_id: int, records_written: int, cpu_s: Optional[float]) -> LevelReport:
        """This worker's accounting of the level, plus its raw timing health."""
        lags = self.schedule_lag_ms() if self.lags else np.zeros(1)
        loop_lag = np.asarray(self.lag_samples) if self.lag_samples else np.zeros(1)
        health = WorkerHealth(
            worker_id=worker_id,
            sent=sum(self.statuses.values()),
            loop_lag_ms_p99=float(np.percentile(loop_lag, 99)),
            loop_lag_ms_max=float(loop_lag.max()),
            schedule_lag_ms_p50=float(np.percentile(lags, 50)),
            schedule_lag_ms_p99=float(np.percentile(lags, 99)),
            schedule_lag_ms_max=float(lags.max()),
            cpu_percent=float(np.mean(self.cpu_samples)) if self.cpu_samples else None,
            cpu_s=cpu_s,
        )
        return LevelReport(
            worker_id=worker_id,
            planned=self.planned,
            not_sent=dict(self.not_sent),
            statuses=dict(self.statuses),
            health=health,
            records_written=records_written,
        )
