"""Two simulator profiles run and compare in loadgen-report.

(``load=search`` is validated against a server loadgen did not write, whose capacity is exact:
``tests/test_verdicts_independent.py``, fifo-search.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from loadgen.analysis import analyze_run  # noqa: E402
from loadgen.config import (  # noqa: E402
    ClusterConfig,
    LengthDist,
    LoadConfig,
    LoadgenConfig,
    SimProfile,
    SLOConfig,
    TargetConfig,
    WorkloadConfig,
)
from loadgen.runner import run  # noqa: E402

pytestmark = pytest.mark.slow

# A small engine: 8 sequences, 24 ms steps -> about 10 req/s of 64-in/32-out requests.
PROFILE = SimProfile(name="small", max_num_seqs=8, step_base_ms=20, step_per_seq_ms=0.5, step_per_prefill_token_ms=0.05)
WORKLOAD = WorkloadConfig(num_requests=3000, input_tokens=LengthDist(mean=64), output_tokens=LengthDist(mean=32))


def _config(profile: SimProfile, load: LoadConfig) -> LoadgenConfig:
    return LoadgenConfig(
        target=TargetConfig(kind="sim", sim=profile),
        workload=WORKLOAD,
        load=load,
        cluster=ClusterConfig(num_cpus=2),
        slo=SLOConfig(ttft_ms=None, tpot_ms=None),  # judge keeping up only: capacity is a throughput
        progress=False,
    )


def test_report_compares_two_simulator_profiles(tmp_path):
    fast = SimProfile(name="fast", max_num_seqs=16, step_base_ms=20, step_per_seq_ms=0.5, step_per_prefill_token_ms=0.05)
    load = LoadConfig(kind="rate", arrival="constant", levels=[4, 14], duration_s=5, warmup_s=1.5, drain_s=15)
    a, b = tmp_path / "small", tmp_path / "fast"
    run(_config(PROFILE, load), str(a))
    run(_config(fast, load), str(b))
    out = tmp_path / "cmp"
    res = subprocess.run(
        [sys.executable, "-m", "loadgen.report.cli", str(a), str(b), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "small" in res.stdout and "fast" in res.stdout
    assert (out / "comparison.png").exists() and (out / "comparison.html").exists()
    sa, sb = analyze_run(str(a)), analyze_run(str(b))
    # At 14 req/s the 8-sequence engine is past its ~10 req/s capacity; the 16-sequence one is not.
    top_a, top_b = sa.levels[-1].metrics, sb.levels[-1].metrics
    assert top_b.achieved_rps > top_a.achieved_rps
    assert sb.levels[-1].kept_up and not sa.levels[-1].kept_up
