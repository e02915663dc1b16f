"""Benchmark the aggregator: synthesise N records into a temporary run directory and time ``analyze_run``.

The records look like a streaming sweep: ``--levels`` open-loop levels, each
split over ``--workers`` Parquet parts (zstd, as the workers write them), and
every request carrying a ``chunk_ns`` list of 16–64 token timestamps (uniform;
mean 40), written by loadgen's own ``PartWriter``. Ten million records therefore hold ~400 million chunk timestamps
(~3.2 GB as raw int64); the analysis keeps one level in memory at a time.

The analysis runs in a fresh child process so its peak RSS is its own.

    python scripts/bench_aggregate.py                 # 10 million records
    python scripts/bench_aggregate.py --records 1000000 --keep /tmp/run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from loadgen.rundir import RECORD_SCHEMA, PartWriter, part_dir

T0 = 1_700_000_000_000_000_000
NS = 1_000_000_000


def synthesise_part(rng: np.random.Generator, n: int, start_ns: int, span_ns: int, level: int, worker: int,
                    chunks: tuple[int, int]) -> pa.Table:
    """n records with arrivals spread over [start, start + span) and realistic-looking timings."""
    scheduled = start_ns + np.sort(rng.integers(0, span_ns, n))
    sent = scheduled + rng.integers(20_000, 400_000, n)  # 0.02–0.4 ms schedule lag
    ttft = rng.gamma(4.0, 12_000_000, n).astype(np.int64)  # ~50 ms
    lengths = rng.integers(chunks[0], chunks[1] + 1, n)
    total = int(lengths.sum())
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gaps = rng.integers(5_000_000, 30_000_000, total)  # 5–30 ms between tokens
    gaps[offsets[:-1]] = 0  # each request's first chunk is its first token
    steps = np.cumsum(gaps)
    steps -= np.repeat(steps[offsets[:-1]], lengths)
    first = sent + ttft
    values = np.repeat(first, lengths) + steps
    end = values[offsets[1:] - 1] + 1_000_000
    status = np.where(rng.random(n) < 0.002, "timeout", "ok")
    columns = {
        "run_id": pa.array(["bench"] * n),
        "level": pa.array(np.full(n, level, np.int32)),
        "level_value": pa.array(np.full(n, float(level + 1))),
        "worker_id": pa.array(np.full(n, worker, np.int32)),
        "scheduled_ns": scheduled,
        "sent_ns": sent,
        "first_token_ns": first,
        "end_ns": end,
        "output_tokens": pa.array(lengths.astype(np.int32)),
        "chunk_ns": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values)),
        "status": pa.array(status),
        "loop_lag_ms": pa.array(rng.exponential(0.3, n).astype(np.float32)),
    }
    return pa.table(
        [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in RECORD_SCHEMA], schema=RECORD_SCHEMA
    )


def synthesise(run_dir: str, records: int, levels: int, workers: int, part_rows: int, chunks: tuple[int, int]) -> None:
    """Write the records and a run.json with each level's steady window."""
    rng = np.random.default_rng(0)
    per_level = records // levels
    level_span = 60 * NS
    meta = []
    for level in range(levels):
        start = T0 + level * 2 * level_span
        n_level = per_level + (records % levels if level == levels - 1 else 0)
        per_worker = [n_level // workers + (1 if w < n_level % workers else 0) for w in range(workers)]
        for w, n_w in enumerate(per_worker):
            writer = PartWriter(part_dir(os.path.join(run_dir, "records"), level, w))
            for lo in range(0, n_w, part_rows):
                writer.write(synthesise_part(rng, min(part_rows, n_w - lo), start, level_span, level, w, chunks))
        rate = n_level / (level_span / NS)
        meta.append({
            "level": level, "mode": "rate", "value": rate, "offered_rps": rate,
            "steady_start_ns": start + 5 * NS, "steady_end_ns": start + level_span,
        })
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump({"run_id": "bench", "status": "complete", "config": {}, "levels": meta}, f)


def analyse(run_dir: str) -> None:
    """Child process: time analyze_run and write_summary, print a JSON line with the figures."""
    from loadgen.analysis import analyze_run, write_summary

    t, cpu = time.perf_counter(), time.process_time()
    summary = analyze_run(run_dir)
    analysed, analysed_cpu = time.perf_counter() - t, time.process_time() - cpu
    write_summary(run_dir, summary)
    total = time.perf_counter() - t
    print(json.dumps({
        "analyse_s": analysed,
        "analyse_cpu_s": analysed_cpu,
        "with_summary_files_s": total,
        "records": sum(lv.ledger.sent for lv in summary.levels),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> None:
    """Parse arguments, synthesise, run the timed analysis in a child, print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000_000, help="records to synthesise (default 10M)")
    p.add_argument("--levels", type=int, default=8, help="load levels (default 8)")
    p.add_argument("--workers", type=int, default=4, help="worker partitions per level (default 4)")
    p.add_argument("--part-rows", type=int, default=250_000, help="rows per Parquet part (default 250k)")
    p.add_argument("--chunks", type=int, nargs=2, default=(16, 64), metavar=("MIN", "MAX"),
                   help="chunk_ns entries per request, uniform (default 16 64)")
    p.add_argument("--keep", metavar="DIR", help="write the run here and keep it (default: a temporary directory)")
    p.add_argument("--analyse-only", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.analyse_only:
        analyse(args.analyse_only)
        return
    run_dir = args.keep or tempfile.mkdtemp(prefix="loadgen-bench-")
    try:
        t = time.perf_counter()
        synthesise(run_dir, args.records, args.levels, args.workers, args.part_rows, tuple(args.chunks))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(run_dir) for f in fs)
        print(f"synthesised {args.records:,} records ({args.chunks[0]}-{args.chunks[1]} chunks each) "
              f"in {time.perf_counter() - t:.1f} s: {size / 1e9:.2f} GB of Parquet in {run_dir}")
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--analyse-only", run_dir],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"analyze_run: {r['analyse_s']:.1f} s wall for {r['records']:,} records = "
              f"{r['records'] / r['analyse_s']:,.0f} records/s "
              f"(~{r['records'] * sum(args.chunks) / 2 / r['analyse_s']:,.0f} chunk timestamps/s); "
              f"{r['analyse_cpu_s']:.1f} CPU-s = {r['records'] / r['analyse_cpu_s']:,.0f} records per CPU-second; "
              f"with summary.json/parquet: {r['with_summary_files_s']:.1f} s; peak RSS {r['peak_rss_mb']:,.0f} MB")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
