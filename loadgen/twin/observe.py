"""What a run shows of the engine's steps: per-gap batch sizes and prefill loads, reconstructed from records.

Input: one run directory (records with per-token arrival times, ``server_metrics.parquet``
when the engine exports metrics). Output: ``Observations``, flat numpy arrays:

- one row per inter-token gap of every ok streamed request (a gap is one engine step
  when one token is streamed per step): its length, the number of sequences
  decoding during it, the prompt tokens prefilled in it (requests whose first token
  arrived at its end) and the context those decoding sequences held;
- one row per request that found the server idle (its TTFT is one prefill step);
- the saturation evidence: client in-flight against decoding sequences per level,
  and the server's own running/waiting/KV-usage samples.

The reconstruction needs no server cooperation: every quantity is a count over
the records' own timestamps (sorted arrays and ``searchsorted``, so a million
gaps take a second).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow.compute as pc

from loadgen.rundir import LoadMode, RunDirError, read_meta, read_records, read_server_metrics

_COLUMNS = ["level", "sent_ns", "first_token_ns", "end_ns", "input_tokens", "prompt_tokens", "output_tokens", "chunk_ns", "status"]


@dataclass
class LevelView:
    """One level as the fit sees it: its load, how full the engine was, how far the client pushed."""

    level: int
    mode: str
    value: float
    requests: int
    decoding_p99: float  # sequences decoding at once, 99th percentile over the level's token times
    in_flight_p50: float  # the client's open requests, median over the same times


@dataclass
class Observations:
    """The regression rows and the saturation evidence of one or more runs (arrays concatenated)."""

    gap_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    gap_decoding: np.ndarray = field(default_factory=lambda: np.empty(0))
    gap_prefill: np.ndarray = field(default_factory=lambda: np.empty(0))
    gap_context: np.ndarray = field(default_factory=lambda: np.empty(0))
    gap_firsts: np.ndarray = field(default_factory=lambda: np.empty(0))  # first tokens that arrived with the gap's end
    idle_ttft_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    idle_prompt: np.ndarray = field(default_factory=lambda: np.empty(0))
    tokens_per_chunk: float = 1.0
    max_prompt: int = 0
    max_output: int = 0
    max_context: int = 0  # prompt + output of the largest request seen
    requests: int = 0
    levels: list[LevelView] = field(default_factory=list)
    engine: str = "generic"
    model: Optional[str] = None
    # the server's own gauges (None when it exports none)
    running_max: Optional[float] = None
    waiting_max: Optional[float] = None
    kv_usage_max: Optional[float] = None
    kv_tokens_estimates: list[float] = field(default_factory=list)  # tokens held / usage fraction, per sample
    run_dirs: list[str] = field(default_factory=list)

    def extend(self, other: Observations) -> None:
        """Add another run's rows (each run was reconstructed on its own timeline)."""
        for name in ("gap_s", "gap_decoding", "gap_prefill", "gap_context", "gap_firsts", "idle_ttft_s", "idle_prompt"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))
        n = self.requests + other.requests
        self.tokens_per_chunk = (self.tokens_per_chunk * self.requests + other.tokens_per_chunk * other.requests) / max(n, 1)
        self.requests = n
        self.max_prompt = max(self.max_prompt, other.max_prompt)
        self.max_output = max(self.max_output, other.max_output)
        self.max_context = max(self.max_context, other.max_context)
        self.levels += other.levels
        self.engine = other.engine if self.engine == "generic" else self.engine
        self.model = self.model or other.model
        for name in ("running_max", "waiting_max", "kv_usage_max"):
            a, b = getattr(self, name), getattr(other, name)
            setattr(self, name, b if a is None else a if b is None else max(a, b))
        self.kv_tokens_estimates += other.kv_tokens_estimates
        self.run_dirs += other.run_dirs


def _count_at(sorted_times: np.ndarray, t: np.ndarray) -> np.ndarray:
    """How many of ``sorted_times`` are <= each ``t``."""
    return np.searchsorted(sorted_times, t, side="right")


def observe(run_dir: str) -> Observations:
    """Reconstruct the engine's steps from one run directory (see the module docstring)."""
    meta = read_meta(run_dir)
    if meta is None:
        raise RunDirError(f"{run_dir}: no run.json; not a loadgen run directory")
    table = read_records(run_dir, columns=_COLUMNS)
    ok = pc.and_(pc.equal(table.column("status"), "ok"), pc.greater(pc.list_value_length(table.column("chunk_ns")), 0))
    table = table.filter(pc.fill_null(ok, False))
    obs = Observations(run_dirs=[run_dir], engine=str(meta.target.get("engine") or meta.config_section("target").get("engine") or "generic"))
    obs.model = meta.target.get("model")
    if table.num_rows == 0:
        return obs
    chunks = table.column("chunk_ns").combine_chunks()
    flat = chunks.flatten().to_numpy().astype(np.int64)
    offsets = chunks.offsets.to_numpy().astype(np.int64)
    counts = np.diff(offsets)
    first = flat[offsets[:-1]]
    last = flat[offsets[1:] - 1]
    sent = table.column("sent_ns").to_numpy(zero_copy_only=False).astype(np.int64)
    prompt = table.column("prompt_tokens").fill_null(table.column("input_tokens")).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    output = table.column("output_tokens").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    level = table.column("level").to_numpy(zero_copy_only=False)
    n = table.num_rows
    obs.requests = n
    obs.tokens_per_chunk = float(np.median(np.maximum(output, 1) / counts))
    obs.max_prompt, obs.max_output = int(prompt.max()), int(output.max())
    obs.max_context = int((prompt + output).max())

    # Decoding interval of each request: [first token, last token); sorted endpoints answer "how many at t".
    first_sorted, last_sorted = np.sort(first), np.sort(last)
    by_first = np.argsort(first, kind="stable")
    prompt_cum = np.concatenate(([0], np.cumsum(prompt[by_first])))
    prompt_by_last = np.concatenate(([0], np.cumsum(prompt[np.argsort(last, kind="stable")])))
    out_by_last = np.concatenate(([0], np.cumsum(counts[np.argsort(last, kind="stable")])))
    flat_sorted = np.sort(flat)

    # Gaps: every chunk but each request's first, against the one before it.
    starts = np.zeros(len(flat), dtype=bool)
    starts[offsets[:-1]] = True
    idx = np.flatnonzero(~starts)
    prev, nxt = flat[idx - 1], flat[idx]
    gap = (nxt - prev).astype(np.float64)
    mid = prev + (gap / 2).astype(np.int64)
    decoding = _count_at(first_sorted, mid) - _count_at(last_sorted, mid)
    # First tokens written at the end of this step reach the client within a fraction of a step
    # of our own token; shift the window by 30 % of the gap so jitter does not move them a step.
    shift = (0.3 * gap).astype(np.int64)
    hi, lo = _count_at(first_sorted, nxt + shift), _count_at(first_sorted, prev + shift)
    prefill = prompt_cum[hi] - prompt_cum[lo]
    firsts = hi - lo
    # Context held by the decoding sequences: their prompts plus the tokens they have received.
    started = _count_at(first_sorted, mid)
    ended = _count_at(last_sorted, mid)
    prompts_decoding = prompt_cum[started] - prompt_by_last[ended]
    tokens_decoding = _count_at(flat_sorted, mid) - out_by_last[ended]
    context = prompts_decoding + tokens_decoding * obs.tokens_per_chunk
    keep = gap > 0
    obs.gap_s = gap[keep] / 1e9
    obs.gap_decoding = decoding[keep].astype(np.float64)
    obs.gap_prefill = prefill[keep].astype(np.float64)
    obs.gap_context = context[keep].astype(np.float64)
    obs.gap_firsts = firsts[keep].astype(np.float64)

    # Requests that found the server idle: nothing else between being sent and being answered.
    sent_sorted, end_sorted = np.sort(sent), np.sort(last)
    in_flight_at_send = _count_at(sent_sorted, sent) - _count_at(end_sorted, sent) - 1
    idle = in_flight_at_send == 0
    # ...and nothing else sent before its first token came back
    idle &= _count_at(sent_sorted, first) - _count_at(sent_sorted, sent) == 0
    obs.idle_ttft_s = (first[idle] - sent[idle]) / 1e9
    obs.idle_prompt = prompt[idle].astype(np.float64)

    # Per level: how many sequences the engine decoded at once, against what the client kept open.
    for entry in meta.levels:
        sel = level == entry.level
        if not sel.any():
            continue
        t = flat[np.repeat(sel, counts)]
        dec = _count_at(first_sorted, t) - _count_at(last_sorted, t)
        open_ = _count_at(sent_sorted, t) - _count_at(end_sorted, t)
        obs.levels.append(
            LevelView(
                level=entry.level,
                mode=LoadMode(entry.mode).value,
                value=float(entry.value),
                requests=int(sel.sum()),
                decoding_p99=float(np.percentile(dec, 99)),
                in_flight_p50=float(np.percentile(open_, 50)),
            )
        )
    _server_gauges(obs, run_dir, first, last, flat, offsets, prompt, output)
    return obs


def _server_gauges(
    obs: Observations,
    run_dir: str,
    first: np.ndarray,
    last: np.ndarray,
    flat: np.ndarray,
    offsets: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
) -> None:
    """The engine's running/waiting/KV-usage samples, and KV capacity estimates from usage fractions."""
    metrics = read_server_metrics(run_dir)
    if metrics is None or metrics.num_rows == 0:
        return
    names = metrics.column("name").to_numpy(zero_copy_only=False)
    values = metrics.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    t_ns = metrics.column("t_ns").to_numpy(zero_copy_only=False).astype(np.int64)
    for canonical, attr in (("running", "running_max"), ("waiting", "waiting_max"), ("kv_cache_usage", "kv_usage_max")):
        sel = names == canonical
        if sel.any():
            setattr(obs, attr, float(values[sel].max()))
    sel = (names == "kv_cache_usage") & (values > 0)
    if not sel.any():
        return
    # Tokens the engine held at each sample: every started, unfinished request's prompt plus what it has
    # generated by then (an engine that reserves max_tokens at admission, like loadgen's simulator, holds
    # prompt + output from the start).
    reserves = obs.engine == "sim"
    for t, usage in zip(t_ns[sel], values[sel]):
        active = (first <= t) & (last > t)
        if not active.any():
            continue
        if reserves:
            held = float((prompt[active] + output[active]).sum())
        else:
            generated = np.array([np.searchsorted(flat[offsets[i] : offsets[i + 1]], t, side="right") for i in np.flatnonzero(active)])
            held = float((prompt[active] + generated * obs.tokens_per_chunk).sum())
        obs.kv_tokens_estimates.append(held / usage)
