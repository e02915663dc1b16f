"""The load worker: a Ray actor with one event loop that sends one shard of each level and records it.

``core`` (``WorkerCore``: clock, pool, sending, drain, telemetry, flushing),
``strategies`` (how a level's requests are started: scheduled arrivals, closed-loop
streams, sessions), ``level`` (``LevelRun`` in, ``LevelReport`` out, the per-level
bookkeeping), ``limits`` (open files and ports), ``actor`` (the Ray actor body).
"""

from __future__ import annotations

from loadgen.worker.actor import Worker
from loadgen.worker.core import TargetSpec, WorkerCore
from loadgen.worker.level import LevelReport, LevelRun, LevelState
from loadgen.worker.limits import ClientLimitError, check_socket_limits, fd_limit, local_port_range
from loadgen.worker.strategies import ClosedLoopStreams, ScheduledArrivals, Session, strategy_for

__all__ = [
    "ClientLimitError",
    "ClosedLoopStreams",
    "LevelReport",
    "LevelRun",
    "LevelState",
    "ScheduledArrivals",
    "Session",
    "TargetSpec",
    "Worker",
    "WorkerCore",
    "check_socket_limits",
    "fd_limit",
    "local_port_range",
    "strategy_for",
]
