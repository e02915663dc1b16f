"""Generic reader: CSV/JSONL/Parquet with mapped columns, sessions, units, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadgen.config import LengthDist, WorkloadConfig
from loadgen.workload import WorkloadError, detect_kind, load
from traces import TRACES, needs_traces

LOG = (
    "ts,prompt_len,completion_len,conv,idx\n"
    "3.5,10,5,,\n"  # line 2: a standalone request, logged late
    "1.0,20,6,c1,0\n"
    "2.0,30,7,c1,1\n"
    "4.0,40,8,c2,0\n"
)
MAP = {"arrival_s": "ts", "input_tokens": "prompt_len", "output_tokens": "completion_len", "session_id": "conv", "turn": "idx"}


def _cfg(path: Path, **kw) -> WorkloadConfig:
    return WorkloadConfig(kind="generic", path=str(path), **kw)


def test_csv_with_mapped_columns_and_sessions(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    w = load(_cfg(path, columns=MAP))
    rows = w.table.to_pylist()
    assert [r["request_id"] for r in rows] == ["s000000-t0", "s000000-t1", "s000001-t0", "s000002-t0"]
    assert [r["session_id"] for r in rows] == ["s000000", "s000000", "s000001", "s000002"]
    assert [r["arrival_s"] for r in rows] == [0.0, None, 2.5, 3.0]  # sorted by arrival, later turns null
    assert [r["input_tokens"] for r in rows] == [20, 30, 10, 40]
    assert [r["output_tokens"] for r in rows] == [6, 7, 5, 8]
    assert rows[1]["messages"][:1] == rows[0]["messages"]
    assert len(rows[1]["messages"][1]["content"].split()) == 6  # the reply is synthesized to turn 0's output
    assert any("rows were out of arrival order" in n for n in w.notes)
    assert any("2 sessions from column 'conv'" in n for n in w.notes)


def test_turn_order_comes_from_the_turn_column(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("ts,in,out,s,k\n1,10,2,a,1\n2,5,2,a,0\n")
    rows = load(_cfg(path, columns={"arrival_s": "ts", "input_tokens": "in", "output_tokens": "out", "session_id": "s", "turn": "k"})).table.to_pylist()
    assert [r["request_id"] for r in rows] == ["s000000-t0", "s000000-t1"]
    assert [r["input_tokens"] for r in rows] == [5, 10]
    assert rows[0]["arrival_s"] == 0.0


def test_jsonl_with_prompt_text_and_date_times(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(
        json.dumps({"t": "2024-01-01T00:00:01Z", "p": "hello  world\nagain", "o": 3}) + "\n"
        + json.dumps({"t": "2024-01-01T00:00:00.5Z", "p": "a b c d", "o": 2}) + "\n"
    )
    w = load(_cfg(path, columns={"arrival_s": "t", "prompt": "p", "output_tokens": "o"}))
    rows = w.table.to_pylist()
    assert [r["prompt"] for r in rows] == ["a b c d", "hello  world\nagain"]
    assert [r["input_tokens"] for r in rows] == [4, 3]
    assert [r["arrival_s"] for r in rows] == [0.0, 0.5]
    assert rows[1]["messages"] == [{"role": "user", "content": "hello  world\nagain"}]


def test_parquet_with_default_names_and_millisecond_times(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"arrival_s": [1000, 1500, 4000], "input_tokens": [5, 6, 7], "output_tokens": [1, 2, 3]}), path)
    w = load(_cfg(path, timestamp_unit="ms"))
    assert w.table.column("arrival_s").to_pylist() == [0.0, 0.5, 3.0]
    assert w.table.column("input_tokens").to_pylist() == [5, 6, 7]


def test_missing_output_column_draws_lengths(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("input_tokens\n5\n6\n")
    w = load(_cfg(path, output_tokens=LengthDist(mean=42)))
    assert w.table.column("output_tokens").to_pylist() == [42, 42]
    assert not w.has_arrivals


def test_missing_mapped_column_lists_the_file_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    with pytest.raises(WorkloadError) as exc:
        load(_cfg(path, columns={**MAP, "input_tokens": "prompt_tokens"}))
    assert str(exc.value) == (
        "log.csv: workload.columns.input_tokens names column 'prompt_tokens', which the file lacks; "
        "the file has columns: ts, prompt_len, completion_len, conv, idx"
    )


@pytest.mark.parametrize(
    "columns, match",
    [
        ({"input": "prompt_len"}, "workload.columns: unknown key 'input'"),
        ({"arrival_s": "ts"}, "needs workload.columns.input_tokens or workload.columns.prompt"),
        ({"input_tokens": "prompt_len", "turn": "idx"}, "workload.columns.turn .* needs workload.columns.session_id"),
    ],
)
def test_mapping_errors(tmp_path, columns, match):
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    with pytest.raises(WorkloadError, match=match):
        load(_cfg(path, columns=columns))


def test_bad_values_name_line_or_row(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(LOG.replace("2.0,30,7", "2.0,thirty,7"))
    with pytest.raises(WorkloadError) as exc:
        load(_cfg(path, columns=MAP))
    assert str(exc.value) == "log.csv line 4, field prompt_len: expected a non-negative integer, got 'thirty'"
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"arrival_s": [0.0, 1.0, None], "input_tokens": [5, -6, 7], "output_tokens": [1, 2, 3]}), path)
    with pytest.raises(WorkloadError) as exc:
        load(_cfg(path))
    assert str(exc.value) == "log.parquet row 2, field input_tokens: expected a non-negative integer, got -6"
    w = load(_cfg(path, on_error="skip"))
    assert w.table.num_rows == 1
    assert w.skipped == {"input_tokens: expected a non-negative integer": 1, "arrival_s: expected a finite number": 1}
    path = tmp_path / "log.jsonl"
    path.write_text('{"input_tokens": 3, "output_tokens": 1}\n{"input_tokens": 3}\n')
    with pytest.raises(WorkloadError) as exc:
        load(_cfg(path))
    assert str(exc.value) == "log.jsonl line 2, field output_tokens: expected a non-negative integer, got nothing (missing)"


def test_unknown_extension(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("x")
    with pytest.raises(WorkloadError, match="workload=generic reads .csv"):
        load(_cfg(path))


@needs_traces
@pytest.mark.parametrize(
    "name, kind",
    [
        ("AzureLLMInferenceTrace_code.csv", "azure"),
        ("burstgpt_1_first400.csv", "burstgpt"),
        ("mooncake_trace_first1000.jsonl", "mooncake"),
        ("sharegpt_v3_filtered_500.json", "sharegpt"),
    ],
)
def test_detect_kind_of_the_shared_traces(name, kind):
    assert detect_kind(str(TRACES / name)) == kind


def test_detect_kind_falls_back_to_generic(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("input_tokens,output_tokens\n1,2\n")
    assert detect_kind(str(path)) == "generic"
