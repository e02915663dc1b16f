"""Time to first answer token: TTFT without a reasoning model's thinking."""

from __future__ import annotations

import pyarrow as pa

from loadgen.analysis.metrics import RequestTimes


def table(first_answer: list) -> pa.Table:
    ns = pa.int64()
    return pa.table({
        "sent_ns": pa.array([0, 0, 0], ns), "scheduled_ns": pa.array([None] * 3, ns),
        "first_token_ns": pa.array([10, 10, None], ns), "first_answer_ns": pa.array(first_answer, ns),
        "end_ns": pa.array([100, 100, 100], ns), "output_tokens": pa.array([3, 3, 0], ns),
        "status": ["ok", "ok", "ok"], "worker_id": pa.array([0, 0, 0], pa.int32()),
    })


def test_time_to_first_answer_token_is_measured_from_the_send():
    values, valid = RequestTimes.from_table(table([50, 10, None])).ttft_answer()
    assert list(valid) == [True, True, False] and list(values[valid]) == [50, 10]
    ttft, _ = RequestTimes.from_table(table([50, 10, None])).ttft()
    assert list(ttft[:2]) == [10, 10]  # TTFT is the first token of any kind


def test_records_without_the_column_have_no_answer_times():
    values, valid = RequestTimes.from_table(table([1, 2, 3]).drop_columns(["first_answer_ns"])).ttft_answer()
    assert not valid.any()
