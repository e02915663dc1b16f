"""Confidence intervals: order-statistic bounds on percentiles cover the truth, know when they cannot, and reach the summary files."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from loadgen.analysis import Dist, analyze_run, write_summary
from loadgen.analysis.confidence import (
    EXACT_MAX_N,
    TAIL,
    binomial_pmf,
    exact_ranks,
    min_samples_for_upper,
    normal_ranks,
    order_stat_ranks,
    poisson_rate_interval,
    scaled_rate_interval,
)
from loadgen.analysis.metrics import PERCENTILE_NAMES, PERCENTILES, Sample
from loadgen.analysis.summary import _sample_notes
from loadgen.report import render_terminal
from loadgen.report.html import render_html
from loadgen.report.verdicts import num
from test_report import make_run


def coverage(rng: np.random.Generator, draws: int, n: int, percentile: float) -> float:
    """Fraction of ``draws`` uniform samples of size n whose interval holds the true quantile q/100."""
    truth = percentile / 100.0
    hits = 0
    for _ in range(draws):
        lo, hi = Sample(rng.random(n)).interval(percentile)
        hits += lo is not None and hi is not None and lo <= truth <= hi
    return hits / draws


@pytest.mark.parametrize("percentile, n", [(50.0, 1000), (90.0, 1000), (99.0, 2000)])
def test_interval_covers_the_true_quantile_about_95_percent_of_the_time(percentile, n):
    # Summed exactly at these n. The bounds are order statistics, so coverage is at least 95 % and above it
    # by the binomial's discreteness: p99 of 1000 samples covers 97.6 % by construction, so p99 uses 2000 (95.8 %).
    c = coverage(np.random.default_rng(11), 400, n, percentile)
    assert 0.92 <= c <= 0.98, c


@pytest.mark.parametrize("n", [100, 1000, 5000, 20_000])
def test_the_construction_covers_at_least_95_percent(n):
    for percentile in PERCENTILES:
        lo, hi = order_stat_ranks(n, percentile)
        if lo is not None and hi is not None:
            # x_(l) ≤ quantile ≤ x_(u) exactly when l ≤ K ≤ u − 1, K ~ Binomial(n, q) (exact pmf, even past the switch).
            covered = binomial_pmf(n, percentile / 100)[lo:hi].sum()
            assert 0.95 <= covered < 0.99, (n, percentile, covered)


def test_normal_approximation_covers_the_true_quantile_too():
    n = EXACT_MAX_N + 2_000  # past the switch: normal approximation with continuity correction
    c = coverage(np.random.default_rng(12), 400, n, 99.0)
    assert 0.92 <= c <= 0.98, c


def test_interval_is_not_too_wide():
    # A 95 % interval on the median of 1000 uniforms spans about ±1.96 × 0.5/√1000 ≈ ±0.031.
    lo, hi = Sample(np.random.default_rng(3).random(1000)).interval(50)
    assert 0.04 < hi - lo < 0.09


def test_exact_ranks_obey_their_definition():
    n = 30
    for percentile in PERCENTILES:
        p = percentile / 100.0
        cdf = np.cumsum([math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)])
        lo, hi = exact_ranks(n, p)
        if lo is None:
            assert cdf[0] > TAIL
        else:
            assert cdf[lo - 1] <= TAIL < cdf[lo]  # P(K ≤ l−1) within the tail, P(K ≤ l) not
        if hi is None:
            assert p**n > TAIL  # not even the largest value bounds it
        else:
            assert 1 - cdf[hi - 1] <= TAIL < 1 - cdf[hi - 2]  # P(K ≥ u) within the tail, P(K ≥ u−1) not


def test_exact_ranks_match_the_textbook_median_interval():
    assert exact_ranks(100, 0.5) == (40, 61)  # the classic 95 % interval of the median of 100 values


def test_bounds_are_none_for_too_small_samples():
    assert min_samples_for_upper(99.0) == 368  # 0.99**368 ≤ 2.5 % < 0.99**367
    assert min_samples_for_upper(99.9) == 3688
    assert order_stat_ranks(367, 99.0)[1] is None
    assert order_stat_ranks(368, 99.0)[1] == 368
    assert order_stat_ranks(5, 50.0) == (None, None)  # 0.5**5 > 2.5 %: not even the extremes bound the median
    assert order_stat_ranks(6, 50.0) == (1, 6)
    assert order_stat_ranks(0, 50.0) == (None, None)
    d = Dist.of(np.arange(1, 101, dtype=np.int64) * 1_000_000)  # 100 values of 1..100 ms
    assert d.ci["p99"][1] is None and d.ci["p99"][0] is not None
    assert d.ci["p50"] == (40.0, 61.0)  # the 40th and 61st smallest, in ms


def test_exact_and_normal_ranks_agree_near_the_switch():
    for n in (EXACT_MAX_N - 1, EXACT_MAX_N, EXACT_MAX_N + 1):
        for percentile in PERCENTILES:
            exact, normal = exact_ranks(n, percentile / 100), normal_ranks(n, percentile / 100)
            assert all(abs(a - b) <= 1 for a, b in zip(exact, normal)), (n, percentile, exact, normal)
    assert order_stat_ranks(EXACT_MAX_N, 99.0) == exact_ranks(EXACT_MAX_N, 0.99)
    assert order_stat_ranks(EXACT_MAX_N + 1, 99.0) == normal_ranks(EXACT_MAX_N + 1, 0.99)


def test_weighted_interval_uses_the_effective_sample_size():
    values = np.random.default_rng(5).random(2000)
    plain = Sample(values)
    ones = Sample(values, np.ones(values.size))
    assert ones.effective_size == 2000
    assert ones.interval(90) == pytest.approx(plain.interval(90))
    # Half the values weigh 3: Kish's n_eff = (4000)² / (1000 + 9000) = 1600, so the interval is wider.
    weights = np.where(np.arange(values.size) % 2 == 0, 3.0, 1.0)
    heavy = Sample(values, weights)
    assert heavy.effective_size == 1600
    lo, hi = heavy.interval(50)
    plo, phi = plain.interval(50)
    assert hi - lo > phi - plo


def test_rate_intervals():
    lo, hi = poisson_rate_interval(100, 10.0)
    assert (lo, hi) == pytest.approx(((100 - 19.6) / 10, (100 + 19.6) / 10), rel=1e-3)
    assert poisson_rate_interval(0, 10.0) == (0.0, 0.0)
    assert poisson_rate_interval(5, 0.0) == (None, None)
    # Tokens come in requests: 100 requests give the relative noise of 100 events, whatever the token count.
    assert scaled_rate_interval(3200.0, 100) == pytest.approx((3200 * (1 - 0.196), 3200 * (1 + 0.196)), rel=1e-3)
    assert scaled_rate_interval(0.0, 0) == (None, None)


def test_summary_files_and_report_carry_intervals_and_sample_notes(tmp_path):
    run_dir = str(tmp_path / "run")
    make_run(run_dir)  # three levels of 38, 75 and 150 requests: too few for a p99 upper bound
    summary = analyze_run(run_dir)
    write_summary(run_dir, summary)
    saved = json.load(open(os.path.join(run_dir, "summary.json")))
    ttft = saved["levels"][2]["metrics"]["ttft"]
    assert set(ttft["ci"]) == set(PERCENTILE_NAMES)
    assert ttft["ci"]["p50"][0] <= ttft["p50"] <= ttft["ci"]["p50"][1]
    assert ttft["ci"]["p99"][1] is None  # 150 samples cannot bound p99 from above
    n = ttft["count"]
    note = next(x for x in saved["levels"][2]["notes"] if "too few to bound" in x)
    assert note.startswith(f"p99 TTFT from {n} samples") and note.endswith("too few to bound (needs ≥ 368)")
    assert saved["levels"][2]["failures"] == summary.levels[2].failures  # a note, never a failure
    assert not any("too few" in f for lv in saved["levels"] for f in lv["failures"])
    rows = pq.read_table(os.path.join(run_dir, "summary.parquet")).to_pylist()
    assert rows[2]["ttft_p50_lo_ms"] == ttft["ci"]["p50"][0] and rows[2]["ttft_p50_hi_ms"] == ttft["ci"]["p50"][1]
    assert rows[2]["ttft_p99_hi_ms"] is None
    buf = io.StringIO()
    render_terminal(summary, Console(file=buf, width=250))
    # Three short levels: the reports say it once for all of them, not once per level.
    counts = [lv.metrics.ttft.count for lv in summary.levels]
    one_line = (f"p99 TPOT and TTFT of levels 0–2 rest on {min(counts)} to {max(counts)} samples, too few to bound "
                "(an upper bound needs ≥ 368)")
    shown = buf.getvalue().replace("\n", " ")
    assert one_line in shown and "level 2: p99" not in shown
    page = render_html(summary, [])
    assert "Confidence intervals" in page and one_line in page
    lo, hi = ttft["ci"]["p50"]
    assert f"[{num(lo)}, {num(hi)}]" in page and "p99 needs ≥ 368" in page


def test_no_sample_note_when_the_percentile_can_be_bounded(tmp_path):
    run_dir = str(tmp_path / "run")
    make_run(run_dir)
    summary = analyze_run(run_dir)
    lv = summary.levels[2]
    lv.metrics.ttft.count = lv.metrics.tpot.count = 368  # enough for an upper bound on p99
    assert _sample_notes(lv, summary.slo) == []
    # One short level keeps its own note in the reports; several share one line.
    for other in summary.levels[1:]:
        other.notes = [n for n in other.notes if "too few" not in n]
    assert [n for n in summary.shown_notes() if "too few" in n] == [f"level 0: {_sample_notes(summary.levels[0], summary.slo)[0]}"]
