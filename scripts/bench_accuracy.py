"""Benchmark loadgen's timing accuracy against the simulator's own ground truth, and its schedule lag.

Part 1 — at 1, 100, 1,000 and 5,000 concurrent streams: the error of loadgen's
first-token time and of every token's arrival time relative to the time the
simulator wrote that token to its socket (median, p99). The simulator is
configured so the streams are all served at once at a token rate two cores
can carry (one step per `step_ms` for every stream).

Part 2 — open-loop schedule lag (sent − scheduled: median, p99, max) at several
constant rates.

    python scripts/bench_accuracy.py
    python scripts/bench_accuracy.py --streams 1 100 --rates 50 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from loadgen.analysis.summary import analyze_level  # noqa: E402
from loadgen.config import (  # noqa: E402
    ClusterConfig,
    LengthDist,
    LoadConfig,
    LoadgenConfig,
    SimProfile,
    TargetConfig,
    WorkloadConfig,
)
from loadgen.rundir import read_records  # noqa: E402
from loadgen.runner import run  # noqa: E402


def _sim(streams: int, step_ms: float) -> SimProfile:
    return SimProfile(
        name=f"bench-{streams}",
        max_num_seqs=max(streams, 1),
        max_num_batched_tokens=max(streams, 1) * 64,
        kv_cache_tokens=max(streams, 4) * 512,
        step_base_ms=step_ms,
        step_per_seq_ms=0.0,
        step_per_prefill_token_ms=0.0,
        prefix_caching=False,
    )


def accuracy(streams: int, tokens: int, duration: float, workers: int) -> dict:
    """One closed-loop level at ``streams`` against a ground-truth simulator; errors in ms."""
    # Keep the token rate within what loadgen and the simulator can carry on two shared cores.
    step_ms = max(10.0, streams / 2.0)
    run_dir = tempfile.mkdtemp(prefix="bench_accuracy_")
    cfg = LoadgenConfig(
        target=TargetConfig(kind="sim", sim=_sim(streams, step_ms), sim_ground_truth=True, metrics_path=None),
        workload=WorkloadConfig(num_requests=max(2 * streams, 64), input_tokens=LengthDist(mean=16), output_tokens=LengthDist(mean=tokens)),
        load=LoadConfig(kind="concurrency", levels=[streams], duration_s=duration, warmup_s=0.5, drain_s=60, max_requests=10**6),
        cluster=ClusterConfig(workers=workers, num_cpus=2, worker_cpus=0.5),
        progress=False,
    )
    meta = run(cfg, run_dir).to_dict()
    # the report's own client-bound verdict of the level
    client_bound = analyze_level(run_dir, 0, cfg.slo, cfg.analysis, cfg.cluster).client_bound
    recs = read_records(run_dir)
    recs = recs.filter(pc.equal(recs.column("status"), "ok"))
    truth = pq.read_table(os.path.join(run_dir, "sim_ground_truth.parquet"))
    by_id = {rid: i for i, rid in enumerate(truth.column("request_id").to_pylist())}
    t_first = truth.column("first_token_ns").to_pylist()
    t_tokens = truth.column("token_ns").to_pylist()
    ttft_err, tok_err = [], []
    for rid, first, chunks in zip(
        recs.column("request_id").to_pylist(), recs.column("first_token_ns").to_pylist(), recs.column("chunk_ns").to_pylist()
    ):
        i = by_id.get(rid)
        if i is None or first is None:
            continue
        ttft_err.append((first - t_first[i]) / 1e6)
        n = min(len(chunks), len(t_tokens[i]))
        tok_err.extend(((np.asarray(chunks[:n]) - np.asarray(t_tokens[i][:n])) / 1e6).tolist())
    level = meta["levels"][0]
    shutil.rmtree(run_dir, ignore_errors=True)
    ttft_err, tok_err = np.asarray(ttft_err), np.asarray(tok_err)
    return {
        "streams": streams,
        "step_ms": step_ms,
        "requests": len(ttft_err),
        "errors": level["ledger"]["sent"] - level["ledger"]["ok"],
        "ttft_err_p50": float(np.median(ttft_err)) if ttft_err.size else float("nan"),
        "ttft_err_p99": float(np.percentile(ttft_err, 99)) if ttft_err.size else float("nan"),
        "tok_err_p50": float(np.median(tok_err)) if tok_err.size else float("nan"),
        "tok_err_p99": float(np.percentile(tok_err, 99)) if tok_err.size else float("nan"),
        "loop_lag_p99": max(w["loop_lag_ms_p99"] for w in level["workers"]),
        "client_bound": client_bound,
    }


def schedule_lag(rate: float, duration: float, workers: int) -> dict:
    """Open-loop constant rate against a fast simulator: how late requests left vs their schedule."""
    run_dir = tempfile.mkdtemp(prefix="bench_lag_")
    sim = SimProfile(name="fast", max_num_seqs=4096, max_num_batched_tokens=1 << 20, kv_cache_tokens=1 << 24,
                     step_base_ms=5.0, step_per_seq_ms=0.0, step_per_prefill_token_ms=0.0, prefix_caching=False)
    cfg = LoadgenConfig(
        target=TargetConfig(kind="sim", sim=sim, metrics_path=None),
        workload=WorkloadConfig(num_requests=int(rate * duration) + 16, input_tokens=LengthDist(mean=8), output_tokens=LengthDist(mean=4)),
        load=LoadConfig(kind="rate", arrival="constant", levels=[rate], duration_s=duration, warmup_s=0.5, drain_s=30, max_requests=10**7),
        cluster=ClusterConfig(workers=workers, num_cpus=2, worker_cpus=0.5),
        progress=False,
    )
    run(cfg, run_dir)
    recs = read_records(run_dir)
    lag = (np.asarray(recs.column("sent_ns").to_pylist()) - np.asarray(recs.column("scheduled_ns").to_pylist())) / 1e6
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"rate": rate, "requests": len(lag), "p50": float(np.median(lag)), "p99": float(np.percentile(lag, 99)), "max": float(lag.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 100, 1000, 5000])
    ap.add_argument("--rates", type=float, nargs="+", default=[10, 100, 400, 1000])
    ap.add_argument("--tokens", type=int, default=16, help="output tokens per request")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    rows = []
    for s in args.streams:
        r = accuracy(s, args.tokens, args.duration, args.workers)
        rows.append(r)
        print(f"streams={s}: {r}", flush=True)
    lags = []
    for rate in args.rates:
        r = schedule_lag(rate, args.duration, args.workers)
        lags.append(r)
        print(f"rate={rate}: {r}", flush=True)

    print("\nTiming error vs the simulator's write times (ms; positive = loadgen saw it later)")
    print(f"{'streams':>8} {'step ms':>8} {'requests':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'token p50':>10} {'token p99':>10} {'lag p99':>8}  client-bound")
    for r in rows:
        print(
            f"{r['streams']:>8} {r['step_ms']:>8.0f} {r['requests']:>9} {r['ttft_err_p50']:>9.2f} {r['ttft_err_p99']:>9.2f} "
            f"{r['tok_err_p50']:>10.2f} {r['tok_err_p99']:>10.2f} {r['loop_lag_p99']:>8.1f}  {r['client_bound']}"
        )
    print("\nOpen-loop schedule lag, sent - scheduled (ms)")
    print(f"{'req/s':>8} {'requests':>9} {'p50':>7} {'p99':>7} {'max':>7}")
    for r in lags:
        print(f"{r['rate']:>8.0f} {r['requests']:>9} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['max']:>7.2f}")


if __name__ == "__main__":
    main()
