"""Reshaping a trace by config, the same for every format: window, sample, time scale, target rate, caps.

Input: a reader's ``Source`` (rows stream in time order) and ``WorkloadConfig``.
Output: the kept rows as one ROW_SCHEMA table in time order, and a note for every
transformation. Window and sample work on the stream, so memory stays bounded by
what is kept; the rest works on the kept table.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadgen.config import ConfigError, WorkloadConfig
from loadgen.workload.errors import WorkloadError
from loadgen.workload.trace import ROW_SCHEMA, Source


def check(cfg: WorkloadConfig) -> None:
    """Raise ConfigError naming the key when reshaping options contradict each other."""
    if cfg.start_s is not None and cfg.start_s < 0:
        raise ConfigError(f"config key 'workload.start_s' is {cfg.start_s}; expected an offset >= 0 s.")
    if cfg.start_s is not None and cfg.end_s is not None and cfg.end_s <= cfg.start_s:
        raise ConfigError(f"config key 'workload.end_s' is {cfg.end_s}; expected an offset after workload.start_s ({cfg.start_s}).")
    if cfg.end_s is not None and cfg.end_s <= 0:
        raise ConfigError(f"config key 'workload.end_s' is {cfg.end_s}; expected a positive offset in s.")
    if cfg.target_rate is not None and cfg.time_scale != 1.0:
        raise ConfigError(
            f"config keys 'workload.time_scale' ({cfg.time_scale}) and 'workload.target_rate' ({cfg.target_rate}) "
            "both rescale time; expected only one of them."
        )
    for key in ("sample", "max_input_tokens", "max_output_tokens", "max_turns"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key 'workload.{key}' is {value}; expected a positive integer or null.")


def check_arrivals(src: Source, cfg: WorkloadConfig) -> None:
    """Raise when a time option is set for a source that has no arrival times."""
    if src.has_arrivals:
        return
    for key, unset in (("start_s", None), ("end_s", None), ("target_rate", None), ("time_scale", 1.0)):
        if getattr(cfg, key) != unset:
            raise WorkloadError(
                f"workload.{key} needs arrival times, but workload={src.kind} has none "
                "(arrivals are drawn by the load config instead)"
            )


def collect(src: Source, cfg: WorkloadConfig, notes: list[str]) -> pa.Table:
    """Window and sample the source as it streams; return the kept rows in time order."""
    batches: Iterator[pa.RecordBatch] = src.batches
    if cfg.start_s is not None or cfg.end_s is not None:
        batches = _window(batches, cfg.start_s, cfg.end_s, src, notes)
    if cfg.sample is not None:
        table = _sample(batches, cfg.sample, cfg.seed, notes)
    else:
        table = pa.Table.from_batches(list(batches), schema=ROW_SCHEMA)
    seq = table.column("seq").to_numpy()
    return table if np.all(seq[1:] >= seq[:-1]) else table.sort_by("seq")


def _window(
    batches: Iterator[pa.RecordBatch], start: Optional[float], end: Optional[float], src: Source, notes: list[str]
) -> Iterator[pa.RecordBatch]:
    lo = -np.inf if start is None else start
    hi = np.inf if end is None else end
    seen = kept = 0
    for batch in batches:
        arrival = batch.column("arrival_s").to_numpy(zero_copy_only=False)
        keep = (arrival >= lo) & (arrival < hi)
        seen += batch.num_rows
        kept += int(keep.sum())
        if keep.any():
            yield batch.filter(pa.array(keep))
        if len(arrival) and arrival[-1] >= hi:  # rows come in time order: nothing later can be kept
            notes.append(f"reading stopped at the window end: {src.rows_read} rows read")
            break
    src.remove(f"workload.start_s/end_s window [{_fmt(start, '0')}, {_fmt(end, 'end')}) s of the trace", seen - kept)


def _fmt(value: Optional[float], default: str) -> str:
    return default if value is None else f"{value:g}"


def _keys(units: np.ndarray, seed: int) -> np.ndarray:
    """A uniform 64-bit key per sampling unit (splitmix64 of seed and unit), independent of batching."""
    with np.errstate(over="ignore"):
        z = units.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _sample(batches: Iterator[pa.RecordBatch], n: int, seed: int, notes: list[str]) -> pa.Table:
    """The rows of the ``n`` units (requests, or whole sessions) with the smallest seeded keys."""
    kept: list[pa.RecordBatch] = []
    held = seen = 0
    for batch in batches:
        kept.append(batch)
        held += batch.num_rows
        seen += batch.num_rows
        if held >= max(2 * n, 1 << 16):
            kept = _smallest(kept, n, seed)
            held = sum(b.num_rows for b in kept)
    table = pa.Table.from_batches(_smallest(kept, n, seed), schema=ROW_SCHEMA)
    sessions = len(pc.unique(table.column("session_id").drop_null()))
    what = f"{sessions} whole sessions, " if sessions else ""
    notes.append(f"sample={n} (seed {seed}): kept {what}{table.num_rows} of {seen} requests, in time order")
    return table


def _smallest(batches: list[pa.RecordBatch], n: int, seed: int) -> list[pa.RecordBatch]:
    if not batches:
        return batches
    table = pa.Table.from_batches(batches, schema=ROW_SCHEMA)
    units = table.column("unit").to_numpy()
    distinct = np.sort(units)
    distinct = distinct[np.r_[True, distinct[1:] != distinct[:-1]]] if len(distinct) else distinct
    if len(distinct) <= n:
        return table.combine_chunks().to_batches()
    threshold = np.partition(_keys(distinct, seed), n - 1)[n - 1]
    keep = _keys(units, seed) <= threshold
    return table.filter(pa.array(keep)).combine_chunks().to_batches()


def transform(table: pa.Table, src: Source, cfg: WorkloadConfig, notes: list[str]) -> pa.Table:
    """Re-zero arrivals, apply time_scale or target_rate, and clip lengths; note each change."""
    if src.has_arrivals and table.num_rows:
        arrival = table.column("arrival_s").to_numpy(zero_copy_only=False).copy()
        first = float(np.nanmin(arrival))
        if first != 0.0:
            arrival -= first
            notes.append(f"arrivals re-zeroed: the first kept request (at {first:.3f} s in the trace) is at 0 s")
        if cfg.time_scale != 1.0:
            span = float(np.nanmax(arrival))
            arrival *= cfg.time_scale
            notes.append(
                f"time_scale={cfg.time_scale:g}: arrival offsets multiplied by {cfg.time_scale:g} "
                f"(span {span:.3f} s -> {span * cfg.time_scale:.3f} s)"
            )
        if cfg.target_rate is not None:
            arrival = _rate(arrival, _firsts(table), cfg.target_rate, notes)
        table = table.set_column(table.schema.get_field_index("arrival_s"), "arrival_s", pa.array(arrival, pa.float64()))
    for key, col in (("max_input_tokens", "input_tokens"), ("max_output_tokens", "output_tokens")):
        cap = getattr(cfg, key)
        if cap is None or not table.num_rows:
            continue
        over = int(pc.sum(pc.greater(table.column(col), cap)).as_py() or 0)
        if over:
            table = table.set_column(
                table.schema.get_field_index(col), col, pc.min_element_wise(table.column(col), pa.scalar(cap, pa.int64()))
            )
            notes.append(f"{key}={cap}: {over} requests clipped")
    return table


def _firsts(table: pa.Table) -> np.ndarray:
    """Mask of rows that start something: standalone requests and first turns of sessions."""
    turn = table.column("turn").to_numpy(zero_copy_only=False)
    return np.isnan(turn.astype(np.float64)) | (turn == 0)


def _rate(arrival: np.ndarray, firsts: np.ndarray, rate: float, notes: list[str]) -> np.ndarray:
    starts = arrival[firsts]
    span = float(np.max(starts) - np.min(starts)) if len(starts) else 0.0
    if len(starts) < 2 or span <= 0:
        raise WorkloadError(
            f"workload.target_rate needs at least two distinct arrival times; the kept trace has {len(starts)} "
            f"request(s) spanning {span:g} s"
        )
    before = len(starts) / span
    factor = before / rate
    notes.append(
        f"target_rate={rate:g}: every inter-arrival gap multiplied by {factor:.6g} "
        f"(mean rate {before:.4g} -> {rate:g} req/s = arrivals / span; order and burstiness kept)"
    )
    return arrival * factor
