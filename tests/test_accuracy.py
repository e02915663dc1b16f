"""loadgen's records against the simulator's own ground truth on a light load."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow.parquet as pq

from loadgen.config import ClusterConfig, SimProfile, TargetConfig
from loadgen.rundir import read_records
from loadgen.sim import start_sim
from loadgen.worker import LevelRun, TargetSpec, WorkerCore
from test_worker import shard


def test_records_match_the_simulators_ground_truth(tmp_path):
    truth_path = tmp_path / "truth.parquet"
    profile = SimProfile(name="light", max_num_seqs=8, step_base_ms=8.0, step_per_seq_ms=0.0, prefix_caching=False)
    sim = start_sim(profile, ground_truth=str(truth_path))
    try:
        async def go() -> dict:
            core = WorkerCore(0, "run", "node", TargetSpec(sim.url, profile.model, TargetConfig(kind="openai", url=sim.url)),
                              ClusterConfig(flush_interval_s=0.5), str(tmp_path / "run"))
            await core.start()
            run = LevelRun(level=0, mode="concurrency", value=2, concurrency=2, duration_s=2.0, drain_s=10, max_requests=30)
            await core.prepare_level(run, shard(30, out=16))
            ledger = await core.start_level(core.now() + 50_000_000)
            await core.close()
            return ledger

        ledger = asyncio.run(go())
    finally:
        sim.stop()
    records = read_records(str(tmp_path / "run")).to_pylist()
    truth = {r["request_id"]: r for r in pq.read_table(truth_path).to_pylist()}

    assert len(records) == ledger.sent > 5
    assert {r["request_id"] for r in records} <= set(truth)  # every request reached the server, once
    ttft_err, token_err = [], []
    for rec in records:
        t = truth[rec["request_id"]]
        assert rec["status"] == "ok"
        assert rec["output_tokens"] == t["output_tokens"] == 16
        assert rec["prompt_tokens"] == t["prompt_tokens"]
        assert len(rec["chunk_ns"]) == len(t["token_ns"]) == 16
        ttft_err.append(rec["first_token_ns"] - t["first_token_ns"])
        token_err += [a - b for a, b in zip(rec["chunk_ns"], t["token_ns"])]
    ttft_err_ms = np.asarray(ttft_err) / 1e6
    token_err_ms = np.asarray(token_err) / 1e6
    # loadgen sees a token after the simulator wrote it, within a few ms on a light load.
    assert np.percentile(ttft_err_ms, 5) > -1.0
    assert np.median(ttft_err_ms) < 3.0 and np.percentile(ttft_err_ms, 90) < 10.0
    assert np.median(token_err_ms) < 3.0
