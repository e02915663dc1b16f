"""Time an offline prediction at fleet scale: N replicas, a long open-loop level, in virtual time.

    python scripts/bench_twin.py                                  # 10 min at 1,000 req/s on 32 replicas
    python scripts/bench_twin.py --rate 200 --duration 60 --replicas 8 --report   # smaller, with the report

The profile is the shipped ``sim`` profile (Llama-3.1-8B on one H100) with
``max_num_seqs`` raised to 128 (a realistic server: ~40 req/s of 256 in / 128 out
tokens per replica, so 32 replicas at 1,000 req/s run at ~80 % of capacity) and
prefix caching off (the synthetic table is cycled, so repeated prompts would
otherwise hit the cache). Prints the requests, tokens and virtual seconds
predicted, the wall time and CPU time of the prediction (records written), then
of the analysis and report when ``--report`` is given, and peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import tempfile
import time

from rich.console import Console

from loadgen.sim.cli import load_profile
from loadgen.twin.cli import compose
from loadgen.twin.predict import predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="req/s offered to the fleet (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default: %(default)s)")
    parser.add_argument("--replicas", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--balancer", default="least-outstanding")
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--report", action="store_true", help="also analyse the predicted run and write its report")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args()

    profile = dataclasses.replace(load_profile("sim"), max_num_seqs=args.max_num_seqs, prefix_caching=False)
    n = int(args.rate * args.duration)
    cfg = compose([
        "load=rate", f"load.levels=[{args.rate:g}]", f"load.duration_s={args.duration:g}", "load.warmup_s=10",
        f"load.max_requests={n}", "load.drain_s=60", "workload.num_requests=20000", "progress=false",
    ])
    out = tempfile.mkdtemp(prefix="bench_twin_")
    console = Console(quiet=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    meta = predict(cfg, profile, out, replicas=args.replicas, balancer=args.balancer, console=console, report=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    led = meta.levels[0].ledger
    tokens = led.ok * 128
    print(
        f"predicted {led.sent:,} requests ({led.ok:,} ok, ~{tokens / 1e6:.1f} M output tokens) over {meta.target['virtual_s']:.0f} virtual s "
        f"on {args.replicas} replicas ({args.balancer}): wall {wall:.1f} s, CPU {cpu:.1f} s "
        f"({meta.target['virtual_s'] / wall:.1f}x faster than real time)"
    )
    if args.report:
        from loadgen.report import report_run

        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = report_run(out, plots=True)
        lv = summary.levels[0].metrics
        print(
            f"analysis and report: wall {time.perf_counter() - wall0:.1f} s, CPU {time.process_time() - cpu0:.1f} s; "
            f"achieved {lv.achieved_rps:.1f} req/s, {lv.output_tok_s:,.0f} tok/s, TTFT p50 {lv.ttft.p50:.1f} ms, TPOT p50 {lv.tpot.p50:.2f} ms"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; run directory {out}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
