"""Azure LLM inference traces (2023 code/conversation, 2024 week-long): one CSV row per request.

Input: a CSV with ``TIMESTAMP`` (ISO date-time, 7 fractional digits, parsed to the
nanosecond), ``ContextTokens`` and ``GeneratedTokens``, sorted by time. Output: a
``Source`` of rows with arrivals as offsets from the file's first row.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from loadgen.config import WorkloadConfig
from loadgen.workload.parse import DATETIME_EXPECTED, SortedRequestLog, csv_chunks, csv_header, require_columns, to_ns
from loadgen.workload.prompts import Synthesizer
from loadgen.workload.trace import Source, request_ids, row_batch

TIME, INPUT, OUTPUT = "TIMESTAMP", "ContextTokens", "GeneratedTokens"


def read(cfg: WorkloadConfig, synth: Synthesizer) -> Source:
    """Stream an Azure trace CSV into rows; malformed rows raise or are skipped per ``on_error``."""
    path = str(cfg.path)
    src = Source.for_file(path, "azure", cfg.on_error, has_arrivals=True)
    header = csv_header(path)
    require_columns(src.name, header, [TIME, INPUT, OUTPUT])
    src.batches = _rows(src, header, cfg.zero_output)
    return src


def _rows(src: Source, header: list[str], zero_output: str) -> Iterator[pa.RecordBatch]:
    log = SortedRequestLog(TIME, INPUT, OUTPUT, to_ns, DATETIME_EXPECTED)
    for chunk in csv_chunks(src, header):
        r = log.check(chunk, src.issues)
        keep = src.zero_outputs(r.output_tokens, r.keep, zero_output)
        if not keep.any():
            continue
        rows = chunk.lines[keep] - 2
        yield row_batch(
            len(rows),
            seq=rows,
            unit=rows,
            request_id=request_ids(rows),
            arrival_s=(r.t[keep] - log.first) / 1e9,
            input_tokens=r.input_tokens[keep],
            output_tokens=r.output_tokens[keep],
        )
