"""Ends every process of a private local Ray once its driver is gone, however the driver ended (SIGKILL included).

Run as a script, not imported by loadgen's workers: ``python -I -S watchdog.py MARK``
with its stdin the read end of a pipe that only the driver holds open. When the
driver exits, the pipe closes and the watchdog reads EOF. It then signals every
process of this user whose environment holds ``LOADGEN_LOCAL_RAY=MARK`` (every
process of that Ray inherited it: the GCS, the raylet, its agents, the workers),
SIGTERM first and SIGKILL to what is left after a short grace, until none is
left or a bounded time has passed. It imports nothing but the standard library
so it starts in milliseconds.

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


def marked_pids(mark: str) -> list[int]:
    """PIDs (other than this one) whose initial environment has ``LOADGEN_LOCAL_RAY=mark``."""
    needle = f"{MARK_VAR}={mark}".encode()
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if needle in env:
            out.append(int(name))
    return out


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def sweep(mark: str, grace_s: float = GRACE_S, give_up_s: float = GIVE_UP_S) -> list[int]:
    """Terminate, then kill, every marked process; return the ones still there after ``give_up_s``."""
    deadline = time.monotonic() + give_up_s
    first = marked_pids(mark)
    _signal(first, signal.SIGTERM)
    kill_at = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        left = _alive(marked_pids(mark))
        if not left:
            return []
        if time.monotonic() >= kill_at:
            # New processes may appear while the raylet dies: each pass kills what is there now.
            _signal(left, signal.SIGKILL)
        time.sleep(0.1)
    return _alive(marked_pids(mark))


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
    # A Ctrl-C meant for the driver must not end the watchdog before the driver is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    sweep(mark)


if __name__ == "__main__":
    main()
