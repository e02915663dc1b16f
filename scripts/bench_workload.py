"""Benchmark of the workload readers: rows/s and peak memory reading a large Azure-format trace.

Writes a synthetic Azure-format CSV (default 2,000,000 rows) to a temporary
directory, then reads it in fresh processes (so each peak RSS is its own):
the whole file, a seeded sample, and a sample rendered into the request table.

    python scripts/bench_workload.py [--rows N] [--sample K]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_trace(path: str, rows: int, seed: int = 0) -> None:
    """An Azure-format CSV: bursty arrivals over about a day, lognormal-ish lengths."""
    rng = np.random.default_rng(seed)
    gaps_ns = rng.gamma(0.5, 2 * 86_400e9 / rows, rows).astype(np.int64)
    stamps = np.datetime64("2024-05-10T00:00:00", "ns") + np.cumsum(gaps_ns).astype("timedelta64[ns]")
    text = np.char.replace(np.datetime_as_string(stamps, unit="ns").astype(str), "T", " ")
    inputs = np.clip(rng.lognormal(7.0, 1.0, rows), 1, 32_000).astype(np.int64)
    outputs = np.clip(rng.lognormal(4.5, 1.0, rows), 1, 4_000).astype(np.int64)
    with open(path, "w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        step = 200_000
        for lo in range(0, rows, step):
            hi = min(lo + step, rows)
            # Azure writes 7 fractional digits: drop the last two of the 9.
            f.writelines(f"{t[:-2]},{i},{o}\n" for t, i, o in zip(text[lo:hi], inputs[lo:hi], outputs[lo:hi]))


def child(mode: str, path: str, sample: int) -> dict:
    """Run one measurement in this process and return its figures."""
    sys.path.insert(0, REPO)
    from loadgen.config import WorkloadConfig
    from loadgen.workload import load, read_rows

    cfg = WorkloadConfig(kind="azure", path=path, sample=None if mode == "full" else sample)
    t0 = time.perf_counter()
    if mode == "render":
        w = load(cfg)
        rows_read, kept = w.rows_read, w.table.num_rows
    else:
        src, rows, _ = read_rows(cfg)
        rows_read, kept = src.rows_read, rows.num_rows
    elapsed = time.perf_counter() - t0
    return {"mode": mode, "rows_read": rows_read, "kept": kept, "seconds": elapsed, "peak_rss_mib": peak_rss_kib() / 1024}


def peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM on Linux: ru_maxrss survives exec from the parent)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    """Write the trace, measure each mode in a fresh process, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.sample)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "azure_large.csv")
        t0 = time.perf_counter()
        write_trace(path, args.rows)
        size_mb = os.path.getsize(path) / 1e6
        print(f"wrote {args.rows:,} rows ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        print(f"{'mode':<8} {'rows read':>10} {'kept':>10} {'seconds':>8} {'rows/s':>12} {'peak RSS MiB':>13}")
        for mode in ("full", "sample", "render"):
            out = subprocess.run(
                [sys.executable, __file__, "--sample", str(args.sample), "--child", mode, path],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{r['mode']:<8} {r['rows_read']:>10,} {r['kept']:>10,} {r['seconds']:>8.2f} "
                f"{r['rows_read'] / r['seconds']:>12,.0f} {r['peak_rss_mib']:>13.0f}"
            )


if __name__ == "__main__":
    main()
