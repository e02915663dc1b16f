"""Live progress of a level: what a person watching a stress test wants to see, while it runs.

Input: the workers' counters polled by the driver every 0.25 s (``Worker.progress``:
sent, completed, errors by class, in flight, output tokens, loop lag, and the
last ~1,000 TTFTs and TPOTs of each worker). Output: one ``rich`` live panel
on a terminal; on a pipe or a CI log, the same fields as one plain line every
few seconds.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from loadgen.analysis.health import ClientBoundRule

#: Rates are measured over this trailing window (s): recent enough to show a collapse, long enough to be steady.
RATE_WINDOW_S = 5.0
#: Seconds between plain lines when the output is not a terminal.
PLAIN_EVERY_S = 5.0


@dataclass
class Snapshot:
    """The fields shown, summed or merged over workers (None: not known yet)."""

    phase: str
    elapsed_s: float
    sent: int
    done: int
    in_flight: int
    errors: int
    errors_by_class: dict[str, int]
    lag_max_ms: float
    rate_rps: Optional[float]
    tok_s: Optional[float]
    ttft: tuple[Optional[float], Optional[float]]  # p50, p99 ms of the recent samples
    tpot: tuple[Optional[float], Optional[float]]
    eta_s: Optional[float]  # to the end of the whole run


def _pcts(samples: Sequence[Sequence[float]]) -> tuple[Optional[float], Optional[float]]:
    """p50 and p99 of the workers' recent samples together ((None, None) without any)."""
    values = [v for worker in samples for v in worker]
    if not values:
        return None, None
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return float(p50), float(p99)


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _duration(seconds: Optional[float]) -> str:
    """'1h02m', '3m05s', '42s' ('—' when unknown)."""
    if seconds is None:
        return "—"
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def errors_words(total: int, by_class: dict[str, int]) -> str:
    """'0', or '3 (timeout 2, http_error 1)': the count with its classes, most frequent first."""
    if not total:
        return "0"
    classes = ", ".join(f"{k} {v}" for k, v in sorted(by_class.items(), key=lambda kv: -kv[1]) if v)
    return f"{total} ({classes})" if classes else str(total)


class LevelProgress:
    """Shows one level's progress while it runs; a context manager.

    ``levels_after``: levels still to run after this one; ``past_level_s``: wall
    seconds each earlier level of the run took (their mean sizes the ETA; the
    first level assumes its duration plus a drain of a quarter of it).
    """

    def __init__(
        self,
        console: Console,
        title: str,
        duration_s: float,
        *,
        enabled: bool = True,
        levels_after: Optional[int] = None,
        past_level_s: Sequence[float] = (),
    ) -> None:
        self.console = console
        self.title = title
        self.duration_s = duration_s
        self.enabled = enabled
        self.levels_after = levels_after
        self.past_level_s = list(past_level_s)
        self._live: Optional[Live] = None
        self._last_plain = 0.0
        self._warned: set[int] = set()
        self._history: deque[tuple[float, int, int]] = deque()  # (elapsed s, completed, output tokens)

    def __enter__(self) -> "LevelProgress":
        if self.enabled and self.console.is_terminal:
            self._live = Live(Text(self.title), console=self.console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    # ------------------------------------------------------------------ numbers
    def _rates(self, elapsed_s: float, done: int, tokens: int) -> tuple[Optional[float], Optional[float]]:
        """Completed req/s and output tok/s over the last RATE_WINDOW_S (None until 1 s of history)."""
        self._history.append((elapsed_s, done, tokens))
        while len(self._history) > 2 and elapsed_s - self._history[1][0] >= RATE_WINDOW_S:
            self._history.popleft()
        t0, d0, k0 = self._history[0]
        span = elapsed_s - t0
        if span < 1.0:
            return None, None
        return (done - d0) / span, (tokens - k0) / span

    def _eta(self, elapsed_s: float) -> Optional[float]:
        """Seconds to the end of the run: this level's rest plus the later levels at the mean past level's length."""
        if self.levels_after is None:
            return None
        per_level = float(np.mean(self.past_level_s)) if self.past_level_s else self.duration_s * 1.25
        this_rest = max(self.duration_s - elapsed_s, 0.0)
        return this_rest + self.levels_after * per_level

    def snapshot(self, elapsed_s: float, counters: list[dict[str, Any]]) -> Snapshot:
        """Merge the workers' counters into the fields shown."""
        done = sum(c["completed"] for c in counters)
        tokens = sum(c.get("output_tokens", 0) for c in counters)
        by_class: dict[str, int] = {}
        for c in counters:
            for kind, n in (c.get("errors_by_class") or {}).items():
                by_class[kind] = by_class.get(kind, 0) + n
        rate, tok_s = self._rates(elapsed_s, done, tokens)
        return Snapshot(
            phase="sending" if elapsed_s <= self.duration_s else "draining",
            elapsed_s=elapsed_s,
            sent=sum(c["sent"] for c in counters),
            done=done,
            in_flight=sum(c["in_flight"] for c in counters),
            errors=sum(c["errors"] for c in counters),
            errors_by_class=by_class,
            lag_max_ms=max((c["loop_lag_max_ms"] for c in counters), default=0.0),
            rate_rps=rate,
            tok_s=tok_s,
            ttft=_pcts([c.get("ttft_ms_recent") or () for c in counters]),
            tpot=_pcts([c.get("tpot_ms_recent") or () for c in counters]),
            eta_s=self._eta(elapsed_s),
        )

    # ------------------------------------------------------------------ views
    def plain_line(self, s: Snapshot) -> str:
        """Every field on one line (CI logs)."""
        rate = "—" if s.rate_rps is None else f"{s.rate_rps:.1f}"
        tok = "—" if s.tok_s is None else f"{s.tok_s:,.0f}"
        return (
            f"{self.title}  {s.phase} {min(s.elapsed_s, self.duration_s):.1f}/{self.duration_s:.1f}s  "
            f"sent {s.sent}  done {s.done}  in flight {s.in_flight}  rate {rate} req/s  output {tok} tok/s  "
            f"TTFT p50 {_ms(s.ttft[0])} p99 {_ms(s.ttft[1])} ms  TPOT p50 {_ms(s.tpot[0])} p99 {_ms(s.tpot[1])} ms  "
            f"errors {errors_words(s.errors, s.errors_by_class)}  loop lag max {s.lag_max_ms:.1f} ms  "
            f"run ETA {_duration(s.eta_s)}"
        )

    def panel(self, s: Snapshot) -> Panel:
        """The live panel: progress, throughput, latency so far, errors, client health."""
        grid = Table.grid(padding=(0, 2))
        for _ in range(4):
            grid.add_column(style="dim", justify="right")
            grid.add_column(justify="left")
        rate = "—" if s.rate_rps is None else f"{s.rate_rps:.1f} req/s"
        tok = "—" if s.tok_s is None else f"{s.tok_s:,.0f} tok/s"
        err_style = "bold red" if s.errors else ""
        grid.add_row("phase", f"{s.phase} {min(s.elapsed_s, self.duration_s):.1f}/{self.duration_s:.1f} s",
                     "sent", str(s.sent), "done", str(s.done), "in flight", str(s.in_flight))
        grid.add_row("rate", rate, "output", tok, "TTFT p50/p99", f"{_ms(s.ttft[0])} / {_ms(s.ttft[1])} ms",
                     "TPOT p50/p99", f"{_ms(s.tpot[0])} / {_ms(s.tpot[1])} ms")
        grid.add_row("errors", Text(errors_words(s.errors, s.errors_by_class), style=err_style),
                     "loop lag max", f"{s.lag_max_ms:.1f} ms", "run ETA", _duration(s.eta_s), "", "")
        return Panel(grid, title=self.title, title_align="left", border_style="yellow" if s.errors else "blue", expand=False)

    def update(self, elapsed_s: float, counters: list[dict[str, Any]]) -> None:
        """Redraw with the latest counters of every worker."""
        if not self.enabled:
            return
        snap = self.snapshot(elapsed_s, counters)
        if self._live is not None:
            self._live.update(self.panel(snap))
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = time.monotonic()
            # soft_wrap: one line per update in a log, however narrow the console thinks it is
            self.console.print(self.plain_line(snap), highlight=False, markup=False, soft_wrap=True)

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
