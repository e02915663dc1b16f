"""Reshaping by config: window, time scale, target rate keeping burstiness, caps, seeded sampling."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loadgen.config import ConfigError, WorkloadConfig
from loadgen.workload import WorkloadError, load, read_rows, reshape
from loadgen.workload.trace import ROW_SCHEMA, row_batch
from traces import TRACES, needs_traces

CONV = TRACES / "AzureLLMInferenceTrace_conv.csv"


def _azure(tmp_path: Path, offsets, inputs=None, outputs=None) -> Path:
    """An Azure-format CSV with arrivals at the given offsets (s)."""
    t0 = datetime(2023, 11, 16, 18, 0, 0)
    n = len(offsets)
    inputs = inputs if inputs is not None else [100 + i for i in range(n)]
    outputs = outputs if outputs is not None else [10 + i for i in range(n)]
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for off, i, o in zip(offsets, inputs, outputs):
        stamp = (t0 + timedelta(microseconds=round(off * 1e6))).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        lines.append(f"{stamp},{i},{o}")
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(path: Path, **kw) -> pa.Table:
    return read_rows(WorkloadConfig(kind="azure", path=str(path), **kw))[1]


def _bursty(n: int = 2000, seed: int = 7) -> np.ndarray:
    gaps = np.random.default_rng(seed).gamma(0.25, 4.0, n - 1)  # CV 2: much burstier than Poisson
    return np.r_[0.0, np.cumsum(gaps)]


@needs_traces
def test_window_keeps_the_trace_slice_and_re_zeroes():
    full = _rows(CONV).column("arrival_s").to_numpy()
    w = load(WorkloadConfig(kind="azure", path=str(CONV), start_s=600, end_s=1200))
    arrival = w.table.column("arrival_s").to_numpy()
    inside = full[(full >= 600) & (full < 1200)]
    assert len(arrival) == len(inside)
    np.testing.assert_allclose(arrival, inside - inside[0], atol=1e-9)
    assert any("window [600, 1200)" in n for n in w.notes)
    assert any("re-zeroed" in n for n in w.notes)


def test_window_stops_reading_at_its_end(tmp_path):
    path = _azure(tmp_path, list(range(100)))
    src, rows, notes = read_rows(WorkloadConfig(kind="azure", path=str(path), end_s=10))
    assert rows.num_rows == 10
    assert src.rows_read == 100  # one CSV block; the note says where reading stopped
    assert any("reading stopped at the window end" in n for n in notes)


def test_time_scale(tmp_path):
    offsets = _bursty(200)
    arrival = _rows(_azure(tmp_path, offsets), time_scale=0.25).column("arrival_s").to_numpy()
    np.testing.assert_allclose(arrival, offsets * 0.25, atol=1e-6)


def test_target_rate_rescales_gaps_and_keeps_burstiness(tmp_path):
    offsets = _bursty()
    path = _azure(tmp_path, offsets)
    w = load(WorkloadConfig(kind="azure", path=str(path), target_rate=50.0))
    arrival = w.table.column("arrival_s").to_numpy()
    assert len(arrival) / arrival[-1] == pytest.approx(50.0, rel=1e-9)
    gaps, original = np.diff(arrival), np.diff(offsets)
    cv = lambda g: g.std() / g.mean()  # noqa: E731
    assert cv(original) > 1.5
    assert cv(gaps) == pytest.approx(cv(original), rel=1e-4)
    np.testing.assert_allclose(gaps / gaps.sum(), original / original.sum(), atol=1e-9)
    assert w.table.column("input_tokens").to_pylist() == [100 + i for i in range(len(offsets))]
    assert any("target_rate=50" in n for n in w.notes)


def test_target_rate_needs_two_distinct_times(tmp_path):
    with pytest.raises(WorkloadError, match="target_rate needs at least two distinct arrival times"):
        _rows(_azure(tmp_path, [5.0, 5.0]), target_rate=1.0)


def test_caps_clip_and_count(tmp_path):
    path = _azure(tmp_path, [0, 1, 2, 3], inputs=[10, 500, 20, 900], outputs=[5, 300, 7, 1])
    w = load(WorkloadConfig(kind="azure", path=str(path), max_input_tokens=100, max_output_tokens=50))
    assert w.table.column("input_tokens").to_pylist() == [10, 100, 20, 100]
    assert w.table.column("output_tokens").to_pylist() == [5, 50, 7, 1]
    assert [len(p.split()) for p in w.table.column("prompt").to_pylist()] == [10, 100, 20, 100]
    assert "max_input_tokens=100: 2 requests clipped" in w.notes
    assert "max_output_tokens=50: 1 requests clipped" in w.notes


def test_sample_is_seeded_sorted_and_a_subset(tmp_path):
    offsets = _bursty(3000)
    path = _azure(tmp_path, offsets)
    full = _rows(path)
    a = _rows(path, sample=300, seed=1)
    b = _rows(path, sample=300, seed=1)
    c = _rows(path, sample=300, seed=2)
    assert a.equals(b)
    ids = a.column("request_id").to_pylist()
    assert len(ids) == 300 and ids != c.column("request_id").to_pylist()
    assert ids == sorted(ids)  # time order kept
    assert set(ids) <= set(full.column("request_id").to_pylist())
    arrival = a.column("arrival_s").to_numpy()
    assert arrival[0] == 0.0 and np.all(np.diff(arrival) >= 0)
    # A seeded sample spreads over the whole trace rather than taking its start.
    assert arrival[-1] > 0.9 * (offsets[-1] - offsets[0])
    assert _rows(path, sample=10_000).num_rows == 3000


def test_sample_does_not_depend_on_batching():
    n = 10_000
    idx = np.arange(n, dtype=np.int64)
    rows = [row_batch(n, seq=idx, unit=idx, arrival_s=idx.astype(float), input_tokens=idx, output_tokens=idx)]
    one = reshape._sample(iter(rows), 700, 3, [])
    table = pa.Table.from_batches(rows, schema=ROW_SCHEMA)
    many = reshape._sample(iter(table.to_batches(max_chunksize=333)), 700, 3, [])
    assert one.sort_by("seq").equals(many.sort_by("seq"))
    assert one.num_rows == 700


def test_sample_keeps_whole_sessions(tmp_path):
    convs = [
        {"id": str(i), "conversations": [{"from": "human" if k % 2 == 0 else "gpt", "value": f"c{i} m{k}"} for k in range(1 + i % 5)]}
        for i in range(40)
    ]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(convs))
    w = load(WorkloadConfig(kind="sharegpt", path=str(path), sample=7, seed=4))
    sessions = w.table.column("session_id").to_pylist()
    turns = w.table.column("turn").to_pylist()
    assert len(set(sessions)) == 7
    for s in set(sessions):
        i = int(s[1:])
        expected_turns = (1 + i % 5 + 1) // 2
        assert [t for t, x in zip(turns, sessions) if x == s] == list(range(expected_turns))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"time_scale": 0.5, "target_rate": 3.0}, "both rescale time"),
        ({"start_s": 10.0, "end_s": 5.0}, "workload.end_s"),
        ({"sample": 0}, "workload.sample"),
        ({"max_input_tokens": 0}, "workload.max_input_tokens"),
    ],
)
def test_contradictory_options_are_config_errors(tmp_path, options, match):
    with pytest.raises(ConfigError, match=match):
        _rows(_azure(tmp_path, [0, 1]), **options)


def test_time_options_need_arrivals():
    with pytest.raises(WorkloadError, match="workload.target_rate needs arrival times, but workload=synthetic has none"):
        load(WorkloadConfig(kind="synthetic", target_rate=5.0))


def test_a_window_that_removes_everything_says_so(tmp_path):
    with pytest.raises(WorkloadError, match=r"window \[100, end\) s of the trace removed 3 rows"):
        _rows(_azure(tmp_path, [0, 1, 2]), start_s=100)
