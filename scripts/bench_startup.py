"""Measure what a minimal local loadgen run costs in CPU: the driver, Ray's daemons and the workers, all counted.

A minimal run is one level of one request per second for one second, one
worker, no plots, against scripts/fast_sse_server.py (started apart, its CPU
not counted), so nearly all of the CPU is start-up and shut-down:

    python scripts/bench_startup.py                  # 3 runs, the median and each run's breakdown
    python scripts/bench_startup.py --runs 5 -- cluster.workers=2   # extra loadgen overrides after --

How it counts: the driver starts in a cgroup of its own (cgroup v1 cpuacct or
v2, when this runs as root), so every process it starts, however short-lived
or however reaped, is charged to it: the cgroup's CPU usage is the exact total,
and any process still in it after the driver exited is a leak. Without a
writable cgroup hierarchy the total comes from sampling /proc every 20 ms (each
process's last reading) and is a slight undercount. The per-process breakdown
always comes from that sampling; what it missed is listed as "unsampled". A
process of the run still alive ``--leak-wait-s`` after the driver exited is
printed as a leak, then killed by its PID.

Output: one line per run (total CPU-s, wall s, leaks) and a table of CPU-s by
process kind, then the median total.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # scripts/cgroup.py; loadgen/procs.py of this checkout

from cgroup import CpuCgroup  # noqa: E402
from loadgen import procs  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kind(pid: int) -> str:
    """A short label for a process: Ray's process title, or the executable and module it runs."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    argv = [a.decode(errors="replace") for a in argv if a]
    if not argv:
        return "?"
    first = argv[0]
    if first.startswith("ray::"):
        return first.split()[0]  # e.g. ray::Worker, ray::IDLE, ray::DashboardAgent
    name = os.path.basename(first)
    if name.startswith("python"):
        if "-m" in argv:
            return "python -m " + argv[argv.index("-m") + 1]
        script = next((a for a in argv[1:] if a.endswith(".py")), "")
        return "python " + "/".join(Path(script).parts[-2:]) if script else "python"
    return name


class Tracker(procs.ProcessTree):
    """The run's process tree (every descendant of ``root``, by parentage or session), each process labelled by kind."""

    def __init__(self, root: int) -> None:
        super().__init__(root)
        self.labels: dict[int, str] = {}

    def sample(self) -> list[int]:
        running = super().sample()
        for pid in running:
            # Read again each time: a process forked by the raylet shows the raylet's command line until it execs.
            if pid != self.root and (label := kind(pid)) != "?":
                self.labels[pid] = label
        return running

    def by_kind(self) -> dict[str, float]:
        """CPU-s by process kind (each process's last reading)."""
        out: dict[str, float] = defaultdict(float)
        for pid, cpu in self.cpu.items():
            label = "driver (python -m loadgen.cli)" if pid == self.root else self.labels.get(pid, "?")
            out[label] += cpu
        return dict(out)


def one_run(url: str, overrides: list[str], leak_wait_s: float) -> dict:
    """One minimal loadgen run: its total CPU-s, wall s, CPU-s by process kind, and the processes that outlived it."""
    run_dir = tempfile.mkdtemp(prefix="bench_startup_")
    argv = [
        sys.executable, "-m", "loadgen.cli", f"hydra.run.dir={run_dir}",
        "target=openai", f"target.url={url}", "target.model=fast", "target.metrics_path=null",
        "load=rate", "load.levels=[1]", "load.duration_s=1", "load.warmup_s=0", "load.drain_s=10",
        "load.arrival=constant", "workload.num_requests=20", "workload.output_tokens.mean=8",
        "cluster.workers=1", "analysis.plots=false", "progress=false", *overrides,
    ]
    cgroup = CpuCgroup.create("bench_startup")
    t0 = time.monotonic()
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                              preexec_fn=cgroup.enter if cgroup else None)
    tracker = Tracker(driver.pid)
    while driver.poll() is None:
        tracker.sample()
        time.sleep(0.02)
    wall = time.monotonic() - t0
    out = driver.stdout.read().decode(errors="replace") if driver.stdout else ""

    def left() -> list[int]:
        # The cgroup sees every process of the run; /proc sampling only the ones it caught.
        return sorted(set(cgroup.pids()) if cgroup else set(tracker.alive()))

    deadline = time.monotonic() + leak_wait_s
    while left() and time.monotonic() < deadline:
        tracker.sample()
        time.sleep(0.05)
    leaks = {pid: kind(pid) for pid in left()}
    procs.kill(leaks)
    end = time.monotonic() + 10
    while left() and time.monotonic() < end:
        time.sleep(0.05)
    breakdown = tracker.by_kind()
    sampled = sum(breakdown.values())
    if cgroup:
        total = cgroup.cpu_s()
        cgroup.remove()
    else:
        total = sampled
    shutil.rmtree(run_dir, ignore_errors=True)
    if driver.returncode != 0:
        raise SystemExit(f"loadgen exited with {driver.returncode}:\n{out}")
    breakdown["unsampled (short-lived, last 20 ms)"] = max(0.0, total - sampled)
    return {"cpu_s": total, "exact": cgroup is not None, "wall_s": wall, "breakdown": breakdown, "leaks": leaks,
            "output": out}


def import_cpu_s() -> float:
    """CPU seconds of a fresh interpreter importing the driver's modules (what every run pays first)."""
    code = "import loadgen.cli, loadgen.runner, time; print(time.process_time())"
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(res.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--leak-wait-s", type=float, default=20.0,
                    help="how long after the driver exits its processes may take to exit before they count as leaked")
    ap.add_argument("--show-output", action="store_true", help="print loadgen's own output of each run")
    ap.add_argument("overrides", nargs="*", help="extra loadgen overrides (after --)")
    args = ap.parse_args()

    # The server is not part of the measured run; it only answers.
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "fast_sse_server.py"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("fast_sse_server.py did not start") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1"
        print(f"driver imports alone (python -c 'import loadgen.cli, loadgen.runner'): {import_cpu_s():.2f} CPU-s")
        totals = []
        for i in range(args.runs):
            r = one_run(url, args.overrides, args.leak_wait_s)
            totals.append(r["cpu_s"])
            if args.show_output:
                print(r["output"])
            leaks = ", ".join(f"{pid} {k}" for pid, k in r["leaks"].items()) or "none"
            how = "cgroup, exact" if r["exact"] else "/proc sampling, a slight undercount"
            print(f"run {i}: {r['cpu_s']:.2f} CPU-s ({how}) in {r['wall_s']:.1f} s wall; alive "
                  f"{args.leak_wait_s:g} s after the driver exited: {leaks}")
            for label, cpu in sorted(r["breakdown"].items(), key=lambda kv: -kv[1]):
                print(f"    {cpu:6.2f}  {label}")
        print(f"median over {len(totals)} runs: {statistics.median(totals):.2f} CPU-s "
              f"(min {min(totals):.2f}, max {max(totals):.2f})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


if __name__ == "__main__":
    main()
