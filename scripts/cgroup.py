"""A fresh cgroup (v1 cpuacct or v2) that charges every process started in it: the exact CPU of a whole run.

Used by the bench scripts (bench_peers.py, bench_startup.py); needs root to
create the cgroup, and says so by returning None from :meth:`CpuCgroup.create`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

V1_ROOT = Path("/sys/fs/cgroup/cpuacct")
V2_ROOT = Path("/sys/fs/cgroup")


def _v1_usage_s(path: Path) -> float:
    """cgroup v1 cpuacct.usage (nanoseconds), in seconds."""
    return int((path / "cpuacct.usage").read_text()) / 1e9


def _v2_usage_s(path: Path) -> float:
    """cgroup v2 cpu.stat usage_usec, in seconds."""
    for line in (path / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec"):
            return int(line.split()[1]) / 1e6
    raise RuntimeError(f"no usage_usec in {path}/cpu.stat")


class CpuCgroup:
    """A fresh cgroup that charges every process started in it; ``cpu_s()`` is their exact CPU total."""

    def __init__(self, path: Path, usage: Callable[[Path], float]) -> None:
        self.path, self._usage = path, usage

    @classmethod
    def create(cls, prefix: str) -> Optional["CpuCgroup"]:
        """Input: a name prefix. Output: a new cgroup ``PREFIX_PID_NS`` under cgroup v1 cpuacct or v2,
        or None when neither is writable (not root)."""
        name = f"{prefix}_{os.getpid()}_{time.monotonic_ns()}"
        candidates = []
        if (V1_ROOT / "cpuacct.usage").exists():
            candidates.append((V1_ROOT, _v1_usage_s))
        if (V2_ROOT / "cgroup.controllers").exists():
            candidates.append((V2_ROOT, _v2_usage_s))
        for root, usage in candidates:
            try:
                (root / name).mkdir()
            except OSError:
                continue
            return cls(root / name, usage)
        return None

    def enter(self) -> None:
        """Move the calling process into the cgroup (runs in the child before exec, as ``preexec_fn``)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        """Processes still in the cgroup ([] once it is gone)."""
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def cpu_s(self) -> float:
        """CPU seconds of every process ever charged to the cgroup."""
        return self._usage(self.path)

    def remove(self) -> None:
        """Delete the cgroup (it must be empty; a failure is ignored)."""
        try:
            self.path.rmdir()
        except OSError:
            pass
