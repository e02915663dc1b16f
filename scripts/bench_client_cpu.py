"""CPU per streamed token of one worker core, without Ray or the driver: the client-only microbenchmark.

One process runs a ``WorkerCore`` (the worker's event loop, loadgen's HTTP
client, per-token kernel stamps, record building, Parquet parts, telemetry)
closed loop against ``scripts/fast_sse_server.py`` in its own process, and
counts this process's CPU (every thread: the loop and the part writer) over
the level against the tokens recorded. Nothing else is counted, so on a shared
machine it moves much less than ``bench_client.py``'s full runs.

    python scripts/bench_client_cpu.py                      # 1,024 streams, 6 s, 3 runs
    python scripts/bench_client_cpu.py --streams 256 1024 --runs 5

To compare two versions of loadgen, interleave runs of each, one process per
run (``PYTHONPATH=/tmp/old python scripts/bench_client_cpu.py --runs 1`` and
the same without ``PYTHONPATH``), and compare the medians; the first line
printed names the loadgen that was imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fast_sse_server  # noqa: E402
import loadgen  # noqa: E402
from loadgen.config import ClusterConfig, TargetConfig  # noqa: E402
from loadgen.rundir import read_records  # noqa: E402
from loadgen.worker import LevelRun, TargetSpec, WorkerCore  # noqa: E402
from loadgen.workload.table import REQUEST_SCHEMA  # noqa: E402


def _shard(n: int, tokens: int) -> pa.Table:
    """``n`` requests of ``tokens`` output tokens each, no own send times (closed loop)."""
    rows = [{"request_id": f"r{i}", "turn": 0, "input_tokens": 8, "output_tokens": tokens, "prompt": f"p{i}"} for i in range(n)]
    table = pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)
    return table.append_column("scheduled_s", pa.nulls(n, pa.float64()))


async def _level(base: str, run_dir: str, streams: int, duration_s: float, tokens: int) -> tuple[float, float]:
    """Run one closed-loop level; (CPU seconds of this process over the level, wall seconds)."""
    target = TargetConfig(kind="openai", url=base, probe=False, metrics_path=None)
    core = WorkerCore(0, "bench", "node", TargetSpec(base, "fast", target), ClusterConfig(), run_dir)
    await core.start()
    try:
        run = LevelRun(level=0, mode="concurrency", value=streams, duration_s=duration_s, drain_s=10,
                       concurrency=streams, max_requests=10**7)
        await core.prepare_level(run, _shard(4096, tokens))
        cpu0, wall0 = time.process_time(), time.monotonic()
        await core.start_level(core.now() + 20_000_000)
        return time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        await core.close()


def one_run(args, streams: int) -> dict:
    """One level against a fresh server; tokens, CPU and tokens per CPU-second."""
    procs = fast_sse_server.start(args.port, 1, args.ttft_ms, args.itl_ms)
    run_dir = tempfile.mkdtemp(prefix="bench_client_cpu_")
    try:
        import uvloop

        cpu_s, wall_s = uvloop.run(_level(f"http://127.0.0.1:{args.port}/v1", run_dir, streams, args.duration, args.tokens))
    finally:
        for p in procs:
            p.terminate()
            p.join(10)
    recs = read_records(run_dir)
    ok = recs.filter(pc.equal(recs.column("status"), "ok"))
    chunks = int(pc.sum(pc.list_value_length(ok.column("chunk_ns"))).as_py() or 0)
    return {"streams": streams, "tokens": chunks, "cpu_s": cpu_s, "wall_s": wall_s, "errors": recs.num_rows - ok.num_rows,
            "tok_per_cpu_s": chunks / max(cpu_s, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1024])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0, help="seconds of sending per run")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--port", type=int, default=18565)
    args = ap.parse_args()
    print(f"loadgen from {os.path.dirname(loadgen.__file__)}; load average {os.getloadavg()[0]:.1f}", flush=True)
    for streams in args.streams:
        results = []
        for i in range(args.runs):
            r = one_run(args, streams)
            results.append(r["tok_per_cpu_s"])
            print(f"streams={streams} run {i + 1}: {r['tokens']} tokens in {r['wall_s']:.1f} s, {r['cpu_s']:.2f} CPU-s, "
                  f"{r['tok_per_cpu_s']:,.0f} tok per CPU-s, {1e6 / r['tok_per_cpu_s']:.2f} µs per token, "
                  f"errors {r['errors']}", flush=True)
        print(f"streams={streams}: median {statistics.median(results):,.0f} tok per CPU-s over {len(results)} runs", flush=True)


if __name__ == "__main__":
    main()
