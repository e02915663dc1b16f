"""Processes read from /proc (Linux): one process's stat fields, a process tree followed over time, kills by PID.

Standard library only (``os``, ``signal``, ``time``, ``typing``), so that scripts,
tests and small helper processes can all import it at no cost.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Iterable

#: Clock ticks per second: the unit of utime and stime in /proc/PID/stat.
TICK = os.sysconf("SC_CLK_TCK")

#: Indices into :func:`stat`'s list (stat(5)'s field number minus 3).
STATE, PPID, SESSION, UTIME, STIME, START = 0, 1, 3, 11, 12, 19


def stat(pid: int) -> list[str] | None:
    """Input: a PID. Output: the fields of /proc/PID/stat after the command name (see STATE, PPID, ...),
    or None when the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def cpu_s(pid: int) -> float:
    """Input: a PID. Output: the CPU seconds (user + system) it has used so far.
    Raises ProcessLookupError when the process is gone or unreadable (as ``os.kill`` does)."""
    st = stat(pid)
    if st is None:
        raise ProcessLookupError(pid)
    return (int(st[UTIME]) + int(st[STIME])) / TICK


def _every_stat() -> dict[int, list[str]]:
    """PID -> :func:`stat` fields of every process readable now."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := stat(int(name))):
            out[int(name)] = st
    return out


def descendants(pid: int) -> list[int]:
    """Input: a PID. Output: every process below it now (children, their children, ...), by parent PID."""
    children: dict[int, list[int]] = {}
    for child, st in _every_stat().items():
        children.setdefault(int(st[PPID]), []).append(child)
    found, frontier = [], [pid]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` (SIGKILL by default) to each of ``pids``; one already gone is skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class ProcessTree:
    """Every process of a run started as ``root`` in a session of its own, followed by sampling /proc.

    :meth:`sample` adds each process descended from a known one or in root's
    session. Each is known by PID and start time (``seen``), so a process that
    later reuses a PID is not taken for it. ``cpu`` holds each one's last CPU
    reading (user + system, seconds), which is a slight undercount: what a
    process spent after its last sample, or a process that lived between two
    samples, is missed.
    """

    def __init__(self, root: int) -> None:
        """Input: the PID of the run's first process (its session leader)."""
        self.root = root
        st = stat(root)
        self.seen: dict[int, str] = {root: st[START] if st else ""}  # pid -> start time
        self.cpu: dict[int, float] = {}  # pid -> CPU-s at its last sample

    def _current(self, pid: int, st: list[str] | None) -> bool:
        """Whether ``st`` is the stat of the process seen as ``pid``, still running (not a zombie)."""
        return st is not None and st[START] == self.seen[pid] and st[STATE] != "Z"

    def sample(self) -> list[int]:
        """Read /proc once: add the tree's new processes and update each running one's CPU.
        Output: the PIDs of the tree running at this reading."""
        stats = _every_stat()
        grew = True
        while grew:
            grew = False
            for pid, st in stats.items():
                if pid not in self.seen and (int(st[PPID]) in self.seen or int(st[SESSION]) == self.root):
                    self.seen[pid] = st[START]
                    grew = True
        running = []
        for pid in self.seen:
            st = stats.get(pid)
            if self._current(pid, st):
                self.cpu[pid] = (int(st[UTIME]) + int(st[STIME])) / TICK
                running.append(pid)
        return running

    def alive(self) -> list[int]:
        """The PIDs of the processes seen so far that still run (same start time, not a zombie)."""
        return [pid for pid in self.seen if self._current(pid, stat(pid))]

    def cpu_s(self) -> float:
        """CPU seconds of the whole tree: the sum of each process's last reading."""
        return sum(self.cpu.values())

    def wait(self, timeout_s: float, poll_s: float = 0.25) -> list[int]:
        """Wait up to ``timeout_s`` for every process seen to exit. Output: the ones still alive."""
        deadline = time.monotonic() + timeout_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(poll_s)
        return self.alive()

    def end(self, wait_s: float = 15.0) -> list[int]:
        """Wait up to ``wait_s`` for the processes seen to exit, then SIGKILL the rest. Output: those killed."""
        left = self.wait(wait_s)
        kill(left)
        return left
