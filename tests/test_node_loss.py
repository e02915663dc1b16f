"""A Ray node lost in the middle of a multi-node run: the run finishes, the loss is counted, nothing vanishes."""

from __future__ import annotations

import io
import threading
import time

import pytest
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster
from rich.console import Console

from loadgen import procs, runner
from loadgen.config import (
    AnalysisConfig,
    ClusterConfig,
    LengthDist,
    LoadConfig,
    LoadgenConfig,
    SimProfile,
    TargetConfig,
    WorkloadConfig,
    validate,
)
from loadgen.rundir import read_records

pytestmark = pytest.mark.slow


def test_a_lost_node_is_counted_and_the_run_finishes_on_the_rest(tmp_path):
    if ray_constants.ENABLE_RAY_CLUSTER:
        pytest.skip("ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set")
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=1, resources={"loadgen": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="warning")
        cfg = validate(LoadgenConfig(
            target=TargetConfig(kind="sim", sim=SimProfile(step_base_ms=20.0, max_num_seqs=64)),
            workload=WorkloadConfig(num_requests=400, input_tokens=LengthDist(mean=16), output_tokens=LengthDist(mean=20)),
            load=LoadConfig(kind="rate", arrival="constant", levels=[10.0, 10.0], duration_s=5.0, warmup_s=1.0, drain_s=15.0),
            cluster=ClusterConfig(kind="ray", address=cluster.address, workers_per_node=1, allow_head_node=False,
                                  collect="driver", flush_interval_s=0.5),
            analysis=AnalysisConfig(plots=False),
            progress=False,
        ))
        killed: list[int] = []

        def lose_node_when_level_runs() -> None:
            """Kill one load node (raylet and all) two seconds into the first level."""
            path = tmp_path / "run" / "telemetry"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (path.exists() and any(path.rglob("part-*.parquet"))):
                time.sleep(0.2)
            time.sleep(2.0)
            # The raylet's death alone does not stop its worker processes at once: a busy actor can
            # finish the level and answer the driver directly before it notices. A lost machine takes
            # its workers with it, so they die together.
            node = workers[1]
            raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
            doomed = procs.descendants(raylet)
            killed.extend(doomed)
            cluster.remove_node(node, allow_graceful=False)
            procs.kill(doomed)

        killer = threading.Thread(target=lose_node_when_level_runs, daemon=True)
        killer.start()
        meta = runner.run(cfg, str(tmp_path / "run"), console=Console(file=io.StringIO())).to_dict()
        killer.join(5)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert killed, "the lost node's worker processes were found and killed with it"
    assert meta["status"] == "complete"
    dead = [w for w in meta["workers"] if not w["alive"]]
    assert len(dead) == 1 and dead[0]["lost_reason"]
    lost_id = dead[0]["worker_id"]
    first, second = meta["levels"]
    led = first["ledger"]
    assert led["lost_workers"] == [lost_id]
    not_sent = sum(led["not_sent"].values())
    assert led["planned"] == led["sent"] + not_sent  # every planned request accounted for
    assert led["sent"] == led["ok"] + sum(led["errors"].values()) + led["cancelled"] + led["lost"]
    records = read_records(str(tmp_path / "run"))
    by_worker = records.filter(records.column("level").to_numpy() == 0).column("worker_id").to_pylist()
    assert by_worker.count(lost_id) > 0  # what the lost node flushed before it died is in the dataset
    # The next level ran in full on the node that was left.
    assert second["ledger"]["planned"] == second["ledger"]["sent"] == second["ledger"]["ok"] > 0
    level1 = records.filter(records.column("level").to_numpy() == 1).column("worker_id").to_pylist()
    assert set(level1) == {1 - lost_id}  # two workers, ids 0 and 1
