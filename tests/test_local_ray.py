"""The private Ray of ``cluster=local``: 127.0.0.1 only, no token warning, nothing of it outlives a SIGKILLed driver;
the watchdog that ends it; worker errors shown without Ray's traceback.

Every process a test started is ended by its PID only, and only if it is still
the process the test saw (same start time).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadgen import watchdog
from loadgen.cluster import ClusterError, remote_cause, user_error
from loadgen.localray import start_watchdog
from loadgen.procs import ProcessTree
from loadgen.worker import ClientLimitError

# --------------------------------------------------------------------------- /proc helpers


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def listening(pids: list[int]) -> dict[int, set[str]]:
    """pid -> the addresses its TCP sockets listen on (from /proc/net/tcp{,6} and /proc/PID/fd)."""
    by_inode: dict[str, str] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            raw = bytes.fromhex(f[1].split(":")[0])
            # The kernel prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(packed)
            if v6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            by_inode[f[9]] = str(ip)
    out: dict[int, set[str]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in by_inode:
                out.setdefault(pid, set()).add(by_inode[link[8:-1]])
    return out


# --------------------------------------------------------------------------- the watchdog alone (no Ray)

STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)\n"


def test_the_watchdog_ends_marked_processes_that_ignore_sigterm_once_its_pipe_closes():
    mark = f"test-{os.getpid()}-{time.monotonic_ns()}"
    dog, pipe = start_watchdog(mark)
    env = {**os.environ, watchdog.MARK_VAR: mark}
    marked = subprocess.Popen([sys.executable, "-c", STUBBORN], env=env, stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)  # no mark
    try:
        assert marked.stdout.readline() == "up\n" and other.stdout.readline() == "up\n"
        assert watchdog.marked_pids(mark) == [marked.pid]
        os.write(pipe, b"session /nonexistent-session-dir\n")  # what the driver sends once Ray is up
        assert dog.poll() is None  # waits while the pipe is open
        os.close(pipe)  # what the driver's death does
        dog.wait(60)
        assert marked.wait(10) == -signal.SIGKILL  # SIGTERM was ignored: it took the SIGKILL
        assert other.poll() is None  # unmarked processes are left alone
    finally:
        for p in (marked, other, dog):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_watchdog_finds_a_ray_process_by_its_open_files_in_the_session_dir(tmp_path):
    # Ray's agents overwrite their environment block when they set their title: the mark is gone, their
    # log files in the session directory are not.
    session = tmp_path / "session"
    (session / "logs").mkdir(parents=True)
    (session / "logs" / "agent.log").touch()
    script = tmp_path / "ray" / "fake_agent.py"  # a command run from a ray/ directory, as Ray's agents are
    script.parent.mkdir()
    script.write_text(f"log = open({str(session / 'logs' / 'agent.log')!r}, 'a')\n" + STUBBORN)
    outsider = tmp_path / "reader.py"  # holds a file there too, but is no Ray process
    outsider.write_text(f"log = open({str(session / 'logs' / 'agent.log')!r})\n" + STUBBORN)
    mark = f"test-{os.getpid()}-{time.monotonic_ns()}"
    dog, pipe = start_watchdog(mark)
    agent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    reader = subprocess.Popen([sys.executable, str(outsider)], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline() == "up\n" and reader.stdout.readline() == "up\n"
        assert watchdog.marked_pids(mark) == []  # no mark in its environment
        assert watchdog.marked_pids(mark, (str(session),)) == [agent.pid]
        os.write(pipe, f"session {session}\n".encode())
        os.close(pipe)
        dog.wait(60)
        assert agent.wait(10) == -signal.SIGKILL
        assert reader.poll() is None
    finally:
        for p in (agent, reader, dog):
            if p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------- errors from workers


def test_a_limit_error_raised_in_a_worker_is_shown_alone():
    ray = pytest.importorskip("ray")
    limit = ClientLimitError("worker 0 needs about 1064 open files for 1000 concurrent streams, but the limit is 400.")
    wrapped = ray.exceptions.RayTaskError("Worker.run_level", "Traceback (most recent call last):\n  ...", limit)
    raised = wrapped.as_instanceof_cause()  # what ray.get raises in the driver
    assert remote_cause(raised) is limit
    assert user_error(raised) == str(limit)
    assert user_error(ClusterError("no node can host loadgen workers")) == "no node can host loadgen workers"
    assert user_error(ValueError("a bug")) is None  # a bug keeps its traceback


def test_hydra_full_error_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert user_error(ClientLimitError("x")) is None


# --------------------------------------------------------------------------- a real local run


@pytest.mark.slow
def test_a_sigkilled_driver_leaves_nothing_and_its_ray_listened_on_loopback_only(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "loadgen.cli", f"hydra.run.dir={tmp_path / 'run'}",
            "load=rate", "load.levels=[5]", "load.duration_s=300", "load.warmup_s=0", "cluster.workers=1",
            "analysis.plots=false", "progress=false",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    tree = ProcessTree(proc.pid)
    try:
        deadline = time.monotonic() + 180
        while not any(_cmdline(p).startswith("ray::Worker") for p in tree.sample()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker never started:\n{proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.2)
        time.sleep(2.0)  # the level is under way
        tree.sample()
        names = {pid: _cmdline(pid) for pid in tree.alive()}
        sockets = listening(list(names))

        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer or `kill -9 PID` would
        proc.wait(30)
        survivors = {pid: names.get(pid) or _cmdline(pid) for pid in tree.wait(30)}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        tree.end(wait_s=0)  # whatever of the run is still there

    # The tracking saw the processes that used to leak, so their absence now means something.
    everything = " | ".join(names.values())
    for part in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::Worker", "watchdog.py"):
        assert part in everything, f"{part} not among the run's processes: {everything}"
    assert not survivors, f"processes outlived the SIGKILLed driver by 30 s (now killed): {survivors}"
    # Every listening socket of every process of the run is on loopback.
    exposed = {names[pid]: addrs for pid, addrs in sockets.items() if addrs - {"127.0.0.1", "::1"}}
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    assert sockets, "no listening socket found: the check would pass vacuously"
    out = proc.stdout.read() if proc.stdout else ""
    assert "Token authentication is enabled" not in out
