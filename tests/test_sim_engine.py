"""The engine model: latency grows with load, throughput plateaus at capacity(), KV and prefix caching, step lag."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from loadgen.config import ConfigError, SimProfile
from loadgen.sim.engine import Engine, EngineLoop, Seq, block_hashes, capacity, simulate

PROFILE = SimProfile(
    max_num_seqs=16,
    max_num_batched_tokens=1024,
    kv_cache_tokens=100_000,
    block_size=16,
    step_base_ms=5.0,
    step_per_seq_ms=0.1,
    step_per_prefill_token_ms=0.02,
)


def poisson(rate: float, n: int, prompt: int, output: int, seed: int = 0) -> list[tuple[float, Seq]]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append((t, Seq(prompt, output)))
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def completion_rate(timings: list, lo: float = 0.2, hi: float = 0.8) -> float:
    """Completions per second between the lo and hi quantiles of end times (warm-up and drain cut)."""
    ends = sorted(t.end_s for t in timings)
    a, b = ends[int(lo * len(ends))], ends[int(hi * len(ends))]
    return sum(1 for e in ends if a < e <= b) / (b - a)


def test_a_lone_request_takes_one_prefill_step_then_one_decode_step_per_token():
    (timing,) = simulate(PROFILE, [(0.0, Seq(100, 10))])
    assert timing.ttft_s == pytest.approx((5.0 + 0.02 * 100) / 1000)
    assert timing.tpot_s == pytest.approx((5.0 + 0.1 * 1) / 1000)
    assert timing.output_tokens == 10 and len(timing.token_times) == 10


def test_ttft_and_tpot_grow_with_load():
    cap = capacity(PROFILE, 200, 50).requests_per_s
    ttft, tpot = [], []
    for fraction in (0.2, 0.6, 0.9, 1.3):
        timings = simulate(PROFILE, poisson(fraction * cap, 1500, 200, 50, seed=1))
        ttft.append(mean([t.ttft_s for t in timings]))
        tpot.append(mean([t.tpot_s for t in timings]))
    assert ttft == sorted(ttft) and ttft[-1] > 10 * ttft[0]  # past capacity the queue grows
    assert tpot == sorted(tpot) and tpot[-1] > 1.3 * tpot[0]  # bigger batches, slower steps


@pytest.mark.parametrize(
    "profile, prompt, output",
    [
        (PROFILE, 200, 50),
        (PROFILE, 1500, 20),  # prefill split over two steps
        (SimProfile(max_num_seqs=64, kv_cache_tokens=64 * 300), 256, 128),  # KV-limited
        (SimProfile(max_num_seqs=16, tokens_per_chunk=4), 100, 200),
    ],
)
def test_throughput_plateaus_at_capacity(profile, prompt, output):
    cap = capacity(profile, prompt, output)
    achieved = []
    for overload in (1.5, 3.0):
        timings = simulate(profile, poisson(overload * cap.requests_per_s, 1500, prompt, output, seed=2))
        achieved.append(completion_rate(timings))
    assert achieved == pytest.approx([cap.requests_per_s] * 2, rel=0.05)
    below = simulate(profile, poisson(0.5 * cap.requests_per_s, 1500, prompt, output, seed=3))
    assert completion_rate(below) == pytest.approx(0.5 * cap.requests_per_s, rel=0.15)


def test_capacity_by_hand():
    profile = SimProfile(
        max_num_seqs=10,
        max_num_batched_tokens=100,
        kv_cache_tokens=10_000,
        block_size=16,
        step_base_ms=10.0,
        step_per_seq_ms=0.0,
        step_per_prefill_token_ms=0.0,
    )
    # a request holds its slot 1 prefill step + 10 decode steps; 10 slots -> 10/11 requests per 10 ms step
    cap = capacity(profile, 1, 11)
    assert cap.requests_per_s == pytest.approx(10 / 11 / 0.010)
    assert cap.output_tokens_per_s == pytest.approx(11 * 10 / 11 / 0.010)
    assert (cap.concurrency, cap.kv_limited) == (10, False)
    # 80 tokens per sequence = 5 blocks; 26 blocks of cache hold 5 sequences
    small = capacity(replace(profile, kv_cache_tokens=26 * 16), 40, 40)
    assert (small.concurrency, small.kv_limited) == (5, True)


def test_full_kv_cache_makes_requests_wait():
    # each request reserves ceil((64 + 32) / 16) = 6 blocks; the cache has 13: two fit at a time
    profile = SimProfile(max_num_seqs=8, kv_cache_tokens=13 * 16, block_size=16, prefix_caching=False)
    timings = simulate(profile, [(0.0, Seq(64, 32)) for _ in range(4)])
    first, second, third, fourth = timings
    assert first.first_token_s == second.first_token_s
    assert third.first_token_s > first.end_s and fourth.first_token_s > first.end_s
    roomy = simulate(replace(profile, kv_cache_tokens=100_000), [(0.0, Seq(64, 32)) for _ in range(4)])
    assert len({t.first_token_s for t in roomy}) == 1


def test_kv_usage_counts_held_blocks():
    engine = Engine(SimProfile(kv_cache_tokens=100 * 16, block_size=16, prefix_caching=False))
    seq = Seq(100, 60, sink=_Sink())  # ceil(160 / 16) = 10 blocks
    engine.add(seq)
    step = engine.plan()
    assert engine.kv_usage == pytest.approx(0.10)
    assert (engine.num_running, engine.num_waiting) == (1, 0)
    engine.commit(step)
    engine.cancel(seq)
    assert engine.kv_usage == 0.0 and engine.num_running == 0


def test_request_larger_than_the_cache_is_refused():
    engine = Engine(SimProfile(kv_cache_tokens=1000, block_size=16))
    with pytest.raises(ValueError, match="KV cache"):
        engine.add(Seq(900, 200))


def test_prefix_cache_hits_skip_prefill():
    words = [f"w{i}" for i in range(64)]
    shared = block_hashes(words + ["a", "b"], 16)
    other = block_hashes(words + ["c", "d"], 16)
    assert shared == other  # only full 16-word blocks are hashed: both prompts have the same 4
    unrelated = block_hashes([f"x{i}" for i in range(66)], 16)

    def run(profile: SimProfile, second_hashes: list[int]) -> list:
        return simulate(
            profile,
            [(0.0, Seq(66, 4, block_hashes=shared)), (1.0, Seq(66, 4, block_hashes=second_hashes))],
        )

    cold, warm = run(PROFILE, other)
    assert (cold.cached_tokens, warm.cached_tokens) == (0, 64)
    assert cold.ttft_s - warm.ttft_s == pytest.approx(64 * 0.02 / 1000)
    _, miss = run(PROFILE, unrelated)
    assert miss.cached_tokens == 0
    _, disabled = run(replace(PROFILE, prefix_caching=False), other)
    assert disabled.cached_tokens == 0


def test_identical_prompt_still_computes_its_last_block():
    hashes = block_hashes([f"w{i}" for i in range(64)], 16)
    _, again = simulate(PROFILE, [(0.0, Seq(64, 2, block_hashes=hashes)), (1.0, Seq(64, 2, block_hashes=hashes))])
    assert again.cached_tokens == 48


def test_prefix_cache_counters_and_lru_eviction():
    profile = SimProfile(kv_cache_tokens=20 * 16, block_size=16, max_num_seqs=4)
    engine = Engine(profile)
    a = block_hashes([f"a{i}" for i in range(64)], 16)
    b = block_hashes([f"b{i}" for i in range(250)], 16)

    def run(seq: Seq) -> Seq:
        seq.sink = _Sink()
        engine.add(seq)
        while (step := engine.plan()) is not None:
            engine.commit(step)
        return seq

    assert run(Seq(65, 1, block_hashes=a)).cached_tokens == 0
    assert run(Seq(65, 1, block_hashes=a)).cached_tokens == 64
    assert (engine.cache_queries_total, engine.cache_hits_total) == (130, 64)
    run(Seq(250, 60, block_hashes=b))  # needs all 20 blocks: a's cached blocks are evicted
    assert run(Seq(65, 1, block_hashes=a)).cached_tokens == 0


def test_profile_errors_name_the_key():
    with pytest.raises(ConfigError, match="target.sim.max_num_batched_tokens"):
        Engine(SimProfile(max_num_seqs=64, max_num_batched_tokens=32))
    with pytest.raises(ConfigError, match="target.sim.step_base_ms"):
        Engine(SimProfile(step_base_ms=0))


class _Sink:
    def __init__(self, clock: list[float] | None = None, work: dict[int, float] | None = None) -> None:
        self.clock = clock
        self.work = work or {}
        self.times: list[float] = []
        self.finished = asyncio.Event() if clock is not None else None

    def tokens(self, seq: Seq, n: int, last: bool) -> bool:
        if self.clock is not None:
            self.times.append(self.clock[0])
            self.clock[0] += self.work.get(len(self.times), 0.0)  # this write keeps the CPU busy
            if last:
                self.finished.set()
        return True


def test_step_loop_keeps_absolute_deadlines_and_counts_late_steps():
    profile = SimProfile(step_base_ms=10.0, step_per_seq_ms=0.0, step_per_prefill_token_ms=0.0)
    clock = [100.0]

    async def fake_sleep(delay: float) -> None:
        clock[0] += delay
        await asyncio.sleep(0)

    async def main() -> tuple[list[float], EngineLoop]:
        loop = EngineLoop(Engine(profile), late_threshold_s=0.005, clock=lambda: clock[0], sleep=fake_sleep)
        sink = _Sink(clock, work={3: 0.024})  # writing the 3rd token takes 24 ms
        task = asyncio.create_task(loop.run())
        loop.submit(Seq(4, 10, sink=sink))
        await asyncio.wait_for(sink.finished.wait(), 5)
        task.cancel()
        return [round((t - 100.0) * 1000, 6) for t in sink.times], loop

    times, loop = asyncio.run(main())
    # tokens 4 and 5 are written as soon as possible; from token 6 on the schedule is the original one
    assert times == [10, 20, 30, 54, 54, 60, 70, 80, 90, 100]
    assert (loop.steps, loop.late_steps) == (10, 2)  # lags 24 ms and 14 ms; 4 ms is within the threshold
    assert loop.max_lag_s == pytest.approx(0.024)
