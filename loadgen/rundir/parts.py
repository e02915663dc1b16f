"""Writing records and other tables as crash-safe Parquet parts.

Input: finished request records (one dict each, keys from ``RECORD_SCHEMA``),
or any Arrow table. Output: complete Parquet files, each written under a
temporary name and renamed when closed, so every file on disk is readable at
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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loadgen.rundir.layout import Parts, records_root, telemetry_root
from loadgen.rundir.schema import RECORD_FIELDS, RECORD_SCHEMA

_SCALAR_FIELDS = tuple(n for n in RECORD_FIELDS if n != "chunk_ns")
_KNOWN = frozenset(RECORD_FIELDS)


class RecordError(KeyError):
    """A record carries a key the record schema does not have (a typo would otherwise lose the value)."""


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
        """Add one record; fields it does not set are null (``chunk_ns``: empty).

        Raises ``RecordError`` for a key that is not a record column.
        """
        if not _KNOWN.issuperset(row):
            unknown = sorted(set(row) - _KNOWN)
            raise RecordError(f"record fields {unknown} are not in RECORD_SCHEMA (loadgen.rundir.schema)")
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
    """Writes batches as successive complete Parquet parts: ``where`` is a directory, or ``Parts`` (directory, name prefix).

    A directory gets ``part-N-<tag>.parquet``; ``Parts`` (``layout.record_parts``,
    ``layout.telemetry_parts``) gets ``<prefix>-N-<tag>.parquet``. The tag is
    this writer's own, so writers sharing a directory never collide.
    """

    def __init__(self, where: str | Parts) -> None:
        self.where = where if isinstance(where, Parts) else Parts(where)
        self.fs, self.dir = resolve_fs(self.where.dir)
        self.fs.create_dir(self.dir, recursive=True)
        self.parts = 0
        self.rows = 0
        self._tag = uuid.uuid4().hex[:8]

    def write(self, batch: pa.RecordBatch | pa.Table) -> str:
        """Write one complete part (hidden temporary name, then rename); return its final path."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        name = self.where.name(self.parts, self._tag)
        final = f"{self.dir}/{name}"
        tmp = f"{self.dir}/.{name}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(table, out, compression="zstd")
        self.fs.move(tmp, final)
        self.parts += 1
        self.rows += table.num_rows
        return final


def write_table_atomically(table: pa.Table, path: str) -> str:
    """Write one Parquet file under a temporary name, then rename it to ``path``; return ``path``."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def remove_unfinished_parts(run_dir: str) -> int:
    """Delete parts a killed writer left half-written (``.*.tmp``) under a local run directory; return how many.

    They hold nothing readable, and some readers (polars) refuse a directory that holds them.
    Call it only when no writer of the run is left.
    """
    removed = 0
    for root in (records_root(run_dir), telemetry_root(run_dir)):
        if "://" in root or not os.path.isdir(root):
            continue
        for dirpath, _, names in os.walk(root):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    os.remove(os.path.join(dirpath, name))
                    removed += 1
    return removed
