"""Comparing runs: a difference is called only when it is larger than the noise (synthetic runs, and two simulator runs)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from contextlib import redirect_stdout
from typing import Optional

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from loadgen.analysis import LevelMetrics, LevelSummary, RunSummary, analyze_run, compare
from loadgen.analysis.capacity import GoodputCapacity
from loadgen.analysis.compare import noise_summary
from loadgen.analysis.confidence import DIFFERENT, TOO_FEW, WITHIN_NOISE, compare_intervals
from loadgen.analysis.metrics import Dist
from loadgen.analysis.saturation import Knee, Saturation
from loadgen.config import AnalysisConfig, SLOConfig
from loadgen.report.cli import main
from loadgen.report.html import render_comparison_html
from loadgen.report.terminal import render_comparison
from loadgen.rundir import Ledger
from test_report import make_run

MS = 1_000_000
WINDOW_S = 60.0
PERCENTILE_ROWS = ("TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "ITL p99 ms", "E2E p99 ms")


def synthetic_level(rng: np.random.Generator, rate: float, slowdown: float = 1.0, served: Optional[float] = None) -> LevelSummary:
    """One open-loop level of ``rate`` req/s: Poisson completions at ``served`` (default: the rate) over 60 s,
    lognormal latencies × ``slowdown``."""
    n = int(rng.poisson((rate if served is None else served) * WINDOW_S))

    def latencies(median_ms: float, sigma: float, size: int) -> Dist:
        return Dist.of((slowdown * median_ms * MS * rng.lognormal(0.0, sigma, size)).astype(np.int64))

    m = LevelMetrics(
        window_s=WINDOW_S, requests=n, completed=n, expected=n, achieved_rps=n / WINDOW_S, scheduled_rps=rate,
        output_tok_s=n * 128 / WINDOW_S, goodput_rps=n / WINDOW_S, attainment=1.0, streamed=True,
        ttft=latencies(50.0, 0.4, n), tpot=latencies(20.0, 0.2, n), itl=latencies(20.0, 0.5, n * 16),
        e2e=latencies(2600.0, 0.2, n),
    )
    return LevelSummary(level=0, mode="rate", value=rate, offered_rps=rate, window_start_ns=0,
                        window_end_ns=int(WINDOW_S * 1e9), metrics=m, ledger=Ledger())


def synthetic_run(label: str, seed: int, slowdown: float = 1.0, rate: float = 20.0, served: Optional[float] = None) -> RunSummary:
    """A one-level run whose completions and latencies are drawn with ``seed``."""
    lv = synthetic_level(np.random.default_rng(seed), rate, slowdown, served)
    return RunSummary(
        run_id=label, run_dir=f"/runs/{label}", status="complete", info={}, config={}, slo=SLOConfig(),
        analysis=AnalysisConfig(), levels=[lv], saturation=Saturation(rule="r"), knee=Knee(rule="k", x_label="x", y_label="y"),
        goodput_capacity=GoodputCapacity(attainment=0.9, rate_axis="achieved goodput req/s"), ledger=Ledger(),
    )


def verdicts(a: RunSummary, b: RunSummary) -> dict[str, str]:
    """metric -> b's verdict against a, for the per-level rows."""
    return {r.metric: r.verdicts[1] for r in compare([a, b]).rows if r.group == "level"}


def test_compare_intervals():
    assert compare_intervals((1.0, 2.0), (2.5, 3.0)) == DIFFERENT
    assert compare_intervals((2.5, 3.0), (1.0, 2.0)) == DIFFERENT
    assert compare_intervals((1.0, 2.0), (1.9, 3.0)) == WITHIN_NOISE
    assert compare_intervals((1.0, None), (1.5, None)) == TOO_FEW  # overlap, but more samples could separate them
    assert compare_intervals((1.0, 2.0), (2.5, None)) == DIFFERENT  # a one-sided bound can still separate
    assert compare_intervals((None, None), (1.0, 2.0)) is None
    assert compare_intervals(None, (1.0, 2.0)) is None


def test_same_distribution_is_within_noise():
    v = verdicts(synthetic_run("a", 1), synthetic_run("b", 2))
    assert v["achieved req/s"] == WITHIN_NOISE and v["output tok/s"] == WITHIN_NOISE
    for metric in PERCENTILE_ROWS:
        assert v[metric] == WITHIN_NOISE, (metric, v)


def test_twenty_percent_slower_is_different():
    v = verdicts(synthetic_run("a", 1), synthetic_run("b", 2, slowdown=1.2))
    for metric in PERCENTILE_ROWS:
        assert v[metric] == DIFFERENT, (metric, v)
    assert v["achieved req/s"] == WITHIN_NOISE  # same rate: only the latencies moved


def test_twenty_percent_more_throughput_is_different_and_two_percent_is_not():
    base = synthetic_run("a", 1, rate=100.0)
    more = verdicts(base, synthetic_run("b", 2, rate=100.0, served=120.0))
    assert more["achieved req/s"] == DIFFERENT and more["output tok/s"] == DIFFERENT
    a_bit = verdicts(base, synthetic_run("b", 2, rate=100.0, served=102.0))
    assert a_bit["achieved req/s"] == WITHIN_NOISE and a_bit["output tok/s"] == WITHIN_NOISE


def test_false_alarm_and_detection_rates_over_many_seeded_pairs():
    # Two 95 % intervals of the same quantity fail to overlap far less than 5 % of the time;
    # a 20 % shift of the median with ~1,200 samples is seen nearly always.
    same = sum(verdicts(synthetic_run("a", 2 * s), synthetic_run("b", 2 * s + 1))["TTFT p50 ms"] == DIFFERENT for s in range(100))
    apart = sum(
        verdicts(synthetic_run("a", 2 * s), synthetic_run("b", 2 * s + 1, slowdown=1.2))["TTFT p50 ms"] == DIFFERENT
        for s in range(100)
    )
    assert same <= 3 and apart >= 95, (same, apart)


def test_too_few_samples_for_p99_says_so():
    v = verdicts(synthetic_run("a", 1, rate=3.0), synthetic_run("b", 2, rate=3.0))  # ~180 samples < 368
    assert v["TTFT p99 ms"] == TOO_FEW
    assert v["TTFT p50 ms"] == WITHIN_NOISE


def test_summary_line_and_rendering():
    cmp = compare([synthetic_run("a", 1), synthetic_run("b", 2, slowdown=1.2)])
    line = noise_summary(cmp, 1)
    assert cmp.summary == [line]
    assert line.startswith("b vs a: 6 of 10 metrics differ beyond noise (TTFT p50 ms at 20 req/s 1.2")
    buf = io.StringIO()
    render_comparison(cmp, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "b vs a: 6 of 10 metrics differ beyond noise" in text
    assert "different (1.20×)" in text and "within noise (" in text
    page = render_comparison_html(cmp, [synthetic_run("a", 1), synthetic_run("b", 2, slowdown=1.2)], [])
    assert "different (1.2" in page and "6 of 10 metrics differ beyond noise" in page
    verdict_rows = [r for r in cmp.rows if r.group == "verdict"]
    assert verdict_rows and all(r.verdicts == [None, None] for r in verdict_rows)  # no interval: the ratio only


def test_cli_writes_intervals_and_verdicts(tmp_path):
    a, b, out = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "cmp")
    make_run(a)
    make_run(b, slowdown=1.2)
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main([a, b, "--out", out, "--no-plots"]) == 0
    assert "b vs a: " in buf.getvalue() and "metrics differ beyond noise" in buf.getvalue()
    saved = json.load(open(os.path.join(out, "comparison.json")))
    assert saved["summary"] and saved["summary"][0].startswith("b vs a: ")
    rows = {(r["load"], r["metric"]): r for r in saved["rows"]}
    ttft = rows[(10.0, "TTFT p50 ms")]
    assert ttft["verdicts"] == [None, DIFFERENT] and ttft["intervals"][1][0] > ttft["intervals"][0][1]
    table = pq.read_table(os.path.join(out, "comparison.parquet")).to_pylist()
    b_ttft = next(r for r in table if r["run"] == "b" and r["load"] == 10.0 and r["metric"] == "TTFT p50 ms")
    assert b_ttft["verdict"] == DIFFERENT and b_ttft["lo"] == pytest.approx(48.0) and b_ttft["ratio"] == pytest.approx(1.2)


# ----------------------------------------------------------------------------- end to end, on the simulator


def _sim_run(out_dir: str, step_scale: float, seed: int) -> RunSummary:
    """One short open-loop level of 8 req/s against the embedded simulator, every engine step × ``step_scale``."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from loadgen.config import ClusterConfig, LengthDist, LoadConfig, LoadgenConfig, SimProfile, TargetConfig, WorkloadConfig
    from loadgen.runner import run

    base = SimProfile(name="small", max_num_seqs=16, step_base_ms=20, step_per_seq_ms=0.5, step_per_prefill_token_ms=0.05)
    profile = dataclasses.replace(
        base, step_base_ms=base.step_base_ms * step_scale, step_per_seq_ms=base.step_per_seq_ms * step_scale,
        step_per_prefill_token_ms=base.step_per_prefill_token_ms * step_scale,
    )
    config = LoadgenConfig(
        target=TargetConfig(kind="sim", sim=profile),
        workload=WorkloadConfig(num_requests=400, input_tokens=LengthDist(mean=64), output_tokens=LengthDist(mean=32)),
        load=LoadConfig(kind="rate", levels=[8], duration_s=6, warmup_s=1, drain_s=15, seed=seed),
        cluster=ClusterConfig(num_cpus=2, workers=1),
        slo=SLOConfig(ttft_ms=None, tpot_ms=None),
        progress=False,
    )
    run(config, out_dir)
    return analyze_run(out_dir)


@pytest.mark.slow
def test_report_on_simulator_runs_same_config_within_noise_and_twenty_percent_slower_different(tmp_path):
    a = _sim_run(str(tmp_path / "a"), 1.0, seed=0)
    # The same configuration, arrival draws included: what differs is the machine's timing, as in a rerun.
    # (Other arrival draws change the batch sizes, and with them TPOT, by about as much as the
    # intervals' width: intervals from one run do not hold run-to-run variation; see docs/metrics.md.)
    again = _sim_run(str(tmp_path / "again"), 1.0, seed=0)
    slower = _sim_run(str(tmp_path / "slower"), 1.2, seed=0)  # every engine step 20 % longer
    cmp = compare([a, again, slower])
    rows = {r.metric: r for r in cmp.rows if r.group == "level"}
    # TPOT is the engine's step time: it does not depend on how much was sent, so it isolates the profile.
    assert rows["TPOT p50 ms"].verdicts == [None, WITHIN_NOISE, DIFFERENT], rows["TPOT p50 ms"]
    assert rows["achieved req/s"].verdicts[1] == WITHIN_NOISE, rows["achieved req/s"]
    assert cmp.summary[1].startswith("slower vs a: ") and "TPOT p50 ms at 8 req/s 1.2" in cmp.summary[1], cmp.summary
