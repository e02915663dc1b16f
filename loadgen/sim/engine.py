"""The continuous-batching engine model behind the simulator.

Input: requests (``Seq``: prompt length, prompt block hashes, output length) and a
``SimProfile``. Output: token emissions to each request's ``TokenSink`` at the end
of the engine step that produced them, and the counters ``/metrics`` reports.

``Engine`` is the scheduler alone and never sleeps: ``plan()`` picks the next
step's batch and its duration, ``commit()`` applies it. ``EngineLoop`` runs it on
the monotonic clock with absolute step deadlines, ``simulate`` runs it on a
virtual clock, and ``capacity`` gives its saturated throughput in closed form.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Optional, Protocol, Sequence

from loadgen.config import ConfigError, SimProfile

log = logging.getLogger("loadgen.sim")


class TokenSink(Protocol):
    """Receives a sequence's tokens as the engine produces them."""

    def tokens(self, seq: Seq, n: int, last: bool) -> bool:
        """Take ``n`` new tokens (``last``: the sequence is complete); return False to stop it."""
        ...


class Seq:
    """One request inside the engine: its prompt, the tokens it will generate, its progress."""

    __slots__ = (
        "prompt_tokens",
        "output_tokens",
        "max_tokens",
        "block_hashes",
        "sink",
        "cached_tokens",
        "prefill_left",
        "generated",
        "own_blocks",
        "hit_blocks",
        "shared",
        "done",
    )

    def __init__(
        self,
        prompt_tokens: int,
        output_tokens: int,
        *,
        max_tokens: Optional[int] = None,
        block_hashes: Sequence[int] = (),
        sink: Optional[TokenSink] = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens  # what it generates; below max_tokens when an EOS comes first
        self.max_tokens = output_tokens if max_tokens is None else max_tokens  # what its KV reservation covers
        self.block_hashes = block_hashes  # chained hashes of the prompt's full blocks (prefix caching)
        self.sink = sink
        self.cached_tokens = 0
        self.prefill_left = prompt_tokens
        self.generated = 0
        self.own_blocks = 0  # KV blocks only this sequence holds
        self.hit_blocks = 0  # leading prompt blocks found in the prefix cache at admission
        self.shared: list[int] = []  # hashes of the cached blocks it holds a reference to
        self.done = False


@dataclass
class Step:
    """One engine step: who decodes, who prefills how many tokens, and how long it takes."""

    decode: list[Seq]
    prefill: list[tuple[Seq, int]]
    prefill_tokens: int
    duration_s: float


def check_profile(profile: SimProfile) -> SimProfile:
    """Return the profile, or raise ConfigError naming the ``target.sim`` key that cannot work."""

    def fail(key: str, expected: str) -> None:
        value = getattr(profile, key)
        raise ConfigError(f"config key 'target.sim.{key}' is {value!r}; expected {expected}.")

    for key in ("max_num_seqs", "max_num_batched_tokens", "kv_cache_tokens", "block_size", "tokens_per_chunk"):
        if getattr(profile, key) < 1:
            fail(key, "a positive integer")
    if not profile.step_base_ms > 0:
        fail("step_base_ms", "a positive number of milliseconds")
    for key in ("step_per_seq_ms", "step_per_prefill_token_ms", "request_overhead_ms"):
        if not getattr(profile, key) >= 0:
            fail(key, "a non-negative number of milliseconds")
    if profile.reasoning_tokens < 0:
        fail("reasoning_tokens", "a non-negative number of tokens (0: no reasoning deltas)")
    if profile.max_num_batched_tokens < profile.max_num_seqs:
        fail(
            "max_num_batched_tokens",
            "at least target.sim.max_num_seqs (each running sequence decodes a token per step)",
        )
    if profile.kv_cache_tokens < profile.block_size:
        fail("kv_cache_tokens", "at least one block (target.sim.block_size tokens)")
    return profile


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Engine:
    """A continuous-batching scheduler: FCFS admission, chunked prefill, a paged KV cache, prefix caching.

    A sequence is admitted when a slot is free (``max_num_seqs``) and the KV cache
    can hold its prompt plus ``max_tokens`` output tokens; the whole reservation is
    taken at admission, so the engine never preempts. Each step decodes one chunk
    for every running sequence past its prefill and spends the rest of the
    ``max_num_batched_tokens`` budget on prefill, oldest first.
    """

    def __init__(self, profile: SimProfile) -> None:
        self.profile = check_profile(profile)
        self.total_blocks = profile.kv_cache_tokens // profile.block_size
        self.free_blocks = self.total_blocks
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.steps = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.cache_queries_total = 0  # prompt tokens looked up in the prefix cache
        self.cache_hits_total = 0  # prompt tokens found there
        self._refs: dict[int, int] = {}  # hashed blocks in use -> sequences holding them
        self._evictable: OrderedDict[int, None] = OrderedDict()  # hashed blocks nobody holds, LRU first
        self._base_s = profile.step_base_ms / 1000
        self._per_seq_s = profile.step_per_seq_ms / 1000
        self._per_token_s = profile.step_per_prefill_token_ms / 1000

    # ------------------------------------------------------------------ state

    @property
    def num_running(self) -> int:
        """Sequences admitted and not finished."""
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Sequences queued for admission."""
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks held by sequences (cached blocks nobody holds count as free)."""
        return (self.total_blocks - self.free_blocks - len(self._evictable)) / self.total_blocks

    @property
    def busy(self) -> bool:
        """Whether any sequence is running or waiting."""
        return bool(self.running or self.waiting)

    def blocks_needed(self, prompt_tokens: int, max_tokens: int) -> int:
        """KV blocks a sequence reserves (before prefix-cache hits)."""
        return _ceil_div(prompt_tokens + max_tokens, self.profile.block_size)

    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        """Whether a request of this size can ever be admitted (its KV reservation fits the cache)."""
        return self.blocks_needed(prompt_tokens, max_tokens) <= self.total_blocks

    # ------------------------------------------------------------------ requests

    def add(self, seq: Seq) -> None:
        """Queue a sequence for admission; raise ValueError if the KV cache can never hold it."""
        if not self.fits(seq.prompt_tokens, seq.max_tokens):
            raise ValueError(
                f"a request of {seq.prompt_tokens} prompt + {seq.max_tokens} output tokens needs more KV cache "
                f"than the engine has ({self.total_blocks * self.profile.block_size} tokens)"
            )
        self.waiting.append(seq)

    def cancel(self, seq: Seq) -> None:
        """Drop a sequence wherever it is (its client went away)."""
        if seq.done:
            return
        if seq in self.running:
            self._release(seq)
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.done = True

    # ------------------------------------------------------------------ stepping

    def plan(self) -> Optional[Step]:
        """Admit what fits and choose the next step's batch; None when there is nothing to run."""
        p = self.profile
        decode: list[Seq] = []
        partial: list[Seq] = []
        for seq in self.running:
            (partial if seq.prefill_left else decode).append(seq)
        budget = p.max_num_batched_tokens - len(decode)
        prefill: list[tuple[Seq, int]] = []
        for seq in partial:
            if budget <= 0:
                break
            n = min(seq.prefill_left, budget)
            prefill.append((seq, n))
            budget -= n
        waiting = self.waiting
        while waiting and budget > 0 and len(self.running) < p.max_num_seqs and self._admit(waiting[0]):
            seq = waiting.popleft()
            self.running.append(seq)
            n = min(seq.prefill_left, budget)
            prefill.append((seq, n))
            budget -= n
        if not decode and not prefill:
            return None
        tokens = p.max_num_batched_tokens - len(decode) - budget
        duration = self._base_s + self._per_seq_s * len(decode) + self._per_token_s * tokens
        return Step(decode, prefill, tokens, duration)

    def commit(self, step: Step) -> None:
        """Apply a planned step: emit its tokens to the sinks, finish and free completed sequences."""
        k = self.profile.tokens_per_chunk
        finished = False
        generated = 0
        for seq in step.decode:
            if seq.done:
                continue
            n = min(k, seq.output_tokens - seq.generated)
            seq.generated += n
            generated += n
            last = seq.generated >= seq.output_tokens
            if not seq.sink.tokens(seq, n, last) or last:
                self._release(seq)
                finished = True
        for seq, n in step.prefill:
            if seq.done:
                continue
            seq.prefill_left -= n
            if seq.prefill_left:
                continue
            self.prompt_tokens_total += seq.prompt_tokens
            self._register(seq)
            seq.generated = 1
            generated += 1
            last = seq.output_tokens <= 1
            if not seq.sink.tokens(seq, 1, last) or last:
                self._release(seq)
                finished = True
        self.generation_tokens_total += generated
        self.steps += 1
        if finished:
            self.running = [s for s in self.running if not s.done]

    # ------------------------------------------------------------------ KV blocks

    def _admit(self, seq: Seq) -> bool:
        """Reserve the sequence's KV blocks (reusing cached prefix blocks); False if they do not fit."""
        bs = self.profile.block_size
        refs, evictable = self._refs, self._evictable
        hits = revived = 0
        if self.profile.prefix_caching:
            # the last prompt token is always computed, so a full hit still leaves one block to prefill
            for h in seq.block_hashes[: (seq.prompt_tokens - 1) // bs]:
                if h in refs:
                    hits += 1
                elif h in evictable:
                    hits += 1
                    revived += 1
                else:
                    break
        need = self.blocks_needed(seq.prompt_tokens, seq.max_tokens) - hits
        if need > self.free_blocks + len(evictable) - revived:
            return False
        shared = list(seq.block_hashes[:hits])
        for h in shared:
            if h in evictable:
                del evictable[h]
                refs[h] = 1
            else:
                refs[h] += 1
        take = min(need, self.free_blocks)
        self.free_blocks -= take
        for _ in range(need - take):
            evictable.popitem(last=False)
        seq.shared = shared
        seq.own_blocks = need
        seq.hit_blocks = hits
        seq.cached_tokens = hits * bs
        seq.prefill_left = seq.prompt_tokens - seq.cached_tokens
        if self.profile.prefix_caching:
            self.cache_queries_total += seq.prompt_tokens
            self.cache_hits_total += seq.cached_tokens
        return True

    def _register(self, seq: Seq) -> None:
        """Publish the sequence's freshly computed full prompt blocks in the prefix cache."""
        if not self.profile.prefix_caching:
            return
        refs, evictable = self._refs, self._evictable
        for h in seq.block_hashes[seq.hit_blocks :]:
            if h in refs or h in evictable:
                continue  # computed concurrently by another sequence; ours stays private
            refs[h] = 1
            seq.own_blocks -= 1
            seq.shared.append(h)

    def _release(self, seq: Seq) -> None:
        self.free_blocks += seq.own_blocks
        seq.own_blocks = 0
        refs = self._refs
        # tail blocks first, so that LRU eviction keeps the shared heads of prefixes longest
        for h in reversed(seq.shared):
            n = refs[h] - 1
            if n:
                refs[h] = n
            else:
                del refs[h]
                self._evictable[h] = None
        seq.shared = []
        seq.done = True


def block_hashes(tokens: Sequence[object], block_size: int) -> list[int]:
    """Chained hashes of each full ``block_size`` run of tokens: equal lists mean equal prefixes."""
    out: list[int] = []
    h = 0
    for i in range(0, len(tokens) - block_size + 1, block_size):
        h = hash((h, tuple(tokens[i : i + block_size])))
        out.append(h)
    return out


# --------------------------------------------------------------------------- real-time loop


class EngineLoop:
    """Runs an Engine on the monotonic clock: one task for all sequences, absolute step deadlines.

    Step ``i`` ends at ``start + sum(durations[:i+1])`` whatever happened before,
    so a late step does not shift the ones after it (no drift). A step whose
    tokens are written more than ``late_threshold_s`` after its deadline is late:
    this machine's CPU, not the modelled GPU, held it back. Late steps are
    counted, the recent worst lag is kept for ``/metrics``, and a warning is
    logged at most every ``warn_interval_s``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        late_threshold_s: float = 0.005,
        warn_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.engine = engine
        self.late_threshold_s = late_threshold_s
        self.warn_interval_s = warn_interval_s
        self.late_steps = 0
        self.max_lag_s = 0.0  # worst lag since start
        self._clock = clock
        self._sleep = sleep
        self._work = asyncio.Event()
        self._last_warn = -math.inf
        self._window_start = 0.0
        self._window_lag = 0.0
        self._previous_window_lag = 0.0

    @property
    def steps(self) -> int:
        """Steps run so far."""
        return self.engine.steps

    @property
    def recent_lag_s(self) -> float:
        """Worst step lag over roughly the last second (0 while idle)."""
        return max(self._window_lag, self._previous_window_lag)

    def submit(self, seq: Seq) -> None:
        """Queue a sequence and wake the loop."""
        self.engine.add(seq)
        self._work.set()

    async def run(self) -> None:
        """Step the engine until cancelled; sleep while it has nothing to do."""
        engine, clock, sleep = self.engine, self._clock, self._sleep
        deadline: Optional[float] = None
        while True:
            step = engine.plan()
            if step is None:
                deadline = None
                self._window_lag = self._previous_window_lag = 0.0
                self._work.clear()
                await self._work.wait()
                continue
            now = clock()
            if deadline is None:
                deadline = now
            deadline += step.duration_s
            # sleep(0) when behind still yields, so the server keeps accepting and reading
            await sleep(max(deadline - now, 0.0))
            engine.commit(step)
            self._observe(clock() - deadline, deadline)

    def _observe(self, lag: float, deadline: float) -> None:
        if deadline - self._window_start >= 1.0:
            self._previous_window_lag, self._window_lag = self._window_lag, 0.0
            self._window_start = deadline
        if lag > self._window_lag:
            self._window_lag = lag
            self.max_lag_s = max(self.max_lag_s, lag)
        if lag <= self.late_threshold_s:
            return
        self.late_steps += 1
        if deadline - self._last_warn >= self.warn_interval_s:
            self._last_warn = deadline
            log.warning(
                "simulator step finished %.1f ms after its deadline (%d of %d steps late so far): "
                "this machine's CPU, not the modelled GPU, is the bottleneck and timings are distorted",
                lag * 1000,
                self.late_steps,
                self.engine.steps,
            )


# --------------------------------------------------------------------------- virtual clock


@dataclass
class Timing:
    """What one request saw in ``simulate``: times in seconds on the virtual clock."""

    arrival_s: float
    prompt_tokens: int
    cached_tokens: int = 0
    token_times: list[float] = field(default_factory=list)  # end of each step that emitted tokens
    output_tokens: int = 0

    @property
    def first_token_s(self) -> float:
        """When the first token was emitted."""
        return self.token_times[0]

    @property
    def end_s(self) -> float:
        """When the last token was emitted."""
        return self.token_times[-1]

    @property
    def ttft_s(self) -> float:
        """Time to first token."""
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for single-token outputs)."""
        return (self.end_s - self.first_token_s) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


class _Recorder:
    __slots__ = ("timing", "clock")

    def __init__(self, timing: Timing, clock: list[float]) -> None:
        self.timing = timing
        self.clock = clock

    def tokens(self, seq: Seq, n: int, last: bool) -> bool:
        if not self.timing.token_times:
            self.timing.cached_tokens = seq.cached_tokens
        self.timing.token_times.append(self.clock[0])
        self.timing.output_tokens += n
        return True


def simulate(
    profile: SimProfile, requests: Iterable[tuple[float, Seq]], *, max_steps: int = 10_000_000
) -> list[Timing]:
    """Run (arrival time in s, sequence) pairs through a fresh engine on a virtual clock; timings in input order.

    The schedule is the one ``EngineLoop`` follows in real time, without sleeping:
    a request arriving during a step is considered when the step ends.
    """
    engine = Engine(profile)
    clock = [0.0]
    items = list(requests)
    timings = []
    for arrival, seq in items:
        timing = Timing(arrival, seq.prompt_tokens)
        seq.sink = _Recorder(timing, clock)
        timings.append(timing)
    pending = sorted(items, key=lambda item: item[0])
    i = 0
    for _ in range(max_steps):
        while i < len(pending) and pending[i][0] <= clock[0]:
            engine.add(pending[i][1])
            i += 1
        step = engine.plan()
        if step is None:
            if i == len(pending):
                return timings
            clock[0] = pending[i][0]
            continue
        clock[0] += step.duration_s
        engine.commit(step)
    raise RuntimeError(f"simulation did not finish within {max_steps} steps")


# --------------------------------------------------------------------------- capacity


@dataclass(frozen=True)
class Capacity:
    """The engine's saturated throughput for one request shape (see ``capacity``)."""

    requests_per_s: float
    output_tokens_per_s: float
    concurrency: int  # sequences running when saturated
    kv_limited: bool  # the KV cache, not max_num_seqs, caps the concurrency
    decode_step_s: float  # step time with `concurrency` sequences decoding and no prefill
    mean_step_s: float  # mean step time when saturated (decodes plus their share of prefill)


def capacity(profile: SimProfile, input_tokens: int, output_tokens: int) -> Capacity:
    """Steady-state throughput of the engine kept full with requests of one shape (no prefix-cache hits).

    With I input and O output tokens, k = tokens_per_chunk, C = max_num_batched_tokens:

    - concurrency n = min(max_num_seqs, KV blocks // ceil((I + O) / block_size));
    - a request holds its slot for L = p + D steps: p = ceil(I / C) prefill steps
      (the last emits the first token) and D = ceil((O - 1) / k) decode steps;
    - requests finish at r = min(n / L, C / (I + D)) per step (the second term
      when prefill plus decode tokens exceed the step budget), and a step carries
      r·D decoding sequences and r·I prefill tokens on average, so it takes
      T = step_base + step_per_seq·r·D + step_per_prefill_token·r·I;
    - requests/s = r / T and output tokens/s = O · r / T.

    Exact when a prompt's prefill fits one step beside the decodes; an
    approximation for prompts near or above ``max_num_batched_tokens``.
    """
    if input_tokens < 1 or output_tokens < 1:
        raise ValueError("input_tokens and output_tokens must be positive")
    check_profile(profile)
    blocks = profile.kv_cache_tokens // profile.block_size
    per_seq_blocks = _ceil_div(input_tokens + output_tokens, profile.block_size)
    kv_seqs = blocks // per_seq_blocks
    if kv_seqs < 1:
        raise ValueError(f"a request of {input_tokens}+{output_tokens} tokens does not fit the KV cache")
    n = min(profile.max_num_seqs, kv_seqs)
    budget = profile.max_num_batched_tokens
    decode_steps = _ceil_div(output_tokens - 1, profile.tokens_per_chunk)
    slot_steps = _ceil_div(input_tokens, budget) + decode_steps
    rate = min(n / slot_steps, budget / (input_tokens + decode_steps))
    step_ms = (
        profile.step_base_ms
        + profile.step_per_seq_ms * rate * decode_steps
        + profile.step_per_prefill_token_ms * rate * input_tokens
    )
    return Capacity(
        requests_per_s=rate / (step_ms / 1000),
        output_tokens_per_s=output_tokens * rate / (step_ms / 1000),
        concurrency=n,
        kv_limited=kv_seqs < profile.max_num_seqs,
        decode_step_s=(profile.step_base_ms + profile.step_per_seq_ms * n) / 1000,
        mean_step_s=step_ms / 1000,
    )
