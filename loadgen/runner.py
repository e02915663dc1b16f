"""The driver: one run from config to run directory.

Input: a validated ``LoadgenConfig`` and a run directory. Output: ``run.json``,
``records/``, ``telemetry/``, then the analysis (``summary.*``, plots,
``report.html``). Steps: resolve the target (start the simulator, probe), load
the workload, start or join Ray, place workers, sync clocks, run each level
at a common start time with live progress, account for every request, stop
cleanly on Ctrl-C/SIGTERM, shut down.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from rich.console import Console

import loadgen
from loadgen import cluster as clusters
from loadgen.config import LoadgenConfig, api_key, redact
from loadgen.progress import LevelProgress
from loadgen.records import STATUSES
from loadgen.scrape import MetricsScraper, scraper_for
from loadgen.schedule import LevelPlan, LevelSpec, RequestCursor, level_specs, plan_level
from loadgen.target import ResolvedTarget, resolve
from loadgen.worker import LevelRun, TargetSpec
from loadgen.workload import load as load_workload

#: Seconds between the driver's start signal and the common start time of a level.
START_LEAD_S = 0.2
#: How long in-flight requests may finish after Ctrl-C/SIGTERM before they are cancelled.
STOP_GRACE_S = 3.0
POLL_S = 0.25


@dataclass
class RunState:
    """What the driver knows about a run; serialised to run.json after every level."""

    run_dir: str
    meta: dict[str, Any] = field(default_factory=dict)
    scraper: Optional[MetricsScraper] = None  # the target's Prometheus metrics, sampled during levels

    def save(self) -> None:
        """Write run.json atomically."""
        path = os.path.join(self.run_dir, "run.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.meta, f, indent=2, default=str)
        os.replace(tmp, path)


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
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run(cfg: LoadgenConfig, run_dir: str, *, console: Optional[Console] = None, clock_skew_ns: Optional[dict[int, int]] = None) -> dict[str, Any]:
    """Run every level of ``cfg`` into ``run_dir``; return the run metadata (run.json)."""
    console = console or Console(stderr=False)
    os.makedirs(run_dir, exist_ok=True)
    run_id = cfg.run_id or os.path.basename(os.path.abspath(run_dir))
    state = RunState(
        run_dir,
        {
            "run_id": run_id,
            "status": "running",
            "started_at": _now_iso(),
            "finished_at": None,
            "versions": _versions(),
            "config": redact(cfg),
            "levels": [],
        },
    )
    state.save()

    workload = load_workload(cfg.workload)
    state.meta["workload"] = workload.summary()
    console.print(
        f"workload: {workload.kind} ({workload.table.num_rows} requests"
        + (f", {sum(workload.skipped.values())} rows skipped" if workload.skipped else "")
        + ")"
    )

    ground_truth = os.path.join(run_dir, "sim_ground_truth.parquet") if cfg.target.sim_ground_truth else None
    target = resolve(clusters.primary_target(cfg.target), ground_truth=ground_truth)
    fleet = clusters.probe_fleet(cfg.target, target.model) if cfg.target.urls else None
    state.meta["target"] = {**target.summary(), **({"urls": fleet} if fleet else {})}
    console.print(f"target: {target.base_url} (model {target.model}, {target.kind})")
    started_ray = False
    pool = None
    headers = {"Authorization": f"Bearer {api_key(cfg.target)}"} if api_key(cfg.target) else None
    state.scraper = scraper_for(
        target.root_url, target.engine, cfg.target.metrics_path, cfg.target.scrape_interval_s,
        headers=headers, on_problem=lambda msg: console.print(f"[yellow]{msg}[/]", highlight=False),
    )
    try:
        started_ray = clusters.connect(cfg.cluster)
        spec = TargetSpec(base_url=target.base_url, model=target.model, config=cfg.target, api_key=api_key(cfg.target))
        pool = clusters.start_workers(
            cfg.cluster, run_id, spec, os.path.abspath(run_dir), clock_skew_ns=clock_skew_ns, urls=fleet
        )
        clock = clusters.DriverClock()
        state.meta["workers"] = clusters.sync_clocks(pool, clock, cfg.cluster.clock_sync_samples)
        state.meta["nodes"] = _nodes()
        state.save()
        console.print(f"workers: {len(pool)} on {len(state.meta['nodes'])} node(s)")
        with _StopSignal() as stop:
            _run_levels(cfg, workload, pool, clock, state, console, stop.event, target)
        state.meta["status"] = "interrupted" if stop.event.is_set() else "complete"
    except KeyboardInterrupt:
        state.meta["status"] = "interrupted"
    except BaseException:
        state.meta["status"] = "failed"
        raise
    finally:
        if state.scraper is not None:
            state.scraper.stop()
            state.scraper.write(run_dir)
            state.meta["server_metrics"] = state.scraper.summary()
        state.meta["finished_at"] = _now_iso()
        state.save()
        if pool is not None:
            pool.close()
        clusters.shutdown(started_ray)
        target.close()
    return state.meta


def _nodes() -> list[dict[str, Any]]:
    import ray

    return [
        {"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "cpus": n.get("Resources", {}).get("CPU", 0)}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def _run_levels(
    cfg: LoadgenConfig,
    workload,
    pool,
    clock: clusters.DriverClock,
    state: RunState,
    console: Console,
    stop: threading.Event,
    target: ResolvedTarget,
) -> None:
    """Run the configured levels (or the adaptive search) until done, stopped, or out of time."""
    cursor = RequestCursor(workload)
    deadline = time.monotonic() + cfg.max_run_s
    specs = level_specs(cfg.load)
    if cfg.load.kind == "search":
        from loadgen.search import run_search

        run_search(
            cfg, lambda spec: _run_one(cfg, cursor, spec, pool, clock, state, console, stop, 0), state.run_dir, stop, deadline
        )
        return
    for spec in specs:
        if stop.is_set():
            break
        if time.monotonic() > deadline:
            console.print(f"[yellow]max_run_s={cfg.max_run_s:g} reached: the remaining levels are skipped[/]")
            break
        _run_one(cfg, cursor, spec, pool, clock, state, console, stop, len(specs))


def _run_one(
    cfg: LoadgenConfig,
    cursor: RequestCursor,
    spec: LevelSpec,
    pool,
    clock: clusters.DriverClock,
    state: RunState,
    console: Console,
    stop: threading.Event,
    n_levels: int,
) -> dict[str, Any]:
    """Plan, start, watch and account for one level; return its run.json entry."""
    import ray

    load = cfg.load
    driver_cpu0 = time.process_time()
    if state.meta["levels"]:
        # Clocks drift: re-measure between levels (run.json keeps every measurement).
        clusters.sync_clocks(pool, clock, cfg.cluster.clock_sync_samples)
    plan, live = _prepare(cfg, cursor, spec, pool, state, console)
    if state.scraper is not None:
        state.scraper.set_level(spec.index)
        state.scraper.start()
    t0 = clock.now() + int(START_LEAD_S * 1e9) + pool.max_clock_uncertainty_ns()
    futures = [pool.actors[w].start_level.remote(t0) for w in live]

    # numbered as in the report, records (level=K) and run.json; the count is for progress
    title = f"level {spec.index} ({spec.index + 1}/{n_levels or '?'})  {spec.value:g} {_UNITS[spec.mode]}"
    results: dict[int, dict[str, Any]] = {}
    lost: dict[int, str] = {}
    last_seen: dict[int, dict[str, Any]] = {}  # each worker's latest live counters
    stopped: Optional[str] = None
    queue_t: list[int] = []
    queue_n: list[int] = []
    with LevelProgress(console, title, plan.duration_s, enabled=cfg.progress) as progress:
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
                elapsed = (clock.now() - t0) / 1e9
                progress.update(max(0.0, elapsed), counters)
                progress.warn_client_bound(counters, cfg.cluster.loop_lag_warn_ms)
                if load.kind == "search" and load.warmup_s < elapsed <= plan.duration_s and not stopped:
                    queue_t.append(clock.now())
                    queue_n.append(sum(c["in_flight"] for c in counters))
                    if _over_saturated(queue_t, queue_n):
                        stopped = "queue growing"
                        for w in pending.values():
                            pool.actors[w].stop.remote(0.5)
                        console.print("[yellow]in-flight requests keep growing: the level is over-saturated, stopping it early[/]")

    shards = dict(zip(live, plan.shards))
    entry = _level_entry(state.run_dir, cfg, plan, t0, clock.now(), results, lost, shards, last_seen)
    entry["stopped_early"] = stopped
    entry["driver_cpu_s"] = time.process_time() - driver_cpu0
    state.meta["levels"].append(entry)
    for w, why in lost.items():
        _mark_lost(state, w, why)
    state.save()
    _print_level(console, entry)
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
        live = [w for w, info in enumerate(state.meta["workers"]) if info.get("alive", True)]
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
                think_time_s=load.think_time_s if spec.mode == "concurrency" else cfg.workload.think_time_s,
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
    """Why a worker was lost, in one line."""
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _mark_lost(state: RunState, w: int, why: str) -> None:
    state.meta["workers"][w]["alive"] = False
    state.meta["workers"][w]["lost_reason"] = why


def _over_saturated(t_ns: list[int], in_flight: list[int]) -> bool:
    """Whether the in-flight count has been climbing steadily (arrivals outpace the server)."""
    from loadgen.analysis import queue_growing

    return len(t_ns) >= 8 and queue_growing(np.asarray(t_ns), np.asarray(in_flight), rel_rise=1.0, min_rise=16)


def _share(total: Optional[int], w: int, n: int) -> Optional[int]:
    if total is None:
        return None
    return max(1, total // n + (1 if w < total % n else 0))


def _poll(pool, workers) -> list[dict[str, Any]]:
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
    results: dict[int, dict[str, Any]],
    lost: dict[int, str],
    shards: dict[int, Any],
    last_seen: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    """The run.json entry of a level: boundaries, ledger, per-worker health, client-bound flag."""
    spec = plan.spec
    statuses: Counter[str] = Counter()
    not_sent: Counter[str] = Counter()
    planned = 0
    for r in results.values():
        statuses.update(r["statuses"])
        not_sent.update(r["not_sent"])
        planned += r["planned"]
    # A dead worker's flushed records are in the dataset. Of the rest of its shard, what its
    # last polled counters (or its records) show as sent is lost; the remainder was never sent.
    lost_sent = 0
    for w in lost:
        flushed = _flushed_statuses(run_dir, spec.index, w)
        statuses.update(flushed)
        n_flushed = sum(flushed.values())
        seen = last_seen.get(w, {})
        sent_w = max(n_flushed, seen.get("sent", 0) if seen.get("level") == spec.index else 0)
        planned_w = max(shards[w].num_rows, sent_w) if spec.mode != "concurrency" else sent_w
        planned += planned_w
        lost_sent += sent_w - n_flushed
        if planned_w > sent_w:
            not_sent["worker lost"] += planned_w - sent_w
    sent = sum(statuses.values()) + lost_sent
    ledger = {
        "planned": planned,
        "sent": sent,
        "not_sent": dict(not_sent),
        "ok": statuses.get("ok", 0),
        "errors": {s: statuses.get(s, 0) for s in STATUSES if s not in ("ok", "cancelled")},
        "cancelled": statuses.get("cancelled", 0),
        "lost": lost_sent,
        "lost_workers": sorted(lost),
    }
    workers = [
        {
            "worker_id": w,
            "sent": sum(r["statuses"].values()),
            "loop_lag_ms_p99": r["loop_lag_ms_p99"],
            "loop_lag_ms_max": r["loop_lag_ms_max"],
            "schedule_lag_ms_p50": r["schedule_lag_ms_p50"],
            "schedule_lag_ms_p99": r["schedule_lag_ms_p99"],
            "schedule_lag_ms_max": r["schedule_lag_ms_max"],
            "cpu_percent": r["cpu_percent"],
            "cpu_s": r.get("cpu_s"),
        }
        for w, r in sorted(results.items())
    ]
    c = cfg.cluster
    open_loop = spec.mode != "concurrency"
    bound = [
        w["worker_id"]
        for w in workers
        if w["loop_lag_ms_p99"] > c.loop_lag_warn_ms or (open_loop and w["sent"] and w["schedule_lag_ms_p99"] > c.schedule_lag_warn_ms)
    ]
    duration_ns = int(plan.duration_s * 1e9)
    return {
        **plan.summary(),
        "arrival": cfg.load.arrival if spec.mode == "rate" else None,
        "shape": cfg.load.shape if spec.mode == "rate" else "steady",
        "step_at_ns": t0 + int(cfg.load.step_at_s * 1e9) if spec.mode == "rate" and cfg.load.shape != "steady" else None,
        "start_ns": t0,
        "send_end_ns": t0 + duration_ns,
        "end_ns": end_ns,
        "steady_start_ns": t0 + int(cfg.load.warmup_s * 1e9),
        "steady_end_ns": t0 + duration_ns,
        "ledger": ledger,
        "workers": workers,
        "client_bound": bool(bound),
        "client_bound_workers": bound,
    }


def _flushed_statuses(run_dir: str, level: int, worker: int) -> Counter[str]:
    """Status counts of the records a worker wrote for a level before it died."""
    import pyarrow.dataset as ds

    from loadgen.records import part_dir

    path = part_dir(os.path.join(run_dir, "records"), level, worker)
    files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".parquet")] if os.path.isdir(path) else []
    if not files:
        return Counter()
    table = ds.dataset(files, format="parquet").to_table(columns=["status"])
    return Counter(table.column("status").to_pylist())


_UNITS = {"rate": "req/s", "concurrency": "streams", "trace": "x trace speed"}


def _print_level(console: Console, entry: dict[str, Any]) -> None:
    led = entry["ledger"]
    errors = sum(led["errors"].values())
    line = (
        f"level {entry['level']}: {entry['value']:g} {_UNITS[entry['mode']]}  sent {led['sent']}/{led['planned']}  "
        f"ok {led['ok']}  errors {errors}  cancelled {led['cancelled']}"
    )
    if led["lost_workers"]:
        unsent = led["not_sent"].get("worker lost", 0)
        line += f"  [red]workers {led['lost_workers']} died: {led['lost']} sent but unrecorded, {unsent} never sent[/]"
    if entry["client_bound"]:
        line += f"  [yellow]client-bound (workers {entry['client_bound_workers']})[/]"
    console.print(line)
