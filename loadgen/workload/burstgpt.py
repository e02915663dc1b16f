"""BurstGPT traces (ChatGPT and GPT-4 behind Azure OpenAI): one CSV row per request.

Input: a CSV with ``Timestamp`` (seconds), ``Model``, ``Request tokens``,
``Response tokens``, ``Total tokens`` and ``Log Type``, sorted by time. Rows with 0
response tokens are failed requests, handled by ``workload.zero_output``; rows can
be filtered by model and log type. Where a release has a session column
(``Session ID``, ``Conversation ID``, ...) its rows become multi-turn sessions.
Output: a ``Source`` of rows with arrivals as offsets from the file's first row.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadgen.config import WorkloadConfig
from loadgen.workload.parse import SortedRequestLog, csv_chunks, csv_header, require_columns, to_float
from loadgen.workload.prompts import Synthesizer
from loadgen.workload.trace import ROW_SCHEMA, Source, request_ids, row_batch, sessionize

TIME, MODEL, INPUT, OUTPUT, LOG_TYPE = "Timestamp", "Model", "Request tokens", "Response tokens", "Log Type"
SESSION_COLUMNS = ("Session ID", "Conversation ID", "SessionID", "ConversationID", "session_id", "conversation_id")
TIME_EXPECTED = "a non-negative number of seconds"


def read(cfg: WorkloadConfig, synth: Synthesizer) -> Source:
    """Stream a BurstGPT CSV into rows, applying the model and log-type filters."""
    path = str(cfg.path)
    src = Source.for_file(path, "burstgpt", cfg.on_error, has_arrivals=True)
    header = csv_header(path)
    needed = [TIME, INPUT, OUTPUT]
    needed += [MODEL] if cfg.model_filter is not None else []
    needed += [LOG_TYPE] if cfg.log_type_filter is not None else []
    require_columns(src.name, header, needed)
    session_col = next((c for c in SESSION_COLUMNS if c in header), None)
    rows = _rows(src, header, cfg, session_col)
    if session_col is None:
        src.batches = (batch for batch, _ in rows)
    else:
        src.notes.append(f"sessions from column {session_col!r}: a later turn is sent when the one before it has finished")
        src.batches = _sessions(rows)
    return src


def _rows(
    src: Source, header: list[str], cfg: WorkloadConfig, session_col: Optional[str]
) -> Iterator[tuple[pa.RecordBatch, Optional[pa.Array]]]:
    log = SortedRequestLog(TIME, INPUT, OUTPUT, lambda col: to_float(col, non_negative=True), TIME_EXPECTED)
    filters = [(MODEL, cfg.model_filter, "model_filter"), (LOG_TYPE, cfg.log_type_filter, "log_type_filter")]
    for chunk in csv_chunks(src, header):
        b = chunk.batch
        r = log.check(chunk, src.issues)
        keep = r.keep
        for col, wanted, key in filters:
            if wanted is not None:
                keep = _filter(src, b.column(col), keep, wanted, f"workload.{key}={wanted!r}")
        keep = src.zero_outputs(r.output_tokens, keep, cfg.zero_output)
        if not keep.any():
            continue
        rows = chunk.lines[keep] - 2
        batch = row_batch(
            len(rows),
            seq=rows,
            unit=rows,
            request_id=request_ids(rows),
            arrival_s=r.t[keep] - log.first,
            input_tokens=r.input_tokens[keep],
            output_tokens=r.output_tokens[keep],
        )
        keys = None
        if session_col is not None:
            raw = pc.utf8_trim_whitespace(b.column(session_col).filter(pa.array(keep)))
            keys = pc.if_else(pc.equal(raw, ""), pa.scalar(None, pa.string()), raw)
        yield batch, keys


def _filter(src: Source, column: pa.Array, keep: np.ndarray, wanted: str, what: str) -> np.ndarray:
    """Keep rows whose value equals ``wanted`` (case-insensitively); count the values seen."""
    values = column.filter(pa.array(keep))
    counts = src.seen.setdefault(what, Counter())
    for item in pc.value_counts(values).to_pylist():
        counts[item["values"]] += item["counts"]
    match = np.asarray(pc.equal(pc.utf8_lower(column), wanted.lower()), dtype=bool)
    src.remove(what, int((keep & ~match).sum()))
    return keep & match


def _sessions(rows: Iterator[tuple[pa.RecordBatch, Optional[pa.Array]]]) -> Iterator[pa.RecordBatch]:
    batches, keys = [], []
    for batch, key in rows:
        batches.append(batch)
        keys.append(key)
    if not batches:
        return
    table = pa.Table.from_batches(batches, schema=ROW_SCHEMA)
    table, _ = sessionize(table, pa.concat_arrays(keys))
    yield from table.to_batches()
