"""The generic format: a user's own CSV, JSON Lines or Parquet log, its columns mapped in config.

Input: a file chosen by extension (``.csv``; ``.jsonl``/``.ndjson``; ``.parquet``/``.pq``)
and ``workload.columns``, mapping request-table names (``arrival_s``, ``input_tokens``,
``output_tokens``, ``session_id``, ``turn``, ``prompt``) to the file's column names
(unmapped names default to a column of the same name, if the file has one).
``arrival_s`` is a number in ``workload.timestamp_unit`` or an ISO date-time.
Output: a ``Source`` of rows sorted by arrival, grouped into sessions when
``session_id`` is mapped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loadgen.config import WorkloadConfig
from loadgen.workload.errors import BadRows, WorkloadError
from loadgen.workload.parse import (
    DATETIME_EXPECTED,
    INT_EXPECTED,
    NUMBER_EXPECTED,
    csv_chunks,
    csv_header,
    got,
    json_int,
    json_number,
    jsonl_objects,
    to_float,
    to_int,
    to_ns,
)
from loadgen.workload.prompts import Synthesizer
from loadgen.workload.synthetic import check_dist, describe, draw_lengths
from loadgen.workload.trace import ROW_SCHEMA, Source, request_ids, row_batch, sessionize

KEYS = ("arrival_s", "input_tokens", "output_tokens", "session_id", "turn", "prompt")
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_BATCH = 1 << 16


@dataclass
class _Columns:
    """Parsed values of the mapped columns, gathered over the whole file."""

    rows: list[np.ndarray] = field(default_factory=list)  # 0-based source row of each value
    arrival: list[np.ndarray] = field(default_factory=list)  # float (unit) or int64 ns (date-times)
    inputs: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    turns: list[np.ndarray] = field(default_factory=list)
    sessions: list[pa.Array] = field(default_factory=list)
    prompts: list[pa.Array] = field(default_factory=list)
    datetimes: Optional[bool] = None  # whether arrival_s holds date-times (decided on first value)


def read(cfg: WorkloadConfig, synth: Synthesizer) -> Source:
    """Read a generic log (whole file; Arrow columns) into rows sorted by arrival."""
    path = str(cfg.path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise WorkloadError(f"{os.path.basename(path)}: workload=generic reads {', '.join(FORMATS)} files; got {ext!r}")
    fmt = FORMATS[ext]
    src = Source.for_file(path, "generic", cfg.on_error, has_arrivals=False, unit="row" if fmt == "parquet" else "line")
    mapping = _mapping(src, cfg, _file_columns(src, fmt))
    if "input_tokens" not in mapping and "prompt" not in mapping:
        raise WorkloadError(
            f"{src.name}: workload=generic needs workload.columns.input_tokens or workload.columns.prompt "
            f"(a file column with prompt lengths or prompt text); mapped: {mapping or 'nothing'}"
        )
    if "turn" in mapping and "session_id" not in mapping:
        raise WorkloadError(f"{src.name}: workload.columns.turn ({mapping['turn']!r}) needs workload.columns.session_id too")
    if "output_tokens" not in mapping:
        check_dist(cfg.output_tokens, "workload.output_tokens", 1)
    if "prompt" in mapping and "input_tokens" in mapping:
        src.notes.append(f"input_tokens counted from the prompt text; column {mapping.pop('input_tokens')!r} not used")
    src.has_arrivals = "arrival_s" in mapping
    src.notes.append("columns: " + ", ".join(f"{k} <- {v!r}" for k, v in mapping.items()))
    src.batches = _rows(src, fmt, mapping, cfg, synth)
    return src


def _file_columns(src: Source, fmt: str) -> list[str]:
    if fmt == "csv":
        return csv_header(src.path)
    if fmt == "parquet":
        return list(pq.ParquetFile(src.path).schema_arrow.names)
    for _, obj in jsonl_objects(Source.for_file(src.path, "generic", "skip", False)):
        return list(obj)
    raise WorkloadError(f"{src.name}: no JSON object on any line; expected one request per line")


def _mapping(src: Source, cfg: WorkloadConfig, columns: list[str]) -> dict[str, str]:
    unknown = sorted(set(cfg.columns) - set(KEYS))
    if unknown:
        raise WorkloadError(f"workload.columns: unknown key {unknown[0]!r}; expected some of {', '.join(KEYS)}")
    mapping = {}
    for key in KEYS:
        name = cfg.columns.get(key)
        if name is None:
            if key in columns:
                mapping[key] = key
            continue
        if name not in columns:
            raise WorkloadError(
                f"{src.name}: workload.columns.{key} names column {name!r}, which the file lacks; "
                f"the file has columns: {', '.join(columns)}"
            )
        mapping[key] = name
    return mapping


def _rows(
    src: Source, fmt: str, mapping: dict[str, str], cfg: WorkloadConfig, synth: Synthesizer
) -> Iterator[pa.RecordBatch]:
    cols = _Columns()
    if fmt == "jsonl":
        _read_jsonl(src, mapping, cols)
    elif fmt == "csv":
        for chunk in csv_chunks(src, csv_header(src.path)):
            _parse(mapping, cols, chunk.batch, chunk.lines, lambda bad, c=chunk: c.resolve(bad, src.issues), offset=2)
    else:
        start = 0
        for batch in pq.ParquetFile(src.path).iter_batches(batch_size=_BATCH, columns=list(set(mapping.values()))):
            positions = np.arange(start + 1, start + 1 + batch.num_rows, dtype=np.int64)
            src.rows_read += batch.num_rows
            _parse(mapping, cols, batch, positions, lambda bad, p=positions: bad.resolve(src.issues, lambda i: int(p[i])), offset=1)
            start += batch.num_rows
    if not cols.rows:
        return
    yield from _table(src, mapping, cols, cfg, synth).to_batches()


def _parse(
    mapping: dict[str, str],
    cols: _Columns,
    batch: pa.RecordBatch,
    positions: np.ndarray,
    resolve: Callable[[BadRows], np.ndarray],
    offset: int,
) -> None:
    """Check one batch of Arrow columns and keep its good rows' values."""
    n = batch.num_rows
    bad = BadRows(n)
    values: dict[str, Any] = {}
    if "arrival_s" in mapping:
        raw = batch.column(mapping["arrival_s"])
        if cols.datetimes is None:
            cols.datetimes = _looks_like_datetime(raw)
        parsed, mask = to_ns(raw) if cols.datetimes else to_float(raw)
        bad.add(mapping["arrival_s"], DATETIME_EXPECTED if cols.datetimes else NUMBER_EXPECTED, mask, raw)
        values["arrival"] = parsed
    for key in ("session_id", "prompt"):
        if key in mapping:
            raw = batch.column(mapping[key])
            if not (pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type)):
                raw = raw.cast(pa.string())
            values[key] = raw
    for key in ("input_tokens", "output_tokens", "turn"):
        if key in mapping:
            raw = batch.column(mapping[key])
            values[key], mask = to_int(raw)
            if key == "turn":  # a standalone row (no session) needs no turn
                mask &= ~(_empty(raw) & _empty(values["session_id"]))
            bad.add(mapping[key], INT_EXPECTED, mask, raw)
    if "prompt" in values:
        bad.add(mapping["prompt"], "a string", np.asarray(values["prompt"].is_null(), dtype=bool), values["prompt"])
    keep = resolve(bad)
    if not keep.any():
        return
    mask = pa.array(keep)
    cols.rows.append(positions[keep] - offset)
    for key, target in (("arrival", cols.arrival), ("input_tokens", cols.inputs), ("output_tokens", cols.outputs), ("turn", cols.turns)):
        if key in values:
            target.append(values[key][keep])
    if "session_id" in values:
        raw = pc.utf8_trim_whitespace(values["session_id"].filter(mask))
        cols.sessions.append(pc.if_else(pc.equal(raw, ""), pa.scalar(None, pa.string()), raw))
    if "prompt" in values:
        cols.prompts.append(values["prompt"].filter(mask))


def _empty(raw: pa.Array) -> np.ndarray:
    """Null or blank values."""
    if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
        return np.asarray(pc.equal(pc.utf8_trim_whitespace(raw), "").fill_null(True), dtype=bool)
    return np.asarray(raw.is_null(), dtype=bool)


def _looks_like_datetime(raw: pa.Array) -> bool:
    if pa.types.is_timestamp(raw.type) or pa.types.is_date(raw.type):
        return True
    if not pa.types.is_string(raw.type):
        return False
    first = next((v for v in raw.to_pylist() if v and v.strip()), "")
    _, bad = to_float(pa.array([first]))
    return bool(bad[0]) and not to_ns(pa.array([first]))[1][0]


def _read_jsonl(src: Source, mapping: dict[str, str], cols: _Columns) -> None:
    """JSON Lines: check each object's mapped fields (per row; values may have any JSON type)."""
    issues = src.issues
    rows: list[int] = []
    values: dict[str, list] = {k: [] for k in mapping}
    for line, obj in jsonl_objects(src):
        row: dict[str, Any] = {}
        for key, name in mapping.items():
            if key == "arrival_s":
                if cols.datetimes is None:
                    cols.datetimes = isinstance(obj.get(name), str)
                row[key] = _ns(obj.get(name)) if cols.datetimes else json_number(obj, name)
                expected = DATETIME_EXPECTED if cols.datetimes else NUMBER_EXPECTED
            elif key in ("input_tokens", "output_tokens", "turn"):
                row[key], expected = json_int(obj, name), INT_EXPECTED
                if key == "turn" and obj.get(name) is None and obj.get(mapping["session_id"]) in (None, ""):
                    row[key] = 0  # a standalone row needs no turn
            elif key == "session_id":
                value = obj.get(name)
                row[key], expected = (None if value is None or value == "" else str(value)), ""
            else:
                value = obj.get(name)
                row[key], expected = (value if isinstance(value, str) else None), "a string"
            if row[key] is None and key != "session_id":
                issues.report(line, name, expected, got(obj, name))
                break
        else:
            rows.append(line)
            for key in mapping:
                values[key].append(row[key])
    if not rows:
        return
    cols.rows.append(np.array(rows, dtype=np.int64) - 1)
    if "arrival_s" in mapping:
        cols.arrival.append(np.array(values["arrival_s"], dtype=np.int64 if cols.datetimes else np.float64))
    for key, target in (("input_tokens", cols.inputs), ("output_tokens", cols.outputs), ("turn", cols.turns)):
        if key in mapping:
            target.append(np.array(values[key], dtype=np.int64))
    if "session_id" in mapping:
        cols.sessions.append(pa.array(values["session_id"], pa.string()))
    if "prompt" in mapping:
        cols.prompts.append(pa.array(values["prompt"], pa.string()))


def _ns(value: Any) -> Optional[int]:
    if not isinstance(value, str):
        return None
    ns, bad = to_ns(pa.array([value]))
    return None if bad[0] else int(ns[0])


def _table(src: Source, mapping: dict[str, str], cols: _Columns, cfg: WorkloadConfig, synth: Synthesizer) -> pa.Table:
    rows = np.concatenate(cols.rows)
    n = len(rows)
    order = np.arange(n)
    arrival = None
    if cols.arrival:
        stamps = np.concatenate(cols.arrival)
        order = np.argsort(stamps, kind="stable")
        late = int(np.count_nonzero(stamps < np.maximum.accumulate(stamps)))
        if late:
            src.notes.append(f"{late} rows were out of arrival order; rows sorted by arrival")
        if cols.datetimes:
            arrival = (stamps - stamps.min()) / 1e9
        else:
            arrival = (stamps - stamps.min()) * UNIT_SECONDS[cfg.timestamp_unit]
            src.notes.append(f"arrival_s in {cfg.timestamp_unit} (workload.timestamp_unit)")
    outputs = np.concatenate(cols.outputs) if cols.outputs else None
    keep = np.ones(n, dtype=bool)
    if outputs is None:
        outputs, clipped = draw_lengths(cfg.output_tokens, n, np.random.default_rng(cfg.seed))
        src.notes.append(f"no output_tokens column: output lengths drawn from {describe(cfg.output_tokens)}")
        if clipped:
            src.notes.append(f"{clipped} drawn output lengths clipped to [{cfg.output_tokens.min}, {cfg.output_tokens.max}]")
    else:
        keep = src.zero_outputs(outputs, keep, cfg.zero_output)
    prompts = pa.concat_arrays(cols.prompts) if cols.prompts else None
    if prompts is not None:
        inputs = np.array([synth.count(p) for p in prompts.to_pylist()], dtype=np.int64)
    else:
        inputs = np.concatenate(cols.inputs)
    order = order[keep[order]]
    take = pa.array(order)
    table = pa.Table.from_batches(
        [
            row_batch(
                len(order),
                seq=np.arange(len(order), dtype=np.int64),
                unit=rows[order],
                request_id=request_ids(rows[order]),
                arrival_s=None if arrival is None else arrival[order],
                input_tokens=inputs[order],
                output_tokens=outputs[order],
                user_text=None if prompts is None else prompts.take(take),
            )
        ],
        schema=ROW_SCHEMA,
    )
    if cols.sessions:
        keys = pa.concat_arrays(cols.sessions).take(take)
        turns = pa.array(np.concatenate(cols.turns)[order]) if cols.turns else None
        table, count = sessionize(table, keys, turns)
        src.notes.append(f"{count} sessions from column {mapping['session_id']!r}")
    return table
