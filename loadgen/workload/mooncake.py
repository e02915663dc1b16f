"""Mooncake traces: one JSON object per line with prefix-block hashes.

Input: JSON Lines with ``timestamp`` (ms from the trace start), ``input_length``,
``output_length`` and ``hash_ids`` (ids of the prompt's 512-token blocks; equal
leading ids mean a shared KV-cache prefix), sorted by time. Output: a ``Source`` of
rows carrying their hash ids, which rendering turns into byte-identical prefix text.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from loadgen.config import WorkloadConfig
from loadgen.workload.parse import INT_EXPECTED, got, json_int, json_number, jsonl_objects
from loadgen.workload.prompts import Synthesizer
from loadgen.workload.trace import Source, request_ids, row_batch

_BATCH = 8192
TIME_EXPECTED = "a non-negative number of milliseconds"
SORTED_EXPECTED = "a time no earlier than the lines before it (the file is sorted)"
HASH_EXPECTED = "a list of non-negative integers"


def read(cfg: WorkloadConfig, synth: Synthesizer) -> Source:
    """Stream a Mooncake JSONL trace into rows; malformed lines raise or are skipped per ``on_error``."""
    src = Source.for_file(str(cfg.path), "mooncake", cfg.on_error, has_arrivals=True)
    src.batches = _rows(src, cfg.zero_output)
    return src


def _hash_ids(value: object) -> Optional[list[int]]:
    if not isinstance(value, list):
        return None
    if all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in value):
        return value
    return None


def _rows(src: Source, zero_output: str) -> Iterator[pa.RecordBatch]:
    first: Optional[float] = None
    latest: Optional[float] = None
    lines: list[int] = []
    times: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    hashes: list[list[int]] = []
    issues = src.issues
    for line, obj in jsonl_objects(src):
        t = json_number(obj, "timestamp")
        if t is None or t < 0:
            issues.report(line, "timestamp", TIME_EXPECTED, got(obj, "timestamp"))
            continue
        n_in = json_int(obj, "input_length")
        if n_in is None:
            issues.report(line, "input_length", INT_EXPECTED, got(obj, "input_length"))
            continue
        n_out = json_int(obj, "output_length")
        if n_out is None:
            issues.report(line, "output_length", INT_EXPECTED, got(obj, "output_length"))
            continue
        ids = _hash_ids(obj.get("hash_ids"))
        if ids is None:
            issues.report(line, "hash_ids", HASH_EXPECTED, got(obj, "hash_ids"))
            continue
        if latest is not None and t < latest:
            issues.report(line, "timestamp", SORTED_EXPECTED, got(obj, "timestamp"))
            continue
        latest = t
        first = t if first is None else first
        lines.append(line)
        times.append(t)
        inputs.append(n_in)
        outputs.append(n_out)
        hashes.append(ids)
        if len(lines) >= _BATCH:
            yield from _batch(src, zero_output, first, lines, times, inputs, outputs, hashes)
            lines, times, inputs, outputs, hashes = [], [], [], [], []
    if lines:
        yield from _batch(src, zero_output, first, lines, times, inputs, outputs, hashes)


def _batch(
    src: Source,
    zero_output: str,
    first: Optional[float],
    lines: list[int],
    times: list[float],
    inputs: list[int],
    outputs: list[int],
    hashes: list[list[int]],
) -> Iterator[pa.RecordBatch]:
    out = np.array(outputs, dtype=np.int64)
    keep = src.zero_outputs(out, np.ones(len(out), dtype=bool), zero_output)
    if not keep.any():
        return
    idx = np.flatnonzero(keep)
    rows = np.array(lines, dtype=np.int64)[idx] - 1
    yield row_batch(
        len(idx),
        seq=rows,
        unit=rows,
        request_id=request_ids(rows),
        arrival_s=(np.array(times)[idx] - first) / 1000.0,
        input_tokens=np.array(inputs, dtype=np.int64)[idx],
        output_tokens=out[idx],
        hash_ids=pa.array([hashes[i] for i in idx.tolist()], pa.list_(pa.int64())),
    )
