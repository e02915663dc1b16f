"""Every table a run directory holds, column by column: records, telemetry, server metrics.

Input: nothing. Output: the Arrow schemas writers write and readers read, the
values of the ``status`` column, and the error classes derived from them.

Times are int64 nanoseconds since the Unix epoch on the run-wide clock (see
``loadgen.clock``), not Arrow timestamps: the analysis does integer arithmetic
on them as numpy int64, and a timestamp type would make every reader convert.
Each ``*_ns`` field says so in its field metadata (``TIME_NS``, or
``DURATION_NS`` for a span), stored in every Parquet file's Arrow schema
(``pq.read_schema(part).field("sent_ns").metadata``). ``status`` is
dictionary-encoded: six values over millions of rows, a category in pandas and
polars.
"""

from __future__ import annotations

import pyarrow as pa

#: Field metadata of every time point: int64 epoch nanoseconds on the run clock.
TIME_NS = {"unit": "ns", "clock": "run clock, epoch-based (ns since 1970-01-01T00:00:00Z)"}
#: Field metadata of every span in nanoseconds.
DURATION_NS = {"unit": "ns", "kind": "duration"}
#: Field metadata of every span in milliseconds.
DURATION_MS = {"unit": "ms", "kind": "duration"}
#: The type of the records' ``status`` column: a dictionary of the ``STATUSES`` strings.
STATUS_TYPE = pa.dictionary(pa.int32(), pa.string())


def _time(name: str) -> pa.Field:
    """An int64 time-point field with its unit and clock in the field metadata."""
    return pa.field(name, pa.int64(), metadata=TIME_NS)

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
        _time("scheduled_ns"),
        _time("sent_ns"),  # when the request's bytes were written: after its connect, if it opened one
        # how long the request's own connection took to open (TCP, proxy, TLS); null when it went out
        # on a connection opened before the level (warm-up) or kept alive from an earlier request
        pa.field("connect_ms", pa.float32(), metadata=DURATION_MS),
        _time("first_byte_ns"),
        _time("first_token_ns"),  # first generated token of any kind (reasoning included)
        _time("first_answer_ns"),  # first answer (non-reasoning) token
        _time("end_ns"),
        pa.field("input_tokens", pa.int32()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("output_tokens_expected", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        pa.field("reasoning_tokens", pa.int32()),  # of output_tokens, when the server's usage says
        pa.field("chunk_ns", pa.list_(pa.int64()), metadata=TIME_NS),  # each streamed chunk's arrival
        pa.field("status", STATUS_TYPE),  # one of STATUSES: the error class of a failed request
        pa.field("http_status", pa.int32()),
        pa.field("error", pa.string()),  # the error's message (free text)
        pa.field("loop_lag_ms", pa.float32(), metadata=DURATION_MS),
        pa.field("attempts", pa.int32()),
        pa.field("clock_uncertainty_ns", pa.int64(), metadata=DURATION_NS),
    ]
)

RECORD_FIELDS: tuple[str, ...] = tuple(RECORD_SCHEMA.names)

#: Values of the records' ``status`` column.
STATUSES = ("ok", "http_error", "timeout", "connection_error", "protocol_error", "cancelled")
#: Statuses that count as errors in a ledger (a cancelled request is neither ok nor an error).
ERROR_STATUSES = tuple(s for s in STATUSES if s not in ("ok", "cancelled"))

#: Per-worker health samples taken while a level runs (``telemetry/worker-W/part-*.parquet``).
TELEMETRY_SCHEMA = pa.schema(
    [
        _time("t_ns"),
        pa.field("level", pa.int32()),
        pa.field("worker_id", pa.int32()),
        pa.field("loop_lag_ms", pa.float32(), metadata=DURATION_MS),
        pa.field("cpu_percent", pa.float32()),
        pa.field("in_flight", pa.int32()),
        pa.field("sent", pa.int64()),
        pa.field("completed", pa.int64()),
    ]
)

#: The target's Prometheus metrics sampled during levels (``server_metrics.parquet``).
SERVER_METRICS_SCHEMA = pa.schema(
    [
        _time("t_ns"),
        pa.field("level", pa.int32()),
        pa.field("name", pa.string()),  # canonical name (loadgen.scrape.CANONICAL)
        pa.field("metric", pa.string()),  # the engine's metric name
        pa.field("labels", pa.string()),  # the sample's labels as a JSON object
        pa.field("value", pa.float64()),
    ]
)
