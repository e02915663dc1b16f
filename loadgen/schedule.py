"""Arrival processes and sharding: from the request table to one plan per worker and level.

Input: a ``Workload`` (the request table) and one load level. Output: a
``LevelPlan`` whose per-worker shards are Arrow tables of requests with their
absolute send offsets (``scheduled_s``, seconds after the level's common start;
null for closed-loop rows and for later turns of a session, which follow their
previous turn). Schedules are precomputed and absolute (target_i = t0 +
offset_i), never accumulated sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa

from loadgen.config import LoadConfig
from loadgen.rundir import LoadMode
from loadgen.workload.table import Workload

ARRIVALS = ("constant", "poisson", "gamma")


def arrival_offsets(
    kind: str,
    rate: float,
    duration_s: float,
    max_count: int,
    *,
    burstiness: float = 1.0,
    ramp_up_s: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Send offsets (s) of an open-loop arrival process at ``rate`` req/s within ``duration_s``.

    The count is exact (round(rate x duration), less half the ramp), so a level
    offers the load it names; the randomness is in the spacing. When
    ``max_count`` is smaller, the arrivals stop early at the same rate. ``constant``:
    offsets k / rate. ``poisson``: sorted uniform points, i.e. a Poisson process
    conditioned on its count (exponential gaps). ``gamma``: gamma gaps with
    squared coefficient of variation ``burstiness`` (1 = Poisson-like, larger is
    burstier), scaled to fill the level. With ``ramp_up_s`` the rate rises
    linearly from 0 to ``rate``: offsets are drawn at unit rate and mapped
    through the inverse cumulative intensity.
    """
    if kind not in ARRIVALS:
        raise ValueError(f"arrival process {kind!r}: expected one of {', '.join(ARRIVALS)}")
    if rate <= 0 or duration_s <= 0 or max_count <= 0:
        return np.empty(0, dtype=np.float64)
    ramp_up_s = min(ramp_up_s, duration_s)
    span = rate * (duration_s - ramp_up_s / 2.0)  # expected arrivals, in unit-rate time
    n = int(min(max_count, max(1, round(span))))
    if n < round(span):
        # A request cap ends the level early at the named rate; it never spreads fewer arrivals thinner.
        span = float(n)
    rng = np.random.default_rng(seed)
    if kind == "constant":
        unit = np.arange(n, dtype=np.float64) * (span / max(round(span), 1))
    elif kind == "poisson":
        unit = np.sort(rng.uniform(0.0, span, size=n))
    else:
        shape = 1.0 / burstiness
        gaps = rng.gamma(shape, 1.0, size=n)
        # n gaps span the level; the first arrival sits one random gap in.
        unit = np.cumsum(gaps) - gaps[0] * rng.uniform()
        unit *= span / (unit[-1] + gaps[0])
    offsets = _invert_ramp(unit, rate, ramp_up_s)
    return offsets[(offsets >= 0) & (offsets < duration_s)][:max_count]


def shaped_offsets(load: LoadConfig, rate: float, seed: int) -> np.ndarray:
    """Send offsets of one open-loop level in ``load.shape``: steady, a rate step, or a burst.

    steady: random arrivals (poisson, gamma) are drawn for the warm-up and for the steady
    window apart, each with its exact count (``arrival_offsets``).

    step: ``load.step_from`` req/s until ``load.step_at_s``, then ``rate``.
    burst: nothing until ``load.step_at_s``, then ``rate`` requests spread over one second.
    """
    common = dict(burstiness=load.burstiness, seed=seed)
    if load.shape == "steady":
        warmup = load.warmup_s
        if load.arrival == "constant" or warmup <= 0 or not (load.ramp_up_s <= warmup < load.duration_s):
            return arrival_offsets(load.arrival, rate, load.duration_s, load.max_requests, ramp_up_s=load.ramp_up_s, **common)
        # The warm-up and the steady window each get their exact count, so the window the verdicts
        # judge offers the rate the level names. (Drawn over the whole level, Poisson arrivals put
        # 81 ± 9 of a 13.5 req/s level's requests in its 6 s window: one run's window held 67, and the
        # level was credited with a load it never saw.)
        before = arrival_offsets(load.arrival, rate, warmup, load.max_requests, ramp_up_s=load.ramp_up_s, **common)
        window = arrival_offsets(
            load.arrival, rate, load.duration_s - warmup, load.max_requests - len(before),
            burstiness=load.burstiness, seed=seed + 1,
        )
        return np.concatenate((before, window + warmup))
    at = load.step_at_s
    if load.shape == "burst":
        n = int(min(round(rate), load.max_requests))
        after = arrival_offsets(load.arrival, float(n), 1.0, n, **common) + at
        return after[after < load.duration_s]
    before = arrival_offsets(load.arrival, load.step_from, at, load.max_requests, **common) if load.step_from > 0 else np.empty(0)
    after = arrival_offsets(load.arrival, rate, load.duration_s - at, load.max_requests - len(before), **common) + at
    return np.concatenate((before, after))


def _invert_ramp(unit: np.ndarray, rate: float, ramp_up_s: float) -> np.ndarray:
    """Map arrival counts (unit-rate time) to wall offsets under a linear ramp to ``rate``."""
    if ramp_up_s <= 0:
        return unit / rate
    # Cumulative intensity: L(t) = rate t^2 / (2R) for t < R, else rate (t - R/2).
    knee = rate * ramp_up_s / 2.0
    return np.where(
        unit < knee,
        np.sqrt(2.0 * ramp_up_s * unit / rate),
        unit / rate + ramp_up_s / 2.0,
    )


@dataclass
class LevelSpec:
    """One load level as the driver runs it."""

    index: int  # level number, 0-based, in the order run
    mode: LoadMode
    value: float  # req/s, streams, or the trace's time-scale factor

    def __post_init__(self) -> None:
        self.mode = LoadMode(self.mode)


@dataclass
class LevelPlan:
    """What each worker sends in one level."""

    spec: LevelSpec
    shards: list[pa.Table]  # one per worker: request rows plus `scheduled_s`
    concurrency: list[int] = field(default_factory=list)  # closed loop: streams per worker
    max_requests: list[int] = field(default_factory=list)  # closed loop: request cap per worker
    planned: int = 0  # requests planned (closed loop: the request cap, an upper bound)
    offered_rps: Optional[float] = None  # planned arrivals / sending time (open loop)
    duration_s: float = 0.0  # sending phase length
    notes: list[str] = field(default_factory=list)  # what the plan changed: a cap that ended it early, a trace that ran out


class RequestCursor:
    """Hands out request rows in order across levels, cycling when the table runs out."""

    def __init__(self, workload: Workload) -> None:
        self.table = workload.table
        self.pos = 0
        self.cycles = 0

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows (request ids get a ``.k`` suffix on the k-th reuse)."""
        rows = self.table.num_rows
        if rows == 0 or n <= 0:
            return self.table.slice(0, 0)
        idx = (self.pos + np.arange(n)) % rows
        cycle = (self.pos + np.arange(n)) // rows
        self.pos += n
        out = self.table.take(pa.array(idx))
        if cycle.max() > 0:
            suffix = np.where(cycle > 0, np.char.add(".", cycle.astype(str)), "")
            ids = np.char.add(np.asarray(out.column("request_id").to_pylist(), dtype=str), suffix)
            out = out.set_column(0, "request_id", pa.array(ids.tolist(), pa.string()))
        return out


def _sessions(table: pa.Table) -> Optional[np.ndarray]:
    """Session index of every row (None when the table has no multi-turn sessions)."""
    if table.num_rows == 0 or table.column("session_id").null_count == table.num_rows:
        return None
    turns = table.column("turn").to_numpy(zero_copy_only=False)
    if np.nan_to_num(turns.astype(float)).max() <= 0:
        return None
    sid = table.column("session_id").fill_null("").to_numpy(zero_copy_only=False)
    _, index = np.unique(sid, return_inverse=True)
    return index


def _first_turns(table: pa.Table, sessions: Optional[np.ndarray]) -> np.ndarray:
    """Indices of rows that start something: every row, or turn 0 of each session."""
    if sessions is None:
        return np.arange(table.num_rows)
    turns = table.column("turn").fill_null(0).to_numpy()
    return np.flatnonzero(turns == 0)


def shard(table: pa.Table, workers: int) -> list[pa.Table]:
    """Split a plan into ``workers`` tables: round-robin, whole sessions on one worker.

    Row order inside each shard follows the input order, so schedules stay sorted.
    """
    sessions = _sessions(table)
    if sessions is None:
        owner = np.arange(table.num_rows) % workers
    else:
        # Sessions are dealt round-robin in order of their first row.
        _, first_row = np.unique(sessions, return_index=True)
        rank = np.empty(len(first_row), dtype=np.int64)
        rank[np.argsort(first_row, kind="stable")] = np.arange(len(first_row))
        owner = rank[sessions] % workers
    return [table.filter(pa.array(owner == w)) for w in range(workers)]


def plan_open_loop(
    cursor: RequestCursor,
    spec: LevelSpec,
    load: LoadConfig,
    workers: int,
    *,
    offsets: Optional[np.ndarray] = None,
) -> LevelPlan:
    """Plan an open-loop level: arrivals at ``spec.value`` req/s (or given trace ``offsets``)."""
    if offsets is None:
        offsets = shaped_offsets(load, spec.value, seed=load.seed + 7919 * spec.index)
    sessions = _sessions(cursor.table)
    if sessions is None:
        rows = cursor.take(len(offsets))
        scheduled = pa.array(offsets, pa.float64())
    else:
        rows, scheduled = _take_sessions(cursor, offsets)
    table = rows.append_column("scheduled_s", scheduled)
    duration = load.duration_s
    notes = []
    if load.shape == "steady" and len(offsets) >= load.max_requests and spec.mode is LoadMode.RATE:
        # Capped: sending ends when the last capped arrival is due, so the level offers its named rate.
        duration = min(duration, max(load.warmup_s + 1.0 / spec.value, len(offsets) / spec.value))
        if duration < load.duration_s:
            notes.append(
                f"load.max_requests={load.max_requests} ended the level after {duration:.3g} s of {load.duration_s:g} s, "
                f"at its {spec.value:g} req/s"
            )
    return LevelPlan(
        spec=spec,
        shards=shard(table, workers),
        planned=table.num_rows,
        offered_rps=(len(offsets) / duration) if duration > 0 else None,
        duration_s=duration,
        notes=notes,
    )


def _take_sessions(cursor: RequestCursor, offsets: np.ndarray) -> tuple[pa.Table, pa.Array]:
    """Rows of as many whole sessions as there are arrivals; turn 0 gets the arrival."""
    table = cursor.table
    sessions = _sessions(table)
    assert sessions is not None
    starts = _first_turns(table, sessions)
    n_sessions = len(starts)
    chosen = (cursor.pos + np.arange(len(offsets))) % max(n_sessions, 1)
    cursor.pos += len(offsets)
    sess_of_chosen = sessions[starts[chosen]]
    idx, scheduled = _session_rows(table, sessions, sess_of_chosen, offsets)
    if not idx:
        return table.slice(0, 0), pa.array([], pa.float64())
    all_idx = np.concatenate(idx)
    rows = table.take(pa.array(all_idx))
    # Sessions replayed more than once in a run need distinct ids.
    repeat = (cursor.pos - len(offsets) + np.arange(len(offsets))) // max(n_sessions, 1)
    if repeat.max() > 0:
        rep_rows = np.concatenate([np.full(len(i), r) for i, r in zip(idx, repeat)])
        suffix = np.where(rep_rows > 0, np.char.add(".", rep_rows.astype(str)), "")
        for col in ("request_id", "session_id"):
            vals = np.asarray(rows.column(col).to_pylist(), dtype=str)
            rows = rows.set_column(
                rows.schema.get_field_index(col), col, pa.array(np.char.add(vals, suffix).tolist(), pa.string())
            )
    return rows, pa.array(scheduled, pa.float64(), mask=np.isnan(scheduled))


def _session_rows(
    table: pa.Table, sessions: np.ndarray, chosen: np.ndarray, offsets: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Row indices of each chosen session in turn order, and their offsets (turn 0 only; NaN after)."""
    order = np.argsort(sessions, kind="stable")
    bounds = np.searchsorted(sessions[order], np.arange(sessions.max() + 2))
    turns = table.column("turn").fill_null(0).to_numpy()
    idx: list[np.ndarray] = []
    sched: list[np.ndarray] = []
    for s_id, off in zip(chosen, offsets):
        members = order[bounds[s_id] : bounds[s_id + 1]]
        idx.append(members[np.argsort(turns[members], kind="stable")])
        sched.append(np.concatenate(([off], np.full(len(members) - 1, np.nan))))
    return idx, (np.concatenate(sched) if sched else np.empty(0))


def plan_trace(cursor: RequestCursor, spec: LevelSpec, load: LoadConfig, workers: int) -> LevelPlan:
    """Plan a trace-replay level: the trace's own arrival times, scaled by ``1 / spec.value``.

    Later turns of a session (no arrival of their own) follow their session's first turn.
    """
    table = cursor.table
    arrival = table.column("arrival_s").to_numpy(zero_copy_only=False).astype(np.float64)
    if np.isnan(arrival).all():
        raise ValueError("load=trace needs a workload with arrival times (azure, burstgpt, mooncake, generic)")
    starts = np.flatnonzero(~np.isnan(arrival))
    starts = starts[np.argsort(arrival[starts], kind="stable")]
    offsets = arrival[starts] / spec.value
    keep = offsets < load.duration_s
    starts, offsets = starts[keep][: load.max_requests], offsets[keep][: load.max_requests]
    sessions = _sessions(table)
    if sessions is None:
        rows, scheduled = table.take(pa.array(starts, pa.int64())), offsets
    else:
        idx, scheduled = _session_rows(table, sessions, sessions[starts], offsets)
        rows = table.take(pa.array(np.concatenate(idx) if idx else np.empty(0, np.int64), pa.int64()))
    planned = rows.append_column("scheduled_s", pa.array(scheduled, pa.float64(), mask=np.isnan(scheduled)))
    duration, notes = load.duration_s, []
    if len(offsets) >= 2:
        gap = float(np.mean(np.diff(offsets)))
        ran_out = float(offsets[-1]) + gap
        if ran_out < 0.9 * load.duration_s:
            # The trace ended before the level: the offered rate is that of its arrivals, and the
            # level's window ends with them instead of diluting the rate over idle seconds.
            duration = max(ran_out, load.warmup_s + gap)
            notes.append(
                f"the workload ran out of arrivals after {ran_out:.3g} s of the {load.duration_s:g} s level: "
                f"it offered {len(offsets) / duration:,.4g} req/s over that time (the level's window ends there)"
            )
    return LevelPlan(
        spec=spec,
        shards=shard(planned, workers),
        planned=planned.num_rows,
        offered_rps=len(offsets) / duration,
        duration_s=duration,
        notes=notes,
    )


def plan_closed_loop(cursor: RequestCursor, spec: LevelSpec, load: LoadConfig, workers: int) -> LevelPlan:
    """Plan a closed-loop level: ``spec.value`` streams split over workers, a pool of rows each."""
    streams = int(spec.value)
    per_worker = [streams // workers + (1 if w < streams % workers else 0) for w in range(workers)]
    # Each worker cycles its pool; the pool is at most one pass over the table.
    rows = cursor.take(min(load.max_requests, cursor.table.num_rows))
    rows = rows.append_column("scheduled_s", pa.nulls(rows.num_rows, pa.float64()))
    shards = shard(rows, workers)
    # A worker with no streams sends nothing; its rows go unplanned rather than unsent.
    shards = [s if c > 0 else s.slice(0, 0) for s, c in zip(shards, per_worker)]
    # The request cap is shared in proportion to streams.
    caps = [load.max_requests * c // max(streams, 1) for c in per_worker]
    caps[0] += load.max_requests - sum(caps) if streams else 0
    return LevelPlan(
        spec=spec,
        shards=shards,
        concurrency=per_worker,
        max_requests=caps,
        planned=sum(caps),
        offered_rps=None,
        duration_s=load.duration_s,
    )


#: The mode of the levels of each ``load.kind``.
MODE_OF_KIND = {
    "concurrency": LoadMode.CONCURRENCY,
    "rate": LoadMode.RATE,
    "sweep": LoadMode.RATE,
    "trace": LoadMode.TRACE,
    "search": LoadMode.RATE,
}


def level_specs(load: LoadConfig) -> list[LevelSpec]:
    """The fixed levels of a run (``load=search`` picks its levels as it measures)."""
    mode = MODE_OF_KIND[load.kind]
    return [LevelSpec(index=i, mode=mode, value=float(v)) for i, v in enumerate(load.levels)]


def plan_level(cursor: RequestCursor, spec: LevelSpec, load: LoadConfig, workers: int) -> LevelPlan:
    """Plan one level of any mode."""
    if spec.mode is LoadMode.CONCURRENCY:
        return plan_closed_loop(cursor, spec, load, workers)
    if spec.mode is LoadMode.TRACE:
        return plan_trace(cursor, spec, load, workers)
    return plan_open_loop(cursor, spec, load, workers)
