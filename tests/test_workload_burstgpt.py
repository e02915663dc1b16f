"""BurstGPT reader: the real slice's published statistics, failure rows, filters, sessions, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from loadgen.config import WorkloadConfig
from loadgen.workload import WorkloadError, load, read_rows
from traces import TRACES, needs_traces

SLICE = TRACES / "burstgpt_1_first400.csv"
HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def _rows(path: Path, **kw):
    return read_rows(WorkloadConfig(kind="burstgpt", path=str(path), **kw))


def _source_rows() -> list[dict]:
    with open(SLICE, newline="") as f:
        return list(csv.DictReader(f))


@needs_traces
def test_failed_rows_are_dropped_by_default_and_the_rest_match_published_stats():
    src, rows, notes = _rows(SLICE)
    assert src.rows_read == 400
    assert rows.num_rows == 383  # README: 17 failed rows with 0/0 tokens
    assert "workload.zero_output=drop (rows with 0 output tokens, e.g. failed requests): removed 17" in notes
    inputs, outputs = rows.column("input_tokens").to_numpy(), rows.column("output_tokens").to_numpy()
    # Published for this slice with the zero rows dropped: input p50/p95 353/1638, output 238/841.
    assert np.percentile(inputs, 50) == 353 and np.percentile(inputs, 95) == pytest.approx(1638, abs=1)
    assert np.percentile(outputs, 50) == 238 and np.percentile(outputs, 95) == pytest.approx(841, abs=1)
    arrival = rows.column("arrival_s").to_numpy()
    assert arrival[0] == 0.0 and arrival[-1] == pytest.approx(37269)
    assert np.all(np.diff(arrival) >= 0)


@needs_traces
def test_kept_failures_match_the_all_rows_stats():
    _, rows, _ = _rows(SLICE, zero_output="keep")
    assert rows.num_rows == 400
    inputs, outputs = rows.column("input_tokens").to_numpy(), rows.column("output_tokens").to_numpy()
    assert np.percentile(inputs, 50) == 314 and np.percentile(inputs, 99) == pytest.approx(1958, abs=1)
    assert inputs.max() == 2126 and outputs.max() == 2019
    assert outputs.min() == 1  # failed rows are sent asking for one token
    assert int((outputs == 1).sum()) >= 17
    rate = 400 / rows.column("arrival_s").to_numpy()[-1]
    assert rate == pytest.approx(0.0107, abs=0.0001)


@needs_traces
@pytest.mark.parametrize(
    "options, keep",
    [
        ({"model_filter": "ChatGPT"}, lambda r: r["Model"] == "ChatGPT"),
        ({"model_filter": "gpt-4"}, lambda r: r["Model"] == "GPT-4"),
        ({"log_type_filter": "API log"}, lambda r: r["Log Type"] == "API log"),
        ({"model_filter": "GPT-4", "log_type_filter": "Conversation log"}, lambda r: r["Model"] == "GPT-4" and r["Log Type"] == "Conversation log"),
    ],
)
def test_filters_keep_exactly_the_matching_rows(options, keep):
    expected = [i for i, r in enumerate(_source_rows()) if keep(r) and r["Response tokens"] != "0"]
    _, rows, notes = _rows(SLICE, **options)
    assert rows.column("request_id").to_pylist() == [f"r{i:06d}" for i in expected]
    assert any(n.startswith("workload.model_filter") or n.startswith("workload.log_type_filter") for n in notes)


@needs_traces
def test_a_filter_matching_nothing_lists_the_values_seen():
    with pytest.raises(WorkloadError) as exc:
        _rows(SLICE, model_filter="Claude")
    msg = str(exc.value)
    assert "workload.model_filter='Claude' removed" in msg
    assert "values in the file: ChatGPT 320, GPT-4 80" in msg


def test_session_column_makes_ordered_multi_turn_sessions(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type,Session ID\n"
        "10,ChatGPT,30,12,42,Conversation log,a\n"
        "11,ChatGPT,25,5,30,Conversation log,\n"
        "20,ChatGPT,80,9,89,Conversation log,a\n"
        "30,ChatGPT,20,9,29,Conversation log,b\n"
        "40,ChatGPT,150,9,159,Conversation log,a\n"
    )
    w = load(WorkloadConfig(kind="burstgpt", path=str(path)))
    t = w.table.to_pylist()
    # The row without a session id becomes a one-turn session of its own.
    assert [r["request_id"] for r in t] == ["s000000-t0", "s000000-t1", "s000000-t2", "s000001-t0", "s000002-t0"]
    assert [r["arrival_s"] for r in t] == [0.0, None, None, 1.0, 20.0]
    a0, a1, a2 = t[0], t[1], t[2]
    assert a1["messages"][:1] == a0["messages"]
    assert a2["messages"][: len(a1["messages"])] == a1["messages"]
    assert [m["role"] for m in a2["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert len(a1["messages"][1]["content"].split()) == 12  # the synthesized reply has turn 0's output length
    # Request tokens of a later turn are its whole prompt, history included.
    assert [r["input_tokens"] for r in t] == [30, 80, 150, 25, 20]
    assert [len(r["prompt"].split()) for r in t] == [30, 80, 150, 25, 20]
    assert a2["prompt"].startswith(a1["prompt"] + "\n")


@pytest.mark.parametrize(
    "row, message",
    [
        ("soon,ChatGPT,1,1,2,Conversation log", "b.csv line 3, field Timestamp: expected a non-negative number of seconds, got 'soon'"),
        ("-3,ChatGPT,1,1,2,Conversation log", "b.csv line 3, field Timestamp: expected a non-negative number of seconds, got '-3'"),
        ("9,ChatGPT,1,-1,0,Conversation log", "b.csv line 3, field Response tokens: expected a non-negative integer, got '-1'"),
        ("2,ChatGPT,1,1,2,Conversation log", "b.csv line 3, field Timestamp: expected a time no earlier than the rows before it (the file is sorted), got '2'"),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "b.csv"
    path.write_text(HEADER + "5,ChatGPT,10,3,13,Conversation log\n" + row + "\n")
    with pytest.raises(WorkloadError) as exc:
        _rows(path)
    assert str(exc.value) == message


def test_skip_mode_counts_bad_rows(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text(HEADER + "5,ChatGPT,10,3,13,Conversation log\nsoon,ChatGPT,1,1,2,Conversation log\n7,GPT-4,x,1,2,API log\n9,GPT-4,4,2,6,API log\n")
    w = load(WorkloadConfig(kind="burstgpt", path=str(path), on_error="skip"))
    assert w.table.column("request_id").to_pylist() == ["r000000", "r000003"]
    assert w.skipped == {
        "Timestamp: expected a non-negative number of seconds": 1,
        "Request tokens: expected a non-negative integer": 1,
    }
