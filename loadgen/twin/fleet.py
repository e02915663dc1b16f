"""N replicas of the engine model behind a load balancer, stepped in virtual time.

Input: a ``SimProfile``, a replica count and a balancer name; requests handed in
with ``arrive(t, request)`` and ``advance(until)`` calls from the event loop in
``loadgen.twin.predict``. Output: each request's token times (``Request.chunk_times``)
and a completion callback per request.

Each replica runs the simulator's own scheduler (``loadgen.sim.engine.Engine``:
``plan()`` then ``commit()``), exactly as the live simulator's ``EngineLoop`` does
but on a virtual clock: an idle replica starts a step when a request reaches it; a
request reaching a busy replica waits for the end of the current step. Nothing
sleeps and no socket is opened.

Balancers: ``round-robin`` (request k to replica k mod N), ``least-outstanding``
(the replica with the fewest unfinished requests, lowest index on ties) and
``prefix-affine`` (the hash of the prompt's first KV block picks the replica, so
shared prefixes hit one replica's prefix cache, unless that replica has no free
slot and more than 1.25× the mean outstanding requests plus one: then the
least-outstanding one — consistent hashing with bounded load).
"""

from __future__ import annotations

import heapq
from typing import Callable, Optional, Sequence

import numpy as np

from loadgen.config import SimProfile
from loadgen.sim.engine import Engine, Seq, Step

BALANCERS = ("round-robin", "least-outstanding", "prefix-affine")


class Request:
    """One request inside the fleet: its sequence, where it went, and the steps that carried its tokens."""

    __slots__ = ("key", "seq", "replica", "arrival", "first_step", "last_step", "on_done", "tokens_out")

    def __init__(self, key: int, seq: Seq, arrival: float, on_done: Optional[Callable[[Request, float], None]] = None) -> None:
        self.key = key  # the caller's handle (a row index)
        self.seq = seq
        seq.sink = self
        self.replica: Optional[Replica] = None
        self.arrival = arrival  # when it reaches the engine (virtual s)
        self.first_step = -1  # index, in its replica's step log, of the step that emitted its first token
        self.last_step = -1
        self.on_done = on_done
        self.tokens_out = 0

    def tokens(self, seq: Seq, n: int, last: bool) -> bool:
        """TokenSink: called by ``Engine.commit`` for every chunk; only the first and last matter here.

        A sequence decodes one chunk in every step from its first token to its last
        (the engine never preempts), so its chunk times are a contiguous run of its
        replica's step log: two indices describe them.
        """
        self.tokens_out += n
        if self.first_step < 0:
            self.first_step = self.replica.steps - 1  # type: ignore[union-attr]
        if last:
            self.last_step = self.replica.steps - 1  # type: ignore[union-attr]
            self.replica.finished.append(self)  # type: ignore[union-attr]
        return True

    def chunk_times(self) -> np.ndarray:
        """When each chunk was emitted (virtual s)."""
        assert self.replica is not None and self.last_step >= 0
        return np.asarray(self.replica.log[self.first_step : self.last_step + 1])


class Replica:
    """One engine on the virtual clock: its scheduler, the step in progress, and the end time of every step."""

    __slots__ = ("index", "engine", "step", "step_end", "log", "steps", "outstanding", "finished")

    def __init__(self, index: int, profile: SimProfile) -> None:
        self.index = index
        self.engine = Engine(profile)
        self.step: Optional[Step] = None
        self.step_end = 0.0
        self.log: list[float] = []  # end time of every step, in order
        self.steps = 0
        self.outstanding = 0
        self.finished: list[Request] = []

    def start(self, now: float) -> Optional[float]:
        """Plan the next step at ``now``; return when it ends (None: nothing to run, the replica idles)."""
        step = self.engine.plan()
        self.step = step
        if step is None:
            return None
        self.step_end = now + step.duration_s
        return self.step_end

    def finish(self) -> list[Request]:
        """Commit the step in progress at its end time; return the requests it completed."""
        step = self.step
        assert step is not None
        self.log.append(self.step_end)
        self.steps += 1
        self.finished = []
        self.engine.commit(step)
        self.step = None
        self.outstanding -= len(self.finished)
        return self.finished


class Fleet:
    """Replicas, a balancer and the event heap of their step ends."""

    def __init__(self, profile: SimProfile, replicas: int = 1, balancer: str = "round-robin") -> None:
        if replicas < 1:
            raise ValueError(f"replicas is {replicas}; expected at least 1")
        if balancer not in BALANCERS:
            raise ValueError(f"balancer {balancer!r}: expected one of {', '.join(BALANCERS)}")
        self.profile = profile
        self.replicas = [Replica(i, profile) for i in range(replicas)]
        self.balancer = balancer
        self._heap: list[tuple[float, int]] = []  # (step end, replica index)
        self._next = 0  # round-robin cursor

    def pick(self, seq: Seq) -> Replica:
        """The replica the balancer sends ``seq`` to."""
        reps = self.replicas
        n = len(reps)
        if n == 1:
            return reps[0]
        if self.balancer == "round-robin":
            r = reps[self._next % n]
            self._next += 1
            return r
        least = min(reps, key=_outstanding)
        if self.balancer == "least-outstanding":
            return least
        if not seq.block_hashes:  # a prompt shorter than a block has no prefix to keep together
            r = reps[self._next % n]
            self._next += 1
            return r
        r = reps[seq.block_hashes[0] % n]
        if r.outstanding < self.profile.max_num_seqs:
            return r  # a free slot there: the prefix cache decides
        mean = sum(x.outstanding for x in reps) / n
        return r if r.outstanding <= 1.25 * mean + 1 else least

    def arrive(self, now: float, request: Request) -> None:
        """A request reaches the fleet at ``now``: queue it on its replica, start a step there if idle."""
        r = self.pick(request.seq)
        request.replica = r
        r.outstanding += 1
        r.engine.add(request.seq)
        if r.step is None:
            end = r.start(now)
            if end is not None:
                heapq.heappush(self._heap, (end, r.index))

    def next_event(self) -> Optional[float]:
        """When the earliest step in progress ends (None: every replica idles)."""
        return self._heap[0][0] if self._heap else None

    def step_once(self) -> tuple[float, list[Request]]:
        """End the earliest step in progress, start that replica's next; return the time and the finished requests."""
        t, i = heapq.heappop(self._heap)
        r = self.replicas[i]
        done = r.finish()
        end = r.start(t)
        if end is not None:
            heapq.heappush(self._heap, (end, i))
        return t, done

    @property
    def outstanding(self) -> int:
        """Requests in the fleet, not yet finished."""
        return sum(r.outstanding for r in self.replicas)

    def step_counts(self) -> Sequence[int]:
        """Steps each replica has run."""
        return [r.steps for r in self.replicas]


def _outstanding(r: Replica) -> int:
    return r.outstanding
