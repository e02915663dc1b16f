"""Workloads: one reader per trace format, all producing the canonical request table.

Input: ``WorkloadConfig``. Output: ``Workload`` (rows of ``table.REQUEST_SCHEMA`` plus
what was read, skipped and changed), built as reader -> reshape (window, sample, time
scale or target rate, caps) -> render (prompts and messages). See docs/workloads.md.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import pyarrow as pa

from loadgen.config import ConfigError, WorkloadConfig
from loadgen.workload import azure, burstgpt, empirical, generic, mooncake, reshape, sharegpt, synthetic
from loadgen.workload.errors import WorkloadError
from loadgen.workload.parse import csv_header
from loadgen.workload.prompts import Synthesizer, synthesize
from loadgen.workload.render import render
from loadgen.workload.table import REQUEST_SCHEMA, Workload
from loadgen.workload.trace import Source

__all__ = [
    "REQUEST_SCHEMA",
    "Synthesizer",
    "Workload",
    "WorkloadError",
    "detect_kind",
    "load",
    "read_rows",
    "synthesize",
]

READERS: dict[str, Callable[[WorkloadConfig, Synthesizer], Source]] = {
    "synthetic": synthetic.read,
    "azure": azure.read,
    "burstgpt": burstgpt.read,
    "mooncake": mooncake.read,
    "sharegpt": sharegpt.read,
    "generic": generic.read,
}


def load(cfg: WorkloadConfig) -> Workload:
    """Read, reshape and render the configured workload into a request table."""
    synth = Synthesizer(cfg.seed, cfg.tokenizer)
    src, rows, notes = read_rows(cfg, synth)
    table, more = render(rows, synth, cfg.max_input_tokens)
    return Workload(
        table=table,
        source=src.path,
        kind=cfg.kind,
        rows_read=src.rows_read,
        skipped=dict(src.issues.skipped),
        notes=notes + more,
    )


def read_rows(cfg: WorkloadConfig, synth: Optional[Synthesizer] = None) -> tuple[Source, pa.Table, list[str]]:
    """Read and reshape a workload without rendering text: its source, kept rows (ROW_SCHEMA) and notes."""
    if cfg.kind not in READERS:
        raise ConfigError(f"config key 'workload.kind' is {cfg.kind!r}; expected one of {', '.join(READERS)}.")
    if cfg.kind != "synthetic":
        if not cfg.path:
            raise ConfigError(f"config key 'workload.path' is None; expected a trace file for workload={cfg.kind}.")
        if not os.path.isfile(str(cfg.path)):
            raise WorkloadError(f"workload.path: no such file {str(cfg.path)!r}")
    reshape.check(cfg)
    src = READERS[cfg.kind](cfg, synth or Synthesizer(cfg.seed, cfg.tokenizer))
    reshape.check_arrivals(src, cfg)
    shaped: list[str] = []
    rows = reshape.collect(src, cfg, shaped)
    if not rows.num_rows:
        raise _empty(src)
    notes = list(src.notes)
    if src.blank_lines:
        notes.append(f"blank lines ignored: {src.blank_lines}")
    notes += [f"{what}: removed {count}" for what, count in src.removed.items() if count]
    notes += [f"{what}: {count}" for what, count in src.adjusted.items()]
    if src.issues.skipped:
        notes.append(f"workload.on_error=skip: {sum(src.issues.skipped.values())} malformed rows skipped")
    notes += shaped
    rows = reshape.transform(rows, src, cfg, notes)
    return src, rows, notes


def _trace_rows(path: str) -> pa.Table:
    """A trace file's rows, its format detected from the file (for empirical length distributions)."""
    return read_rows(empirical.trace_config(path, detect_kind(path)))[1]


empirical.use_reader(_trace_rows)


def _empty(src: Source) -> WorkloadError:
    parts = []
    if src.issues.skipped:
        reasons = ", ".join(f"{reason} ({n})" for reason, n in src.issues.skipped.items())
        parts.append(f"workload.on_error=skip skipped {sum(src.issues.skipped.values())} malformed rows: {reasons}")
    for what, count in src.removed.items():
        if count:
            hint = src.seen.get(what)
            seen = f" (values in the file: {', '.join(f'{v!s} {c}' for v, c in hint.most_common())})" if hint else ""
            parts.append(f"{what} removed {count} rows{seen}")
    why = "; ".join(parts) if parts else "the file has no data rows"
    return WorkloadError(f"workload={src.kind}: no requests left from {src.name} ({src.rows_read} rows read): {why}")


def detect_kind(path: str) -> str:
    """The workload kind of a trace file, from its extension and first line or header."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        return "sharegpt"
    if ext in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        try:
            keys = set(json.loads(first))
        except (ValueError, TypeError):
            keys = set()
        if {"hash_ids", "input_length"} & keys:
            return "mooncake"
        return "sharegpt" if "conversations" in keys else "generic"
    if ext == ".csv":
        header = set(csv_header(path))
        if azure.INPUT in header:
            return "azure"
        return "burstgpt" if burstgpt.INPUT in header else "generic"
    if ext in (".parquet", ".pq"):
        return "generic"
    raise WorkloadError(f"{path}: cannot tell the trace format from the extension {ext!r}; expected .csv, .json, .jsonl or .parquet")
