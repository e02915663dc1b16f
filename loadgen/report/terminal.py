"""Terminal output (rich): the per-level table, the verdicts, and the comparison table.

Input: a ``RunSummary`` or a ``Comparison``. Output: printed to a rich ``Console``.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from loadgen.analysis import Comparison, LevelSummary, RunSummary
from loadgen.analysis.confidence import DIFFERENT
from loadgen.analysis.flags import level_flags
from loadgen.report.noise import value_text, verdict_text
from loadgen.report.verdicts import num, pct, verdicts


def _flags(summary: RunSummary, lv: LevelSummary) -> str:
    return ", ".join(flag.words for flag in level_flags(summary, lv))


def level_table(summary: RunSummary) -> Table:
    """The per-level table: load, throughput, latency percentiles (ms), errors, goodput, flags."""
    open_loop = any(lv.open_loop for lv in summary.levels)
    streamed = any(lv.metrics.streamed for lv in summary.levels)
    # a reasoning model: the first answer token comes after the thinking, so it gets its own column
    reasoned = streamed and any(lv.metrics.ttft_answer.p50 not in (None, lv.metrics.ttft.p50) for lv in summary.levels)
    table = Table(title=f"loadgen · {summary.run_id} · steady-state window per level", title_justify="left")
    columns = ["level", "offered req/s" if open_loop else "streams", "achieved req/s", "output tok/s"]
    if streamed:
        columns += ["TTFT p50 ms", "TTFT p99 ms"]
        if reasoned:
            columns.append("answer TTFT p50 ms")
        if open_loop:
            columns.append("queued TTFT p99 ms")
        columns += ["TPOT p50 ms", "TPOT p99 ms", "ITL p99 ms"]
    columns += ["E2E p99 ms"]
    if open_loop and not streamed:
        columns.append("queued E2E p99 ms")
    columns += ["errors", "goodput req/s", "flags"]
    for c in columns:
        if c == "flags":
            table.add_column(c, justify="left", overflow="fold", min_width=14)
        else:
            # Headers break before their last word (the unit, or the percentile), numbers never do.
            head, _, tail = c.rpartition(" ")
            if head.endswith((" p50", " p99")):
                head, _, pre = head.rpartition(" ")
                tail = f"{pre} {tail}"
            table.add_column(f"{head}\n{tail}" if head else c, justify="right", no_wrap=True)
    for lv in sorted(summary.levels, key=lambda lv: (not lv.open_loop, lv.value, lv.level)):
        m = lv.metrics
        row = [str(lv.level), num(lv.load), num(m.achieved_rps), num(m.output_tok_s)]
        if streamed:
            row += [num(m.ttft.p50), num(m.ttft.p99)]
            if reasoned:
                row.append(num(m.ttft_answer.p50))
            if open_loop:
                row.append(num(m.queued_ttft.p99))
            row += [num(m.tpot.p50), num(m.tpot.p99), num(m.itl.p99)]
        row.append(num(m.e2e.p99))
        if open_loop and not streamed:
            row.append(num(m.queued_e2e.p99))
        row += [pct(m.error_rate), num(m.goodput_rps), _flags(summary, lv)]
        style = "red" if summary.saturated(lv) else "yellow" if lv.client_bound else None
        table.add_row(*row, style=style)
    return table


def render_terminal(summary: RunSummary, console: Optional[Console] = None) -> None:
    """Print the per-level table, then the verdicts in plain words."""
    console = console or Console()
    console.print(level_table(summary))
    for sentence in verdicts(summary):
        console.print("• " + sentence, highlight=False, markup=False)
    for note in summary.shown_notes():
        console.print("note: " + note, style="dim", highlight=False, markup=False)


def comparison_table(comparison: Comparison) -> Table:
    """Every run's value [95 % interval] per common level and metric; under it, its noise verdict vs the first run.

    One column per run (2–6 fit a 160-column terminal): the verdict
    ("different": the intervals do not overlap; else "within noise") with the
    ratio run / first run sits under each later run's value, dimmed.
    """
    base = comparison.runs[0]
    title = f"loadgen comparison: values [95 % interval]; under each: noise verdict vs {base} (ratio)"
    table = Table(title=title, title_justify="left")
    table.add_column(f"load\n{comparison.load_axis}", justify="right", no_wrap=True)
    table.add_column("metric", max_width=22)
    for i, run in enumerate(comparison.runs):
        table.add_column(run + (" (base)" if i == 0 else ""), justify="right", min_width=12)
    previous = None
    runs = range(len(comparison.runs))
    for row in comparison.rows:
        load = "verdicts" if row.group == "verdict" else num(row.load)
        if previous is not None and load != previous:
            table.add_section()
        cells = [value_text(row, 0)] + [f"{value_text(row, i)}\n[dim]{verdict_text(row, i)}[/]" for i in runs[1:]]
        style = "bold" if DIFFERENT in row.verdicts else None
        table.add_row(load if load != previous else "", row.metric, *cells, style=style)
        previous = load
    return table


def run_key(comparison: Comparison, run_dirs: Sequence[str]) -> list[str]:
    """One line per run: its label and the directory it stands for (when they differ)."""
    return [f"{label}: {path}" for label, path in zip(comparison.runs, run_dirs) if os.path.basename(os.path.normpath(path)) != label]


def render_comparison(comparison: Comparison, console: Optional[Console] = None, run_dirs: Sequence[str] = ()) -> None:
    """Print the runs' labels and directories, the comparison table, how many metrics differ per run, the notes."""
    console = console or Console()
    for line in run_key(comparison, run_dirs):
        console.print("run " + line, highlight=False, markup=False)
    console.print(comparison_table(comparison))
    for line in comparison.summary:
        console.print("• " + line, highlight=False, markup=False)
    for note in comparison.notes:
        console.print("note: " + note, style="dim", highlight=False, markup=False)
