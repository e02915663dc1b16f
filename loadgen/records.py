"""The per-request record schema and the crash-safe Parquet part writer.

Input: per-request timings collected by a worker (column lists). Output:
``run_dir/records/level=K/worker=W/part-N.parquet`` files, each written under a
temporary name and renamed when complete, so every file on disk is readable at
every moment and a hard kill loses at most one flush interval.
"""

from __future__ import annotations

import os
import uuid
from array import array
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

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
        pa.field("first_token_ns", pa.int64()),
        pa.field("end_ns", pa.int64()),
        pa.field("input_tokens", pa.int32()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("output_tokens_expected", pa.int32()),
        pa.field("output_tokens", pa.int32()),
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

#: Values of the ``status`` column.
STATUSES = ("ok", "http_error", "timeout", "connection_error", "protocol_error", "cancelled")


_SCALAR_FIELDS = tuple(n for n in RECORD_FIELDS if n != "chunk_ns")


@dataclass
class Buffered:
    """Records taken out of a ``RecordBuffer``: scalar columns plus the chunk times, flat."""

    columns: dict[str, list[Any]]
    chunks: array  # every record's chunk_ns, concatenated (int64)
    offsets: array  # record i's chunks are chunks[offsets[i]:offsets[i + 1]]


class RecordBuffer:
    """Where a worker appends finished records: cheap to append, and cheap to turn into Arrow.

    Chunk times go into one flat int64 buffer with offsets, so building the
    ``chunk_ns`` list column is a zero-copy view rather than a Python loop over
    every token — the flush never holds the GIL for long.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.columns: dict[str, list[Any]] = {n: [] for n in _SCALAR_FIELDS}
        self.chunks = array("q")
        self.offsets = array("q", [0])

    def append(self, row: dict[str, Any]) -> None:
        """Add one record (missing fields become null, a missing chunk_ns an empty list)."""
        for name, col in self.columns.items():
            col.append(row.get(name))
        chunk_ns = row.get("chunk_ns")
        if chunk_ns:
            self.chunks.extend(chunk_ns)
        self.offsets.append(len(self.chunks))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self) -> Optional[Buffered]:
        """Hand over the buffered records and start empty (None when there is nothing)."""
        if not len(self):
            return None
        taken = Buffered(self.columns, self.chunks, self.offsets)
        self._reset()
        return taken


def to_batch(buffered: Buffered) -> pa.RecordBatch:
    """Build a record batch (RECORD_SCHEMA) from buffered records."""
    arrays = []
    for f in RECORD_SCHEMA:
        if f.name == "chunk_ns":
            offsets = pa.array(np.frombuffer(buffered.offsets, dtype=np.int64).astype(np.int32))
            values = pa.array(np.frombuffer(buffered.chunks, dtype=np.int64), type=pa.int64())
            arrays.append(pa.ListArray.from_arrays(offsets, values))
        else:
            arrays.append(pa.array(buffered.columns[f.name], type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=RECORD_SCHEMA)


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local directory or a URI (file://, s3://, ...)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


class PartWriter:
    """Writes batches into one directory as successive complete Parquet parts."""

    def __init__(self, dir_uri: str) -> None:
        self.fs, self.dir = resolve_fs(dir_uri)
        self.fs.create_dir(self.dir, recursive=True)
        self.parts = 0
        self.rows = 0
        self._tag = uuid.uuid4().hex[:8]

    def write(self, batch: pa.RecordBatch | pa.Table) -> str:
        """Write one complete part (temporary name, then rename); return its final path."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        final = f"{self.dir}/part-{self.parts:05d}-{self._tag}.parquet"
        tmp = f"{self.dir}/.part-{self.parts:05d}-{self._tag}.parquet.tmp"
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(table, out, compression="zstd")
        self.fs.move(tmp, final)
        self.parts += 1
        self.rows += table.num_rows
        return final


def records_dir(run_dir: str) -> str:
    """Where a run's records live."""
    return os.path.join(run_dir, "records")


def part_dir(records_uri: str, level: int, worker_id: int) -> str:
    """The hive partition directory of one (level, worker) under a records root."""
    return f"{records_uri.rstrip('/')}/level={level}/worker={worker_id}"


def read_records(run_dir_or_uri: str, columns: Optional[list[str]] = None) -> pa.Table:
    """Read a run's whole record dataset (hive-partitioned) as one table with RECORD_SCHEMA."""
    fs, root = resolve_fs(run_dir_or_uri)
    if fs.get_file_info(f"{root}/records").type == pafs.FileType.Directory:
        root = f"{root}/records"
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    files = sorted(
        i.path for i in fs.get_file_info(selector) if i.path.endswith(".parquet") and "/." not in i.path
    )
    if not files:
        return RECORD_SCHEMA.empty_table().select(columns) if columns else RECORD_SCHEMA.empty_table()
    dataset = ds.dataset(files, schema=RECORD_SCHEMA, filesystem=fs, format="parquet")
    return dataset.to_table(columns=columns)
