"""Per-request and per-level metrics, each defined once and computed vectorised.

Input: the records of one load level (a pyarrow Table with ``RECORD_SCHEMA``)
and its steady-state window. Output: ``LevelMetrics`` — latency distributions
(exact percentiles), throughput, errors by class, peak concurrency and goodput.
The formulas are written out in ``docs/metrics.md``; each function below
names its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadgen.analysis.confidence import Interval, effective_count, order_stat_ranks
from loadgen.config import SLOConfig

#: Marks a null time in the int64 arrays below (real times are positive epoch nanoseconds).
MISSING = np.iinfo(np.int64).min
NS_PER_MS = 1e6
NS_PER_S = 1e9
#: The percentiles reported for every distribution.
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
#: Their names in ``Dist`` and in ``Dist.ci``.
PERCENTILE_NAMES = ("p50", "p90", "p95", "p99", "p999")
#: Percentiles sampled for distribution plots: 0 to 99.99, evenly spaced in -log10(1 - q).
CDF_PERCENTILES = tuple(float(q) for q in 100.0 * (1.0 - 10.0 ** -np.linspace(0.0, 4.0, 41)))
#: Record columns the metrics read (everything except ids and text).
METRIC_COLUMNS = [
    "worker_id",
    "scheduled_ns",
    "sent_ns",
    "first_token_ns",
    "first_answer_ns",
    "end_ns",
    "output_tokens",
    "chunk_ns",
    "status",
    "loop_lag_ms",
    "connect_ms",  # for the level's note on connections opened during it
]


class Sample:
    """A sorted (optionally weighted) sample: sorted once, then any percentile is read in O(1).

    Unweighted percentiles use numpy's default (linear) method. Weighted, they
    use the same method on the sample in which value *i* occurs ``weights[i]``
    times, extended to fractional weights.
    """

    def __init__(self, values: np.ndarray, weights: Optional[np.ndarray] = None, owned: bool = False) -> None:
        """``owned``: the caller no longer needs ``values`` in their order, so they may be sorted in place."""
        self.size = int(values.size)
        # Weighted (ITL): the effective sample size sets the width of the confidence intervals.
        self.effective_size = effective_count(weights, self.size)
        self.mean = float(np.average(values, weights=weights)) if self.size else float("nan")
        if weights is None:
            self.sorted = _sorted(values, owned)
            self.cum: Optional[np.ndarray] = None
        else:
            self.sorted, order = _stable_sort(values)
            self.cum = np.cumsum(weights[order], dtype=np.float64)

    def quantiles(self, qs: Sequence[float]) -> np.ndarray:
        """Percentiles ``qs`` (0–100); NaN for an empty sample."""
        q = np.asarray(qs, dtype=np.float64)
        if self.size == 0:
            return np.full(q.shape, np.nan)
        v = self.sorted
        if self.cum is None:
            pos = q / 100.0 * (self.size - 1)
            lo = np.floor(pos).astype(np.int64)
            hi = np.minimum(lo + 1, self.size - 1)
        else:
            pos = np.clip(q / 100.0 * (self.cum[-1] - 1.0), 0.0, None)
            # Value at position p of the expanded sample: the first value whose cumulative weight exceeds p.
            lo = np.minimum(np.searchsorted(self.cum, np.floor(pos), side="right"), self.size - 1)
            hi = np.minimum(np.searchsorted(self.cum, np.floor(pos) + 1.0, side="right"), self.size - 1)
        frac = pos - np.floor(pos)
        low = v[lo].astype(np.float64)
        return low + frac * (v[hi].astype(np.float64) - low)

    def _order_stat(self, rank: Optional[int]) -> Optional[float]:
        """The rank-th smallest (1-based) of ``effective_size`` values; None for no rank.

        Weighted, rank r of n_eff is read at the same fraction (r − 1)/(n_eff − 1) of the weighted sample.
        """
        if rank is None:
            return None
        if self.cum is None:
            return float(self.sorted[rank - 1])
        fraction = (rank - 1) / (self.effective_size - 1) if self.effective_size > 1 else 0.0
        return float(self.quantiles([100.0 * fraction])[0])

    def interval(self, percentile: float) -> Interval:
        """95 % order-statistic bounds (input units) on a percentile (0–100); None where too few samples."""
        lo, hi = order_stat_ranks(self.effective_size, float(percentile))
        return self._order_stat(lo), self._order_stat(hi)

    def dist_ms(self) -> Dist:
        """The reported summary with each percentile's confidence interval, converted from ns to ms."""
        if self.size == 0:
            return Dist()
        p = self.quantiles(PERCENTILES) / NS_PER_MS
        ci = {name: _ms(self.interval(q)) for name, q in zip(PERCENTILE_NAMES, PERCENTILES)}
        return Dist(
            count=self.size,
            mean=self.mean / NS_PER_MS,
            p50=float(p[0]),
            p90=float(p[1]),
            p95=float(p[2]),
            p99=float(p[3]),
            p999=float(p[4]),
            max=float(self.sorted[-1]) / NS_PER_MS,
            ci=ci,
        )

    def cdf_ms(self) -> list[float]:
        """The distribution at ``CDF_PERCENTILES``, in ms (empty for no data)."""
        return [float(v) for v in self.quantiles(CDF_PERCENTILES) / NS_PER_MS] if self.size else []


def _ms(bounds: Interval) -> Interval:
    """An interval in ns as ms (None stays None)."""
    return tuple(None if b is None else b / NS_PER_MS for b in bounds)  # type: ignore[return-value]


def _narrow(values: np.ndarray) -> np.ndarray:
    """int64 durations as int32 when they fit (exact, and twice as fast to sort)."""
    if values.dtype == np.int64 and values.size and values.max() < 2**31 and values.min() >= -(2**31):
        return values.astype(np.int32)
    return values


def _sorted(values: np.ndarray, in_place: bool = False) -> np.ndarray:
    """``np.sort(values)``, narrowed to int32 when the values fit; at most one copy (none when ``in_place``).

    A level's ITL gaps are the largest array the analysis holds; sorting them
    where they are keeps a second copy out of the peak memory.
    """
    narrow = _narrow(values)
    if narrow is values and not in_place:
        return np.sort(values)
    narrow.sort()  # a copy of its own after narrowing, or the caller's array to reorder
    return narrow


def _stable_sort(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values[order], order)`` with ``order = np.argsort(values, kind="stable")``, ~5× faster for integer durations.

    Each value's offset from the minimum goes in the high 32 bits of a key and
    its index in the low 32, so the keys are distinct and one unstable
    (vectorised) sort of them yields the stable order, and the sorted values
    with it; other dtypes or ranges fall back to argsort.
    """
    n = values.size
    if values.dtype.kind != "i" or n == 0 or n >= 2**32 or int(values.max()) - int(values.min()) >= 2**31:
        order = np.argsort(values, kind="stable")
        return values[order], order
    low = int(values.min())
    keys = (values.astype(np.int64) - low) << 32
    keys |= np.arange(n, dtype=np.int64)
    keys.sort()
    order = keys & 0xFFFFFFFF
    keys >>= 32
    keys += low
    return keys.astype(values.dtype, copy=False), order


def quantiles(values: np.ndarray, qs: Sequence[float], weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact percentiles ``qs`` (0–100) of ``values`` (see ``Sample`` for the method); NaN when empty."""
    return Sample(values, weights).quantiles(qs)


@dataclass
class Dist:
    """One latency distribution in milliseconds: count, mean, percentiles, max (None when empty).

    ``ci`` holds each percentile's 95 % confidence interval (low, high) in ms,
    keyed like the fields (p50 … p999); a side is None when the sample is too
    small to bound it (see ``loadgen.analysis.confidence``).
    """

    count: int = 0
    mean: Optional[float] = None
    p50: Optional[float] = None
    p90: Optional[float] = None
    p95: Optional[float] = None
    p99: Optional[float] = None
    p999: Optional[float] = None
    max: Optional[float] = None
    ci: dict[str, Interval] = field(default_factory=dict)

    @classmethod
    def of(cls, values_ns: np.ndarray, weights: Optional[np.ndarray] = None) -> Dist:
        """Summarise nanosecond values (optionally weighted) in milliseconds."""
        return Sample(values_ns, weights).dist_ms()


@dataclass(frozen=True)
class Window:
    """A level's steady-state window [start_ns, end_ns) on the run clock."""

    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        """Length of the window in seconds."""
        return (self.end_ns - self.start_ns) / NS_PER_S

    def contains(self, t: np.ndarray) -> np.ndarray:
        """Which of the times ``t`` (ns, MISSING for null) fall inside the window."""
        return (t >= self.start_ns) & (t < self.end_ns)


def _times(table: pa.Table, name: str) -> np.ndarray:
    return pc.fill_null(table.column(name), MISSING).to_numpy()


@dataclass
class RequestTimes:
    """One level's per-request columns as numpy arrays; null times are ``MISSING``, null counts -1."""

    scheduled: np.ndarray
    sent: np.ndarray
    first_token: np.ndarray
    end: np.ndarray
    output_tokens: np.ndarray
    ok: np.ndarray
    worker_id: np.ndarray
    first_answer: Optional[np.ndarray] = None  # first_answer_ns (records from before it existed: None)

    @classmethod
    def from_table(cls, table: pa.Table) -> RequestTimes:
        """Extract the columns; a null ``scheduled_ns`` (closed loop) falls back to ``sent_ns``."""
        sent = _times(table, "sent_ns")
        scheduled = _times(table, "scheduled_ns")
        scheduled = np.where(scheduled == MISSING, sent, scheduled)
        return cls(
            scheduled=scheduled,
            sent=sent,
            first_token=_times(table, "first_token_ns"),
            end=_times(table, "end_ns"),
            output_tokens=pc.fill_null(table.column("output_tokens"), -1).to_numpy().astype(np.int64),
            ok=pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(),
            worker_id=pc.fill_null(table.column("worker_id"), -1).to_numpy(),
            first_answer=_times(table, "first_answer_ns") if "first_answer_ns" in table.column_names else None,
        )

    def __len__(self) -> int:
        return int(self.sent.size)

    def _span(self, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = (start != MISSING) & (stop != MISSING)
        return np.where(valid, stop - start, 0), valid

    def ttft(self) -> tuple[np.ndarray, np.ndarray]:
        """TTFT = first_token_ns − sent_ns (values, defined-mask)."""
        return self._span(self.sent, self.first_token)

    def ttft_answer(self) -> tuple[np.ndarray, np.ndarray]:
        """Time to first answer token = first_answer_ns − sent_ns: TTFT without a reasoning model's thinking."""
        if self.first_answer is None:
            return np.zeros(len(self), dtype=np.int64), np.zeros(len(self), dtype=bool)
        return self._span(self.sent, self.first_answer)

    def queued_ttft(self) -> tuple[np.ndarray, np.ndarray]:
        """Queued TTFT = first_token_ns − scheduled_ns: what a user waiting since the intended send saw."""
        return self._span(self.scheduled, self.first_token)

    def e2e(self) -> tuple[np.ndarray, np.ndarray]:
        """E2E = end_ns − sent_ns."""
        return self._span(self.sent, self.end)

    def queued_e2e(self) -> tuple[np.ndarray, np.ndarray]:
        """Queued E2E = end_ns − scheduled_ns."""
        return self._span(self.scheduled, self.end)

    def schedule_lag(self) -> tuple[np.ndarray, np.ndarray]:
        """Schedule lag = sent_ns − scheduled_ns: how late loadgen sent the request."""
        return self._span(self.scheduled, self.sent)

    def tpot(self) -> tuple[np.ndarray, np.ndarray]:
        """TPOT = (end_ns − first_token_ns) / (output_tokens − 1), for output_tokens ≥ 2."""
        span, valid = self._span(self.first_token, self.end)
        valid &= self.output_tokens >= 2
        return np.where(valid, span / np.maximum(self.output_tokens - 1, 1), 0.0), valid

    def normalized(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalized latency = E2E / output_tokens, for output_tokens ≥ 1."""
        span, valid = self.e2e()
        valid &= self.output_tokens >= 1
        return np.where(valid, span / np.maximum(self.output_tokens, 1), 0.0), valid


@dataclass
class ChunkScan:
    """What one pass over the ``chunk_ns`` lists yields."""

    itl_ns: np.ndarray  # gaps between consecutive content chunks of the selected requests
    itl_weights: Optional[np.ndarray]  # tokens carried by the chunk closing each gap (None: all 1)
    chunks: np.ndarray  # chunks per request
    tokens_in_window: float  # output tokens (chunk-weighted) that arrived inside the window


def scan_chunks(
    chunks: pa.ChunkedArray, select: np.ndarray, output_tokens: np.ndarray, window: Window
) -> ChunkScan:
    """ITL gaps of the ``select``-ed requests and token arrivals in ``window``, vectorised per slice of requests.

    A chunk carries ``output_tokens / len(chunk_ns)`` tokens of its request (the
    server's usage count spread over its chunks; 1 when usage is missing), so
    multi-token chunks weigh as many tokens as they delivered.
    """
    pieces = _pieces(chunks)
    lengths_all = [pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64) for arr in pieces]
    lengths_level = np.concatenate(lengths_all) if lengths_all else np.empty(0, np.int64)
    gaps = _Gaps(int(np.maximum(lengths_level - 1, 0)[select].sum()))
    gap_weights: list[Optional[np.ndarray]] = []  # None for an Arrow chunk whose gaps all weigh 1
    tokens = 0.0
    row = 0
    for arr, lengths in zip(pieces, lengths_all):
        n = len(arr)
        sel, out = select[row : row + n], output_tokens[row : row + n]
        row += n
        values = arr.flatten().to_numpy()
        if values.size == 0:
            continue
        weight = np.where((out >= 0) & (lengths > 0), out / np.maximum(lengths, 1), 1.0)
        starts = np.cumsum(lengths) - lengths
        tokens += _tokens_in_window(values, starts, lengths, weight, window)
        # Every chunk but a request's first closes a gap; keep the gaps of selected requests.
        closes = np.repeat(sel, lengths)
        closes[starts[lengths > 0]] = False
        gaps.append(np.diff(values)[closes[1:]])
        gap_weights.append(_gap_weights(weight, lengths, sel))
    return ChunkScan(
        itl_ns=gaps.array(),
        itl_weights=_join_weights(gaps.sizes, gap_weights),
        chunks=lengths_level,
        tokens_in_window=tokens,
    )


#: Requests scanned at a time: bounds the temporary per-chunk arrays (~2.6 M timestamps: ~50 MB) at any level size.
SCAN_ROWS = 65_536


def _pieces(chunks: pa.ChunkedArray) -> list[pa.Array]:
    """The Arrow chunks cut into zero-copy slices of at most ``SCAN_ROWS`` requests, in order."""
    return [arr.slice(lo, SCAN_ROWS) for arr in chunks.chunks for lo in range(0, len(arr), SCAN_ROWS)]


class _Gaps:
    """A level's ITL gaps, appended Arrow chunk by Arrow chunk into one array allocated up front.

    int32 while every gap fits (exact, half the memory, twice as fast to sort),
    int64 from the first one that does not; no per-chunk lists to concatenate,
    so the level's gaps are held once.
    """

    def __init__(self, total: int) -> None:
        self.data = np.empty(total, np.int32)
        self.used = 0
        self.sizes: list[int] = []  # gaps appended per Arrow chunk (for the weights)

    def append(self, gaps: np.ndarray) -> None:
        """Add one Arrow chunk's gaps (int64 ns)."""
        if self.data.dtype == np.int32 and gaps.size and not (-(2**31) <= gaps.min() and gaps.max() < 2**31):
            self.data = self.data.astype(np.int64)
        self.data[self.used : self.used + gaps.size] = gaps  # cast in the copy when int32: checked to fit
        self.used += gaps.size
        self.sizes.append(gaps.size)

    def array(self) -> np.ndarray:
        """The gaps appended so far, in request order."""
        return self.data[: self.used]


def _gap_weights(weight: np.ndarray, lengths: np.ndarray, select: np.ndarray) -> Optional[np.ndarray]:
    """Each selected request's chunk weight repeated once per gap it closes; None when every such weight is 1.

    Unweighted is the common case (one token per chunk), and skipping the
    array there saves a float64 per gap.
    """
    per_row = np.maximum(lengths - 1, 0)
    if not np.any(weight[select & (per_row > 0)] != 1.0):
        return None
    return np.repeat(weight[select], per_row[select])


def _join_weights(sizes: list[int], weights: list[Optional[np.ndarray]]) -> Optional[np.ndarray]:
    """The per-gap weights of all Arrow chunks (``sizes`` gaps each) as one array, ones where a chunk had None.

    None when every chunk had None (all weights 1: the unweighted sample).
    """
    if all(w is None for w in weights):
        return None
    return np.concatenate([np.ones(n) if w is None else w for n, w in zip(sizes, weights)])


def _tokens_in_window(
    values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, weight: np.ndarray, window: Window
) -> float:
    """Weighted count of chunk times inside the window; only requests straddling an edge are looked at per chunk."""
    some = lengths > 0
    first = values[starts[some]]
    last = values[starts[some] + lengths[some] - 1]  # chunk_ns is in arrival order
    w, n = weight[some], lengths[some]
    inside = (first >= window.start_ns) & (last < window.end_ns)
    edge = ~inside & (last >= window.start_ns) & (first < window.end_ns)
    total = float(np.dot(n[inside], w[inside]))
    if np.any(edge):
        seg_len = n[edge]
        seg_start = np.cumsum(seg_len) - seg_len
        idx = np.repeat(starts[some][edge] - seg_start, seg_len) + np.arange(int(seg_len.sum()))
        counts = np.add.reduceat(window.contains(values[idx]).astype(np.int64), seg_start)
        total += float(np.dot(counts, w[edge]))
    return total


def peak_in_flight(start: np.ndarray, end: np.ndarray) -> int:
    """Most requests open at once, from [start, end) intervals (an open end counts as never closing)."""
    if start.size == 0:
        return 0
    base = int(start.min())
    end = np.where(end == MISSING, max(int(start.max()), int(end.max())) + 1, end)
    # One sortable key per event: time × 2, +1 for an open, so a close sorts before an open at the same time.
    keys = np.concatenate(((start - base) * 2 + 1, (end - base) * 2))
    keys.sort()
    return int(np.cumsum(np.where(keys & 1, 1, -1).astype(np.int32)).max())


def in_flight_at(start: np.ndarray, end: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Requests open at each time in ``t``: started at or before it and not yet ended."""
    end = np.where(end == MISSING, np.iinfo(np.int64).max, end)
    return np.searchsorted(np.sort(start), t, side="right") - np.searchsorted(np.sort(end), t, side="right")


def meets_slo(times: RequestTimes, slo: SLOConfig, streamed: bool) -> np.ndarray:
    """Per request: status ok and every set SLO met (TTFT/TPOT only checked when the level streamed).

    A TTFT objective needs a first token; TPOT is undefined (and so not failed)
    for a single-token answer.
    """
    good = times.ok.copy()
    if streamed and slo.ttft_ms is not None:
        ttft, valid = times.ttft()
        good &= valid & (ttft <= slo.ttft_ms * NS_PER_MS)
    if streamed and slo.tpot_ms is not None:
        tpot, valid = times.tpot()
        good &= ~valid | (tpot <= slo.tpot_ms * NS_PER_MS)
    if slo.e2e_ms is not None:
        e2e, valid = times.e2e()
        good &= valid & (e2e <= slo.e2e_ms * NS_PER_MS)
    return good


@dataclass
class LevelMetrics:
    """Every metric of one level; latencies over ok requests scheduled in the steady window."""

    window_s: float = 0.0
    requests: int = 0  # requests scheduled in the window (any status)
    completed: int = 0  # ok requests that ended in the window
    achieved_rps: float = 0.0  # completed / window_s
    scheduled_rps: float = 0.0  # requests / window_s: the load actually offered in the window
    expected: int = 0  # completions the window should hold if the server kept up: the requests scheduled in it
    output_tok_s: float = 0.0  # output tokens arriving in the window / window_s
    streamed: bool = False  # whether any request streamed content chunks
    ttft: Dist = field(default_factory=Dist)
    ttft_answer: Dist = field(default_factory=Dist)  # time to the first answer token (equals ttft unless the model reasons)
    queued_ttft: Dist = field(default_factory=Dist)
    itl: Dist = field(default_factory=Dist)
    tpot: Dist = field(default_factory=Dist)
    e2e: Dist = field(default_factory=Dist)
    queued_e2e: Dist = field(default_factory=Dist)
    normalized: Dist = field(default_factory=Dist)  # ms per output token
    schedule_lag: Dist = field(default_factory=Dist)
    errors: dict[str, int] = field(default_factory=dict)  # non-ok requests in the window, by status
    error_rate: float = 0.0  # non-ok / requests
    peak_in_flight: int = 0  # over the whole level
    good: int = 0  # requests in the window meeting every SLO
    attainment: Optional[float] = None  # good / requests
    goodput_rps: float = 0.0  # ok completions in the window meeting every SLO / window_s
    slo_percentiles: dict[str, Optional[float]] = field(default_factory=dict)  # slo.percentile of each SLO'd metric, ms
    cdf: dict[str, list[float]] = field(default_factory=dict)  # ttft/itl/e2e at CDF_PERCENTILES, ms


def level_metrics(
    table: pa.Table, window: Window, slo: SLOConfig, times: Optional[RequestTimes] = None
) -> LevelMetrics:
    """Compute ``LevelMetrics`` for one level's records (``times``: their columns, if already extracted)."""
    times = times if times is not None else RequestTimes.from_table(table)
    in_window = window.contains(times.scheduled)
    measured = in_window & times.ok  # the latency population
    chunk_scan = scan_chunks(table.column("chunk_ns"), measured, times.output_tokens, window)
    streamed = bool(np.any(chunk_scan.chunks > 0))

    ended = window.contains(times.end)
    unstreamed_done = ended & times.ok & (chunk_scan.chunks == 0) & (times.output_tokens > 0)
    tokens = chunk_scan.tokens_in_window + float(times.output_tokens[unstreamed_done].sum())
    completed = int(np.count_nonzero(ended & times.ok))
    requests = int(np.count_nonzero(in_window))
    seconds = window.seconds if window.seconds > 0 else float("inf")  # an empty level has no rates

    def dist(metric: tuple[np.ndarray, np.ndarray], rows: np.ndarray = measured) -> np.ndarray:
        values, valid = metric
        return values[rows & valid]

    ttft = Sample(dist(times.ttft()))
    e2e = Sample(dist(times.e2e()))
    tpot = Sample(dist(times.tpot()))
    itl = Sample(chunk_scan.itl_ns, chunk_scan.itl_weights, owned=True)  # the gaps' order is not needed again
    status = table.column("status").filter(pa.array(in_window & ~times.ok))
    errors = {str(c["values"]): int(c["counts"]) for c in pc.value_counts(status).to_pylist()}

    good_rows = meets_slo(times, slo, streamed)
    slo_samples = {"ttft_ms": ttft if streamed else None, "tpot_ms": tpot if streamed else None, "e2e_ms": e2e}
    slo_percentiles = {
        key: float(sample.quantiles([slo.percentile])[0] / NS_PER_MS) if sample.size else None
        for key, sample in slo_samples.items()
        if getattr(slo, key) is not None and sample is not None
    }
    return LevelMetrics(
        window_s=window.seconds,
        requests=requests,
        completed=completed,
        achieved_rps=completed / seconds,
        scheduled_rps=requests / seconds,
        expected=requests,
        output_tok_s=tokens / seconds,
        streamed=streamed,
        ttft=ttft.dist_ms(),
        ttft_answer=Dist.of(dist(times.ttft_answer())),
        queued_ttft=Dist.of(dist(times.queued_ttft())),
        itl=itl.dist_ms(),
        tpot=tpot.dist_ms(),
        e2e=e2e.dist_ms(),
        queued_e2e=Dist.of(dist(times.queued_e2e())),
        normalized=Dist.of(dist(times.normalized())),
        schedule_lag=Dist.of(dist(times.schedule_lag(), in_window)),
        errors=errors,
        error_rate=(requests - int(np.count_nonzero(measured))) / requests if requests else 0.0,
        peak_in_flight=peak_in_flight(times.sent[times.sent != MISSING], times.end[times.sent != MISSING]),
        good=int(np.count_nonzero(good_rows & in_window)),
        attainment=float(np.count_nonzero(good_rows & in_window)) / requests if requests else None,
        goodput_rps=float(np.count_nonzero(good_rows & ended)) / seconds,
        slo_percentiles=slo_percentiles,
        cdf={"ttft": ttft.cdf_ms(), "itl": itl.cdf_ms(), "e2e": e2e.cdf_ms()},
    )
