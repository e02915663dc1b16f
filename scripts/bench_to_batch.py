"""Benchmark a worker's flush: ``RecordBuffer`` → ``to_batch`` → one zstd Parquet part in memory.

Input: ``--records`` worker-shaped records (every field a worker sets, 16–64
chunk times each, 0.2 % timeouts). Output: the best of ``--repeat`` timings (wall and CPU) of
``to_batch`` alone and of ``to_batch`` plus the Parquet write, in ms per flush
and µs per record. The records are rebuilt before each repeat because
``RecordBuffer.take`` hands them over.

    python scripts/bench_to_batch.py                 # 10,000 records, best of 20
"""

from __future__ import annotations

import argparse
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq

from loadgen.rundir import RecordBuffer, to_batch

T0 = 1_700_000_000_000_000_000


def make_records(n: int, seed: int = 0) -> list[dict]:
    """n records with the fields a worker fills in (see ``loadgen.worker.core``)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sent = T0 + i * 1_000_000
        chunks = [sent + 50_000_000 + j * 10_000_000 for j in range(rng.randint(16, 64))]
        out.append({
            "run_id": "bench", "level": 3, "level_value": 8.0, "worker_id": 1, "node_id": "node-abc",
            "request_id": f"L3-req-{i}", "response_id": f"cmpl-{i}", "session_id": None, "turn": 0,
            "scheduled_ns": sent - 20_000, "sent_ns": sent, "first_byte_ns": chunks[0] - 1000,
            "first_token_ns": chunks[0], "first_answer_ns": chunks[0], "end_ns": chunks[-1] + 1000,
            "input_tokens": 512, "prompt_tokens": 512, "output_tokens_expected": len(chunks),
            "output_tokens": len(chunks), "reasoning_tokens": None, "chunk_ns": chunks,
            "status": "timeout" if rng.random() < 0.002 else "ok", "http_status": 200, "error": None,
            "loop_lag_ms": 0.3, "attempts": 1, "clock_uncertainty_ns": 90_000,
        })
    return out


def time_flush(records: list[dict], write: bool) -> tuple[float, float]:
    """(wall, CPU) seconds for one flush of ``records``: to_batch, and the Parquet write when ``write``."""
    buffer = RecordBuffer()
    for r in records:
        buffer.append(r)
    taken = buffer.take()
    assert taken is not None
    t, cpu = time.perf_counter(), time.process_time()
    batch = to_batch(taken)
    if write:
        pq.write_table(pa.Table.from_batches([batch]), pa.BufferOutputStream(), compression="zstd")
    return time.perf_counter() - t, time.process_time() - cpu


def main() -> None:
    """Parse arguments, time the flushes, print the best of each."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000, help="records per flush (default 10,000)")
    p.add_argument("--repeat", type=int, default=20, help="timed repeats; the best is shown (default 20)")
    args = p.parse_args()
    records = make_records(args.records)
    for label, write in (("to_batch", False), ("to_batch + zstd Parquet write", True)):
        runs = [time_flush(records, write) for _ in range(args.repeat)]
        wall, cpu = min(w for w, _ in runs), min(c for _, c in runs)
        # CPU time as well as wall: on a shared machine the wall figure carries other processes' load.
        print(f"{label}: {wall * 1e3:.2f} ms wall, {cpu * 1e3:.2f} ms CPU per {args.records:,} records "
              f"= {wall / args.records * 1e6:.2f} µs/record")


if __name__ == "__main__":
    main()
