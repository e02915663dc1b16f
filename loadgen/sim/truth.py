"""The simulator's ground truth: one Parquet row per request with the times it wrote each token.

Input: one row per finished request from the server. Output: one Parquet file,
written as a row group per flush (every ``flush_interval_s`` or ``flush_rows``
rows) under a hidden temporary name and renamed to its final name when closed,
so a file under the final name is always complete. Times are int64 epoch
nanoseconds from ``loadgen.clock.now_ns``, the clock loadgen's workers use.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

GROUND_TRUTH_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string()),  # X-Request-Id, or the one the simulator generated
        pa.field("response_id", pa.string()),  # the response's `id` (cmpl-... / chatcmpl-...)
        pa.field("api", pa.string()),  # completions | chat
        pa.field("stream", pa.bool_()),
        pa.field("arrival_ns", pa.int64()),  # the handler started on the request
        pa.field("first_token_ns", pa.int64()),  # first content written (non-streaming: the body)
        pa.field("token_ns", pa.list_(pa.int64())),  # each content chunk written (streaming only)
        pa.field("end_ns", pa.int64()),  # the response's last byte written (or the connection reset)
        pa.field("prompt_tokens", pa.int32()),
        pa.field("cached_tokens", pa.int32()),  # prompt tokens served from the prefix cache
        pa.field("output_tokens", pa.int32()),  # tokens written to the client
        pa.field("status", pa.string()),  # ok | http_error | reset | truncated | disconnected | shutdown
        pa.field("http_status", pa.int32()),
        pa.field("fault", pa.string()),  # injected faults, comma-separated ("" for none)
    ]
)

_FIELDS = tuple(GROUND_TRUTH_SCHEMA.names)


class GroundTruthWriter:
    """Buffers rows and writes them to ``path`` from a background thread, one row group per flush."""

    def __init__(self, path: str, *, flush_interval_s: float = 1.0, flush_rows: int = 10_000) -> None:
        self.path = os.path.abspath(path)
        self.flush_interval_s = flush_interval_s
        self.flush_rows = flush_rows
        directory, name = os.path.split(self.path)
        os.makedirs(directory, exist_ok=True)
        self._tmp = os.path.join(directory, f".{name}.tmp")
        self._writer = pq.ParquetWriter(self._tmp, GROUND_TRUTH_SCHEMA, compression="zstd")
        self._columns: dict[str, list[Any]] = {n: [] for n in _FIELDS}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="loadgen-sim-truth")
        self._task: Optional[asyncio.Task[None]] = None
        self._closed = False

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one request's row (missing fields are null)."""
        for name, column in self._columns.items():
            column.append(row.get(name))
        if len(self._columns["request_id"]) >= self.flush_rows:
            self._flush_soon()

    def start(self) -> None:
        """Start flushing every ``flush_interval_s`` on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def close(self) -> None:
        """Flush what is buffered, close the file and give it its final name."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        await asyncio.get_running_loop().run_in_executor(self._pool, self._write_and_close, self._take())
        self._pool.shutdown()

    def _take(self) -> dict[str, list[Any]]:
        columns, self._columns = self._columns, {n: [] for n in _FIELDS}
        return columns

    def _flush_soon(self) -> None:
        if not self._closed:
            self._pool.submit(self._write, self._take())

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            if self._columns["request_id"]:
                self._flush_soon()

    def _write(self, columns: dict[str, list[Any]]) -> None:
        if columns["request_id"]:
            self._writer.write_table(pa.Table.from_pydict(columns, schema=GROUND_TRUTH_SCHEMA))

    def _write_and_close(self, columns: dict[str, list[Any]]) -> None:
        self._write(columns)
        self._writer.close()
        os.replace(self._tmp, self.path)
