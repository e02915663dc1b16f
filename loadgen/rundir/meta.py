"""The run's typed metadata, ``run.json``: written by the driver, read by the analysis.

Input: what the driver knows about a run (config, target, workers, each level's
boundaries, request ledger and worker health). Output: ``RunMeta`` and its
parts, serialised to ``run.json`` atomically after every level and read back
leniently (unknown keys are ignored, missing ones take their defaults, so runs
written by older versions still open).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Optional, TypeVar

from loadgen.rundir.layout import RUN_JSON, run_file
from loadgen.rundir.schema import ERROR_STATUSES

T = TypeVar("T")


class RunDirError(ValueError):
    """A run directory cannot be read; the message names the file and what is wrong."""


class LoadMode(str, Enum):
    """How a level's requests are started."""

    RATE = "rate"  # open loop: arrivals at a rate, on a precomputed schedule
    CONCURRENCY = "concurrency"  # closed loop: N streams, each sends its next request when the last ended
    TRACE = "trace"  # open loop: the trace's own timestamps, scaled

    @property
    def open_loop(self) -> bool:
        """Whether requests follow a schedule rather than the answers of earlier ones."""
        return self is not LoadMode.CONCURRENCY

    @property
    def unit(self) -> str:
        """The unit of a level's value."""
        return {"rate": "req/s", "concurrency": "streams", "trace": "x trace speed"}[self.value]


class RunStatus(str, Enum):
    """Where a run stands; ``run.json`` says ``running`` until the driver ends it one of the other ways."""

    RUNNING = "running"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: what was recorded counts
    FAILED = "failed"  # an error ended it; ``RunMeta.reason`` says which


def dataclass_from_dict(cls: type[T], data: Optional[Mapping[str, Any]]) -> T:
    """A dataclass from a JSON object: unknown keys ignored, missing ones default."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass
class Ledger:
    """Counts that must reconcile: planned = sent + not sent; sent = ok + errors + cancelled + lost."""

    planned: int = 0
    sent: int = 0
    not_sent: dict[str, int] = field(default_factory=dict)  # reason -> count
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # status -> count
    cancelled: int = 0
    lost: int = 0  # sent by a worker that died before recording them
    lost_workers: list[int] = field(default_factory=list)
    records: Optional[int] = None  # rows found on disk (None: not checked)
    source: str = "run.json"  # run.json | records (derived when run.json has no ledger) | mixed

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], records: Optional[int] = None) -> Ledger:
        """Read a run.json ``ledger`` entry (``records``: rows found on disk, to check against)."""
        return cls(
            planned=int(data.get("planned", 0)),
            sent=int(data.get("sent", 0)),
            not_sent={k: int(v) for k, v in (data.get("not_sent") or {}).items()},
            ok=int(data.get("ok", 0)),
            errors={k: int(v) for k, v in (data.get("errors") or {}).items()},
            cancelled=int(data.get("cancelled", 0)),
            lost=int(data.get("lost", 0)),
            lost_workers=[int(w) for w in data.get("lost_workers") or []],
            records=records,
        )

    @classmethod
    def from_status_counts(cls, counts: Mapping[str, int], planned: Optional[int] = None) -> Ledger:
        """A ledger from request status counts (planned defaults to sent; nothing lost is known)."""
        total = sum(counts.values())
        return cls(
            planned=total if planned is None else planned,
            sent=total,
            ok=counts.get("ok", 0),
            errors={k: v for k, v in counts.items() if k not in ("ok", "cancelled")},
            cancelled=counts.get("cancelled", 0),
            records=total,
            source="records",
        )

    @property
    def error_total(self) -> int:
        """Sent requests that ended in an error of any class."""
        return sum(self.errors.values())

    def problems(self) -> list[str]:
        """Each way the counts fail to reconcile, in words (empty when the ledger closes)."""
        out = []
        not_sent = sum(self.not_sent.values())
        if self.planned != self.sent + not_sent:
            out.append(f"planned {self.planned} ≠ sent {self.sent} + not sent {not_sent}")
        ended = self.ok + self.error_total + self.cancelled + self.lost
        if self.sent != ended:
            out.append(
                f"sent {self.sent} ≠ ok {self.ok} + errors {self.error_total}"
                f" + cancelled {self.cancelled} + lost {self.lost} (= {ended})"
            )
        if self.records is not None and self.records != self.sent - self.lost:
            out.append(f"{self.records} records on disk, but sent − lost = {self.sent - self.lost}")
        return out

    @property
    def closes(self) -> bool:
        """Whether every count reconciles."""
        return not self.problems()

    def __add__(self, other: Ledger) -> Ledger:
        def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(a.keys() | b.keys())}

        return Ledger(
            planned=self.planned + other.planned,
            sent=self.sent + other.sent,
            not_sent=merge(self.not_sent, other.not_sent),
            ok=self.ok + other.ok,
            errors=merge(self.errors, other.errors),
            cancelled=self.cancelled + other.cancelled,
            lost=self.lost + other.lost,
            lost_workers=sorted(set(self.lost_workers) | set(other.lost_workers)),
            records=None if self.records is None or other.records is None else self.records + other.records,
            source=self.source if self.source == other.source else "mixed",
        )


def empty_errors() -> dict[str, int]:
    """An error count of zero for every error status (run.json lists every class)."""
    return {s: 0 for s in ERROR_STATUSES}


@dataclass
class WorkerHealth:
    """One worker's raw timing health over one level: no verdict, just the numbers."""

    worker_id: int
    sent: int = 0
    loop_lag_ms_p99: float = 0.0  # event-loop lag (oversleep of a 50 ms timer), p99 over the level
    loop_lag_ms_max: float = 0.0
    schedule_lag_ms_p50: float = 0.0  # send time − scheduled time, over the level's requests
    schedule_lag_ms_p99: float = 0.0
    schedule_lag_ms_max: float = 0.0
    cpu_percent: Optional[float] = None  # mean over the level
    cpu_s: Optional[float] = None  # CPU time the worker process spent on the level


@dataclass
class LevelEntry:
    """One level as the driver ran it: identity, time boundaries, request ledger, worker health."""

    level: int
    mode: LoadMode = LoadMode.RATE
    value: float = 0.0  # req/s (rate), streams (concurrency) or speed factor (trace)
    offered_rps: Optional[float] = None  # planned arrivals / sending time; None for closed loop
    planned: int = 0
    arrival: Optional[str] = None  # rate levels: constant | poisson | gamma
    shape: str = "steady"  # steady | step | burst
    step_at_ns: Optional[int] = None  # step/burst levels: when the step happened (run clock)
    start_ns: Optional[int] = None  # the common start
    send_end_ns: Optional[int] = None  # sending stopped
    end_ns: Optional[int] = None  # drain over
    steady_start_ns: Optional[int] = None  # warm-up excluded
    steady_end_ns: Optional[int] = None
    ledger: Optional[Ledger] = None
    workers: list[WorkerHealth] = field(default_factory=list)
    stopped_early: Optional[str] = None  # why the driver cut the level short
    driver_cpu_s: Optional[float] = None
    notes: list[str] = field(default_factory=list)  # what the plan changed or found (a capped or diluted level)

    def __post_init__(self) -> None:
        self.mode = LoadMode(self.mode)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LevelEntry:
        """Read one entry of run.json's ``levels``."""
        entry = dataclass_from_dict(cls, data)
        entry.level = int(entry.level)
        entry.mode = LoadMode(data.get("mode") or LoadMode.RATE.value)
        entry.value = float(data.get("value") if data.get("value") is not None else data.get("offered_rps") or 0.0)
        entry.ledger = Ledger.from_dict(data["ledger"]) if data.get("ledger") else None
        entry.workers = [dataclass_from_dict(WorkerHealth, w) for w in data.get("workers") or []]
        return entry


@dataclass
class RunMeta:
    """Everything ``run.json`` holds; the driver saves it after every level and when the run ends."""

    run_id: str = ""
    status: RunStatus = RunStatus.RUNNING
    reason: Optional[str] = None  # failed: the error, in one line
    started_at: Optional[str] = None  # ISO 8601, UTC
    finished_at: Optional[str] = None
    versions: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the whole config, secrets redacted
    workload: dict[str, Any] = field(default_factory=dict)  # the workload's summary
    target: dict[str, Any] = field(default_factory=dict)  # the resolved target's summary
    nodes: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # placement, clock offsets, alive / lost_reason
    levels: list[LevelEntry] = field(default_factory=list)
    server_metrics: Optional[dict[str, Any]] = None  # the scraper's account

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunMeta:
        """Read run.json's object."""
        meta = dataclass_from_dict(cls, data)
        meta.status = RunStatus(data.get("status") or RunStatus.RUNNING.value)
        meta.levels = [LevelEntry.from_dict(lv) for lv in data.get("levels") or []]
        return meta

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    def config_section(self, name: str) -> dict[str, Any]:
        """One section of the saved config (empty when absent)."""
        return dict(self.config.get(name) or {})

    def save(self, run_dir: str) -> None:
        """Write run.json atomically (temporary name, then rename)."""
        path = run_file(run_dir, RUN_JSON)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, default=str)
        os.replace(path + ".tmp", path)


def read_meta(run_dir: str) -> Optional[RunMeta]:
    """The run's metadata, or None when run.json is missing (a crashed run's records still count)."""
    path = run_file(run_dir, RUN_JSON)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds {type(data).__name__}, expected a JSON object")
    try:
        return RunMeta.from_dict(data)
    except (TypeError, ValueError) as e:
        raise RunDirError(f"{path} does not look like loadgen's run.json: {e}") from None
