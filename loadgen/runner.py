"""The driver: one run from config to run directory.

Input: a validated ``LoadgenConfig`` and a run directory. Output: ``run.json``,
``records/``, ``telemetry/``, then the analysis (``summary.*``, plots,
``report.html``). Steps: resolve the target (start the simulator, probe), load
the workload, start or join Ray, place workers, sync clocks, run each level
at a common start time with live progress, account for every request, stop
cleanly on Ctrl-C/SIGTERM, shut down.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np
from rich.console import Console

import loadgen
from loadgen import cluster as clusters
from loadgen.analysis import ClientBoundRule, LevelSummary, analyze_level
from loadgen.clock import now_ns
from loadgen.config import LoadgenConfig, redact
from loadgen.progress import LevelProgress
from loadgen.rundir import (
    Ledger,
    LevelEntry,
    LoadMode,
    RunMeta,
    RunStatus,
    records_root,
)
from loadgen.rundir.layout import SIM_GROUND_TRUTH, run_file
from loadgen.rundir.meta import empty_errors
from loadgen.rundir.parts import remove_unfinished_parts
from loadgen.rundir.read import worker_statuses
from loadgen.schedule import LevelPlan, LevelSpec, RequestCursor, level_specs, plan_level
from loadgen.scrape import MetricsScraper, scraper_for
from loadgen.target import ResolvedTarget, resolve
from loadgen.worker import LevelReport, LevelRun, TargetSpec
from loadgen.workload import load as load_workload

#: Seconds between the driver's start signal and the common start time of a level.
START_LEAD_S = 0.2
#: How long in-flight requests may finish after Ctrl-C/SIGTERM before they are cancelled.
STOP_GRACE_S = 3.0
POLL_S = 0.25


@dataclass
class RunState:
    """What the driver knows about a run; saved to run.json after every level."""

    run_dir: str
    meta: RunMeta
    scraper: Optional[MetricsScraper] = None  # the target's Prometheus metrics, sampled during levels

    def save(self) -> None:
        """Write run.json atomically."""
        self.meta.save(self.run_dir)


def _versions() -> dict[str, str]:
    # importlib.metadata, not `import ray`: Ray must not be imported before cluster.connect
    # has set up its environment (a local Ray stays on loopback only if told before import).
    from importlib.metadata import version

    return {
        "loadgen": loadgen.__version__,
        "python": platform.python_version(),
        **{name: version(name) for name in ("ray", "aiohttp", "httptools", "uvloop", "pyarrow", "numpy", "hydra-core")},
    }


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class _StopSignal:
    """Ctrl-C / SIGTERM turn into a flag the level loop checks; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: dict[int, object] = {}

    def __enter__(self) -> "_StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run(cfg: LoadgenConfig, run_dir: str, *, console: Optional[Console] = None, clock_skew_ns: Optional[dict[int, int]] = None) -> RunMeta:
    """Run every level of ``cfg`` into ``run_dir``; return the run metadata (run.json)."""
    console = console or Console(stderr=False)
    os.makedirs(run_dir, exist_ok=True)
    run_id = cfg.run_id or os.path.basename(os.path.abspath(run_dir))
    meta = RunMeta(run_id=run_id, started_at=_now_iso(), versions=_versions(), config=redact(cfg))
    state = RunState(run_dir, meta)
    state.save()
    started_ray = False
    pool = None
    target: Optional[ResolvedTarget] = None
    # Everything after run.json exists ends it one way or another: complete, interrupted or failed (with why).
    try:
        workload = load_workload(cfg.workload)
        meta.workload = workload.summary()
        console.print(
            f"workload: {workload.kind} ({workload.table.num_rows} requests"
            + (f", {sum(workload.skipped.values())} rows skipped" if workload.skipped else "")
            + ")"
        )
        ground_truth = run_file(run_dir, SIM_GROUND_TRUTH) if cfg.target.sim_ground_truth else None
        target = resolve(cfg.target, ground_truth=ground_truth)
        meta.target = target.summary()
        console.print(f"target: {target.base_url} (model {target.model}, {target.kind})")
        state.scraper = scraper_for(
            target.root_url, target.engine, cfg.target.metrics_path, cfg.target.scrape_interval_s,
            headers=target.auth_headers, on_problem=lambda msg: console.print(f"[yellow]{msg}[/]", highlight=False),
            target=cfg.target,  # scrape with the target's TLS options and proxy, as the load goes
        )
        started_ray = clusters.connect(cfg.cluster)
        spec = TargetSpec(base_url=target.base_url, model=target.model, config=cfg.target, api_key=target.api_key)
        pool = clusters.start_workers(
            cfg.cluster, run_id, spec, os.path.abspath(run_dir), clock_skew_ns=clock_skew_ns, urls=target.urls
        )
        meta.workers = clusters.sync_clocks(pool, cfg.cluster.clock_sync_samples)
        meta.nodes = _nodes()
        state.save()
        console.print(f"workers: {len(pool)} on {len(meta.nodes)} node(s)")
        with _StopSignal() as stop:
            _run_levels(cfg, workload, pool, state, console, stop.event, target)
        meta.status = RunStatus.INTERRUPTED if stop.event.is_set() else RunStatus.COMPLETE
    except KeyboardInterrupt:
        meta.status = RunStatus.INTERRUPTED
    except BaseException as exc:
        meta.status = RunStatus.FAILED
        meta.reason = _reason(exc)
        raise
    finally:
        if state.scraper is not None:
            state.scraper.stop()
            state.scraper.write(run_dir)
            meta.server_metrics = state.scraper.summary()
        meta.finished_at = _now_iso()
        state.save()
        if pool is not None:
            pool.close()
        clusters.shutdown(started_ray)
        # A worker killed mid-write leaves a hidden half-part; no writer is left now to finish it.
        remove_unfinished_parts(run_dir)
        if target is not None:
            target.close()
    return meta


def _nodes() -> list[dict[str, object]]:
    import ray

    return [
        {"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "cpus": n.get("Resources", {}).get("CPU", 0)}
        for n in ray.nodes()
        if n.get("Alive")
    ]


class LevelTimer:
    """Sizes each open-loop level to the latency it measures, so every level can be judged.

    A level is judged on a steady window that starts after its ramp (one
    service time: in-flight climbs from zero) and holds several service times
    (``loadgen.analysis.keepup``). The timer learns the longest service time
    seen so far and stretches the next rate level's warm-up and sending phase
    to fit it, up to ``load.max_duration_s``; a level found too short is run
    again, stretched, once.
    """

    def __init__(self, cfg: LoadgenConfig) -> None:
        self.cfg = cfg
        self.service_s: Optional[float] = None
        self.needed_s: dict[float, float] = {}  # level value -> the sending time its last run was too short for

    def config_for(self, spec: LevelSpec) -> LoadgenConfig:
        """The config a level runs with: the user's, with warm-up and duration stretched when needed."""
        load = self.cfg.load
        if spec.mode is not LoadMode.RATE or self.service_s is None or load.shape != "steady":
            return self.cfg
        warmup = max(load.warmup_s, RAMP_MARGIN * self.service_s)
        wanted = max(warmup + WINDOW_MARGIN * self.service_s, NEEDED_MARGIN * self.needed_s.get(spec.value, 0.0))
        duration = min(max(load.duration_s, wanted), max(load.max_duration_s, load.duration_s))
        warmup = min(warmup, duration / 2)
        # The last requests of the window must have time to be answered (the keep-up rule follows them).
        drain = max(load.drain_s, DRAIN_MARGIN * self.service_s)
        if duration == load.duration_s and warmup == load.warmup_s and drain == load.drain_s:
            return self.cfg
        stretched = dataclasses.replace(load, duration_s=duration, warmup_s=warmup, drain_s=drain)
        return dataclasses.replace(self.cfg, load=stretched)

    def learn(self, level: LevelSummary) -> bool:
        """Take in a judged level's service time; True when it was too short and a stretch would help.

        A level too short to judge says how long it needed (``KeepUp.needed_s``): a few
        service times, or longer for a borderline overload; its next run gets that.
        """
        ku = level.keep_up
        if ku is None or ku.service_s is None:
            return False
        self.service_s = max(self.service_s or 0.0, ku.service_s)
        too_short = not level.judged and level.stopped_early is None and ku.needed_s is not None
        if too_short:
            self.needed_s[level.value] = max(self.needed_s.get(level.value, 0.0), ku.needed_s)
        return too_short


#: Warm-up and window as multiples of the service time, a little above what the analysis needs.
RAMP_MARGIN = 1.25
WINDOW_MARGIN = 2.5
DRAIN_MARGIN = 3.0
#: A level re-run because it was too short gets this much more than it was said to need.
NEEDED_MARGIN = 1.1


def _run_levels(
    cfg: LoadgenConfig,
    workload,
    pool,
    state: RunState,
    console: Console,
    stop: threading.Event,
    target: ResolvedTarget,
) -> None:
    """Run the configured levels (or the adaptive search) until done, stopped, or out of time."""
    cursor = RequestCursor(workload)
    deadline = time.monotonic() + cfg.max_run_s
    timer = LevelTimer(cfg)

    def run_level(spec: LevelSpec, n_levels: int = 0) -> LevelSummary:
        level_cfg = timer.config_for(spec)
        _run_one(level_cfg, cursor, spec, pool, state, console, stop, n_levels)
        return analyze_level(state.run_dir, spec.index, cfg.slo, cfg.analysis, cfg.cluster)

    if cfg.load.kind == "search":
        from loadgen.search import run_search

        def searched(spec: LevelSpec) -> LevelSummary:
            level = run_level(spec)
            timer.learn(level)
            return level

        run_search(cfg, searched, stop, deadline)
        return
    values = [spec for spec in level_specs(cfg.load)]
    index = 0
    retried: set[float] = set()
    while values:
        if stop.is_set():
            break
        if time.monotonic() > deadline:
            console.print(f"[yellow]max_run_s={cfg.max_run_s:g} reached: the remaining levels are skipped[/]")
            break
        spec = dataclasses.replace(values[0], index=index)
        level = run_level(spec, index + len(values))
        index += 1
        if timer.learn(level) and spec.value not in retried and timer.config_for(spec) is not cfg:
            retried.add(spec.value)
            console.print(
                f"[yellow]level {spec.index} was too short to judge at this latency "
                f"(a request holds the server {timer.service_s:.3g} s): running {spec.value:g} {spec.mode.unit} again, longer[/]"
            )
            continue
        values.pop(0)


def _run_one(
    cfg: LoadgenConfig,
    cursor: RequestCursor,
    spec: LevelSpec,
    pool,
    state: RunState,
    console: Console,
    stop: threading.Event,
    n_levels: int,
) -> LevelEntry:
    """Plan, start, watch and account for one level; return its run.json entry."""
    import ray

    load = cfg.load
    driver_cpu0 = time.process_time()
    if state.meta.levels:
        # Clocks drift: re-measure between levels (run.json keeps every measurement).
        clusters.sync_clocks(pool, cfg.cluster.clock_sync_samples)
    plan, live = _prepare(cfg, cursor, spec, pool, state, console)
    if state.scraper is not None:
        state.scraper.set_level(spec.index)
        state.scraper.start()
    t0 = now_ns() + int(START_LEAD_S * 1e9) + pool.max_clock_uncertainty_ns()
    futures = [pool.actors[w].start_level.remote(t0) for w in live]

    # numbered as in the report, records (part-level-K-…) and run.json; the count is for progress
    title = f"level {spec.index} ({spec.index + 1}/{n_levels or '?'})  {spec.value:g} {spec.mode.unit}"
    results: dict[int, LevelReport] = {}
    lost: dict[int, str] = {}
    last_seen: dict[int, dict[str, object]] = {}  # each worker's latest live counters
    stopped: Optional[str] = None
    queue_t: list[int] = []
    queue_n: list[int] = []
    rule = ClientBoundRule.of(cfg.cluster)
    # The ETA: the levels after this one at the mean wall time of the levels already run.
    past_s = [(e.end_ns - e.start_ns) / 1e9 for e in state.meta.levels if e.start_ns and e.end_ns]
    after = max(n_levels - spec.index - 1, 0) if n_levels else None
    with LevelProgress(console, title, plan.duration_s, enabled=cfg.progress, levels_after=after, past_level_s=past_s) as progress:
        pending = dict(zip(futures, live))
        while pending:
            ready, _ = ray.wait(list(pending), timeout=POLL_S, num_returns=len(pending))
            for ref in ready:
                w = pending.pop(ref)
                try:
                    results[w] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a dead worker is data, not a crash
                    lost[w] = _reason(exc)
            if stop.is_set() and not stopped:
                stopped = "interrupted"
                for w in pending.values():
                    pool.actors[w].stop.remote(STOP_GRACE_S)
                console.print(f"[yellow]stopping: in-flight requests get {STOP_GRACE_S:g} s, then are cancelled[/]")
            counters = _poll(pool, pending.values())
            last_seen.update((c["worker_id"], c) for c in counters)
            if counters:
                elapsed = (now_ns() - t0) / 1e9
                progress.update(max(0.0, elapsed), counters)
                if elapsed > load.warmup_s:  # start-up stalls are not the steady state the verdict judges
                    progress.warn_client_bound(counters, rule, spec.mode.open_loop)
                if load.kind == "search" and load.warmup_s < elapsed <= plan.duration_s and not stopped:
                    queue_t.append(now_ns())
                    queue_n.append(sum(c["in_flight"] for c in counters))
                    if _over_saturated(queue_t, queue_n):
                        stopped = "queue growing"
                        for w in pending.values():
                            pool.actors[w].stop.remote(0.5)
                        console.print("[yellow]in-flight requests keep growing: the level is over-saturated, stopping it early[/]")

    shards = dict(zip(live, plan.shards))
    entry = _level_entry(state.run_dir, cfg, plan, t0, now_ns(), results, lost, shards, last_seen)
    entry.stopped_early = stopped
    entry.driver_cpu_s = time.process_time() - driver_cpu0
    state.meta.levels.append(entry)
    for w, why in lost.items():
        _mark_lost(state, w, why)
    state.save()
    _print_level(console, entry, rule)
    return entry


def _prepare(
    cfg: LoadgenConfig, cursor: RequestCursor, spec: LevelSpec, pool, state: RunState, console: Console
) -> tuple[LevelPlan, list[int]]:
    """Plan the level over the living workers and hand each its shard; return the plan and those workers.

    A worker found dead here is marked lost and the level is planned again over
    the others, so the level still offers its full load.
    """
    import ray

    load = cfg.load
    while True:
        live = [w for w, info in enumerate(state.meta.workers) if info.get("alive", True)]
        if not live:
            raise clusters.ClusterError("every worker actor was lost: none is left to send the remaining levels")
        n = len(live)
        plan = plan_level(cursor, spec, load, n)
        runs = [
            LevelRun(
                level=spec.index,
                mode=spec.mode,
                value=spec.value,
                duration_s=plan.duration_s,
                drain_s=load.drain_s,
                concurrency=plan.concurrency[i] if plan.concurrency else 0,
                think_time_s=load.think_time_s,
                max_concurrency=_share(load.max_concurrency, i, n),
                max_requests=plan.max_requests[i] if plan.max_requests else 0,
            )
            for i in range(n)
        ]
        # Shards travel and get unpacked first; the common start is set once every worker is ready.
        refs = {w: pool.actors[w].prepare_level.remote(r, ray.put(s)) for w, r, s in zip(live, runs, plan.shards)}
        dead: dict[int, str] = {}
        for w, ref in refs.items():
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                dead[w] = _reason(exc)
        if not dead:
            return plan, live
        for w, why in dead.items():
            _mark_lost(state, w, why)
        state.save()
        console.print(f"[yellow]workers {sorted(dead)} were lost before level {spec.index}; it runs on the others[/]")


def _reason(exc: BaseException) -> str:
    """Why a worker was lost (or a run failed), in one line."""
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _mark_lost(state: RunState, w: int, why: str) -> None:
    state.meta.workers[w]["alive"] = False
    state.meta.workers[w]["lost_reason"] = why


def _over_saturated(t_ns: list[int], in_flight: list[int]) -> bool:
    """Whether the in-flight count has been climbing steadily (arrivals outpace the server)."""
    from loadgen.analysis import queue_growing

    return len(t_ns) >= 8 and queue_growing(np.asarray(t_ns), np.asarray(in_flight), rel_rise=1.0, min_rise=16)


def _share(total: Optional[int], w: int, n: int) -> Optional[int]:
    if total is None:
        return None
    return max(1, total // n + (1 if w < total % n else 0))


def _poll(pool, workers) -> list[dict[str, object]]:
    import ray

    refs = [pool.actors[w].progress.remote() for w in workers]
    ready, _ = ray.wait(refs, timeout=1.0, num_returns=len(refs))
    out = []
    for ref in ready:
        try:
            out.append(ray.get(ref))
        except Exception:  # noqa: BLE001 - a worker that died shows up in the ledger
            pass
    return out


def _level_entry(
    run_dir: str,
    cfg: LoadgenConfig,
    plan: LevelPlan,
    t0: int,
    end_ns: int,
    results: dict[int, LevelReport],
    lost: dict[int, str],
    shards: dict[int, object],
    last_seen: dict[int, dict[str, object]],
) -> LevelEntry:
    """The run.json entry of a level: boundaries, ledger and each worker's raw timing health."""
    spec = plan.spec
    statuses: Counter[str] = Counter()
    not_sent: Counter[str] = Counter()
    planned = 0
    for r in results.values():
        statuses.update(r.statuses)
        not_sent.update(r.not_sent)
        planned += r.planned
    # A dead worker's flushed records are in the dataset. Of the rest of its shard, what its
    # last polled counters (or its records) show as sent is lost; the remainder was never sent.
    lost_sent = 0
    root = records_root(run_dir, cfg.cluster.records_uri)
    for w in lost:
        flushed = worker_statuses(root, spec.index, w)
        statuses.update(flushed)
        n_flushed = sum(flushed.values())
        seen = last_seen.get(w, {})
        sent_w = max(n_flushed, int(seen.get("sent", 0)) if seen.get("level") == spec.index else 0)
        planned_w = max(shards[w].num_rows, sent_w) if spec.mode.open_loop else sent_w
        planned += planned_w
        lost_sent += sent_w - n_flushed
        if planned_w > sent_w:
            not_sent["worker lost"] += planned_w - sent_w
    ledger = Ledger(
        planned=planned,
        sent=sum(statuses.values()) + lost_sent,
        not_sent=dict(not_sent),
        ok=statuses.get("ok", 0),
        errors={**empty_errors(), **{s: n for s, n in statuses.items() if s not in ("ok", "cancelled")}},
        cancelled=statuses.get("cancelled", 0),
        lost=lost_sent,
        lost_workers=sorted(lost),
    )
    duration_ns = int(plan.duration_s * 1e9)
    shaped = spec.mode is LoadMode.RATE
    return LevelEntry(
        level=spec.index,
        mode=spec.mode,
        value=spec.value,
        offered_rps=plan.offered_rps,
        planned=plan.planned,
        arrival=cfg.load.arrival if shaped else None,
        shape=cfg.load.shape if shaped else "steady",
        step_at_ns=t0 + int(cfg.load.step_at_s * 1e9) if shaped and cfg.load.shape != "steady" else None,
        start_ns=t0,
        send_end_ns=t0 + duration_ns,
        end_ns=end_ns,
        steady_start_ns=t0 + int(cfg.load.warmup_s * 1e9),
        steady_end_ns=t0 + duration_ns,
        ledger=ledger,
        workers=[r.health for _, r in sorted(results.items())],
        notes=list(plan.notes),
    )


def _print_level(console: Console, entry: LevelEntry, rule: ClientBoundRule) -> None:
    """One line per level as it ends: what was sent and how it ended, lost workers, client-bound workers."""
    led = entry.ledger
    assert led is not None
    line = (
        f"level {entry.level}: {entry.value:g} {entry.mode.unit}  sent {led.sent}/{led.planned}  "
        f"ok {led.ok}  errors {led.error_total}  cancelled {led.cancelled}"
    )
    if led.lost_workers:
        unsent = led.not_sent.get("worker lost", 0)
        line += f"  [red]workers {led.lost_workers} died: {led.lost} sent but unrecorded, {unsent} never sent[/]"
    bound = rule.judge(
        {w.worker_id: w.loop_lag_ms_p99 for w in entry.workers},
        {w.worker_id: w.schedule_lag_ms_p99 for w in entry.workers if w.sent} if entry.mode.open_loop else None,
    )
    if bound:
        line += f"  [yellow]client-bound (workers {sorted(bound)})[/]"
    console.print(line)
