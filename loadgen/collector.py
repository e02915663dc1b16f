"""Worker output to storage: Parquet parts written in place, or Arrow tables sent through Ray.

Input: the Arrow tables (records, telemetry) a worker flushes. Output: parts in
the run-directory layout, ``records/part-level-K-worker-W-*.parquet`` and
``telemetry/part-worker-W-*.parquet``. A worker that shares a filesystem with
the driver writes them itself (``DirectSink``); any other worker sends its
tables through the Ray object store to a ``Collector`` actor pinned to the
driver's node, which writes them there (``CollectorSink``: no shared filesystem
needed). ``cluster.records_uri`` sends records straight to a ``pyarrow.fs`` URI
(local path, ``s3://…``) from every worker instead.

A collector sink keeps at most ``max_in_flight`` tables per worker on their way
and waits for the oldest one from the flushing thread (never the event loop), so
a slow writer slows flushing, not sending. Every table carries its worker's
``(source, seq)`` and the collector writes each pair once, so a retried call
cannot duplicate records.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

import pyarrow as pa

from loadgen.rundir.layout import Parts, record_parts, records_root, telemetry_parts
from loadgen.rundir.parts import PartWriter

Table = Union[pa.Table, pa.RecordBatch]


class PartTarget(Protocol):
    """One destination directory: each ``write`` adds one complete part."""

    rows: int

    def write(self, table: Table) -> None:
        """Store ``table`` as a new part."""


class Sink(Protocol):
    """Where a worker's parts go."""

    def records(self, level: int, worker_id: int) -> PartTarget:
        """The destination of one level's records from one worker."""

    def telemetry(self, worker_id: int) -> PartTarget:
        """The destination of one worker's telemetry."""

    def drain(self) -> None:
        """Block until every part handed over so far is stored."""


class _LockedWriter:
    """A PartWriter safe to call from several flushing threads (part numbers never collide)."""

    def __init__(self, where: Parts) -> None:
        self._writer = PartWriter(where)
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        return self._writer.rows

    def write(self, table: Table) -> None:
        with self._lock:
            self._writer.write(table)


class DirectSink:
    """The worker writes its parts itself: the run directory (or ``records_uri``) is reachable from its node."""

    def __init__(self, run_uri: str, records_uri: Optional[str] = None) -> None:
        self.run_uri = run_uri.rstrip("/")
        self.records_uri = records_uri
        self._writers: dict[Parts, _LockedWriter] = {}
        self._lock = threading.Lock()

    def _writer(self, where: Parts) -> _LockedWriter:
        with self._lock:
            writer = self._writers.get(where)
            if writer is None:
                writer = self._writers[where] = _LockedWriter(where)
            return writer

    def records(self, level: int, worker_id: int) -> PartTarget:
        """A writer for ``part-level-K-worker-W-*`` (``layout.record_parts``) in the records root."""
        return self._writer(record_parts(records_root(self.run_uri, self.records_uri), level, worker_id))

    def telemetry(self, worker_id: int) -> PartTarget:
        """A writer for ``telemetry/part-worker-W-*`` (``layout.telemetry_parts``) in the run directory."""
        return self._writer(telemetry_parts(self.run_uri, worker_id))

    def drain(self) -> None:
        """Nothing to wait for: every write was complete when it returned."""


class _RemoteTarget:
    """Sends each table to the collector as one part of ``where``."""

    def __init__(self, sink: CollectorSink, where: Parts) -> None:
        self._sink = sink
        self.where = where
        self.rows = 0

    def write(self, table: Table) -> None:
        self._sink.send(self, table)


class CollectorSink:
    """The worker sends its tables through Ray to a collector on the driver's node."""

    def __init__(
        self, collector: Any, run_uri: str, records_uri: Optional[str] = None, max_in_flight: int = 4
    ) -> None:
        self.collector = collector
        self.run_uri = run_uri.rstrip("/")
        self.max_in_flight = max(1, max_in_flight)
        self.source = uuid.uuid4().hex
        self._direct = DirectSink(run_uri, records_uri) if records_uri else None
        self._targets: dict[Parts, _RemoteTarget] = {}
        self._pending: deque[Any] = deque()
        self._seq = 0
        self._lock = threading.Lock()

    def _target(self, where: Parts) -> _RemoteTarget:
        with self._lock:
            target = self._targets.get(where)
            if target is None:
                target = self._targets[where] = _RemoteTarget(self, where)
            return target

    def records(self, level: int, worker_id: int) -> PartTarget:
        """Records go to ``records_uri`` directly when it is set, else through the collector."""
        if self._direct is not None:
            return self._direct.records(level, worker_id)
        return self._target(record_parts(records_root(self.run_uri), level, worker_id))

    def telemetry(self, worker_id: int) -> PartTarget:
        """Telemetry always goes through the collector into the run directory."""
        return self._target(telemetry_parts(self.run_uri, worker_id))

    @property
    def in_flight(self) -> int:
        """Tables sent whose write the collector has not confirmed yet."""
        return len(self._pending)

    def send(self, target: _RemoteTarget, table: Table) -> None:
        """Hand ``table`` to the collector; wait for the oldest write while ``max_in_flight`` are pending."""
        import ray

        with self._lock:
            ref = self.collector.write.remote(target.where, self.source, self._seq, table)
            self._seq += 1
            target.rows += table.num_rows
            self._pending.append(ref)
            # ray.get, not ray.wait: a failed write must surface here, in the flush that caused it.
            while len(self._pending) > self.max_in_flight:
                ray.get(self._pending.popleft())

    def drain(self) -> None:
        """Wait until the collector has written every table sent so far."""
        import ray

        with self._lock:
            while self._pending:
                ray.get(self._pending.popleft())


@dataclass
class OutputSpec:
    """What a worker needs to open its sink; travels to the worker actor with its other arguments."""

    run_uri: str  # the run directory as the driver's node sees it
    records_uri: Optional[str] = None  # cluster.records_uri: records go straight here from every worker
    collector: Any = None  # Collector actor handle; None: the worker writes its parts itself
    max_in_flight: int = 4  # tables a worker may have on their way to the collector

    def open(self) -> Sink:
        """The sink this spec describes."""
        if self.collector is None:
            return DirectSink(self.run_uri, self.records_uri)
        return CollectorSink(self.collector, self.run_uri, self.records_uri, self.max_in_flight)


class Collector:
    """Ray actor body: writes the tables workers send as parts on this (the driver's) node, each once."""

    def __init__(self) -> None:
        self._writers: dict[Parts, PartWriter] = {}
        self._dir_locks: dict[Parts, threading.Lock] = {}
        self._seen: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def write(self, where: Parts, source: str, seq: int, table: Table) -> int:
        """Write ``table`` as a part of ``where`` unless ``(source, seq)`` was written already; return rows written."""
        with self._lock:
            dir_lock = self._dir_locks.setdefault(where, threading.Lock())
            writer = self._writers.get(where)
            if writer is None:
                writer = self._writers[where] = PartWriter(where)
        # A source always sends a given seq to the same destination, so its lock also guards the dedup.
        with dir_lock:
            if (source, seq) in self._seen:
                return 0
            writer.write(table)
            self._seen.add((source, seq))
            return table.num_rows

    def rows(self) -> dict[Parts, int]:
        """Rows written so far, per destination."""
        with self._lock:
            return {d: w.rows for d, w in self._writers.items()}


def start_collector(node_id: str, *, max_concurrency: int = 4) -> Any:
    """Start a Collector actor on ``node_id`` (the driver's node); it takes no CPU reservation."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return (
        ray.remote(Collector)
        .options(
            num_cpus=0,
            max_concurrency=max_concurrency,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote()
    )
