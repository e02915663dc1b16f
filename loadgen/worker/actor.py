"""The Ray actor that hosts a ``WorkerCore`` on its own uvloop thread, callable from the driver.

Input: the driver's calls (prepare a level with its shard, start it at a common
time, poll progress, stop, close). Output: each level's ``LevelReport``, once
every part of the level is stored.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Optional

import pyarrow as pa

from loadgen.collector import OutputSpec
from loadgen.config import ClusterConfig
from loadgen.worker.core import TargetSpec, WorkerCore
from loadgen.worker.level import LevelReport, LevelRun

#: How often a worker actor checks that the Ray process that started it is still alive.
_PARENT_CHECK_S = 0.2


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

    def start_level(self, t0_ns: int) -> LevelReport:
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
