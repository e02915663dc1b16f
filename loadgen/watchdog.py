"""Ends every process of a private local Ray once its driver is gone, however the driver ended (SIGKILL included).

Run as a script, not imported by loadgen's workers: ``python -I -S watchdog.py MARK``
with its stdin the read end of a pipe that only the driver holds open (the
driver writes ``session DIR`` lines on it once Ray has started). When the
driver exits, the pipe closes and the watchdog reads EOF. It then signals every
process of this user that belongs to that Ray: its environment holds
``LOADGEN_LOCAL_RAY=MARK`` (every process of that Ray inherited it), or, since
Ray's processes overwrite their environment block when they set their process
title (``ray::DashboardAgent``), it is a Ray process holding a file open in the
session directory. SIGTERM first, SIGKILL to what is left after a short grace,
until none is left or a bounded time has passed. It imports nothing but the
standard library so it starts in milliseconds.

Why it exists: Ray 2.60's own fate-sharing ends the raylet and the GCS with the
driver, but its DashboardAgent and RuntimeEnvAgent can stay alive (they ignore
SIGTERM once their exit is stuck on a thread) and hold ~170 MB each.
"""

from __future__ import annotations

import os
import signal
import sys
import time

MARK_VAR = "LOADGEN_LOCAL_RAY"
GRACE_S = 1.0
GIVE_UP_S = 15.0


def marked_pids(mark: str, session_dirs: tuple[str, ...] = (), exclude: tuple[int, ...] = ()) -> list[int]:
    """PIDs (other than this one and ``exclude``) of the Ray marked ``mark``: by environment, or by a Ray
    process title or command holding a file open under one of ``session_dirs``."""
    needle = f"{MARK_VAR}={mark}".encode()
    skip = {os.getpid(), *exclude}
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if needle in env or (session_dirs and _is_ray(pid) and _holds_file_under(pid, session_dirs)):
            out.append(pid)
    return out


def _is_ray(pid: int) -> bool:
    """A Ray process: a ``ray::`` title, or a command run from the ray package (gcs_server, raylet, agents)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return cmd.startswith(b"ray::") or b"/ray/" in cmd


def _holds_file_under(pid: int, dirs: tuple[str, ...]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(d.rstrip("/") + "/") for d in dirs):
            return True
    return False


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def sweep(mark: str, session_dirs: tuple[str, ...] = (), exclude: tuple[int, ...] = (),
          grace_s: float = GRACE_S, give_up_s: float = GIVE_UP_S) -> list[int]:
    """Terminate, then kill, every process of the marked Ray; return the ones still there after ``give_up_s``."""

    def find() -> list[int]:
        return _alive(marked_pids(mark, session_dirs, exclude))

    deadline = time.monotonic() + give_up_s
    _signal(find(), signal.SIGTERM)
    kill_at = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        left = find()
        if not left:
            return []
        if time.monotonic() >= kill_at:
            # New processes may appear while the raylet dies: each pass kills what is there now.
            _signal(left, signal.SIGKILL)
        time.sleep(0.1)
    return find()


def _alive(pids: list[int]) -> list[int]:
    """The pids that are not zombies (a zombie holds no memory and waits only for its parent)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z":
            out.append(pid)
    return out


def main() -> None:
    mark = sys.argv[1]
    driver = os.getppid()
    # A Ctrl-C meant for the driver must not end the watchdog before the driver is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    received = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except InterruptedError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    sessions = tuple(
        line[len("session "):] for line in received.decode(errors="replace").splitlines() if line.startswith("session ")
    )
    # The driver is excluded: when it closed the pipe without exiting (a test process), it lives on.
    sweep(mark, sessions, exclude=(driver,))


if __name__ == "__main__":
    main()
