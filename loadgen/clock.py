"""The run-wide clock: epoch-based int64 nanoseconds that advance with the monotonic clock."""

from __future__ import annotations

import time

_monotonic_ns = time.monotonic_ns

#: Sampled once per process: maps the monotonic clock onto the epoch, immune to later wall-clock steps.
OFFSET_NS: int = time.time_ns() - time.monotonic_ns()


def now_ns() -> int:
    """Now, as epoch nanoseconds on this process's monotonic clock."""
    return _monotonic_ns() + OFFSET_NS
