"""Multi-node runs on a Ray cluster of several nodes on this machine: placement, sharding, clocks, collection."""

from __future__ import annotations

import io
import json
import os
import time
from collections import defaultdict

# Every node of the test cluster must stay on 127.0.0.1: Ray reads this when it is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from loadgen import runner
from loadgen.cluster import ClusterError, is_loopback, plan_placement, start_workers
from loadgen.collector import Collector, CollectorSink, DirectSink
from loadgen.config import (
    AnalysisConfig,
    ClusterConfig,
    ConfigError,
    LoadConfig,
    LoadgenConfig,
    SimProfile,
    TargetConfig,
    WorkloadConfig,
    validate,
)
from loadgen.rundir import RECORD_SCHEMA, part_dir, read_records, telemetry_parts
from loadgen.worker import TargetSpec

ray = pytest.importorskip("ray")
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

HEAD = "head" + "0" * 52
W1 = "w1" + "0" * 54
W2 = "w2" + "0" * 54
SKEW_NS = 250_000_000  # injected into worker SKEWED's clock
SKEWED = 1


def node(nid: str, cpus: float, slots: float = 0, head: bool = False, ip: str = "10.0.0.1") -> dict:
    res = {"CPU": cpus}
    if slots:
        res["loadgen"] = slots
    if head:
        res["node:__internal_head__"] = 1.0
    return {"NodeID": nid, "Alive": True, "NodeManagerAddress": ip, "Resources": res}


FAKE = [node(HEAD, 1, head=True, ip="10.0.0.1"), node(W1, 2, slots=2, ip="10.0.0.2"), node(W2, 4, slots=4, ip="10.0.0.3")]


def counts(placement: list[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for nid in placement:
        out[nid] += 1
    return dict(out)


# --------------------------------------------------------------------------- placement plans (no Ray)


def test_workers_per_node_puts_exactly_that_many_on_every_eligible_node():
    cfg = ClusterConfig(kind="ray", workers_per_node=2, allow_head_node=False)
    assert counts(plan_placement(FAKE, cfg, HEAD)) == {W1: 2, W2: 2}
    cfg = ClusterConfig(kind="ray", workers_per_node=1, allow_head_node=True)
    assert counts(plan_placement(FAKE, cfg, HEAD)) == {HEAD: 1, W1: 1, W2: 1}


def test_default_is_one_worker_per_loadgen_slot_or_per_cpu():
    with_slots = ClusterConfig(kind="ray", node_resource="loadgen", worker_cpus=0.5)
    assert counts(plan_placement(FAKE, with_slots, HEAD)) == {W1: 2, W2: 4}
    per_cpu = ClusterConfig(kind="ray", allow_head_node=False, worker_cpus=0.5)
    assert counts(plan_placement(FAKE, per_cpu, HEAD)) == {W1: 2, W2: 4}


def test_a_worker_count_is_dealt_over_nodes_and_grouped_by_node():
    cfg = ClusterConfig(kind="ray", workers=5, allow_head_node=False, worker_cpus=1)
    placement = plan_placement(FAKE, cfg, HEAD)
    assert counts(placement) == {W1: 2, W2: 3}
    # neighbouring worker ids share a node
    assert placement == sorted(placement, key=[W1, W2].index)


def test_asking_for_more_than_the_cluster_holds_names_the_shortfall():
    with pytest.raises(ClusterError, match=r"workers_per_node=3 .*10\.0\.0\.2 \(w1000000\) holds 2"):
        plan_placement(FAKE, ClusterConfig(kind="ray", workers_per_node=3, worker_cpus=1, allow_head_node=False), HEAD)
    with pytest.raises(ClusterError, match="workers=7 .* hold 6"):
        plan_placement(FAKE, ClusterConfig(kind="ray", workers=7, worker_cpus=1, allow_head_node=False), HEAD)
    with pytest.raises(ClusterError, match="node_resource='gpu-loadgen'.*allow_head_node=false"):
        plan_placement(FAKE, ClusterConfig(kind="ray", node_resource="gpu-loadgen", allow_head_node=False), HEAD)


def test_a_fleet_needs_http_urls_of_an_openai_target():
    fleet = ["http://10.0.1.1:8000/v1", "http://10.0.1.2:8000/v1"]
    cfg = validate(LoadgenConfig(target=TargetConfig(kind="openai", urls=fleet)))
    assert cfg.target.url is None  # urls alone are enough
    with pytest.raises(ConfigError, match=r"target.urls\[1\]"):
        validate(LoadgenConfig(target=TargetConfig(kind="openai", urls=[fleet[0], "10.0.1.2:8000"])))
    with pytest.raises(ConfigError, match="target.urls"):
        validate(LoadgenConfig(target=TargetConfig(kind="sim", urls=fleet)))
    with pytest.raises(ConfigError, match="cluster.collect"):
        validate(LoadgenConfig(cluster=ClusterConfig(collect="nfs")))


def test_a_cluster_on_loopback_is_recognised_from_its_address_or_ray_address(monkeypatch):
    # Joining one needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, else Ray swaps 127.0.0.1 for the external address.
    assert is_loopback("127.0.0.1:6379") and is_loopback("ray://localhost:10001") and is_loopback("[::1]:6379")
    assert not is_loopback("10.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:46383")  # what a Ray job's driver gets
    assert is_loopback("auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert not is_loopback("auto")


# --------------------------------------------------------------------------- sinks (no Ray)


def batch(n: int, worker: int = 0, start: int = 0) -> pa.Table:
    rows = [{"request_id": f"r{start + i}", "worker_id": worker, "level": 0, "status": "ok"} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def test_the_collector_writes_a_resent_batch_only_once(tmp_path):
    collector = Collector()
    dest = part_dir(str(tmp_path / "records"), 0, 3)
    assert collector.write(dest, "src", 0, batch(5)) == 5
    assert collector.write(dest, "src", 0, batch(5)) == 0  # a retry of the same (source, seq)
    assert collector.write(dest, "src", 1, batch(2, start=5)) == 2
    assert collector.write(dest, "other", 0, batch(1, start=7)) == 1
    table = read_records(str(tmp_path))
    assert sorted(table.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(8))
    assert collector.rows() == {dest: 8}


def test_records_uri_takes_the_records_and_the_run_dir_keeps_telemetry(tmp_path):
    sink = DirectSink(str(tmp_path / "run"), records_uri=f"file://{tmp_path}/bucket/run1")
    sink.records(2, 4).write(batch(3, worker=4))
    sink.telemetry(4).write(pa.table({"t_ns": [1]}))
    assert read_records(f"file://{tmp_path}/bucket/run1").num_rows == 3
    assert len(os.listdir(tmp_path / "bucket" / "run1")) == len(part_dir(f"{tmp_path}/bucket/run1", 2, 4).files()) == 1
    assert not (tmp_path / "run" / "records").exists()
    assert len(telemetry_parts(str(tmp_path / "run"), 4).files()) == 1


# --------------------------------------------------------------------------- a 3-node cluster


@pytest.fixture(scope="module")
def cluster():
    if ray_constants.ENABLE_RAY_CLUSTER:
        pytest.skip("ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; the test cluster "
                    "would bind to this machine's external interface")
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(num_cpus=2, resources={"loadgen": 2})
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level="warning")
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def nodes_by_role() -> tuple[str, list[str]]:
    alive = [n for n in ray.nodes() if n["Alive"]]
    head = [n["NodeID"] for n in alive if n["Resources"].get("node:__internal_head__")]
    assert len(head) == 1
    return head[0], sorted(n["NodeID"] for n in alive if n["NodeID"] != head[0])


def spec() -> TargetSpec:
    url = "http://127.0.0.1:9/v1"  # never contacted: these workers are only placed
    return TargetSpec(base_url=url, model="m", config=TargetConfig(kind="openai", url=url))


def test_one_worker_per_node_spreads_over_every_node(cluster, tmp_path):
    head, others = nodes_by_role()
    cfg = ClusterConfig(kind="ray", address=cluster.address, workers_per_node=1, allow_head_node=True)
    pool = start_workers(cfg, "run", spec(), str(tmp_path))
    try:
        placed = {i["worker_id"]: i for i in pool.info}
        assert sorted(i["node_id"] for i in placed.values()) == sorted([head, *others])
        # auto collection: the worker beside the driver writes itself, the others send through Ray
        assert {i["node_id"]: i["output"] for i in placed.values()} == {
            head: "direct", **{n: "collector" for n in others}
        }
    finally:
        pool.close()


def test_workers_stay_off_the_head_node_unless_allowed(cluster, tmp_path):
    head, others = nodes_by_role()
    cfg = ClusterConfig(kind="ray", address=cluster.address, workers_per_node=2, allow_head_node=False,
                        node_resource="loadgen", worker_cpus=0.5)
    pool = start_workers(cfg, "run", spec(), str(tmp_path))
    try:
        assert counts([i["node_id"] for i in pool.info]) == {n: 2 for n in others}
    finally:
        pool.close()


def test_more_replicas_than_workers_is_refused(cluster, tmp_path):
    cfg = ClusterConfig(kind="ray", address=cluster.address, workers=2, allow_head_node=False)
    urls = [f"http://127.0.0.1:{9000 + i}/v1" for i in range(3)]
    with pytest.raises(ClusterError, match="3 target.urls but only 2 workers"):
        start_workers(cfg, "run", spec(), str(tmp_path), urls=urls)


def test_resources_held_elsewhere_fail_placement_within_the_timeout(cluster, tmp_path):
    from ray.util.placement_group import placement_group, remove_placement_group

    _, others = nodes_by_role()
    blocker = placement_group([{"CPU": 1.5}], bundle_label_selector=[{"ray.io/node-id": others[0]}])
    ray.get(blocker.ready(), timeout=60)
    cfg = ClusterConfig(kind="ray", address=cluster.address, workers_per_node=2, worker_cpus=1,
                        allow_head_node=False, placement_timeout_s=2)
    t0 = time.monotonic()
    try:
        with pytest.raises(ClusterError, match="could not reserve 4 workers .* Free per node"):
            start_workers(cfg, "run", spec(), str(tmp_path))
    finally:
        remove_placement_group(blocker)
    assert time.monotonic() - t0 < 30
    # the failed attempt released what it had reserved: the same placement now succeeds
    cfg.placement_timeout_s = 60
    pool = start_workers(cfg, "run", spec(), str(tmp_path))
    pool.close()


def test_a_slow_collector_slows_flushing_with_a_bounded_number_in_flight(cluster, tmp_path):
    class SlowCollector(Collector):
        def write(self, *args):
            time.sleep(0.3)
            return super().write(*args)

    handle = ray.remote(SlowCollector).options(max_concurrency=1, num_cpus=0).remote()
    sink = CollectorSink(handle, str(tmp_path), max_in_flight=2)
    seen: list[int] = []
    t0 = time.monotonic()
    for k in range(6):
        sink.records(0, 7).write(batch(10, worker=7, start=10 * k))
        seen.append(sink.in_flight)
    flushed_s = time.monotonic() - t0
    sink.drain()
    assert max(seen) == 2 and sink.in_flight == 0
    assert flushed_s >= 0.3 * (6 - 2) * 0.9  # the sender waited for the writer
    table = read_records(str(tmp_path))
    assert sorted(table.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(60))
    ray.kill(handle)


# --------------------------------------------------------------------------- one distributed run


def sharegpt(path, sessions: int = 40) -> None:
    rng = np.random.default_rng(7)
    convs = []
    for s in range(sessions):
        turns = []
        for t in range(int(rng.integers(1, 4))):
            turns.append({"from": "human", "value": f"session {s} turn {t} " + "word " * 8})
            turns.append({"from": "gpt", "value": "a b c d"})
        convs.append({"id": f"s{s}", "conversations": turns})
    path.write_text(json.dumps(convs))


@pytest.fixture(scope="module")
def distributed_run(cluster, tmp_path_factory):
    """Two open-loop levels of multi-turn sessions from one worker per node, records through the collector."""
    base = tmp_path_factory.mktemp("distributed")
    sharegpt(base / "conv.json")
    cfg = validate(LoadgenConfig(
        target=TargetConfig(kind="sim", sim_ground_truth=True, sim=SimProfile(step_base_ms=5.0, max_num_seqs=128)),
        workload=WorkloadConfig(kind="sharegpt", path=str(base / "conv.json"), max_output_tokens=4),
        load=LoadConfig(kind="rate", levels=[10.0, 20.0], duration_s=2.0, warmup_s=0.5, drain_s=20.0, seed=3),
        cluster=ClusterConfig(kind="ray", address=cluster.address, workers_per_node=1, allow_head_node=True,
                              collect="driver", flush_interval_s=0.5),
        analysis=AnalysisConfig(plots=False),
        progress=False,
    ))
    run_dir = base / "run"
    meta = runner.run(cfg, str(run_dir), console=Console(file=io.StringIO()), clock_skew_ns={SKEWED: SKEW_NS}).to_dict()
    assert meta["status"] == "complete"
    return meta, read_records(str(run_dir)), pq.read_table(run_dir / "sim_ground_truth.parquet")


def test_records_of_every_node_arrive_once_in_one_dataset(distributed_run):
    meta, records, _ = distributed_run
    assert {w["output"] for w in meta["workers"]} == {"collector"}
    assert len({w["node_id"] for w in meta["workers"]}) == 3
    assert set(records.column("node_id").to_pylist()) == {w["node_id"] for w in meta["workers"]}
    ids = records.column("request_id").to_pylist()
    assert len(ids) == len(set(ids))
    levels = np.asarray(records.column("level").to_pylist())
    for level in meta["levels"]:
        led = level["ledger"]
        assert led["sent"] == led["planned"] == led["ok"] > 0 and led["lost"] == 0
        assert int((levels == level["level"]).sum()) == led["sent"]


def test_sessions_stay_on_one_worker_and_come_whole(distributed_run):
    _, records, _ = distributed_run
    workers = defaultdict(set)
    turns = defaultdict(list)
    for level, sid, w, turn in zip(*(records.column(c).to_pylist() for c in ("level", "session_id", "worker_id", "turn"))):
        workers[(level, sid)].add(w)
        turns[(level, sid)].append(turn)
    assert all(len(ws) == 1 for ws in workers.values())
    assert all(sorted(t) == list(range(len(t))) for t in turns.values())
    # with more sessions than workers, every worker got some
    assert len({next(iter(ws)) for ws in workers.values()}) == 3


def test_an_injected_clock_offset_is_measured_within_its_rtt_and_removed_from_records(distributed_run):
    meta, records, truth = distributed_run
    slack_ns = 2_000_000  # the epoch mapping of two processes, each sampled once
    for w in meta["workers"]:
        expected = SKEW_NS if w["worker_id"] == SKEWED else 0
        assert len(w["clock_samples"]) == len(meta["levels"])  # measured at start and between levels
        for sample in w["clock_samples"]:
            assert abs(sample["offset_ns"] - expected) <= sample["rtt_ns"] // 2 + slack_ns
    # each level's records carry the uncertainty of the measurement in force during it
    for w in meta["workers"]:
        mine = records.filter(pc.equal(records.column("worker_id"), w["worker_id"]))
        for level, sample in zip(meta["levels"], w["clock_samples"]):
            unc = mine.filter(pc.equal(mine.column("level"), level["level"])).column("clock_uncertainty_ns")
            assert set(unc.to_pylist()) <= {sample["rtt_ns"] // 2}
    # the server saw each request arrive just after the worker says it sent it, skewed worker included
    arrival = dict(zip(truth.column("request_id").to_pylist(), truth.column("arrival_ns").to_pylist()))
    delay_ms: dict[int, list[float]] = defaultdict(list)
    for rid, w, sent in zip(*(records.column(c).to_pylist() for c in ("request_id", "worker_id", "sent_ns"))):
        delay_ms[w].append((arrival[rid] - sent) / 1e6)
    median = {w: float(np.median(d)) for w, d in delay_ms.items()}
    unc_ms = max(w["clock_rtt_ns"] for w in meta["workers"]) / 2e6
    assert -unc_ms - 5 < median[SKEWED] < 100  # uncorrected, it would be -250 ms
    others = [m for w, m in median.items() if w != SKEWED]
    assert abs(median[SKEWED] - float(np.median(others))) < 50
