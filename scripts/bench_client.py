"""Benchmark loadgen's client: streamed tokens per CPU-second, one worker core's capacity, memory per stream.

The target is scripts/fast_sse_server.py (TTFT 50 ms, one token every 10 ms,
64 tokens per request by default), a server built never to be the bottleneck;
its own CPU use is printed so you can see which side saturated. Each case is a
full ``loadgen`` run (Ray workers, per-chunk recording, Parquet, driver), with
start-up excluded: CPU is counted over the level only.

Memory per open stream is measured apart: one worker holds N streams open at
once (one token per second, so every stream stays open for the whole level) for
two values of N, and the difference in the worker's peak RSS is divided by the
difference in N.

    python scripts/bench_client.py                       # default cases
    python scripts/bench_client.py --concurrency 32 256 1024 --workers 1 2
    python scripts/bench_client.py --concurrency --memory-streams 500 4000   # memory only
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import fast_sse_server  # noqa: E402
from loadgen import procs as proclib  # noqa: E402
from loadgen.config import ClusterConfig, LengthDist, LoadConfig, LoadgenConfig, TargetConfig, WorkloadConfig  # noqa: E402
from loadgen.rundir import read_records  # noqa: E402
from loadgen.runner import run  # noqa: E402


def sample_all_cpu(exclude: set[int], stop: threading.Event, out: list) -> None:
    """(epoch ns, CPU seconds so far of this process and every process below it but ``exclude``), every 0.2 s.

    That is the driver, the private Ray's daemons (GCS, raylet, dashboard agents
    and what else it started) and the workers: every process of a local run.
    Processes that exit lose their CPU from the sum, so only differences between
    samples inside a level (when nothing starts or exits) are used.
    """
    me = os.getpid()
    while not stop.is_set():
        total = 0.0
        for pid in [me] + proclib.descendants(me):
            if pid not in exclude:
                try:
                    total += proclib.cpu_s(pid)
                except ProcessLookupError:
                    pass
        out.append((time.time_ns(), total))
        time.sleep(0.2)


def cpu_between(samples: list, start_ns: int, end_ns: int) -> float:
    """CPU seconds between the first sample at or after ``start_ns`` and the last at or before ``end_ns``."""
    inside = [c for t, c in samples if start_ns <= t <= end_ns]
    return inside[-1] - inside[0] if len(inside) >= 2 else float("nan")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sample_worker_rss(run_dir: str, stop: threading.Event, out: dict) -> None:
    """Peak RSS of the run's worker processes while the level runs."""
    import json

    path = os.path.join(run_dir, "run.json")
    while not stop.is_set():
        try:
            with open(path) as f:
                pids = [w["pid"] for w in json.load(f).get("workers", [])]
            for pid in pids:
                out.setdefault(pid, []).append(rss_mb(pid))
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.25)


def read_truth(truth: str) -> dict[str, int]:
    """First-token write times (epoch ns) by request id, from every server process."""
    out = {}
    for f in Path(truth).parent.glob(Path(truth).name + ".*"):
        for line in f.read_text().splitlines():
            rid, t = line.split()
            out[rid] = int(t)
        f.unlink()
    return out


def one_case(args, concurrency: int, workers: int) -> dict:
    truth = os.path.join(tempfile.mkdtemp(prefix="bench_truth_"), "truth")
    procs = fast_sse_server.start(args.port, args.server_procs, args.ttft_ms, args.itl_ms, truth_path=truth)
    try:
        return _measure(args, concurrency, workers, [p.pid for p in procs], procs, truth)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()


def memory_case(args, streams: int) -> float:
    """Peak RSS (MB) of one worker holding ``streams`` streams open at one token per second."""
    slow = argparse.Namespace(**{**vars(args), "itl_ms": 1000.0, "tokens": 8, "duration": 6.0})
    truth = os.path.join(tempfile.mkdtemp(prefix="bench_truth_"), "truth")
    procs = fast_sse_server.start(args.port, args.server_procs, slow.ttft_ms, slow.itl_ms, truth_path=truth)
    try:
        r = _measure(slow, streams, 1, [p.pid for p in procs], procs, truth)
        if r["errors"]:
            raise SystemExit(f"memory case with {streams} streams had {r['errors']} errors")
        return r["worker_rss_mb"]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()


def _measure(args, concurrency: int, workers: int, server_pids: list[int], procs, truth: str) -> dict:
    port, duration, tokens = args.port, args.duration, args.tokens
    run_dir = tempfile.mkdtemp(prefix="bench_client_")
    cfg = LoadgenConfig(
        target=TargetConfig(kind="openai", url=f"http://127.0.0.1:{port}/v1", model="fast", probe=False, metrics_path=None),
        workload=WorkloadConfig(num_requests=4096, input_tokens=LengthDist(mean=8), output_tokens=LengthDist(mean=tokens)),
        load=LoadConfig(kind="concurrency", levels=[concurrency], duration_s=duration, warmup_s=1.0, drain_s=10, max_requests=10**6),
        cluster=ClusterConfig(workers=workers, num_cpus=2, worker_cpus=0.5),
        progress=False,
    )
    srv0 = sum(proclib.cpu_s(p) for p in server_pids)
    stop = threading.Event()
    rss: dict = {}
    sampler = threading.Thread(target=sample_worker_rss, args=(run_dir, stop, rss), daemon=True)
    sampler.start()
    all_cpu: list = []
    threading.Thread(target=sample_all_cpu, args=(set(server_pids), stop, all_cpu), daemon=True).start()
    t0 = time.monotonic()
    meta = run(cfg, run_dir).to_dict()
    wall = time.monotonic() - t0
    stop.set()
    level = meta["levels"][0]
    srv_cpu = sum(proclib.cpu_s(p) for p in server_pids) - srv0
    recs = read_records(run_dir)
    ok = recs.filter(np.array(recs.column("status").to_pylist()) == "ok")
    streamed = int(np.sum(ok.column("output_tokens").to_numpy()))
    worker_cpu = sum(w["cpu_s"] for w in level["workers"])
    driver_cpu = level["driver_cpu_s"]
    span = (level["end_ns"] - level["start_ns"]) / 1e9
    # Every process of the run over the level (the clock is the epoch clock on one machine).
    all_cpu_s = cpu_between(all_cpu, level["start_ns"], level["end_ns"])
    all_span = [t for t, _ in all_cpu if level["start_ns"] <= t <= level["end_ns"]]
    all_span_s = (all_span[-1] - all_span[0]) / 1e9 if len(all_span) >= 2 else float("nan")
    ok_end = np.array(ok.column("end_ns").to_pylist()) if ok.num_rows else np.zeros(0)
    in_all = (ok_end >= all_span[0]) & (ok_end <= all_span[-1]) if len(all_span) >= 2 else np.zeros(0, bool)
    all_tokens = int(np.sum(ok.column("output_tokens").to_numpy()[in_all])) if in_all.any() else 0
    ttft = (np.array(ok.column("first_token_ns").to_pylist()) - np.array(ok.column("sent_ns").to_pylist())) / 1e6
    # TTFT error against the server's own write time of the first token.
    for p in procs:
        p.terminate()
        p.join(10)
    written = read_truth(truth)
    ids = ok.column("request_id").to_pylist()
    first = ok.column("first_token_ns").to_pylist()
    err = np.array([(f - written[i]) / 1e6 for i, f in zip(ids, first) if i in written])
    shutil.rmtree(run_dir, ignore_errors=True)
    peak = [max(v) for v in rss.values() if v]
    return {
        "concurrency": concurrency,
        "workers": workers,
        "requests": ok.num_rows,
        "errors": recs.num_rows - ok.num_rows,
        "tokens": streamed,
        "tokens_per_s": streamed / span,
        "loadgen_cpu_s": worker_cpu + driver_cpu,
        "tokens_per_cpu_s": streamed / max(worker_cpu + driver_cpu, 1e-9),
        # every process (driver, Ray's daemons, workers): tokens of requests that ended between two CPU samples
        "all_cpu_pct": 100 * all_cpu_s / all_span_s if all_span_s == all_span_s else float("nan"),
        "tokens_per_all_cpu_s": all_tokens / all_cpu_s if all_cpu_s > 0 else float("nan"),
        "worker_cpu_pct": 100 * worker_cpu / span / workers,
        "server_cpu_pct": 100 * srv_cpu / span,
        "ttft_p50_ms": float(np.median(ttft)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "loop_lag_p99_ms": max(w["loop_lag_ms_p99"] for w in level["workers"]),
        "worker_rss_mb": float(np.mean(peak)) if peak else float("nan"),
        "wall_s": wall,
        "ttft_err_p50_ms": float(np.median(err)) if err.size else float("nan"),
        "ttft_err_p99_ms": float(np.percentile(err, 99)) if err.size else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[32, 256, 1024])
    ap.add_argument("--memory-streams", type=int, nargs="*", default=[500, 4000],
                    help="two counts of streams held open by one worker, for memory per open stream (none: skip)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of sending per case")
    ap.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--server-procs", type=int, default=1)
    ap.add_argument("--port", type=int, default=18555)
    args = ap.parse_args()

    rows = []
    for workers in args.workers:
        for c in args.concurrency:
            r = one_case(args, c, workers)
            rows.append(r)
            print(
                f"workers={workers} concurrency={c}: {r['tokens']} tokens, {r['tokens_per_s']:.0f} tok/s, "
                f"{r['tokens_per_cpu_s']:.0f} tok per loadgen CPU-s (worker CPU {r['worker_cpu_pct']:.0f}%/worker, "
                f"server CPU {r['server_cpu_pct']:.0f}%); all processes: {r['tokens_per_all_cpu_s']:.0f} tok per CPU-s "
                f"({r['all_cpu_pct']:.0f}% CPU), TTFT p50 {r['ttft_p50_ms']:.1f} ms p99 {r['ttft_p99_ms']:.1f} ms "
                f"(error vs server write time p50 {r['ttft_err_p50_ms']:.2f} ms p99 {r['ttft_err_p99_ms']:.2f} ms), "
                f"loop lag p99 {r['loop_lag_p99_ms']:.1f} ms, errors {r['errors']}",
                flush=True,
            )
    if rows:
        print()
        print(f"{'workers':>7} {'conc':>6} {'tok/s':>8} {'tok/CPU-s':>10} {'wrk CPU%':>8} {'srv CPU%':>8} {'err p50':>8} {'err p99':>8} {'lag p99':>8} {'RSS MB':>7}  saturated")
    for r in rows:
        side = "server" if r["server_cpu_pct"] > 85 * args.server_procs else ("loadgen" if r["worker_cpu_pct"] > 85 else "neither")
        print(
            f"{r['workers']:>7} {r['concurrency']:>6} {r['tokens_per_s']:>8.0f} {r['tokens_per_cpu_s']:>10.0f} {r['worker_cpu_pct']:>8.0f} "
            f"{r['server_cpu_pct']:>8.0f} {r['ttft_err_p50_ms']:>8.2f} {r['ttft_err_p99_ms']:>8.2f} {r['loop_lag_p99_ms']:>8.1f} "
            f"{r['worker_rss_mb']:>7.0f}  {side}"
        )
    if len(args.memory_streams) == 2:
        low, high = sorted(args.memory_streams)
        rss = {n: memory_case(args, n) for n in (low, high)}
        per_stream_kb = (rss[high] - rss[low]) * 1024 / (high - low)
        print()
        print(
            f"memory: one worker's peak RSS {rss[low]:.0f} MB with {low} open streams, {rss[high]:.0f} MB with {high}: "
            f"{per_stream_kb:.1f} KB per open stream"
        )


if __name__ == "__main__":
    main()
