"""One load level summarised and judged: metrics, keeping up, SLOs, client-bound workers, ledger.

Input: the level's records (``RECORD_SCHEMA`` table), its ``LevelEntry`` from
run.json and the optional telemetry samples of the level. Output: ``LevelSummary``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadgen.analysis.health import ClientBoundRule, p99_by_worker
from loadgen.analysis.keepup import KeepUp, keep_up
from loadgen.analysis.metrics import (
    MISSING,
    NS_PER_MS,
    LevelMetrics,
    RequestTimes,
    Window,
    level_metrics,
)
from loadgen.analysis.transient import StepResponse, step_response
from loadgen.config import AnalysisConfig, ClusterConfig, SLOConfig
from loadgen.rundir import Ledger, LevelEntry, LoadMode

#: ``LevelEntry.stopped_early`` of a level the user stopped: not a verdict on the server.
INTERRUPTED = "interrupted"


@dataclass
class LevelSummary:
    """A level's identity, metrics and verdicts."""

    level: int
    mode: LoadMode
    value: float  # req/s, streams or time-scale, as configured
    offered_rps: Optional[float]  # planned arrivals / sending time (None for closed loop)
    window_start_ns: int
    window_end_ns: int
    metrics: LevelMetrics
    ledger: Ledger
    keep_up_ratio: Optional[float] = None  # served / offered in the window, by Little's law (open loop)
    kept_up: bool = True  # served >= saturation_tolerance * offered, less 1σ (open loop)
    keep_up: Optional[KeepUp] = None  # the figures the keep-up judgement rests on (open loop)
    judged: bool = True  # False: too short to judge, or interrupted; left out of the run's verdicts
    not_judged: str = ""  # why the level was not judged
    slo_met: bool = True  # slo.percentile of every set SLO within its bound
    failures: list[str] = field(default_factory=list)  # why kept_up or slo_met is False, in words
    notes: list[str] = field(default_factory=list)  # caveats that are not failures (e.g. too few samples for a percentile)
    client_bound: bool = False
    client_bound_workers: list[int] = field(default_factory=list)
    client_bound_reasons: list[str] = field(default_factory=list)
    stopped_early: Optional[str] = None  # reason the runner cut the level short (queues growing)
    step: Optional[StepResponse] = None  # step/burst levels: time to first success and to the new rate

    def __post_init__(self) -> None:
        self.mode = LoadMode(self.mode)

    @property
    def open_loop(self) -> bool:
        """Whether arrivals followed a schedule (rate or trace) rather than closed-loop streams."""
        return self.mode.open_loop

    @property
    def load(self) -> float:
        """The x-axis value of the level: offered req/s for open loop, concurrency for closed loop."""
        if self.open_loop:
            return self.offered_rps if self.offered_rps is not None else self.metrics.scheduled_rps
        return self.value

    @property
    def passed(self) -> bool:
        """Kept up, met its SLOs and was not stopped early for growing queues."""
        return self.judged and self.kept_up and self.slo_met and self.stopped_early is None


def steady_window(entry: LevelEntry, times: RequestTimes) -> Window:
    """The level's steady window from run.json, else the span of its scheduled send times."""
    start, end = entry.steady_start_ns, entry.steady_end_ns
    if start is not None and end is not None and end > start:
        return Window(int(start), int(end))
    t = times.scheduled[times.scheduled != MISSING]
    if t.size == 0:
        return Window(0, 0)
    return Window(int(t.min()), int(t.max()) + 1)


def client_bound(
    times: RequestTimes,
    loop_lag_ms: np.ndarray,
    entry: LevelEntry,
    telemetry: Optional[pa.Table],
    rule: ClientBoundRule,
    window: Window,
    connect_ms: Optional[np.ndarray] = None,
) -> tuple[list[int], list[str], list[str]]:
    """Workers whose schedule lag or event-loop lag marks the level client-bound, why, and start-up notes.

    ``ClientBoundRule`` is applied over the steady window only: to the lags of
    the requests scheduled in it and to the workers' loop-lag telemetry sampled
    in it. Stalls while the level started (warm-up: connections opening,
    first writes) do not make it client-bound; when the p99s the workers
    reported for the whole level break the rule but the window does not, that
    is returned as a note. A connection opened during the level delays its
    request by the connect (``connect_ms``: the server's accept backlog, not
    loadgen's loop), so that time is not counted as loadgen's lag.
    """
    in_window = window.contains(times.scheduled)
    lag, valid = times.schedule_lag()
    if connect_ms is not None:
        lag = lag - np.nan_to_num(connect_ms, nan=0.0) * NS_PER_MS
    valid &= in_window
    schedule = [p99_by_worker(times.worker_id[valid], lag[valid] / NS_PER_MS)]
    loop = [p99_by_worker(times.worker_id[in_window], loop_lag_ms[in_window])]
    if telemetry is not None and telemetry.num_rows:
        t = pc.fill_null(telemetry.column("t_ns"), MISSING).to_numpy() if "t_ns" in telemetry.column_names else None
        keep = window.contains(t) if t is not None else np.ones(telemetry.num_rows, bool)
        loop.append(
            p99_by_worker(
                pc.fill_null(telemetry.column("worker_id"), -1).to_numpy()[keep],
                pc.fill_null(telemetry.column("loop_lag_ms"), np.nan).to_numpy().astype(np.float64)[keep],
            )
        )
    found: dict[int, str] = {}
    for judged in [rule.judge({}, p99s) for p99s in schedule] + [rule.judge(p99s) for p99s in loop]:
        for w, why in judged.items():
            found.setdefault(w, why)
    whole = rule.judge(
        {w.worker_id: w.loop_lag_ms_p99 for w in entry.workers},
        {w.worker_id: w.schedule_lag_ms_p99 for w in entry.workers if w.sent} if entry.mode.open_loop else None,
    )
    notes = [
        f"start-up stall, not counted: {why} over the whole level, within bounds in the steady window"
        for w, why in whole.items()
        if w not in found
    ]
    workers = sorted(w for w in found if w >= 0)
    return workers, [found[w] for w in workers], notes


def connect_notes(table: pa.Table) -> list[str]:
    """A note when requests opened their own connections during the level (``connect_ms`` set), else none.

    Workers open a level's connections before it starts; a connection opened
    during it puts its connect time (a SYN retransmit: 1 s and more) between the
    request's schedule and its send, so the level's queued latencies carry it.
    """
    if "connect_ms" not in table.column_names:
        return []
    ms = pc.drop_null(table.column("connect_ms")).to_numpy().astype(np.float64)
    if not ms.size:
        return []
    return [
        f"{ms.size:,} connections were opened during the level (p99 connect {np.percentile(ms, 99):.3g} ms, "
        f"max {ms.max():.3g} ms): their connect time is in queued TTFT and schedule lag, not in TTFT"
    ]


def judge(
    level: LevelSummary, slo: SLOConfig, analysis: AnalysisConfig
) -> tuple[Optional[float], bool, bool, list[str]]:
    """Keep-up ratio, kept_up, slo_met and the failures in words, for a judged level.

    Keeping up is ``level.keep_up``'s verdict (Little's law on the in-flight
    count, open loop only); errors beyond ``1 − saturation_tolerance`` of the
    window's requests also mean the server did not keep up.
    """
    m = level.metrics
    failures = []
    ratio = None
    kept_up = True
    ku = level.keep_up
    if level.open_loop and ku is not None:
        ratio, kept_up = ku.ratio, ku.kept_up
        if not kept_up:
            failures.append(ku.reason)
    if m.requests and m.error_rate > 1.0 - analysis.saturation_tolerance:
        kept_up = False
        failures.append(f"{m.error_rate:.0%} of the window's requests failed (> {1.0 - analysis.saturation_tolerance:.0%})")
    slo_met = True
    for key, value in m.slo_percentiles.items():
        bound = getattr(slo, key)
        if value is None or value > bound:
            slo_met = False
            shown = "no data" if value is None else f"{value:.4g} ms"
            failures.append(f"p{slo.percentile:g} {key[:-3].upper()} {shown} > {bound:g} ms")
    if m.requests and not m.completed:
        slo_met = False
        failures.append("no request completed in the steady window")
    return ratio, kept_up, slo_met, failures


def summarize_level(
    table: pa.Table,
    entry: LevelEntry,
    slo: SLOConfig,
    analysis: AnalysisConfig,
    cluster: ClusterConfig,
    telemetry: Optional[pa.Table] = None,
) -> LevelSummary:
    """Summarise and judge one level from its records and its run.json entry."""
    times = RequestTimes.from_table(table)
    window = steady_window(entry, times)
    status_counts = {
        str(s["values"]): int(s["counts"]) for s in pc.value_counts(table.column("status")).to_pylist()
    }
    if entry.ledger is not None:
        ledger = dataclasses.replace(entry.ledger, records=table.num_rows, source="run.json")
    else:
        ledger = Ledger.from_status_counts(status_counts)
    summary = LevelSummary(
        level=entry.level,
        mode=entry.mode,
        value=entry.value,
        offered_rps=entry.offered_rps,
        window_start_ns=window.start_ns,
        window_end_ns=window.end_ns,
        metrics=level_metrics(table, window, slo, times),
        ledger=ledger,
        stopped_early=entry.stopped_early or None,
    )
    if summary.open_loop:
        summary.keep_up = keep_up(times, window, entry.start_ns, analysis.saturation_tolerance)
        if not summary.keep_up.judgeable:
            summary.judged, summary.not_judged = False, summary.keep_up.reason
    if summary.stopped_early == INTERRUPTED:
        summary.judged, summary.not_judged = False, "interrupted (Ctrl-C/SIGTERM) before it ended"
    summary.keep_up_ratio, summary.kept_up, summary.slo_met, summary.failures = judge(summary, slo, analysis)
    if summary.stopped_early and summary.stopped_early != INTERRUPTED:
        summary.failures.append(f"stopped early: {summary.stopped_early}")
    loop_lag = pc.fill_null(table.column("loop_lag_ms"), np.nan).to_numpy().astype(np.float64)
    connect = (
        pc.fill_null(table.column("connect_ms"), np.nan).to_numpy().astype(np.float64)
        if "connect_ms" in table.column_names
        else None
    )
    summary.client_bound_workers, summary.client_bound_reasons, stalls = client_bound(
        times, loop_lag, entry, telemetry, ClientBoundRule.of(cluster), window, connect
    )
    summary.notes += list(entry.notes) + stalls + connect_notes(table)
    summary.client_bound = bool(summary.client_bound_reasons)
    if entry.step_at_ns is not None:
        summary.step = step_response(
            times.scheduled, times.end, times.ok, int(entry.step_at_ns), summary.value,
            entry.shape, tolerance=analysis.saturation_tolerance,
        )
    return summary
