"""The fast aggregation paths give exactly (bit for bit) what the straightforward numpy computation gives.

Each reference below is the plain version: a full ``np.sort`` (or a stable
``np.argsort`` and a cumulative sum) for percentiles and order statistics, and
a per-request Python loop over ``chunk_ns`` for the ITL gaps and their weights.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pytest

from loadgen.analysis import metrics
from loadgen.analysis.confidence import effective_count, order_stat_ranks
from loadgen.analysis.metrics import (
    CDF_PERCENTILES,
    PERCENTILES,
    Sample,
    Window,
    _stable_sort,
    scan_chunks,
)

QS = tuple(PERCENTILES) + tuple(CDF_PERCENTILES) + (0.0, 12.5, 99.5, 100.0)


def reference_quantiles(values: np.ndarray, qs: tuple[float, ...], weights: Optional[np.ndarray] = None) -> np.ndarray:
    """The documented method with a full sort: linear between order statistics of the (weight-expanded) sample."""
    q = np.asarray(qs, dtype=np.float64)
    if weights is None:
        v = np.sort(values)
        pos = q / 100.0 * (v.size - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, v.size - 1)
    else:
        order = np.argsort(values, kind="stable")
        v, cum = values[order], np.cumsum(weights[order], dtype=np.float64)
        pos = np.clip(q / 100.0 * (cum[-1] - 1.0), 0.0, None)
        lo = np.minimum(np.searchsorted(cum, np.floor(pos), side="right"), v.size - 1)
        hi = np.minimum(np.searchsorted(cum, np.floor(pos) + 1.0, side="right"), v.size - 1)
    frac = pos - np.floor(pos)
    low = v[lo].astype(np.float64)
    return low + frac * (v[hi].astype(np.float64) - low)


def reference_interval(values: np.ndarray, percentile: float, weights: Optional[np.ndarray] = None) -> tuple:
    """The order statistics at the confidence ranks, read from a full sort (weighted: at the same fraction)."""
    n_eff = effective_count(weights, values.size)
    ranks = order_stat_ranks(n_eff, percentile)
    if weights is None:
        v = np.sort(values)
        return tuple(None if r is None else float(v[r - 1]) for r in ranks)
    return tuple(
        None if r is None
        else float(reference_quantiles(values, (100.0 * ((r - 1) / (n_eff - 1) if n_eff > 1 else 0.0),), weights)[0])
        for r in ranks
    )


def durations(rng: np.random.Generator, n: int, dtype: type = np.int64) -> np.ndarray:
    """ITL-like nanosecond gaps with many ties (so a stable order matters)."""
    return (rng.integers(0, 2_000, n) * 10_000 + 5_000_000).astype(dtype)


@pytest.mark.parametrize("n", [1, 2, 7, 1_000, 200_003])
@pytest.mark.parametrize("weighted", [False, True])
def test_sample_percentiles_and_intervals_match_the_full_sort(n: int, weighted: bool) -> None:
    rng = np.random.default_rng(n)
    values = durations(rng, n)
    weights = rng.choice([0.5, 1.0, 1.5, 2.0, 3.25], n) if weighted else None
    sample = Sample(values, weights)
    assert np.array_equal(sample.quantiles(QS), reference_quantiles(values, QS, weights))
    for p in PERCENTILES:
        assert sample.interval(p) == reference_interval(values, p, weights)
    assert sample.dist_ms().max == float(values.max()) / 1e6


def test_sample_unweighted_agrees_with_numpy_percentile() -> None:
    values = durations(np.random.default_rng(5), 100_001)
    assert np.allclose(Sample(values).quantiles(QS), np.percentile(values, QS), rtol=1e-12, atol=0)


def test_integer_weights_equal_the_expanded_sample() -> None:
    rng = np.random.default_rng(6)
    values = durations(rng, 5_000)
    weights = rng.integers(1, 4, values.size)
    expanded = np.repeat(values, weights)
    got = Sample(values, weights.astype(np.float64)).quantiles(QS)
    assert np.allclose(got, Sample(expanded).quantiles(QS), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "values",
    [
        np.array([3, 1, 2, 1, 3, 0, -4]),
        np.random.default_rng(7).integers(-(10**9), 10**9, 10_000),
        np.random.default_rng(8).integers(0, 2**40, 1_000),  # too wide for the packed keys: argsort
        np.random.default_rng(9).integers(0, 9, 500).astype(np.int32),
        np.random.default_rng(10).random(300),
        np.array([], dtype=np.int64),
    ],
)
def test_stable_sort_is_argsort_stable(values: np.ndarray) -> None:
    got, order = _stable_sort(values)
    expected = np.argsort(values, kind="stable")
    assert np.array_equal(order, expected)
    assert np.array_equal(got, values[expected]) and got.dtype == values.dtype


def chunk_lists(rng: np.random.Generator, n: int) -> list[Optional[list[int]]]:
    """Requests' chunk_ns: mostly 1–40 increasing times, some empty, some null."""
    rows: list[Optional[list[int]]] = []
    for i in range(n):
        k = int(rng.integers(0, 41))
        if i % 17 == 3:
            rows.append(None)
        elif k == 0:
            rows.append([])
        else:
            start = 1_000_000_000 + int(rng.integers(0, 60_000_000_000))
            rows.append((start + np.cumsum(rng.integers(0, 3, k) * 5_000_000)).tolist())
    return rows


def reference_scan(rows: list[Optional[list[int]]], select: np.ndarray, out: np.ndarray, window: Window) -> tuple:
    """Per request: its gaps if selected, each weighted output_tokens / chunks; tokens inside the window."""
    gaps: list[int] = []
    weights: list[float] = []
    tokens = 0.0
    for chunks, sel, o in zip(rows, select, out):
        if not chunks:
            continue
        w = o / len(chunks) if o >= 0 else 1.0
        tokens += w * sum(window.start_ns <= t < window.end_ns for t in chunks)
        if sel:
            gaps += [b - a for a, b in zip(chunks, chunks[1:])]
            weights += [w] * (len(chunks) - 1)
    return np.array(gaps, dtype=np.int64), np.array(weights), tokens


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("scan_rows", [65_536, 7])
def test_scan_chunks_matches_a_per_request_loop(weighted: bool, scan_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "SCAN_ROWS", scan_rows)  # 7: many slices per Arrow chunk, one partly filled
    rng = np.random.default_rng(11)
    rows = chunk_lists(rng, 3_000)
    column = pa.chunked_array(
        [pa.array(rows[:1_000], pa.list_(pa.int64())), pa.array(rows[1_000:], pa.list_(pa.int64()))]
    )
    select = rng.random(len(rows)) < 0.8
    lengths = np.array([len(r) if r else 0 for r in rows])
    out = lengths * 2 if weighted else lengths.copy()
    out[::50] = -1  # usage missing: weight 1
    window = Window(20_000_000_000, 45_000_000_000)
    scan = scan_chunks(column, select, out, window)
    gaps, weights, tokens = reference_scan(rows, select, out, window)
    assert np.array_equal(scan.itl_ns, gaps)
    if weighted:
        assert scan.itl_weights is not None and np.array_equal(scan.itl_weights, weights)
    else:
        assert scan.itl_weights is None and np.all(weights == 1.0)
    assert scan.tokens_in_window == pytest.approx(tokens, rel=1e-12)
    assert np.array_equal(scan.chunks, lengths)
    assert np.array_equal(
        Sample(scan.itl_ns, scan.itl_weights).quantiles(QS),
        reference_quantiles(gaps, QS, weights if weighted else None),
    )


def test_scan_chunks_keeps_gaps_too_long_for_int32() -> None:
    """A 3-second stall in a later Arrow chunk turns the level's gaps int64, the earlier ones kept exactly."""
    rows = [[0, 5_000_000, 9_000_000], [100, 200], [1_000, 3_000_001_000, 3_000_002_000]]
    column = pa.chunked_array([pa.array(rows[:2], pa.list_(pa.int64())), pa.array(rows[2:], pa.list_(pa.int64()))])
    select = np.ones(3, dtype=bool)
    lengths = np.array([3, 2, 3])
    scan = scan_chunks(column, select, lengths, Window(0, 1))
    assert scan.itl_ns.dtype == np.int64
    assert scan.itl_ns.tolist() == [5_000_000, 4_000_000, 100, 3_000_000_000, 1_000]


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_owned_sample_sorts_in_place_with_the_same_results(dtype: type) -> None:
    rng = np.random.default_rng(12)
    values = durations(rng, 50_001, dtype)
    plain = Sample(values.copy())
    mine = values.copy()
    owned = Sample(mine, owned=True)
    assert owned.mean == plain.mean == float(np.mean(values.astype(np.int64)))
    assert np.array_equal(owned.quantiles(QS), plain.quantiles(QS))
    assert np.array_equal(owned.quantiles(QS), reference_quantiles(values, QS))
    if dtype is np.int32:
        assert np.array_equal(mine, np.sort(values))  # reordered where it was: no copy


def test_narrowed_and_wide_gaps_give_the_same_mean_and_percentiles() -> None:
    values = durations(np.random.default_rng(13), 77_777)
    wide, narrow = Sample(values), Sample(values.astype(np.int32))
    assert wide.mean == narrow.mean
    assert np.array_equal(wide.quantiles(QS), narrow.quantiles(QS))
