"""The OS limits a worker's sockets run into: open files and ephemeral ports, checked before a level.

Input: the number of concurrent streams a worker is asked to hold. Output:
nothing, or ``ClientLimitError`` naming the limit and the fix.
"""

from __future__ import annotations

import resource

_FD_RESERVE = 64


class ClientLimitError(RuntimeError):
    """The OS would refuse the sockets this worker needs; the message names the fix."""


def fd_limit() -> int:
    """The open-files limit, raised to the hard limit when the soft one is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def local_port_range() -> int:
    """How many ephemeral ports the OS hands out per destination (Linux), else a large number."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
        return hi - lo + 1
    except (OSError, ValueError):
        return 1 << 16


def check_socket_limits(streams: int, worker_id: int) -> None:
    """Raise ClientLimitError when ``streams`` concurrent connections would exceed an OS limit."""
    limit = fd_limit()
    if streams + _FD_RESERVE > limit:
        raise ClientLimitError(
            f"worker {worker_id} needs about {streams + _FD_RESERVE} open files for {streams} concurrent "
            f"streams, but the open-files limit (ulimit -n) is {limit}. Raise it (e.g. `ulimit -n "
            f"{max(65536, streams * 2)}` before starting Ray/loadgen) or spread the load over more "
            f"workers (cluster.workers=N)."
        )
    ports = local_port_range()
    if streams > ports:
        raise ClientLimitError(
            f"worker {worker_id} needs {streams} concurrent connections to one server, but the "
            f"ephemeral port range allows {ports}. Widen it (sysctl -w "
            f"net.ipv4.ip_local_port_range='1024 65535') or spread the load over more nodes."
        )
