"""Load strategies: how a worker starts a level's requests, one small object per way.

Input: a ``LevelState`` and the ``Sender`` that sends one request and records
it (the worker core). Output: requests started until sending should stop;
requests still in flight are the drain's business.

- ``ScheduledArrivals``: open loop (rate levels and trace replay): each request,
  or the first turn of a session, leaves at t0 + its precomputed offset.
- ``ClosedLoopStreams``: closed loop: N streams, each sends its next request
  when the last one ended (plus think time).
- ``Session``: a multi-turn conversation inside an open-loop level: turn k
  leaves after turn k−1 answered (plus think time).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

from loadgen.rundir import LoadMode
from loadgen.worker.level import LevelRun, LevelState


class Sender(Protocol):
    """What a strategy needs from the worker: the clock, stop-aware sleeping, sending one request."""

    def now(self) -> int:
        """Now on the run clock (ns)."""

    def stopping(self) -> bool:
        """Whether a stop was requested."""

    async def sleep_until(self, t_ns: int) -> bool:
        """Sleep until ``t_ns`` on the run clock; False if a stop came first."""

    async def send(
        self, st: LevelState, k: int, scheduled_ns: int, sem: Optional[asyncio.Semaphore], cycle: int = 0
    ) -> dict[str, Any]:
        """Send row ``k``, record it whatever happens, return the record."""


@dataclass
class Session:
    """A multi-turn conversation: its rows in turn order, each turn after the last one's answer."""

    rows: list[int]
    think_time_s: float = 0.0

    async def run(self, sender: Sender, st: LevelState, start_ns: int, sem: Optional[asyncio.Semaphore]) -> None:
        """Send the turns in order; a failed turn or a stop leaves the rest unsent, counted."""
        think_ns = int(self.think_time_s * 1e9)
        scheduled = start_ns
        for pos, k in enumerate(self.rows):
            rec = await sender.send(st, k, scheduled, sem)
            if rec["status"] != "ok":
                st.not_sent_rows(self.rows[pos + 1 :], "previous turn failed")
                return
            scheduled = sender.now() + think_ns
            if pos + 1 < len(self.rows) and not await sender.sleep_until(scheduled):
                st.not_sent_rows(self.rows[pos + 1 :], "stopped")
                return


@dataclass
class ScheduledArrivals:
    """Open loop: start each request (or session) at its scheduled time; behind schedule, at once."""

    max_concurrency: Optional[int] = None  # in-flight ceiling on this worker (queues client-side)
    think_time_s: float = 0.0  # sessions: pause between a turn's answer and the next turn

    async def send(self, sender: Sender, st: LevelState) -> None:
        """Walk the schedule until it ends or a stop comes; rows left unsent are counted as stopped."""
        sched = st.scheduled_ns
        sem = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
        i, n = 0, len(sched)
        while i < n:
            if not await sender.sleep_until(sched[i]):
                break
            j = i + 1
            while j < n and sched[j] < 0:  # later turns of the session started by row i
                j += 1
            if j - i == 1:
                st.spawn(sender.send(st, i, sched[i], sem))
            else:
                st.spawn(Session(list(range(i, j)), self.think_time_s).run(sender, st, sched[i], sem))
            i = j
        st.not_sent_rows(range(i, n), "stopped")


@dataclass
class ClosedLoopStreams:
    """Closed loop: keep ``concurrency`` streams busy until the sending phase ends or the cap is reached."""

    concurrency: int
    think_time_s: float = 0.0

    async def send(self, sender: Sender, st: LevelState) -> None:
        """Run the streams; return when sending should stop."""
        run = st.run
        end_ns = run.t0_ns + int(run.duration_s * 1e9)
        if not await sender.sleep_until(run.t0_ns):
            return
        think_ns = int(self.think_time_s * 1e9)

        async def stream() -> None:
            while not sender.stopping():
                scheduled = sender.now()
                if scheduled >= end_ns:
                    return
                row = st.next_row()
                if row is None:
                    return
                await sender.send(st, row[0], scheduled, None, cycle=row[1])
                if think_ns and not await sender.sleep_until(sender.now() + think_ns):
                    return

        streams = [st.spawn(stream()) for _ in range(self.concurrency)]
        while streams and not sender.stopping():
            remaining = (end_ns - sender.now()) / 1e9
            if remaining <= 0:
                break
            _, pending = await asyncio.wait(streams, timeout=min(remaining, 0.25))
            if not pending:
                break


LoadStrategy = Union[ScheduledArrivals, ClosedLoopStreams]


def strategy_for(run: LevelRun) -> LoadStrategy:
    """The strategy that sends a level of ``run.mode``."""
    if run.mode is LoadMode.CONCURRENCY:
        return ClosedLoopStreams(concurrency=run.concurrency, think_time_s=run.think_time_s)
    return ScheduledArrivals(max_concurrency=run.max_concurrency, think_time_s=run.think_time_s)
