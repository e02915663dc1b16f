"""How far loadgen scales across Ray nodes on one machine: concurrent streams, and efficiency per worker.

Builds a Ray cluster of several nodes on this machine (``ray.cluster_utils.Cluster``,
every node on 127.0.0.1) and a fleet of simulator replicas, then drives the fleet
through loadgen's own driver (``loadgen.runner.run``: placement, clock sync, the
collector, the ledger), exactly as ``loadgen cluster=ray target.urls=[...]`` would.

* ``streams``: one closed-loop level of ``--streams`` concurrent streams against
  slow replicas (one token every ``--step-ms``), so the machine's two cores can
  hold them all open. Reports the concurrency sustained (from the records' send
  and end times, and from the simulators' own logs) and checks that every request
  the servers saw has exactly one record, and the ledger agrees.
* ``scaling``: open loop at ``--rate-per-worker`` req/s per worker with N = 1, 2,
  4, 8 workers; achieved rate vs N x the one-worker rate, with the machine's CPU
  use, so the point where the cores (not loadgen) become the limit shows.

    python scripts/bench_scale.py                         # both parts
    python scripts/bench_scale.py streams --streams 10000 --nodes 4
    python scripts/bench_scale.py scaling --workers 1 2 4 8 --rate-per-worker 25

Prints figures; it is a benchmark, not a test. Heavy: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

# Every node of the benchmark cluster stays on 127.0.0.1: Ray reads this when it is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from rich.console import Console  # noqa: E402

from loadgen import procs  # noqa: E402
from loadgen.config import (  # noqa: E402
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
from loadgen.rundir import read_records  # noqa: E402
from loadgen.runner import run  # noqa: E402
from loadgen.sim.process import SimProcess, start_sim  # noqa: E402


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [float(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def concurrency(start_ns: np.ndarray, end_ns: np.ndarray, lo_ns: int, hi_ns: int) -> tuple[int, float]:
    """Peak and time-averaged number of open intervals [start, end) within [lo, hi]."""
    t = np.concatenate([start_ns, end_ns])
    step = np.concatenate([np.ones(len(start_ns)), -np.ones(len(end_ns))])
    order = np.argsort(t, kind="stable")
    t, level = t[order], np.cumsum(step[order])
    inside = (t >= lo_ns) & (t <= hi_ns)
    peak = int(level[inside].max()) if inside.any() else 0
    before = level[t < lo_ns]
    times = np.concatenate([[lo_ns], t[inside], [hi_ns]])
    levels = np.concatenate([[before[-1] if len(before) else 0], level[inside]])
    mean = float(np.sum(levels * np.diff(times)) / max(hi_ns - lo_ns, 1))
    return peak, mean


@contextmanager
def ray_cluster(nodes: int, cpus: int, slots: int) -> Iterator[str]:
    """A head (the driver's node, no loadgen slots) and ``nodes`` worker nodes, all on 127.0.0.1."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=cpus, resources={"loadgen": slots})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="warning")
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


@contextmanager
def fleet(n: int, profile: SimProfile, work: Path, tag: str) -> Iterator[list[SimProcess]]:
    """``n`` simulator replicas on 127.0.0.1, each logging its own ground truth."""
    sims: list[SimProcess] = []
    try:
        for i in range(n):
            sims.append(
                start_sim(profile, ground_truth=str(work / f"{tag}-truth-{i}.parquet"), log_path=str(work / f"{tag}-sim-{i}.log"))
            )
        yield sims
    finally:
        for sim in sims:
            sim.stop(timeout=30)


@dataclass
class Measured:
    """What one run did: its metadata, records, CPU used and wall time of its levels."""

    meta: dict
    records: object
    machine_cpu_cores: float  # average cores busy on the whole machine during the run
    sim_cpu_s: float
    wall_s: float


def measure(cfg: LoadgenConfig, run_dir: Path, sims: list[SimProcess]) -> Measured:
    """Run ``cfg`` with loadgen's driver and measure the machine around it."""
    busy0, total0 = machine_cpu()
    sim0 = sum(procs.cpu_s(s.pid) for s in sims)
    t0 = time.monotonic()
    meta = run(validate(cfg), str(run_dir), console=Console(file=io.StringIO()))
    wall = time.monotonic() - t0
    busy1, total1 = machine_cpu()
    cores = (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)
    sim_cpu = sum(procs.cpu_s(s.pid) for s in sims) - sim0
    return Measured(meta, read_records(str(run_dir)), cores, sim_cpu, wall)


# --------------------------------------------------------------------------- part 1: streams


def bench_streams(args: argparse.Namespace, address: str, work: Path) -> dict:
    """One closed-loop level of ``--streams`` streams; sustained concurrency and exactly-once collection."""
    profile = SimProfile(
        name="slow-fleet",
        model="sim-slow",
        max_num_seqs=args.streams,  # never the limit: every stream decodes at once
        max_num_batched_tokens=args.streams * 64,
        kv_cache_tokens=args.streams * 256,
        step_base_ms=args.step_ms,
        step_per_seq_ms=0.0,
        step_per_prefill_token_ms=0.0,
    )
    with fleet(args.replicas, profile, work, "streams") as sims:
        cfg = LoadgenConfig(
            target=TargetConfig(
                kind="openai",
                urls=[s.url for s in sims],
                connect_timeout_s=60.0,
                stall_timeout_s=120.0,
                metrics_path=None,
            ),
            workload=WorkloadConfig(
                num_requests=args.streams * 3,
                input_tokens=LengthDist(mean=32),
                output_tokens=LengthDist(mean=args.output_tokens),
            ),
            load=LoadConfig(
                kind="concurrency",
                levels=[float(args.streams)],
                duration_s=args.duration_s,
                warmup_s=args.warmup_s,
                drain_s=args.output_tokens * args.step_ms / 1e3 * 2 + 30,
                max_requests=args.streams * 3,
            ),
            cluster=ClusterConfig(
                kind="ray", address=address, node_resource="loadgen", allow_head_node=False, ship_code=False
            ),
            analysis=AnalysisConfig(plots=False),
            progress=False,
        )
        m = measure(cfg, work / "streams-run", sims)
    level = m.meta["levels"][0]
    rec = m.records
    sent = rec.column("sent_ns").to_numpy(zero_copy_only=False)
    end = rec.column("end_ns").to_numpy(zero_copy_only=False)
    lo, hi = level["steady_start_ns"], level["steady_end_ns"]
    peak, mean = concurrency(sent, end, lo, hi)
    ids = rec.column("request_id")
    truth = [pq.read_table(work / f"streams-truth-{i}.parquet") for i in range(args.replicas)]
    server_ids = [
        rid for t in truth for rid in t.column("request_id").to_pylist() if rid.startswith("L")  # not the probes
    ]
    server_start = np.concatenate([t.column("arrival_ns").to_numpy(zero_copy_only=False) for t in truth])
    server_end = np.concatenate([t.column("end_ns").to_numpy(zero_copy_only=False) for t in truth])
    speak, smean = concurrency(server_start, server_end, lo, hi)
    statuses = dict(zip(*np.unique(rec.column("status").to_pylist(), return_counts=True)))
    led = level["ledger"]
    return {
        "nodes": len({w["node_id"] for w in m.meta["workers"]}),
        "workers": len(m.meta["workers"]),
        "replicas": args.replicas,
        "streams_asked": args.streams,
        "concurrency_peak_records": peak,
        "concurrency_mean_records": round(mean, 1),
        "concurrency_peak_server": speak,
        "concurrency_mean_server": round(smean, 1),
        "records": rec.num_rows,
        "distinct_request_ids": pc.count_distinct(ids).as_py(),
        "ledger_sent": led["sent"],
        "ledger_lost": led["lost"],
        "server_requests": len(server_ids),
        "server_ids_equal_record_ids": set(server_ids) == set(ids.to_pylist()) and len(server_ids) == len(set(server_ids)),
        "statuses": {k: int(v) for k, v in statuses.items()},
        "collected_through_ray": sum(w["output"] == "collector" for w in m.meta["workers"]),
        "loop_lag_ms_p99_max": max(w["loop_lag_ms_p99"] for w in level["workers"]),
        "machine_cpu_cores": round(m.machine_cpu_cores, 2),
        "sim_cpu_s": round(m.sim_cpu_s, 1),
        "run_wall_s": round(m.wall_s, 1),
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


# --------------------------------------------------------------------------- part 2: scaling


def bench_scaling(args: argparse.Namespace, address: str, work: Path) -> list[dict]:
    """Open loop at a fixed rate per worker, for each worker count; efficiency vs the one-worker rate."""
    profile = SimProfile(
        name="fast-fleet",
        model="sim-fast",
        max_num_seqs=2048,
        max_num_batched_tokens=65536,
        kv_cache_tokens=1_000_000,
        step_base_ms=20.0,
        step_per_seq_ms=0.0,
        step_per_prefill_token_ms=0.0,
    )
    rows: list[dict] = []
    with fleet(args.replicas, profile, work, "scaling") as sims:
        for n in args.workers:
            cfg = LoadgenConfig(
                target=TargetConfig(kind="openai", urls=[s.url for s in sims[: min(n, len(sims))]], metrics_path=None),
                workload=WorkloadConfig(
                    num_requests=5000, input_tokens=LengthDist(mean=32), output_tokens=LengthDist(mean=args.scaling_tokens)
                ),
                load=LoadConfig(
                    kind="rate",
                    levels=[args.rate_per_worker * n],
                    arrival="constant",
                    duration_s=args.scaling_duration_s,
                    warmup_s=3.0,
                    drain_s=15.0,
                    max_requests=100_000,
                ),
                cluster=ClusterConfig(
                    kind="ray",
                    address=address,
                    workers=n,
                    node_resource="loadgen",
                    allow_head_node=False,
                    ship_code=False,
                ),
                analysis=AnalysisConfig(plots=False),
                progress=False,
            )
            m = measure(cfg, work / f"scaling-{n}", sims)
            level = m.meta["levels"][0]
            rec = m.records
            lo, hi = level["steady_start_ns"], level["steady_end_ns"]
            end = rec.column("end_ns").to_numpy(zero_copy_only=False)
            ok = np.asarray(rec.column("status").to_pylist()) == "ok"
            achieved = float(np.sum(ok & (end >= lo) & (end < hi))) / ((hi - lo) / 1e9)
            ws = level["workers"]
            rows.append(
                {
                    "workers": n,
                    "nodes": len({w["node_id"] for w in m.meta["workers"]}),
                    "offered_rps": args.rate_per_worker * n,
                    "achieved_rps": round(achieved, 1),
                    "schedule_lag_ms_p99_max": round(max(w["schedule_lag_ms_p99"] for w in ws), 1),
                    "loop_lag_ms_p99_max": round(max(w["loop_lag_ms_p99"] for w in ws), 1),
                    "worker_cpu_pct_mean": round(float(np.mean([w["cpu_percent"] or 0 for w in ws])), 1),
                    "machine_cpu_cores": round(m.machine_cpu_cores, 2),
                    "sim_cpu_s": round(m.sim_cpu_s, 1),
                    "records": rec.num_rows,
                    "ledger_sent": level["ledger"]["sent"],
                    "client_bound": level["client_bound"],
                    "load_avg_1m": round(os.getloadavg()[0], 1),
                }
            )
    base = next((r["achieved_rps"] for r in rows if r["workers"] == 1), None)
    for r in rows:
        r["efficiency"] = round(r["achieved_rps"] / (r["workers"] * base), 3) if base else None
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", nargs="?", choices=["streams", "scaling", "all"], default="all")
    ap.add_argument("--nodes", type=int, default=4, help="Ray worker nodes besides the head (default: %(default)s)")
    ap.add_argument("--slots", type=int, default=2, help="loadgen workers per node (default: %(default)s)")
    ap.add_argument("--replicas", type=int, default=4, help="simulator replicas in the fleet (default: %(default)s)")
    ap.add_argument("--streams", type=int, default=10_000, help="concurrent streams (default: %(default)s)")
    ap.add_argument("--step-ms", type=float, default=2000.0, help="simulated decode step: one token per stream each (default: %(default)s)")
    ap.add_argument("--output-tokens", type=int, default=16, help="tokens per request in the streams part (default: %(default)s)")
    ap.add_argument("--duration-s", type=float, default=45.0, help="sending phase of the streams level (default: %(default)s)")
    ap.add_argument("--warmup-s", type=float, default=15.0, help="excluded from the steady window (default: %(default)s)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8], help="worker counts for scaling")
    ap.add_argument("--rate-per-worker", type=float, default=25.0, help="req/s each worker sends in scaling")
    ap.add_argument("--scaling-tokens", type=int, default=16, help="tokens per request in scaling")
    ap.add_argument("--scaling-duration-s", type=float, default=12.0, help="sending phase of each scaling run")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if max(args.workers) > args.nodes * args.slots:
        ap.error(f"--workers up to {max(args.workers)} need --nodes x --slots >= that")

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-scale-") as tmp, ray_cluster(args.nodes, args.slots, args.slots) as address:
        work = Path(tmp)
        if args.part in ("streams", "all"):
            out["streams"] = bench_streams(args, address, work)
            print(json.dumps({"streams": out["streams"]}, indent=2), flush=True)
        if args.part in ("scaling", "all"):
            out["scaling"] = bench_scaling(args, address, work)
            print(f"{'workers':>7} {'nodes':>5} {'offered':>8} {'achieved':>9} {'eff':>6} {'sched p99':>9} "
                  f"{'loop p99':>8} {'wkr cpu%':>8} {'machine':>7} {'load1m':>6} {'bound':>5}")
            for r in out["scaling"]:
                print(f"{r['workers']:>7} {r['nodes']:>5} {r['offered_rps']:>8.0f} {r['achieved_rps']:>9.1f} "
                      f"{r['efficiency'] or 0:>6.2f} {r['schedule_lag_ms_p99_max']:>9.1f} {r['loop_lag_ms_p99_max']:>8.1f} "
                      f"{r['worker_cpu_pct_mean']:>8.1f} {r['machine_cpu_cores']:>7.2f} {r['load_avg_1m']:>6.1f} "
                      f"{str(r['client_bound']):>5}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
