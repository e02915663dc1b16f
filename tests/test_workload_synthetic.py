"""Synthetic workload: seeded length distributions within statistical bounds, empirical resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.config import ConfigError, LengthDist, WorkloadConfig
from loadgen.workload import REQUEST_SCHEMA, load, read_rows
from traces import TRACES, needs_traces

N = 20_000


def _lengths(dist: LengthDist, n: int = N, seed: int = 0) -> np.ndarray:
    cfg = WorkloadConfig(kind="synthetic", num_requests=n, input_tokens=dist, seed=seed)
    return read_rows(cfg)[1].column("input_tokens").to_numpy()


def test_default_table_has_exact_prompts_and_no_arrivals():
    w = load(WorkloadConfig(kind="synthetic", num_requests=300))
    t = w.table
    assert t.schema == REQUEST_SCHEMA and t.num_rows == 300
    assert set(t.column("input_tokens").to_pylist()) == {256}
    assert set(t.column("output_tokens").to_pylist()) == {128}
    assert all(len(p.split()) == 256 for p in t.column("prompt").to_pylist())
    assert t.column("arrival_s").null_count == 300 and not w.has_arrivals
    assert len(set(t.column("request_id").to_pylist())) == 300
    assert len(set(t.column("prompt").to_pylist())) == 300  # no two requests share a prompt


def test_uniform_bounds_and_mean():
    x = _lengths(LengthDist(dist="uniform", min=10, max=90))
    assert x.min() == 10 and x.max() == 90
    se = math.sqrt((81**2 - 1) / 12 / N)
    assert abs(x.mean() - 50) < 4 * se


def test_normal_mean_and_std():
    x = _lengths(LengthDist(dist="normal", mean=500, std=100, min=1, max=10_000))
    assert abs(x.mean() - 500) < 4 * 100 / math.sqrt(N)
    assert x.std() == pytest.approx(100, rel=0.03)


def test_lognormal_mean_and_std_are_those_of_the_lengths():
    x = _lengths(LengthDist(dist="lognormal", mean=800, std=400, min=1, max=1_000_000))
    assert x.mean() == pytest.approx(800, rel=0.03)
    assert x.std() == pytest.approx(400, rel=0.08)
    assert np.median(x) < x.mean()  # right-skewed


def test_draws_are_clipped_and_counted():
    cfg = WorkloadConfig(kind="synthetic", num_requests=5000, input_tokens=LengthDist(dist="normal", mean=100, std=50, min=80, max=120))
    x = read_rows(cfg)[1].column("input_tokens").to_numpy()
    assert x.min() == 80 and x.max() == 120
    cfg = WorkloadConfig(kind="synthetic", num_requests=700, output_tokens=LengthDist(mean=500, max=300))
    _, rows, notes = read_rows(cfg)
    assert set(rows.column("output_tokens").to_pylist()) == {300}
    assert "synthetic output_tokens: 700 draws clipped to [1, 300]" in notes


def test_seeded_and_reproducible():
    dist = LengthDist(dist="lognormal", mean=300, std=200)
    assert np.array_equal(_lengths(dist, 1000, seed=5), _lengths(dist, 1000, seed=5))
    assert not np.array_equal(_lengths(dist, 1000, seed=5), _lengths(dist, 1000, seed=6))
    a = load(WorkloadConfig(kind="synthetic", num_requests=50, seed=1)).table
    b = load(WorkloadConfig(kind="synthetic", num_requests=50, seed=1)).table
    c = load(WorkloadConfig(kind="synthetic", num_requests=50, seed=2)).table
    assert a.equals(b) and a.column("prompt") != c.column("prompt")


@needs_traces
def test_empirical_resamples_a_trace_column():
    trace = str(TRACES / "AzureLLMInferenceTrace_code.csv")
    x = _lengths(LengthDist(dist="empirical", path=trace, column="input_tokens", min=0, max=100_000))
    source = read_rows(WorkloadConfig(kind="azure", path=trace))[1].column("input_tokens").to_numpy()
    assert set(np.unique(x)) <= set(np.unique(source))
    assert np.percentile(x, 50) == pytest.approx(np.percentile(source, 50), rel=0.03)
    assert x.mean() == pytest.approx(source.mean(), rel=0.03)
    cfg = WorkloadConfig(
        kind="synthetic",
        num_requests=2000,
        output_tokens=LengthDist(dist="empirical", path=str(TRACES / "mooncake_trace_first1000.jsonl"), column="output_tokens"),
    )
    out = read_rows(cfg)[1].column("output_tokens").to_numpy()
    assert np.percentile(out, 50) == pytest.approx(34, rel=0.15)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"output_tokens": LengthDist(min=0)}, "'workload.output_tokens.min' is 0; expected an integer >= 1"),
        ({"input_tokens": LengthDist(dist="zipf")}, "'workload.input_tokens.dist' is 'zipf'"),
        ({"input_tokens": LengthDist(dist="uniform", min=10, max=5)}, "'workload.input_tokens.max' is 5"),
        ({"input_tokens": LengthDist(dist="empirical")}, "'workload.input_tokens.path' is None"),
        ({"input_tokens": LengthDist(dist="empirical", path="x.csv", column="prompt")}, "'workload.input_tokens.column'"),
    ],
)
def test_bad_distributions_name_the_key(options, match):
    with pytest.raises(ConfigError, match=match):
        read_rows(WorkloadConfig(kind="synthetic", **options))
