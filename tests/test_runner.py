"""The driver's judgement of a level: a deliberately overloaded worker is flagged client-bound."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from loadgen.analysis import ClientBoundRule, analyze_run
from loadgen.config import ClusterConfig, LoadConfig, LoadgenConfig, TargetConfig
from loadgen.rundir import LevelEntry, RunMeta, RunStatus
from loadgen.runner import RunState, _level_entry
from loadgen.schedule import LevelPlan, LevelSpec
from loadgen.worker import LevelRun, TargetSpec, WorkerCore
from test_worker import FakeServer, shard


async def _level(tmp_path, hog: bool):
    server = FakeServer(token_s=0.002)
    base = await server.start()
    core = WorkerCore(0, "run", "node", TargetSpec(base, "m", TargetConfig(kind="openai", url=base)),
                      ClusterConfig(flush_interval_s=0.3), str(tmp_path))
    await core.start()
    table = shard(60, np.arange(60) * 0.025)
    run = LevelRun(level=0, mode="rate", value=40, duration_s=1.5, drain_s=5)

    async def hog_loop() -> None:
        # Something CPU-bound on the worker's event loop: 30 ms of every 40 ms.
        while True:
            time.sleep(0.03)
            await asyncio.sleep(0.01)

    hogger = asyncio.ensure_future(hog_loop()) if hog else None
    try:
        await core.prepare_level(run, table)
        t0 = core.now() + 50_000_000
        ledger = await core.start_level(t0)
    finally:
        if hogger:
            hogger.cancel()
        await core.close()
        await server.runner.cleanup()
    return ledger, t0, table


def _judge(tmp_path, hog: bool) -> LevelEntry:
    ledger, t0, table = asyncio.run(_level(tmp_path, hog))
    cfg = LoadgenConfig(load=LoadConfig(duration_s=1.5, warmup_s=0.2))
    plan = LevelPlan(spec=LevelSpec(0, "rate", 40.0), shards=[table], planned=60, offered_rps=40.0, duration_s=1.5)
    entry = _level_entry(str(tmp_path), cfg, plan, t0, t0 + 3 * 10**9, {0: ledger}, {}, {0: table}, {})
    state = RunState(str(tmp_path), RunMeta(run_id="t", status=RunStatus.COMPLETE, levels=[entry]))
    state.save()
    return entry


def test_an_overloaded_worker_is_flagged_client_bound_and_named(tmp_path):
    entry = _judge(tmp_path, hog=True)
    worker = entry.workers[0]
    assert worker.loop_lag_ms_p99 > 20 or worker.schedule_lag_ms_p99 > 20
    rule = ClientBoundRule.of(ClusterConfig())
    assert list(rule.judge({0: worker.loop_lag_ms_p99}, {0: worker.schedule_lag_ms_p99})) == [0]
    summary = analyze_run(str(tmp_path))
    level = summary.levels[0]
    assert level.client_bound and level.client_bound_workers == [0]
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["levels"][0]["ledger"]["sent"] == 60


def test_an_idle_worker_is_not_flagged(tmp_path):
    entry = _judge(tmp_path, hog=False)
    # A quiet worker's lag stays well below what the 30-ms-per-40-ms hog causes.
    assert entry.workers[0].loop_lag_ms_p99 < 30
