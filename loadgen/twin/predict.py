"""Predict a run offline: the load config's levels through a twin fleet in virtual time, into a run directory.

Input: a ``LoadgenConfig`` (workload, load, SLOs and analysis exactly as ``loadgen``
would use them), a ``SimProfile`` (a twin), a replica count and a balancer.
Output: a run directory of the same shape as a measured run — records written
through ``loadgen.rundir`` (per-token times in ``chunk_ns``), ``run.json`` as a
``RunMeta`` whose target says ``kind: predicted`` — then ``loadgen.report.report_run``
writes the summary, plots and report, so ``loadgen-report`` reads and compares
predicted runs as it does measured ones.

Levels are planned by ``loadgen.schedule`` (the same arrivals, the same rows, the
same seeds), sized by the runner's own ``LevelTimer`` and, for ``load=search``,
chosen by ``loadgen.search``. Each level is a discrete-event loop: client events
(scheduled arrivals, a closed-loop stream's next request, a session's next turn)
interleave with the replicas' step ends; nothing sleeps, so minutes of load take
seconds. Requests still unfinished when a level's drain ends are cancelled, as
the live worker does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

import loadgen
from loadgen.analysis import LevelSummary, analyze_level
from loadgen.clock import now_ns
from loadgen.config import LoadgenConfig, SimProfile, redact
from loadgen.rundir import RECORD_FIELDS, Ledger, LevelEntry, LoadMode, PartWriter, RunMeta, RunStatus, WorkerHealth, part_dir, records_root
from loadgen.rundir.meta import empty_errors
from loadgen.rundir.parts import Buffered, to_batch
from loadgen.runner import LevelTimer
from loadgen.schedule import LevelSpec, RequestCursor, level_specs, plan_level
from loadgen.sim.engine import Seq, block_hashes
from loadgen.twin.fleet import Fleet, Request
from loadgen.workload import load as load_workload

#: Virtual seconds between one level's end and the next level's start (the live driver's sync and lead).
LEVEL_GAP_S = 1.0
#: Records are written in parts of at most this many requests.
PART_ROWS = 50_000


@dataclass
class _Sent:
    """One request the virtual client sent: its row, times, and the fleet's handle."""

    row: int
    cycle: int
    scheduled: float
    sent: float
    request: Request
    stream: int = -1  # closed loop: which stream sent it
    session_rows: list[int] = field(default_factory=list)  # open loop: the session's later turns


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class _Rows:
    """Column access to a level's shard, and each row's engine sequence as the simulator would build it."""

    def __init__(self, shard: pa.Table, profile: SimProfile, api: str, affine: bool = False) -> None:
        self.table = shard
        self.cols = {n: shard.column(n).to_pylist() for n in ("request_id", "session_id", "turn", "input_tokens", "output_tokens")}
        self.profile = profile
        self.affine = affine  # the balancer needs the first block's hash even without prefix caching
        self.messages = shard.column("messages").to_pylist() if api == "chat" else None
        self.counts = None
        self.prompts = None
        if self.messages is None and not profile.prefix_caching and not affine:
            # only the word counts matter: count in Arrow, without a Python string per prompt
            prompt = shard.column("prompt")
            self.counts = pc.fill_null(pc.count_substring_regex(prompt, r"\S+"), 0).to_numpy(zero_copy_only=False)
        elif self.messages is None:
            self.prompts = shard.column("prompt").to_pylist()

    def seq(self, k: int) -> Seq:
        """The engine sequence of row ``k``: prompt tokens counted (and hashed) as the simulator's server does."""
        if self.counts is not None:
            n = int(self.counts[k])
            n_prompt = n if n else max(int(self.cols["input_tokens"][k] or 1), 1)
            out = max(int(self.cols["output_tokens"][k] or 1), 1)
            return Seq(n_prompt, out, max_tokens=out)
        if self.messages is not None:
            words = [w for m in self.messages[k] or () for w in str(m.get("content") or "").split()]
        else:
            text = self.prompts[k]
            words = text.split() if text else []
        # the simulator counts a prompt's words; a row without text is taken at its token count
        n_prompt = len(words) if words else max(int(self.cols["input_tokens"][k] or 1), 1)
        out = max(int(self.cols["output_tokens"][k] or 1), 1)
        bs = self.profile.block_size
        hashes = block_hashes(words, bs) if self.profile.prefix_caching else block_hashes(words[:bs], bs) if self.affine else ()
        return Seq(n_prompt, out, max_tokens=out, block_hashes=hashes)


def predict(
    cfg: LoadgenConfig,
    profile: SimProfile,
    run_dir: str,
    *,
    replicas: int = 1,
    balancer: str = "round-robin",
    twin_path: Optional[str] = None,
    console: Optional[Console] = None,
    report: bool = True,
) -> RunMeta:
    """Predict every level of ``cfg`` on ``replicas`` copies of ``profile`` into ``run_dir``; return run.json's ``RunMeta``."""
    console = console or Console()
    wall0 = time.perf_counter()
    os.makedirs(run_dir, exist_ok=True)
    run_id = cfg.run_id or os.path.basename(os.path.abspath(run_dir))
    meta = RunMeta(
        run_id=run_id,
        started_at=_now_iso(),
        versions={"loadgen": loadgen.__version__, "python": platform.python_version()},
        config=redact(cfg),
    )
    meta.target = {
        "kind": "predicted",
        "predicted": True,
        "engine": "twin",
        "model": profile.model,
        "profile": profile.name,
        "twin": twin_path,
        "replicas": replicas,
        "balancer": balancer,
        "sim": dataclasses.asdict(profile),
    }
    meta.nodes = [{"node_id": "twin", "ip": None, "cpus": 0}]
    meta.workers = [{"worker_id": 0, "node_id": "twin", "alive": True, "virtual": True}]
    workload = load_workload(cfg.workload)
    meta.workload = workload.summary()
    meta.save(run_dir)
    fleet = Fleet(profile, replicas, balancer)
    base_ns = now_ns()
    state = _State(cfg, fleet, run_dir, meta, base_ns, console)
    cursor = RequestCursor(workload)
    timer = LevelTimer(cfg)

    def run_level(spec: LevelSpec) -> LevelSummary:
        _predict_level(timer.config_for(spec), cursor, spec, state)
        level = analyze_level(run_dir, spec.index, cfg.slo, cfg.analysis, cfg.cluster)
        return level

    if cfg.load.kind == "search":
        from loadgen.search import run_search

        def searched(spec: LevelSpec) -> LevelSummary:
            level = run_level(spec)
            timer.learn(level)
            return level

        run_search(cfg, searched, threading.Event(), time.monotonic() + cfg.max_run_s)
    else:
        values = level_specs(cfg.load)
        index = 0
        retried: set[float] = set()
        while values:
            spec = dataclasses.replace(values[0], index=index)
            level = run_level(spec)
            index += 1
            # as the live runner does: a level too short to judge at this latency runs again, longer
            if timer.learn(level) and spec.value not in retried and timer.config_for(spec) is not cfg:
                retried.add(spec.value)
                continue
            values.pop(0)
    meta.status = RunStatus.COMPLETE
    meta.finished_at = _now_iso()
    meta.target["predict_wall_s"] = round(time.perf_counter() - wall0, 3)
    meta.target["virtual_s"] = round(state.clock, 3)
    meta.save(run_dir)
    console.print(
        f"predicted {sum(lv.ledger.sent for lv in meta.levels if lv.ledger)} requests over {state.clock:.1f} virtual s "
        f"on {replicas} replica(s) ({balancer}) in {meta.target['predict_wall_s']:.2f} s",
        highlight=False,
    )
    if report and meta.levels:
        from loadgen.report import report_run

        report_run(run_dir, console=console, plots=cfg.analysis.plots)
    return meta


class _State:
    """The virtual clock and what persists across levels: the fleet, the run directory, run.json."""

    def __init__(self, cfg: LoadgenConfig, fleet: Fleet, run_dir: str, meta: RunMeta, base_ns: int, console: Console) -> None:
        self.cfg = cfg
        self.fleet = fleet
        self.run_dir = run_dir
        self.meta = meta
        self.base_ns = base_ns
        self.console = console
        self.clock = 0.0  # virtual seconds since base_ns

    def ns(self, t: float) -> int:
        """Virtual seconds to the run clock (ns)."""
        return self.base_ns + int(round(t * 1e9))


def _predict_level(cfg: LoadgenConfig, cursor: RequestCursor, spec: LevelSpec, state: _State) -> LevelEntry:
    """Run one level in virtual time, write its records and its run.json entry."""
    load = cfg.load
    fleet = state.fleet
    plan = plan_level(cursor, spec, load, 1)
    shard = plan.shards[0]
    rows = _Rows(shard, fleet.profile, cfg.target.api, affine=fleet.balancer == "prefix-affine" and len(fleet.replicas) > 1)
    t0 = state.clock + LEVEL_GAP_S
    send_end = t0 + plan.duration_s
    deadline = send_end + load.drain_s
    think = load.think_time_s
    overhead = fleet.profile.request_overhead_ms / 1000.0
    sent: list[_Sent] = []
    client: list[tuple[float, int, str, Any]] = []  # (time, tie-break, kind, payload)
    tick = 0
    not_sent = 0

    def push(t: float, kind: str, payload: Any) -> None:
        nonlocal tick
        tick += 1
        heapq.heappush(client, (t, tick, kind, payload))

    def send(t_sched: float, t: float, k: int, cycle: int = 0, stream: int = -1, later: Optional[list[int]] = None) -> None:
        req = Request(len(sent), rows.seq(k), t + overhead, on_done=None)
        sent.append(_Sent(k, cycle, t_sched, t, req, stream, later or []))
        push(t + overhead, "admit", req)

    # Client events of the level: open-loop arrivals (sessions' first turns), or closed-loop streams.
    closed = spec.mode is LoadMode.CONCURRENCY
    # load.max_concurrency (open loop): a ceiling on requests in flight; the rest queue on the client
    # (sessions count as one request each: their later turns are not held back)
    cap_open = load.max_concurrency if not closed else None
    open_now = [0]
    queued: list[tuple[int, list[int], float]] = []
    next_row = 0
    cap = plan.max_requests[0] if plan.max_requests else 0
    if closed:
        for s in range(plan.concurrency[0] if plan.concurrency else 0):
            push(t0, "stream", s)
    else:
        sched = shard.column("scheduled_s").to_numpy(zero_copy_only=False)
        i, n = 0, len(sched)
        while i < n:
            j = i + 1
            while j < n and np.isnan(sched[j]):
                j += 1
            push(t0 + float(sched[i]), "arrive", (i, list(range(i + 1, j))))
            i = j

    def closed_next(t: float, stream: int) -> None:
        nonlocal next_row
        if t >= send_end or shard.num_rows == 0 or next_row >= cap:
            return
        k, cycle = next_row % shard.num_rows, next_row // shard.num_rows
        next_row += 1
        send(t, t, k, cycle, stream)

    heap = fleet._heap
    last_t = t0
    while True:
        tc = client[0][0] if client else None
        ts = heap[0][0] if heap else None
        if tc is None and ts is None:
            break
        now = tc if ts is None or (tc is not None and tc <= ts) else ts
        if now > deadline:
            break
        last_t = now
        if now == tc:
            _, _, kind, payload = heapq.heappop(client)
            if kind == "admit":
                fleet.arrive(now, payload)
            elif kind == "arrive":
                k, later = payload
                if cap_open is not None and open_now[0] >= cap_open:
                    queued.append((k, later, now))  # load.max_concurrency: queued on the client
                else:
                    open_now[0] += 1
                    send(now, now, k, later=later)
            elif kind == "stream":
                closed_next(now, payload)
            elif kind == "turn":
                k, later, scheduled = payload
                send(scheduled, now, k, later=later)
            continue
        t, done = fleet.step_once()
        for req in done:
            s = sent[req.key]
            if closed:
                push(t + think, "stream", s.stream)
            elif s.session_rows:
                push(t + think, "turn", (s.session_rows[0], s.session_rows[1:], t + think))
            elif cap_open is not None:
                open_now[0] -= 1
                if queued:
                    k, later, scheduled = queued.pop(0)
                    open_now[0] += 1
                    send(scheduled, t, k, later=later)
    # The level ends when its last answer came, or when the drain ran out with work left.
    end = deadline if (client or heap) and last_t >= send_end else max(send_end, last_t)
    # Whatever is unfinished at the end of the drain is cancelled, as the live worker does.
    cancelled = 0
    for s in sent:
        if s.request.last_step < 0:
            cancelled += 1
            if s.request.replica is not None and not s.request.seq.done:
                s.request.replica.engine.cancel(s.request.seq)
                s.request.replica.outstanding -= 1
    # Requests admitted later than the drain (still in the client heap) were never sent to the engine.
    leftover_admits = [p for _, _, kind, p in client if kind == "admit"]
    for req in leftover_admits:
        req.seq.done = True
    if not closed:
        not_sent = shard.num_rows - len(sent)
    state.clock = end
    entry = _write_level(state, cfg, spec, plan, rows, sent, t0, send_end, end, cancelled, not_sent)
    return entry


def _write_level(
    state: _State,
    cfg: LoadgenConfig,
    spec: LevelSpec,
    plan: Any,
    rows: _Rows,
    sent: list[_Sent],
    t0: float,
    send_end: float,
    end: float,
    cancelled: int,
    not_sent: int,
) -> LevelEntry:
    """Records of one predicted level (parts under records/level=K/worker=0) and its run.json entry."""
    writer = PartWriter(part_dir(records_root(state.run_dir), spec.index, 0))
    ns = state.ns
    c = rows.cols
    for lo in range(0, len(sent), PART_ROWS):
        chunk = sent[lo : lo + PART_ROWS]
        # every scalar column of the record schema; the ones a prediction has no value for stay null
        cols: dict[str, list[Any]] = {n: [] for n in RECORD_FIELDS if n != "chunk_ns"}
        pieces: list[np.ndarray] = []
        offsets = [0]
        for s in chunk:
            r = s.request
            k = s.row
            rid = f"L{spec.index}-{c['request_id'][k]}" + (f".c{s.cycle}" if s.cycle else "")
            done = r.last_step >= 0
            times = np.empty(0)
            if r.first_step >= 0 and r.replica is not None:
                stop = r.last_step + 1 if done else len(r.replica.log)
                times = np.asarray(r.replica.log[r.first_step : stop], dtype=np.float64)
            times_ns = state.base_ns + np.round(times * 1e9).astype(np.int64)
            pieces.append(times_ns)
            offsets.append(offsets[-1] + len(times_ns))
            values = {
                "run_id": state.meta.run_id,
                "level": spec.index,
                "level_value": spec.value,
                "worker_id": 0,
                "node_id": "twin",
                "request_id": rid,
                "response_id": "cmpl-" + rid,
                "session_id": c["session_id"][k],
                "turn": c["turn"][k],
                "scheduled_ns": ns(s.scheduled),
                "sent_ns": ns(s.sent),
                "first_byte_ns": ns(r.arrival),
                "first_token_ns": int(times_ns[0]) if len(times_ns) else None,
                "first_answer_ns": int(times_ns[0]) if len(times_ns) else None,
                "end_ns": int(times_ns[-1]) if done else ns(end),
                "input_tokens": c["input_tokens"][k],
                "prompt_tokens": r.seq.prompt_tokens,
                "output_tokens_expected": c["output_tokens"][k],
                "output_tokens": r.tokens_out,
                "reasoning_tokens": None,
                "status": "ok" if done else "cancelled",
                "http_status": 200,
                "error": None if done else "cancelled when the level ended (predicted)",
                "loop_lag_ms": 0.0,
                "attempts": 1,
                "clock_uncertainty_ns": 0,
            }
            for name, col in cols.items():
                col.append(values.get(name))
        flat = np.concatenate(pieces) if pieces else np.empty(0, np.int64)
        writer.write(to_batch(Buffered(cols, flat.astype(np.int64), np.asarray(offsets, dtype=np.int64))))  # type: ignore[arg-type]
    ok = len(sent) - cancelled
    ledger = Ledger(
        planned=len(sent) + not_sent,
        sent=len(sent),
        not_sent={"stopped": not_sent} if not_sent else {},
        ok=ok,
        errors=empty_errors(),
        cancelled=cancelled,
    )
    shaped = spec.mode is LoadMode.RATE
    load = cfg.load
    entry = LevelEntry(
        level=spec.index,
        mode=spec.mode,
        value=spec.value,
        offered_rps=plan.offered_rps,
        planned=plan.planned,
        arrival=load.arrival if shaped else None,
        shape=load.shape if shaped else "steady",
        step_at_ns=ns(t0 + load.step_at_s) if shaped and load.shape != "steady" else None,
        start_ns=ns(t0),
        send_end_ns=ns(send_end),
        end_ns=ns(end),
        steady_start_ns=ns(t0 + load.warmup_s),
        steady_end_ns=ns(send_end),
        ledger=ledger,
        workers=[WorkerHealth(worker_id=0, sent=len(sent))],
    )
    state.meta.levels.append(entry)
    state.meta.save(state.run_dir)
    state.console.print(
        f"level {spec.index}: {spec.value:g} {spec.mode.unit}  sent {len(sent)}  ok {ok}  cancelled {cancelled}  (predicted)",
        highlight=False,
    )
    return entry
