"""Live progress of a level: elapsed, sent, completed, in flight, errors, client health.

Input: summed worker counters polled by the driver. Output: one live rich line
per level on a terminal, or a plain line every few seconds when output is a
pipe or a CI log.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from rich.console import Console
from rich.live import Live
from rich.text import Text

from loadgen.analysis.health import ClientBoundRule


class LevelProgress:
    """Shows one level's progress while it runs; a context manager."""

    def __init__(self, console: Console, title: str, duration_s: float, *, enabled: bool = True) -> None:
        self.console = console
        self.title = title
        self.duration_s = duration_s
        self.enabled = enabled
        self._live: Optional[Live] = None
        self._last_plain = 0.0
        self._warned: set[int] = set()

    def __enter__(self) -> "LevelProgress":
        if self.enabled and self.console.is_terminal:
            self._live = Live(Text(self.title), console=self.console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, elapsed_s: float, counters: list[dict[str, Any]]) -> None:
        """Redraw with the latest counters of every worker."""
        if not self.enabled:
            return
        sent = sum(c["sent"] for c in counters)
        done = sum(c["completed"] for c in counters)
        errors = sum(c["errors"] for c in counters)
        inflight = sum(c["in_flight"] for c in counters)
        lag = max((c["loop_lag_max_ms"] for c in counters), default=0.0)
        phase = "sending" if elapsed_s <= self.duration_s else "draining"
        line = (
            f"{self.title}  {phase} {min(elapsed_s, self.duration_s):5.1f}/{self.duration_s:.1f}s  "
            f"sent {sent}  done {done}  in flight {inflight}  errors {errors}  loop lag max {lag:.1f} ms"
        )
        if self._live is not None:
            style = "yellow" if errors else ""
            self._live.update(Text(line, style=style))
        elif time.monotonic() - self._last_plain >= 5.0:
            self._last_plain = time.monotonic()
            self.console.print(line, highlight=False)

    def warn_client_bound(self, counters: list[dict[str, Any]], rule: ClientBoundRule, open_loop: bool) -> None:
        """Say, once per worker and level, that ``rule`` flags the worker on its recent samples (past the warm-up)."""
        bound = rule.judge(
            {c["worker_id"]: c["loop_lag_ms_p99"] for c in counters},
            {c["worker_id"]: c["schedule_lag_ms_p99"] for c in counters if c["sent"]} if open_loop else None,
        )
        for wid, why in bound.items():
            if wid in self._warned:
                continue
            self._warned.add(wid)
            self.console.print(
                f"[yellow]warning:[/] {why} in the last seconds: loadgen, not the server, may be the "
                f"bottleneck and requests leave late. Add workers (cluster.workers=N) or lower the load."
            )
