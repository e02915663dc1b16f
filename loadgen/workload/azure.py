"""Azure LLM inference traces (2023 code/conversation, 2024 week-long): one CSV row per request.

Input: a CSV with ``TIMESTAMP`` (ISO date-time, 7 fractional digits, parsed to the
nanosecond), ``ContextTokens`` and ``GeneratedTokens``, sorted by time. Output: a
``Source`` of rows with arrivals as offsets from the file's first row.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from loadgen.config import WorkloadConfig
from loadgen.workload.errors import BadRows
from loadgen.workload.parse import (
    DATETIME_EXPECTED,
    INT_EXPECTED,
    backwards,
    csv_chunks,
    csv_header,
    require_columns,
    to_int,
    to_ns,
)
from loadgen.workload.prompts import Synthesizer
from loadgen.workload.trace import Source, request_ids, row_batch

TIME, INPUT, OUTPUT = "TIMESTAMP", "ContextTokens", "GeneratedTokens"
SORTED_EXPECTED = "a time no earlier than the rows before it (the file is sorted)"


def read(cfg: WorkloadConfig, synth: Synthesizer) -> Source:
    """Stream an Azure trace CSV into rows; malformed rows raise or are skipped per ``on_error``."""
    path = str(cfg.path)
    src = Source.for_file(path, "azure", cfg.on_error, has_arrivals=True)
    header = csv_header(path)
    require_columns(src.name, header, [TIME, INPUT, OUTPUT])
    src.batches = _rows(src, header, cfg.zero_output)
    return src


def _rows(src: Source, header: list[str], zero_output: str) -> Iterator[pa.RecordBatch]:
    first_ns: Optional[int] = None
    latest: Optional[int] = None
    for chunk in csv_chunks(src, header):
        b = chunk.batch
        n = b.num_rows
        times, inputs, outputs = b.column(TIME), b.column(INPUT), b.column(OUTPUT)
        ns, ns_bad = to_ns(times)
        tin, in_bad = to_int(inputs)
        tout, out_bad = to_int(outputs)
        bad = BadRows(n)
        bad.add(TIME, DATETIME_EXPECTED, ns_bad, times)
        bad.add(INPUT, INT_EXPECTED, in_bad, inputs)
        bad.add(OUTPUT, INT_EXPECTED, out_bad, outputs)
        ok = ~bad.mask()
        back = np.zeros(n, dtype=bool)
        back[ok] = backwards(ns[ok], latest)
        bad.add(TIME, SORTED_EXPECTED, back, times)
        keep = chunk.resolve(bad, src.issues)
        if keep.any():
            latest = int(ns[keep].max()) if latest is None else max(latest, int(ns[keep].max()))
            if first_ns is None:
                first_ns = int(ns[keep][0])
        keep = src.zero_outputs(tout, keep, zero_output)
        if not keep.any():
            continue
        rows = chunk.lines[keep] - 2
        yield row_batch(
            len(rows),
            seq=rows,
            unit=rows,
            request_id=request_ids(rows),
            arrival_s=(ns[keep] - first_ns) / 1e9,
            input_tokens=tin[keep],
            output_tokens=tout[keep],
        )
