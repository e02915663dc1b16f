"""Streaming parsers: exact line numbers across read blocks, bounded JSON-array streaming, column checks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from loadgen.workload import WorkloadError
from loadgen.workload.errors import BadRows
from loadgen.workload.parse import csv_chunks, csv_header, json_array_items, to_float, to_int, to_ns
from loadgen.workload.trace import Source


def _src(path, on_error="raise") -> Source:
    return Source.for_file(str(path), "test", on_error, has_arrivals=True)


def test_csv_line_numbers_survive_small_blocks_blank_lines_and_bad_splits(tmp_path):
    lines = ["a,b"]
    expected = {}
    for i in range(2, 3000):
        if i % 97 == 0:
            lines.append("")
        elif i % 101 == 0:
            lines.append("1,2,3")  # too many fields
        else:
            lines.append(f"{i},x")
            expected[i] = str(i)
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    src = _src(path, on_error="skip")
    seen = {}
    for chunk in csv_chunks(src, csv_header(str(path)), block_size=4096):
        chunk.resolve(BadRows(chunk.batch.num_rows), src.issues)
        seen.update(zip(chunk.lines.tolist(), chunk.batch.column("a").to_pylist()))
    assert seen == expected
    assert src.blank_lines == len([i for i in range(2, 3000) if i % 97 == 0])
    assert src.issues.skipped == {"expected 2 comma-separated fields": len([i for i in range(2, 3000) if i % 101 == 0 and i % 97])}


def test_json_array_streams_with_the_line_of_each_item(tmp_path):
    items = [{"id": i, "text": "word " * (i % 50), "nested": [{"k": "]"}, "[,"]} for i in range(400)]
    path = tmp_path / "a.json"
    path.write_text("  [\n" + ",\n".join(json.dumps(x) for x in items) + "\n]\n")
    src = _src(path)
    got = list(json_array_items(src, chunk_chars=256))
    assert [x for _, x in got] == items
    assert [line for line, _ in got] == list(range(2, 402))
    assert src.rows_read == 400


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": 1}', "a.json line 1: expected a JSON array '[', got '{\"a\": 1}'"),
        ('[\n{"a": 1}\n{"a": 2}]', "a.json line 3: expected ',' or ']' between array items, got '{\"a\": 2}]'"),
        ('[\n{"a": 1},\n', "a.json line 3: expected ']' closing the JSON array, got the end of the file"),
    ],
)
def test_json_array_structure_errors(tmp_path, text, message):
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(WorkloadError) as exc:
        list(json_array_items(_src(path), chunk_chars=4))
    assert str(exc.value) == message


def test_column_checks_flag_exactly_the_bad_values():
    values, bad = to_int(pa.array(["1", " 22 ", "-3", "4.0", "", "x", "2147483648", "7"]))
    assert bad.tolist() == [False, False, True, True, True, True, True, False]
    assert values[~bad].tolist() == [1, 22, 7]
    values, bad = to_float(pa.array(["1.5", "1e3", "nan", "-2", "abc"]), non_negative=True)
    assert bad.tolist() == [False, False, True, True, True]
    assert values[:2].tolist() == [1.5, 1000.0]
    ns, bad = to_ns(pa.array(["2023-11-16 18:17:03.9799600", "2023-13-01 00:00:00", "2024-05-10T00:00:00Z", "soon"]))
    assert bad.tolist() == [False, True, False, True]
    assert ns[0] == np.datetime64("2023-11-16T18:17:03.979960000", "ns").astype(np.int64)
    assert ns[2] == np.datetime64("2024-05-10T00:00:00", "ns").astype(np.int64)


def test_json_array_items_cut_at_any_read_boundary(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[12345, 678, {"a": [1,2]}, true, "xyz"]')
    for chunk in (1, 2, 3, 5):
        got = [x for _, x in json_array_items(_src(path), chunk_chars=chunk)]
        assert got == [12345, 678, {"a": [1, 2]}, True, "xyz"]
