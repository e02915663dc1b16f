"""Azure trace reader: published statistics of the real traces, exact timestamps, exact errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadgen.config import WorkloadConfig
from loadgen.workload import REQUEST_SCHEMA, WorkloadError, load, read_rows
from traces import TRACES, needs_traces

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _rows(path: Path, **kw):
    _, rows, notes = read_rows(WorkloadConfig(kind="azure", path=str(path), **kw))
    return rows, notes


def _csv(tmp_path: Path, body: str, name: str = "azure.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


def _peaks(arrival: np.ndarray) -> tuple[int, float]:
    per_s = np.bincount(np.floor(arrival).astype(int)).max()
    per_min = np.bincount(np.floor(arrival / 60).astype(int)).max() / 60
    return int(per_s), float(per_min)


@needs_traces
@pytest.mark.parametrize(
    "name, rows, span, rate, peak_1s, peak_60s, inp, out",
    [
        # Published in shared/traces/README.md: (p50, p99, mean, max) of input and output tokens.
        ("code", 8819, 3435.9, 2.567, 67, 10.53, (1469, 7436, 2048, 7437), (13, 251.5, 27.9, 1899)),
        ("conv", 19366, 3501.7, 5.530, 16, 8.45, (1020, 4142, 1155, 14050), (129, 601, 211, 1000)),
    ],
)
def test_full_traces_match_published_statistics(name, rows, span, rate, peak_1s, peak_60s, inp, out):
    table, _ = _rows(TRACES / f"AzureLLMInferenceTrace_{name}.csv")
    arrival = table.column("arrival_s").to_numpy()
    assert table.num_rows == rows
    assert arrival[0] == 0.0 and np.all(np.diff(arrival) >= 0)
    assert arrival[-1] == pytest.approx(span, abs=0.05)
    assert rows / arrival[-1] == pytest.approx(rate, abs=0.001)
    p1, p60 = _peaks(arrival)
    assert p1 == peak_1s
    assert p60 == pytest.approx(peak_60s, abs=0.005)
    for col, (p50, p99, mean, mx) in (("input_tokens", inp), ("output_tokens", out)):
        values = table.column(col).to_numpy()
        assert np.percentile(values, 50) == pytest.approx(p50)
        assert np.percentile(values, 99) == pytest.approx(p99, abs=0.5)
        assert values.mean() == pytest.approx(mean, abs=0.5 if mean > 100 else 0.05)
        assert values.max() == mx


@needs_traces
def test_request_table_has_prompts_of_the_trace_lengths():
    w = load(WorkloadConfig(kind="azure", path=str(TRACES / "AzureLLMInferenceTrace_code.csv")))
    t = w.table
    assert t.schema == REQUEST_SCHEMA
    assert w.rows_read == 8819 and w.skipped == {}
    ids = t.column("request_id").to_pylist()
    assert ids[0] == "r000000" and len(set(ids)) == t.num_rows
    rows = np.random.default_rng(0).choice(t.num_rows, 300, replace=False)
    for i in rows.tolist():
        prompt = t.column("prompt")[i].as_py()
        assert len(prompt.split()) == t.column("input_tokens")[i].as_py()
        assert t.column("messages")[i].as_py() == [{"role": "user", "content": prompt}]
    assert t.column("session_id").null_count == t.num_rows
    assert set(t.column("turn").to_pylist()) == {0}


def test_timestamps_are_parsed_to_the_nanosecond(tmp_path):
    path = _csv(
        tmp_path,
        "2023-11-16 18:17:03.9799600,10,5\n"
        "2023-11-16 18:17:04.0000001,11,6\n"
        "2023-11-16 18:18:03.9799601,12,7\n",
    )
    table, _ = _rows(path)
    arrival = table.column("arrival_s").to_pylist()
    assert arrival == [0.0, pytest.approx(0.0200401, abs=1e-12), pytest.approx(60.0000001, abs=1e-12)]
    assert table.column("input_tokens").to_pylist() == [10, 11, 12]


def test_zone_offset_timestamps_of_the_2024_traces(tmp_path):
    path = _csv(
        tmp_path,
        "2024-05-10 00:00:00.009930+00:00,100,5\n"
        "2024-05-10 02:00:01.009930+02:00,200,6\n",
    )
    table, _ = _rows(path)
    assert table.column("arrival_s").to_pylist() == [0.0, pytest.approx(1.0, abs=1e-9)]


def test_time_scale_multiplies_offsets(tmp_path):
    path = _csv(tmp_path, "2023-11-16 18:00:00.0,1,1\n2023-11-16 18:00:02.0,1,1\n2023-11-16 18:00:10.0,1,1\n")
    table, notes = _rows(path, time_scale=0.5)
    assert table.column("arrival_s").to_pylist() == [0.0, 1.0, 5.0]
    assert any("time_scale=0.5" in n for n in notes)


GOOD = "2023-11-16 18:17:03.9799600,10,5\n"


@pytest.mark.parametrize(
    "body, message",
    [
        (
            GOOD + "2023-11-16 18:17:04.0,abc,5\n",
            "azure.csv line 3, field ContextTokens: expected a non-negative integer, got 'abc'",
        ),
        (
            GOOD + "2023-11-16 18:17:04.0,12,-4\n",
            "azure.csv line 3, field GeneratedTokens: expected a non-negative integer, got '-4'",
        ),
        (
            GOOD + GOOD + "2023-11-16 18:17:05.0,7\n",
            "azure.csv line 4, field GeneratedTokens: expected a value (the row ends early), got 2 of 3 fields",
        ),
        (
            GOOD + "2023-11-16 18:17:02.0,7,3\n",
            "azure.csv line 3, field TIMESTAMP: expected a time no earlier than the rows before it "
            "(the file is sorted), got '2023-11-16 18:17:02.0'",
        ),
        (
            GOOD + "\n\nyesterday,7,3\n",  # blank lines still count as lines
            "azure.csv line 5, field TIMESTAMP: expected a date-time such as 2023-11-16 18:17:03.9799600, got 'yesterday'",
        ),
        (
            GOOD + "2023-11-16 18:17:04.0,4,1,9\n",
            "azure.csv line 3: expected 3 comma-separated fields, got 4",
        ),
        (
            GOOD + "2023-11-16 18:17:04.0,4,\n",
            "azure.csv line 3, field GeneratedTokens: expected a non-negative integer, got ''",
        ),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path, body, message):
    with pytest.raises(WorkloadError) as exc:
        _rows(_csv(tmp_path, body))
    assert str(exc.value) == message


def test_the_first_malformed_line_is_reported(tmp_path):
    body = GOOD + "2023-11-16 18:17:04.0,9\n" + "2023-11-16 18:17:05.0,x,1\n"
    with pytest.raises(WorkloadError, match="line 3, field GeneratedTokens"):
        _rows(_csv(tmp_path, body))
    body = GOOD + "2023-11-16 18:17:04.0,x,1\n" + "2023-11-16 18:17:05.0,9\n"
    with pytest.raises(WorkloadError, match="line 3, field ContextTokens"):
        _rows(_csv(tmp_path, body))


def test_missing_column_lists_the_file_columns(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,Context,GeneratedTokens\n2023-11-16 18:17:03.9,1,1\n")
    with pytest.raises(WorkloadError) as exc:
        _rows(path)
    assert str(exc.value) == "azure.csv: missing column 'ContextTokens'; the file has columns: TIMESTAMP, Context, GeneratedTokens"


def test_skip_mode_counts_each_reason_and_keeps_good_rows(tmp_path):
    body = (
        "2023-11-16 18:17:03.0,10,5\n"  # line 2: good
        "2023-11-16 18:17:04.0,abc,5\n"  # 3: bad input
        "2023-11-16 18:17:05.0,7\n"  # 4: short row
        "\n"  # 5: blank
        "2023-11-16 18:17:02.0,7,3\n"  # 6: backwards
        "2023-11-16 18:17:06.0,-4,3\n"  # 7: negative
        "2023-11-16 18:17:07.0,4,0\n"  # 8: zero output, dropped by policy
        "not a date,4,1\n"  # 9: bad time
        "2023-11-16 18:17:09.0000001,4,1\n"  # 10: good
    )
    w = load(WorkloadConfig(kind="azure", path=str(_csv(tmp_path, body)), on_error="skip"))
    assert w.table.column("request_id").to_pylist() == ["r000000", "r000008"]
    assert w.table.column("arrival_s").to_pylist() == [0.0, pytest.approx(6.0000001)]
    assert w.skipped == {
        "ContextTokens: expected a non-negative integer": 2,
        "GeneratedTokens: expected a value (the row ends early)": 1,
        "TIMESTAMP: expected a time no earlier than the rows before it (the file is sorted)": 1,
        "TIMESTAMP: expected a date-time such as 2023-11-16 18:17:03.9799600": 1,
    }
    assert w.rows_read == 7  # data lines, blank and short lines excluded
    assert any("rows with 0 output tokens" in n and "removed 1" in n for n in w.notes)


def test_zero_output_rows_can_be_kept_with_one_token(tmp_path):
    path = _csv(tmp_path, "2023-11-16 18:17:03.0,10,0\n2023-11-16 18:17:04.0,10,3\n")
    w = load(WorkloadConfig(kind="azure", path=str(path), zero_output="keep"))
    assert w.table.column("output_tokens").to_pylist() == [1, 3]
    with pytest.raises(WorkloadError, match="zero_output=drop .* removed 1"):
        load(WorkloadConfig(kind="azure", path=str(_csv(tmp_path, "2023-11-16 18:17:03.0,10,0\n"))))


def test_empty_file_and_missing_file_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(WorkloadError, match="empty"):
        _rows(empty)
    with pytest.raises(WorkloadError, match="no data rows"):
        _rows(_csv(tmp_path, ""))
    with pytest.raises(WorkloadError, match="no such file"):
        _rows(tmp_path / "nope.csv")
