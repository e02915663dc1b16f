"""Streaming parsers for trace files, with the exact line of every malformed value.

Input: CSV, JSON Lines and JSON-array files. Output: Arrow batches of raw
columns (CSV), or ``(line, object)`` pairs (JSON), plus vectorized checks that
turn raw columns into numbers and flag the rows that are not.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from loadgen.workload.errors import BadRows, RowIssues, WorkloadError, shown
from loadgen.workload.trace import Source

INT_EXPECTED = "a non-negative integer"
NUMBER_EXPECTED = "a finite number"
DATETIME_EXPECTED = "a date-time such as 2023-11-16 18:17:03.9799600"

_INT_RE = r"^\s*\d{1,18}\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_NAIVE_RE = r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?\s*$"
_AWARE_RE = r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)\s*$"
_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- CSV


def csv_header(path: str) -> list[str]:
    """The column names on the first line of a CSV file."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = f.readline()
    if not first.strip():
        raise WorkloadError(f"{path}: the file is empty; expected a CSV header line")
    return next(csv.reader([first]))


def require_columns(name: str, header: list[str], needed: list[str]) -> None:
    """Raise naming the first needed column the file lacks, and listing the ones it has."""
    for col in needed:
        if col not in header:
            raise WorkloadError(f"{name}: missing column {col!r}; the file has columns: {', '.join(header)}")


@dataclass
class CsvChunk:
    """One batch of a CSV file: string columns, the file line of each row, and rows that did not split."""

    batch: pa.RecordBatch
    lines: np.ndarray  # 1-based line number of each row (the header is line 1)
    split_errors: list[tuple[int, int, int]]  # (line, expected fields, actual fields) among these lines
    header: list[str]

    def resolve(self, bad: BadRows, issues: RowIssues) -> np.ndarray:
        """Raise for the first malformed line of the chunk, or count every one; return the rows to keep."""
        if not issues.skip:
            first = bad.first()
            value_line = None if first is None else int(self.lines[first])
            for line, expected, actual in self.split_errors:
                if value_line is None or line < value_line:
                    _report_split(issues, self.header, line, expected, actual)
        else:
            for line, expected, actual in self.split_errors:
                _report_split(issues, self.header, line, expected, actual)
        return bad.resolve(issues, lambda i: int(self.lines[i]))


class _InvalidRows:
    """Rows pyarrow could not split into the header's fields; remembered by line number."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, int, int]] = []  # (line, expected fields, actual fields)
        self.dropped: list[int] = []  # lines the parser dropped after the last delivered row, ascending

    def __call__(self, row: Any) -> str:
        self.pending.append((row.number, row.expected_columns, row.actual_columns))
        self.dropped.append(row.number)
        return "skip"

    def take(self, upto: Optional[int]) -> list[tuple[int, int, int]]:
        """Remove and return the pending rows up to line ``upto`` (all when None)."""
        now = [p for p in self.pending if upto is None or p[0] <= upto]
        self.pending = [p for p in self.pending if upto is not None and p[0] > upto]
        return now


def csv_chunks(src: Source, header: list[str], block_size: int = 1 << 20) -> Iterator[CsvChunk]:
    """Stream a CSV file as batches of string columns with their line numbers.

    Blank lines are ignored (counted in ``src.blank_lines``). Rows with too few or too
    many fields come with the chunk that holds the lines around them, so the reader
    raises the first malformed line of the file whatever its kind.
    """
    invalid = _InvalidRows()
    with open(src.path, "rb") as f:  # a Python file keeps pyarrow from reading ahead through it all
        reader = pcsv.open_csv(
            f,
            read_options=pcsv.ReadOptions(use_threads=False, block_size=block_size, encoding="utf8"),
            # Keep empty lines as rows so that row numbers map back to file lines.
            parse_options=pcsv.ParseOptions(invalid_row_handler=invalid, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in header}),
        )
        seen = 0  # data lines delivered so far, dropped lines included
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                rest = invalid.take(None)
                if rest:
                    empty = pa.RecordBatch.from_pylist([], schema=reader.schema)
                    yield CsvChunk(empty, np.zeros(0, dtype=np.int64), rest, header)
                return
            except pa.ArrowInvalid as exc:
                raise WorkloadError(f"{src.name}: cannot parse the CSV after line {seen + 1}: {exc}") from exc
            n = batch.num_rows
            if not n:
                continue
            lines = np.arange(seen + 2, seen + 2 + n, dtype=np.int64)
            for d in invalid.dropped:  # rare: each dropped line shifts the rows after it
                lines[lines >= d] += 1
            seen = int(lines[-1]) - 1
            invalid.dropped = [d for d in invalid.dropped if d > seen + 1]
            blank = np.ones(n, dtype=bool)
            for col in batch.columns:
                blank &= np.asarray(pc.equal(col, ""), dtype=bool)
            if blank.any():
                src.blank_lines += int(blank.sum())
                keep = ~blank
                batch, lines = batch.filter(pa.array(keep)), lines[keep]
            src.rows_read += batch.num_rows
            yield CsvChunk(batch, lines, invalid.take(seen + 1), header)


def _report_split(issues: RowIssues, header: list[str], line: int, expected: int, actual: int) -> None:
    if actual < expected:
        issues.report(line, header[actual], "a value (the row ends early)", f"{actual} of {expected} fields")
    else:
        issues.report(line, None, f"{expected} comma-separated fields", str(actual))


# --------------------------------------------------------------------------- columns


def _as_bool(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.fill_null(False), dtype=bool)


def to_int(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative int32-range integers from a string or numeric column: (values, bad mask)."""
    n = len(arr)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            values = pc.cast(arr, pa.int64())
            bad = np.zeros(n, dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ok = pc.match_substring_regex(arr, _INT_RE)
            values = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(arr), "0"), pa.int64())
            bad = ~_as_bool(ok)
    elif pa.types.is_integer(t):
        values, bad = arr.cast(pa.int64()), np.zeros(n, dtype=bool)
    elif pa.types.is_floating(t):
        f = np.asarray(arr.fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
        bad = ~np.isfinite(f) | (np.floor(f) != f) | (np.abs(f) > 2**62)
        values = pa.array(np.where(bad, 0, f).astype(np.int64))
    else:
        return np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)
    out = np.asarray(values.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    bad = bad | np.asarray(values.is_null(), dtype=bool) | (out < 0) | (out > _INT32_MAX)
    return np.where(bad, 0, out), bad


def to_float(arr: pa.Array, non_negative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Finite floats from a string or numeric column: (values, bad mask)."""
    n = len(arr)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            values = pc.cast(arr, pa.float64())
            bad = np.zeros(n, dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            ok = pc.match_substring_regex(arr, _FLOAT_RE)
            values = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(arr), "0"), pa.float64())
            bad = ~_as_bool(ok)
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        values, bad = arr.cast(pa.float64()), np.zeros(n, dtype=bool)
    else:
        return np.zeros(n), np.ones(n, dtype=bool)
    out = np.asarray(values.fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = bad | ~np.isfinite(out)
    if non_negative:
        bad |= out < 0
    return np.where(bad, 0.0, out), bad


def to_ns(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds since the epoch from date-time strings or a timestamp column: (values, bad mask).

    Strings are ISO 8601 (``2023-11-16 18:17:03.9799600``, up to 9 fractional digits,
    parsed exactly); a zone offset is honoured, a naive time is taken as UTC.
    """
    n = len(arr)
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        values = arr.cast(pa.timestamp("ns", tz=getattr(arr.type, "tz", None))).cast(pa.int64())
        bad = np.asarray(values.is_null(), dtype=bool)
        return np.asarray(values.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64), bad
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)
    try:
        values = pc.cast(arr, pa.timestamp("ns")).cast(pa.int64())
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64), np.zeros(n, dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.zeros(n, dtype=np.int64)
    bad = np.ones(n, dtype=bool)
    for pattern, typ in ((_NAIVE_RE, pa.timestamp("ns")), (_AWARE_RE, pa.timestamp("ns", tz="UTC"))):
        idx = np.flatnonzero(_as_bool(pc.match_substring_regex(arr, pattern)))
        if not len(idx):
            continue
        sub = pc.utf8_trim_whitespace(arr.take(pa.array(idx)))
        try:
            out[idx] = np.asarray(pc.cast(sub, typ).cast(pa.int64()).to_numpy(zero_copy_only=False))
            bad[idx] = False
        except pa.ArrowInvalid:  # well-formed but impossible dates: find them one by one
            for i, s in zip(idx.tolist(), sub.to_pylist()):
                try:
                    out[i] = pc.cast(pa.array([s]), typ).cast(pa.int64())[0].as_py()
                    bad[i] = False
                except pa.ArrowInvalid:
                    pass
    return out, bad


def backwards(values: np.ndarray, previous_max: Optional[float]) -> np.ndarray:
    """Mask of values smaller than the largest value before them (``previous_max`` carries over batches)."""
    if not len(values):
        return np.zeros(0, dtype=bool)
    start = values[0] if previous_max is None else max(previous_max, values[0])
    prior = np.maximum.accumulate(np.r_[start, values[:-1]])
    return values < prior


SORTED_EXPECTED = "a time no earlier than the rows before it (the file is sorted)"


@dataclass
class TimedRows:
    """One chunk of a time-sorted request log, checked: times, token counts, and the rows to keep."""

    t: np.ndarray  # arrival times in the file's unit
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    keep: np.ndarray  # rows that passed every check


class SortedRequestLog:
    """Checks the chunks of a time-sorted CSV of (time, input tokens, output tokens), across chunks.

    A malformed value or a time earlier than any before it is a row issue (raise or
    skip per ``on_error``); ``first`` is the first kept time, the origin of arrivals.
    """

    def __init__(self, time: str, inputs: str, outputs: str, parse_time, time_expected: str) -> None:
        self.columns = (time, inputs, outputs)
        self.parse_time = parse_time  # column -> (values, bad mask)
        self.time_expected = time_expected
        self.first: Optional[Any] = None
        self._latest: Optional[Any] = None

    def check(self, chunk: CsvChunk, issues: RowIssues) -> TimedRows:
        """Parse and check one chunk's three columns; rows that fail are reported to ``issues``."""
        time, inputs, outputs = self.columns
        b = chunk.batch
        t, t_bad = self.parse_time(b.column(time))
        tin, in_bad = to_int(b.column(inputs))
        tout, out_bad = to_int(b.column(outputs))
        bad = BadRows(b.num_rows)
        bad.add(time, self.time_expected, t_bad, b.column(time))
        bad.add(inputs, INT_EXPECTED, in_bad, b.column(inputs))
        bad.add(outputs, INT_EXPECTED, out_bad, b.column(outputs))
        ok = ~bad.mask()
        back = np.zeros(b.num_rows, dtype=bool)
        back[ok] = backwards(t[ok], self._latest)
        bad.add(time, SORTED_EXPECTED, back, b.column(time))
        keep = chunk.resolve(bad, issues)
        if keep.any():
            top = t[keep].max()
            self._latest = top if self._latest is None else max(self._latest, top)
            if self.first is None:
                self.first = t[keep][0]
        return TimedRows(t, tin, tout, keep)


# --------------------------------------------------------------------------- JSON


def jsonl_objects(src: Source) -> Iterator[tuple[int, dict]]:
    """Stream the objects of a JSON Lines file with their 1-based line numbers.

    Blank lines are ignored (counted); a line that is not a complete JSON object raises
    or is skipped through ``src.issues``.
    """
    with open(src.path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                src.blank_lines += 1
                continue
            src.rows_read += 1
            try:
                obj = json.loads(raw)
            except ValueError:
                src.issues.report(lineno, None, "a complete JSON object", shown(raw.strip().decode("utf-8", "replace")))
                continue
            if not isinstance(obj, dict):
                src.issues.report(lineno, None, "a JSON object", f"a JSON {type(obj).__name__}")
                continue
            yield lineno, obj


def json_array_items(src: Source, chunk_chars: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Stream the items of a JSON array file with the line each starts on, in bounded memory.

    A malformed array cannot be resynchronised, so it always raises.
    """
    decoder = json.JSONDecoder()
    with open(src.path, encoding="utf-8-sig") as f:
        buf, eof = "", False
        base_line = 1  # line number of buf[0]

        def more() -> bool:
            nonlocal buf, eof
            chunk = f.read(chunk_chars)
            eof = not chunk
            buf += chunk
            return not eof

        def fail(pos: int, expected: str) -> WorkloadError:
            while len(buf) - pos < 20 and more():
                pass
            found = shown(buf[pos : pos + 20]) if pos < len(buf) else "the end of the file"
            return WorkloadError(f"{src.name} line {base_line + buf.count(chr(10), 0, pos)}: expected {expected}, got {found}")

        more()
        pos = _skip_ws(buf, 0)
        while pos >= len(buf) and more():
            pos = _skip_ws(buf, pos)
        if pos >= len(buf) or buf[pos] != "[":
            raise fail(pos, "a JSON array '['")
        pos += 1
        expect_item = True
        while True:
            pos = _skip_ws(buf, pos)
            if pos >= len(buf) - 1 and not eof:  # keep one char of lookahead for ']' and ','
                base_line += buf.count("\n", 0, pos)
                buf, pos = buf[pos:], 0
                more()
                continue
            if pos >= len(buf):
                raise fail(pos, "']' closing the JSON array")
            ch = buf[pos]
            if ch == "]":
                return
            if ch == "," and not expect_item:
                pos, expect_item = pos + 1, True
                continue
            if not expect_item:
                raise fail(pos, "',' or ']' between array items")
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof or not more():  # a number at the buffer's end may go on
                        break
                except json.JSONDecodeError as exc:
                    if not more():
                        err_line = base_line + buf.count("\n", 0, exc.pos)
                        raise WorkloadError(
                            f"{src.name} line {err_line}: expected a complete JSON value, got invalid JSON ({exc.msg.lower()})"
                        ) from None
            src.rows_read += 1
            yield base_line + buf.count("\n", 0, pos), item
            base_line += buf.count("\n", 0, end)
            buf, pos, expect_item = buf[end:], 0, False


def _skip_ws(buf: str, pos: int) -> int:
    n = len(buf)
    while pos < n and buf[pos] in " \t\r\n":
        pos += 1
    return pos


def json_int(obj: dict, key: str) -> Optional[int]:
    """A non-negative int32-range integer field of a JSON object, or None when missing or not one."""
    v = obj.get(key)
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        v = int(v)
    if isinstance(v, int) and 0 <= v <= _INT32_MAX:
        return v
    return None


def json_number(obj: dict, key: str) -> Optional[float]:
    """A finite number field of a JSON object, or None when missing or not one."""
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def got(obj: dict, key: str) -> str:
    """How a bad JSON field reads in a message."""
    return "nothing (missing)" if key not in obj else shown(obj[key])
