"""What a reader hands on: validated trace rows in time order, before reshaping and text synthesis.

Input: a reader's parsed columns. Output: ``Source`` (batches of ``ROW_SCHEMA``
rows plus the reader's counts), consumed by ``reshape`` and then ``render``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadgen.workload.errors import RowIssues

#: One row per request. A session's turns are consecutive and all carry the session's start
#: in ``arrival_s`` (the request table nulls it for turns >= 1 when rendering).
ROW_SCHEMA = pa.schema(
    [
        pa.field("seq", pa.int64()),  # emission order: time order, a session's turns consecutive
        pa.field("unit", pa.int64()),  # sampling unit: one per request, or one per whole session
        pa.field("request_id", pa.string()),
        pa.field("arrival_s", pa.float64()),  # seconds from the source's first row; null: no times
        pa.field("session_id", pa.string()),
        pa.field("turn", pa.int32()),
        pa.field("input_tokens", pa.int64()),  # the whole prompt, earlier turns included
        pa.field("output_tokens", pa.int64()),
        pa.field("hash_ids", pa.list_(pa.int64())),  # Mooncake prefix blocks
        pa.field("user_text", pa.string()),  # this turn's own user text, when the trace has it
        pa.field("reply_text", pa.string()),  # the reply to this turn, when the trace has it
    ]
)


def row_batch(n: int, **columns: Any) -> pa.RecordBatch:
    """A ROW_SCHEMA batch of ``n`` rows from the given columns; the others are null."""
    arrays = []
    for f in ROW_SCHEMA:
        value = columns.pop(f.name, None)
        if value is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(value, (pa.Array, pa.ChunkedArray)):
            arrays.append(value.cast(f.type))
        else:
            arrays.append(pa.array(value, type=f.type))
    if columns:
        raise TypeError(f"unknown row columns: {sorted(columns)}")
    return pa.RecordBatch.from_arrays(arrays, schema=ROW_SCHEMA)


def numbered(prefix: str, numbers: np.ndarray) -> pa.Array:
    """Ids like ``r000123``: a one-letter prefix and a number of at least six digits, vectorized."""
    numbers = np.asarray(numbers, dtype=np.int64)
    n = len(numbers)
    digits = np.maximum(6, np.floor(np.log10(np.maximum(numbers, 1))).astype(np.int64) + 1)
    width = int(digits.max(initial=6))
    matrix = np.empty((n, width + 1), dtype=np.uint8)
    matrix[:, 0] = ord(prefix)
    rest = numbers.copy()
    for j in range(width, 0, -1):
        matrix[:, j] = 48 + rest % 10
        rest //= 10
    col = np.arange(width + 1)
    keep = (col == 0) | (col > width - digits[:, None])  # drop the padding beyond each id's digits
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(digits + 1, out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(matrix[keep].tobytes())])


def request_ids(rows: np.ndarray) -> pa.Array:
    """Request ids ``r000123`` from 0-based source row numbers."""
    return numbered("r", rows)


def session_ids(index: np.ndarray) -> pa.Array:
    """Session ids ``s000012`` from 0-based session numbers."""
    return numbered("s", index)


def turn_ids(sessions: pa.Array, turns: np.ndarray) -> pa.Array:
    """Request ids ``s000012-t3`` of session turns."""
    return pc.binary_join_element_wise(sessions, pc.cast(pa.array(turns, pa.int64()), pa.string()), "-t")


def sessionize(table: pa.Table, keys: pa.Array, order: Optional[pa.Array] = None) -> tuple[pa.Table, int]:
    """Group rows that share a session key into consecutive turns of one session.

    ``table`` is ROW_SCHEMA in time order. A session's turns are ordered by ``order``
    (a turn column) when given, else by time; they are renumbered 0, 1, ... and all
    carry the session's first arrival. A row with a null key becomes a one-turn session
    of its own, so every row of the result has a session. Sessions are ordered by their
    first arrival and numbered in that order (``s000000``; requests ``s000000-t1``).
    Returns the new table and the number of sessions that came from keys.
    """
    n = table.num_rows
    if n == 0:
        return table, 0
    pos = np.arange(n)
    key_idx = pc.dictionary_encode(keys).indices
    has_key = ~np.asarray(pc.is_null(keys), dtype=bool)
    # A row without a key is its own group; key groups are numbered after all rows.
    group = np.where(has_key, n + np.asarray(key_idx.fill_null(0), dtype=np.int64), pos)
    first = np.full(group.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, group, pos)
    start = first[group]  # time position of each row's session start
    within = pos if order is None else np.asarray(order.fill_null(0), dtype=np.int64)
    perm = np.lexsort((pos, within, start))
    sorted_group = group[perm]
    new_group = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    session_no = np.cumsum(new_group) - 1
    turn = pos - np.flatnonzero(new_group)[session_no]
    sessions = session_ids(session_no)

    out = table.take(pa.array(perm))
    arrival = table.column("arrival_s").to_numpy(zero_copy_only=False)[start[perm]]
    columns = {
        "seq": pa.array(pos, pa.int64()),
        "unit": pa.array(-1 - session_no, pa.int64()),  # a session samples as one unit
        "request_id": turn_ids(sessions, turn),
        "arrival_s": pa.array(arrival, pa.float64(), mask=np.isnan(arrival)),
        "session_id": sessions,
        "turn": pa.array(turn, pa.int32()),
    }
    for name, values in columns.items():
        out = out.set_column(out.schema.get_field_index(name), name, values)
    return out, int((new_group & has_key[perm]).sum())


@dataclass
class Source:
    """One reader's output: row batches in time order, and what the reader counted on the way."""

    path: str  # the file read, or "synthetic"
    kind: str  # the workload kind
    issues: RowIssues  # malformed rows: raised or counted
    has_arrivals: bool  # whether rows carry arrival times
    batches: Iterator[pa.RecordBatch] = field(default_factory=lambda: iter(()))  # ROW_SCHEMA, arrivals non-decreasing
    rows_read: int = 0  # data rows (or conversations) seen so far
    removed: dict[str, int] = field(default_factory=dict)  # reader filter -> rows it removed
    seen: dict[str, Counter] = field(default_factory=dict)  # filter -> values seen (for empty-result errors)
    adjusted: Counter = field(default_factory=Counter)  # what was changed -> rows it was changed in
    notes: list[str] = field(default_factory=list)
    blank_lines: int = 0  # blank lines ignored

    @property
    def name(self) -> str:
        """The file name used in messages."""
        return os.path.basename(self.path)

    def remove(self, what: str, count: int) -> None:
        """Count rows removed by a reader filter named ``what`` (e.g. ``workload.model_filter='GPT-4'``)."""
        self.removed[what] = self.removed.get(what, 0) + int(count)

    def zero_outputs(self, outputs: np.ndarray, keep: np.ndarray, policy: str) -> np.ndarray:
        """Apply ``workload.zero_output`` to kept rows with 0 output tokens; return the new keep mask."""
        zero = (outputs == 0) & keep
        count = int(zero.sum())
        if not count:
            return keep
        if policy == "keep":
            outputs[zero] = 1
            self.adjusted["rows with 0 output tokens sent with 1 (workload.zero_output=keep)"] += count
            return keep
        self.remove("workload.zero_output=drop (rows with 0 output tokens, e.g. failed requests)", count)
        return keep & ~zero

    @classmethod
    def for_file(cls, path: str, kind: str, on_error: str, has_arrivals: bool, unit: str = "line") -> "Source":
        """A Source reading ``path``, its malformed rows handled per ``workload.on_error``."""
        issues = RowIssues(os.path.basename(path), skip=on_error == "skip", unit=unit)
        return cls(path=path, kind=kind, issues=issues, has_arrivals=has_arrivals)
