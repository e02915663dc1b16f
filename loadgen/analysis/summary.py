"""A whole run analysed: per-level summaries plus the run's verdicts, and their machine-readable files.

Input: a run directory. Output: ``RunSummary`` (``analyze_run``) and
``summary.json`` / ``summary.parquet`` (``write_summary``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loadgen.analysis.capacity import CapacityPlan, GoodputCapacity, goodput_capacity, plan_capacity
from loadgen.analysis.confidence import is_too_few_note, min_samples_for_upper, too_few_notes
from loadgen.analysis.level import LevelSummary, summarize_level
from loadgen.analysis.metrics import METRIC_COLUMNS, PERCENTILE_NAMES, Dist
from loadgen.analysis.saturation import Knee, Saturation, knee_point, saturation_point
from loadgen.config import AnalysisConfig, ClusterConfig, SLOConfig
from loadgen.rundir import (
    RECORD_SCHEMA,
    STATUSES,
    Ledger,
    LevelEntry,
    LoadMode,
    RunMeta,
    iter_level_tables,
    read_level,
    read_meta,
    read_telemetry,
    run_records_root,
    scrub,
)
from loadgen.rundir.layout import SUMMARY_JSON, SUMMARY_PARQUET, run_file
from loadgen.rundir.meta import dataclass_from_dict


@dataclass
class RunSummary:
    """Everything the report shows about one run."""

    run_id: str
    run_dir: str
    status: str  # run.json status: complete | interrupted | failed | running | unknown
    info: dict[str, Any]  # target, workload, versions, nodes, workers, times (scrubbed)
    config: dict[str, Any]  # the run's config (scrubbed)
    slo: SLOConfig
    analysis: AnalysisConfig
    levels: list[LevelSummary]
    saturation: Saturation
    knee: Knee
    goodput_capacity: GoodputCapacity
    ledger: Ledger
    plan: Optional[CapacityPlan] = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """A short name for legends and tables: the run's ``label`` config key, else the run directory's name."""
        return (self.config or {}).get("label") or os.path.basename(os.path.normpath(self.run_dir)) or self.run_id

    def saturated(self, level: LevelSummary) -> bool:
        """Whether a level lies at or past the first level that failed the saturation rule."""
        first = self.saturation.first_failing_level
        if first is None:
            return False
        failing = next(lv for lv in self.levels if lv.level == first)
        return level.judged and level.open_loop == failing.open_loop and level.load >= failing.load

    def shown_notes(self) -> list[str]:
        """The notes a report shows, in order: the run's, then each level's ("level K: …").

        When several levels rest on too few samples to bound their SLO percentile, one line
        says so for all of them instead of one line per level (summary.json keeps each level's).
        """
        short = {lv.level: [n for n in lv.notes if is_too_few_note(n)] for lv in self.levels}
        short = {k: v for k, v in short.items() if v}
        together = len(short) > 1
        out = list(self.notes)
        if together:
            need = min_samples_for_upper(self.slo.percentile)
            counts = [_slo_counts(lv) for lv in self.levels if lv.level in short]
            samples = [c for per_level in counts for c in per_level.values() if c]
            metrics = sorted({m for per_level in counts for m, c in per_level.items() if 0 < c < need})
            out.append(
                f"p{self.slo.percentile:g} {' and '.join(metrics)} of levels {_ranges(sorted(short))} rest on "
                f"{min(samples):,} to {max(samples):,} samples, too few to bound (an upper bound needs "
                f"≥ {need:,}): longer levels (load.duration_s) give more"
            )
        for lv in self.levels:
            hidden = short.get(lv.level, []) if together else []
            out += [f"level {lv.level}: {n}" for n in lv.notes if n not in hidden]
        return out

    @property
    def client_bound_levels(self) -> list[int]:
        """Levels where loadgen itself, not the server, may have been the bottleneck."""
        return [lv.level for lv in self.levels if lv.client_bound]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become null)."""
        d = dataclasses.asdict(self)
        for lv_dict, lv in zip(d["levels"], self.levels):
            lv_dict.update(load=lv.load, open_loop=lv.open_loop, passed=lv.passed)
            lv_dict["ledger"]["problems"] = lv.ledger.problems()
        d["ledger"]["problems"] = self.ledger.problems()
        d["client_bound_levels"] = self.client_bound_levels
        return _finite(d)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _settings(
    meta: Optional[RunMeta],
    slo: Optional[SLOConfig],
    analysis: Optional[AnalysisConfig],
    cluster: Optional[ClusterConfig],
) -> tuple[SLOConfig, AnalysisConfig, ClusterConfig]:
    """The judging settings: those given, else those saved in run.json, else the defaults."""

    def section(cls: type, name: str) -> Any:
        return dataclass_from_dict(cls, meta.config_section(name) if meta is not None else {})

    return (
        slo or section(SLOConfig, "slo"),
        analysis or section(AnalysisConfig, "analysis"),
        cluster or section(ClusterConfig, "cluster"),
    )


def _level_telemetry(telemetry: Optional[pa.Table], level: int) -> Optional[pa.Table]:
    if telemetry is not None and "level" in telemetry.column_names:
        return telemetry.filter(pc.equal(telemetry.column("level"), level))
    return telemetry


def analyze_level(
    run_dir: str,
    level: int,
    slo: Optional[SLOConfig] = None,
    analysis: Optional[AnalysisConfig] = None,
    cluster: Optional[ClusterConfig] = None,
) -> LevelSummary:
    """Summarise and judge one level of a run from its own records alone (``load=search`` after each level)."""
    meta = read_meta(run_dir)
    slo, analysis, cluster = _settings(meta, slo, analysis, cluster)
    entry = next((lv for lv in meta.levels if lv.level == level), None) if meta is not None else None
    if entry is None:
        raise ValueError(f"level {level} has no entry in {run_file(run_dir, 'run.json')}")
    table = read_level(run_records_root(run_dir, meta), level, METRIC_COLUMNS)
    return summarize_level(table, entry, slo, analysis, cluster, _level_telemetry(read_telemetry(run_dir), level))


def analyze_run(
    run_dir: str,
    slo: Optional[SLOConfig] = None,
    analysis: Optional[AnalysisConfig] = None,
    cluster: Optional[ClusterConfig] = None,
) -> RunSummary:
    """Analyse a run directory; SLO, analysis and cluster settings default to those in its run.json."""
    meta = read_meta(run_dir)
    slo, analysis, cluster = _settings(meta, slo, analysis, cluster)
    config = meta.config if meta is not None else {}
    telemetry = read_telemetry(run_dir)
    entries = {lv.level: lv for lv in meta.levels} if meta is not None else {}
    default_mode = LoadMode.CONCURRENCY if (config.get("load") or {}).get("kind") == "concurrency" else LoadMode.RATE
    notes = []
    if meta is None:
        notes.append("run.json is missing: levels, windows and ledgers were derived from the records alone")
    elif meta.status != "complete":
        why = {"running": "still running, or killed", "interrupted": "stopped by Ctrl-C/SIGTERM", "failed": "it failed"}
        reason = f": {meta.reason}" if meta.reason else ""
        notes.append(
            f"the run did not finish (status '{meta.status.value}': {why.get(meta.status.value, '')}{reason}): "
            "results cover what was recorded"
        )
    notes += _run_notes(meta)

    levels: list[LevelSummary] = []
    seen = set()
    for level, table in iter_level_tables(run_records_root(run_dir, meta), METRIC_COLUMNS + ["level_value"]):
        seen.add(level)
        entry = entries.get(level)
        if entry is None:
            values = pc.unique(table.column("level_value")).drop_null().to_pylist()
            value = float(values[0]) if values else 0.0
            entry = LevelEntry(
                level=level,
                mode=default_mode,
                value=value,
                offered_rps=value if default_mode is LoadMode.RATE else None,
            )
            if meta is not None:
                notes.append(f"level {level} has records but no entry in run.json")
        levels.append(summarize_level(table, entry, slo, analysis, cluster, _level_telemetry(telemetry, level)))
        del table  # free this level's records as soon as it is summarised
    for level, entry in sorted(entries.items()):
        if level not in seen:
            levels.append(summarize_level(RECORD_SCHEMA.empty_table(), entry, slo, analysis, cluster))

    levels.sort(key=lambda lv: lv.level)
    for lv in levels:
        lv.notes += _sample_notes(lv, slo)
    if levels and not any(lv.metrics.streamed for lv in levels) and (slo.ttft_ms or slo.tpot_ms):
        notes.append("no level streamed tokens: TTFT and TPOT objectives were not applied")
    ledger = sum((lv.ledger for lv in levels), Ledger(source=levels[0].ledger.source if levels else "records", records=0))
    measured = [lv for lv in levels if lv.metrics.requests]
    for lv in levels:
        if not lv.metrics.requests:
            notes.append(f"level {lv.level} has no requests in its steady window: left out of the verdicts")
        elif not lv.judged:
            notes.append(f"level {lv.level} was not judged: {lv.not_judged}")
    saturation = saturation_point(measured, slo.percentile, analysis)
    gcap = goodput_capacity(measured, slo.attainment)
    info = {k: v for k, v in meta.to_dict().items() if k not in ("config", "levels")} if meta is not None else {}
    return RunSummary(
        run_id=(meta.run_id if meta is not None and meta.run_id else os.path.basename(os.path.normpath(run_dir))),
        run_dir=run_dir,
        status=meta.status.value if meta is not None else "unknown",
        info=scrub(info),
        config=scrub(config),
        slo=slo,
        analysis=analysis,
        levels=levels,
        saturation=saturation,
        knee=knee_point(measured),
        goodput_capacity=gcap,
        ledger=ledger,
        plan=_plan(saturation, gcap, analysis),
        notes=notes,
    )


def _slo_counts(lv: LevelSummary) -> dict[str, int]:
    """{metric label: sample count} of the metrics a level's SLOs judge (e.g. {"TTFT": 140, "TPOT": 139})."""
    return {key[:-3].upper(): getattr(lv.metrics, key[:-3]).count for key in lv.metrics.slo_percentiles}


def _sample_notes(lv: LevelSummary, slo: SLOConfig) -> list[str]:
    """The level's SLO percentiles that rest on too few samples to bound (a note, not a failure)."""
    return too_few_notes(slo.percentile, _slo_counts(lv))


def _ranges(levels: list[int]) -> str:
    """[0, 1, 2, 4] → '0–2, 4'."""
    parts, start = [], None
    for i, k in enumerate(levels):
        if start is None:
            start = k
        if i + 1 == len(levels) or levels[i + 1] != k + 1:
            parts.append(f"{start}" if start == k else f"{start}–{k}")
            start = None
    return ", ".join(parts)


def _run_notes(meta: Optional[RunMeta]) -> list[str]:
    """What run.json says went missing: lost workers, skipped trace rows, workload notes."""
    if meta is None:
        return []
    notes = []
    for w in meta.workers:
        if w.get("alive") is False:
            why = f": {w['lost_reason']}" if w.get("lost_reason") else ""
            notes.append(f"worker {w.get('worker_id')} was lost during the run{why}")
    workload = meta.workload
    skipped = {k: v for k, v in (workload.get("skipped") or {}).items() if v}
    if skipped:
        notes.append("trace rows skipped: " + ", ".join(f"{v:,} ({k})" for k, v in skipped.items()))
    notes += [f"workload: {n}" for n in workload.get("notes") or []]
    return notes


def _plan(sat: Saturation, gcap: GoodputCapacity, analysis: AnalysisConfig) -> Optional[CapacityPlan]:
    """Plan on the goodput capacity, else on the saturation throughput (a lower bound if never saturated)."""
    if analysis.target_rate is None and analysis.price_per_replica_hour is None:
        return None
    if gcap.rate is not None:
        basis = "goodput capacity" + (" (not bracketed: a lower bound)" if gcap.at_least else "")
        rate, tok, lower = gcap.rate, gcap.output_tok_s, gcap.at_least
    elif sat.throughput_rps:
        rate, tok, basis, lower = sat.throughput_rps, sat.output_tok_s, "saturation throughput", not sat.reached
    else:
        return None
    return plan_capacity(
        rate,
        basis,
        target_rps=analysis.target_rate,
        output_tok_s=tok,
        price_per_replica_hour=analysis.price_per_replica_hour,
        lower_bound=lower,
        bracket=(gcap.lower_rate, gcap.upper_rate) if gcap.rate is not None and not gcap.at_least else None,
    )


DIST_NAMES = ("ttft", "ttft_answer", "queued_ttft", "itl", "tpot", "e2e", "queued_e2e", "normalized", "schedule_lag")
_NOT_OK = tuple(s for s in STATUSES if s != "ok")


def level_rows(summary: RunSummary) -> list[dict[str, Any]]:
    """One flat dict per level: the columns of ``summary.parquet``."""
    rows = []
    for lv in summary.levels:
        m = lv.metrics
        row: dict[str, Any] = {
            "run_id": summary.run_id,
            "level": lv.level,
            "mode": lv.mode.value,
            "value": lv.value,
            "offered_rps": lv.offered_rps,
            "load": lv.load,
            "window_s": m.window_s,
            "requests": m.requests,
            "completed": m.completed,
            "scheduled_rps": m.scheduled_rps,
            "achieved_rps": m.achieved_rps,
            "output_tok_s": m.output_tok_s,
            "goodput_rps": m.goodput_rps,
            "attainment": m.attainment,
            "error_rate": m.error_rate,
            "peak_in_flight": m.peak_in_flight,
            "streamed": m.streamed,
        }
        for name in DIST_NAMES:
            d: Dist = getattr(m, name)
            for stat in ("mean", "p50", "p90", "p95", "p99", "p999", "max"):
                row[f"{name}_{stat}_ms"] = getattr(d, stat)
            for stat in PERCENTILE_NAMES:  # 95 % order-statistic bounds (None: too few samples)
                row[f"{name}_{stat}_lo_ms"], row[f"{name}_{stat}_hi_ms"] = d.ci.get(stat, (None, None))
        for cls in _NOT_OK:
            row[f"errors_{cls}"] = m.errors.get(cls, 0)
        row.update(
            keep_up_ratio=lv.keep_up_ratio,
            kept_up=lv.kept_up,
            slo_met=lv.slo_met,
            passed=lv.passed,
            saturated=summary.saturated(lv),
            client_bound=lv.client_bound,
            client_bound_workers=lv.client_bound_workers,
            ledger_closes=lv.ledger.closes,
            failures=lv.failures,
            notes=lv.notes,
        )
        rows.append(_finite(row))
    return rows


def write_summary(run_dir: str, summary: RunSummary) -> tuple[str, str]:
    """Write ``summary.json`` (everything) and ``summary.parquet`` (one row per level); return their paths."""
    os.makedirs(run_dir, exist_ok=True)
    json_path = run_file(run_dir, SUMMARY_JSON)
    with open(json_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(summary.to_dict(), f, indent=2, ensure_ascii=False)
    os.replace(json_path + ".tmp", json_path)
    pq_path = run_file(run_dir, SUMMARY_PARQUET)
    rows = level_rows(summary)
    table = pa.Table.from_pylist(rows) if rows else pa.table({"level": pa.array([], pa.int32())})
    pq.write_table(table, pq_path + ".tmp")
    os.replace(pq_path + ".tmp", pq_path)
    return json_path, pq_path
