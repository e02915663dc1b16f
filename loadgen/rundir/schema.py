"""Every table a run directory holds, column by column: records, telemetry, server metrics.

Input: nothing. Output: the Arrow schemas writers write and readers read, the
values of the ``status`` column, and the error classes derived from them.
Times are int64 nanoseconds on the run-wide clock (epoch-based; see
``loadgen.clock``).
"""

from __future__ import annotations

import pyarrow as pa

#: Every record has exactly these columns; times are int64 ns on the run-wide clock.
RECORD_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("level", pa.int32()),
        pa.field("level_value", pa.float64()),
        pa.field("worker_id", pa.int32()),
        pa.field("node_id", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("response_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("turn", pa.int32()),
        pa.field("scheduled_ns", pa.int64()),
        pa.field("sent_ns", pa.int64()),
        pa.field("first_byte_ns", pa.int64()),
        pa.field("first_token_ns", pa.int64()),  # first generated token of any kind (reasoning included)
        pa.field("first_answer_ns", pa.int64()),  # first answer (non-reasoning) token
        pa.field("end_ns", pa.int64()),
        pa.field("input_tokens", pa.int32()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("output_tokens_expected", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        pa.field("reasoning_tokens", pa.int32()),  # of output_tokens, when the server's usage says
        pa.field("chunk_ns", pa.list_(pa.int64())),
        pa.field("status", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("error", pa.string()),
        pa.field("loop_lag_ms", pa.float32()),
        pa.field("attempts", pa.int32()),
        pa.field("clock_uncertainty_ns", pa.int64()),
    ]
)

RECORD_FIELDS: tuple[str, ...] = tuple(RECORD_SCHEMA.names)

#: Values of the records' ``status`` column.
STATUSES = ("ok", "http_error", "timeout", "connection_error", "protocol_error", "cancelled")
#: Statuses that count as errors in a ledger (a cancelled request is neither ok nor an error).
ERROR_STATUSES = tuple(s for s in STATUSES if s not in ("ok", "cancelled"))

#: Per-worker health samples taken while a level runs (``telemetry/worker=W/part-*.parquet``).
TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("t_ns", pa.int64()),
        pa.field("level", pa.int32()),
        pa.field("worker_id", pa.int32()),
        pa.field("loop_lag_ms", pa.float32()),
        pa.field("cpu_percent", pa.float32()),
        pa.field("in_flight", pa.int32()),
        pa.field("sent", pa.int64()),
        pa.field("completed", pa.int64()),
    ]
)

#: The target's Prometheus metrics sampled during levels (``server_metrics.parquet``).
SERVER_METRICS_SCHEMA = pa.schema(
    [
        pa.field("t_ns", pa.int64()),
        pa.field("level", pa.int32()),
        pa.field("name", pa.string()),  # canonical name (loadgen.scrape.CANONICAL)
        pa.field("metric", pa.string()),  # the engine's metric name
        pa.field("labels", pa.string()),  # the sample's labels as a JSON object
        pa.field("value", pa.float64()),
    ]
)
