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
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


class CpuCgroup:
    """A fresh cgroup that charges every process started in it; ``cpu_s()`` is their exact CPU total."""

    def __init__(self, path: Path, usage: Callable[[Path], float]) -> None:
        self.path, self._usage = path, usage

    @classmethod
    def create(cls) -> Optional["CpuCgroup"]:
        """A new cgroup under cgroup v1 cpuacct or cgroup v2; None when neither is writable (not root)."""
        name = f"bench_startup_{os.getpid()}_{time.monotonic_ns()}"
        v1 = Path("/sys/fs/cgroup/cpuacct")
        v2 = Path("/sys/fs/cgroup")
        candidates = []
        if (v1 / "cpuacct.usage").exists():
            candidates.append((v1, lambda p: int((p / "cpuacct.usage").read_text()) / 1e9))
        if (v2 / "cgroup.controllers").exists():
            candidates.append((v2, lambda p: _usage_usec(p) / 1e6))
        for root, usage in candidates:
            try:
                (root / name).mkdir()
            except OSError:
                continue
            return cls(root / name, usage)
        return None

    def enter(self) -> None:
        """Move the calling process into the cgroup (run in the child before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def cpu_s(self) -> float:
        return self._usage(self.path)

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def _usage_usec(path: Path) -> int:
    for line in (path / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec"):
            return int(line.split()[1])
    raise RuntimeError(f"no usage_usec in {path}/cpu.stat")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (index 0 = state, 1 = ppid, 11/12 = utime/stime)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


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


class Tracker:
    """Samples every descendant of ``root`` (by parentage or session) and keeps each one's last CPU reading."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.known: dict[int, tuple[str, str]] = {root: ("driver", "")}  # pid -> (kind, start time)
        self.cpu: dict[int, float] = {}

    def sample(self) -> None:
        stats = {}
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                st = _stat(int(p.name))
                if st:
                    stats[int(p.name)] = st
        changed = True
        while changed:  # new processes whose parent (or session) is already known
            changed = False
            for pid, st in stats.items():
                if pid not in self.known and (int(st[1]) in self.known or int(st[3]) == self.root):
                    self.known[pid] = (kind(pid), st[19])
                    changed = True
        for pid, (_label, start) in list(self.known.items()):
            st = stats.get(pid)
            if st and (pid == self.root or st[19] == start) and st[0] != "Z":
                self.cpu[pid] = (int(st[11]) + int(st[12])) / TICK
                label_now = kind(pid) if pid != self.root else "?"
                if label_now != "?":
                    # Re-read: a process forked by the raylet shows the raylet's command line until it execs.
                    self.known[pid] = (label_now, start)

    def alive(self) -> list[int]:
        out = []
        for pid, (_, start) in self.known.items():
            st = _stat(pid)
            if st and st[0] != "Z" and (pid == self.root or st[19] == start):
                out.append(pid)
        return out

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for pid, cpu in self.cpu.items():
            label = "driver (python -m loadgen.cli)" if pid == self.root else self.known[pid][0]
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
    cgroup = CpuCgroup.create()
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
    for pid in leaks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
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
