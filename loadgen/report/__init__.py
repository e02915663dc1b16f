"""Reports: analyse a run (or compare several) and write the terminal table, summary files, PNGs and HTML.

Input: run directories. Output: ``summary.json``, ``summary.parquet``,
``*.png`` and ``report.html`` per run, or ``comparison.{json,parquet,png,html}``
for several runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from loadgen.analysis import Comparison, RunSummary, analyze_run, compare, write_summary
from loadgen.config import AnalysisConfig, SLOConfig
from loadgen.report.html import write_comparison_html, write_html
from loadgen.report.plots import saturation_figure, write_plots
from loadgen.report.terminal import render_comparison, render_terminal
from loadgen.report.verdicts import slo_words

__all__ = ["compare_runs", "report_run", "render_terminal", "write_html", "write_plots"]


def report_run(
    run_dir: str,
    out_dir: Optional[str] = None,
    slo: Optional[SLOConfig] = None,
    analysis: Optional[AnalysisConfig] = None,
    console: Optional[Console] = None,
    plots: Optional[bool] = None,
) -> RunSummary:
    """Analyse one run, print its table and verdicts, and write summary files, plots and report.html.

    ``out_dir`` defaults to the run directory; ``plots`` defaults to ``analysis.plots``.
    """
    summary = analyze_run(run_dir, slo=slo, analysis=analysis)
    out_dir = out_dir or run_dir
    write_summary(out_dir, summary)
    render_terminal(summary, console)
    if summary.analysis.plots if plots is None else plots:
        written = write_plots(summary, out_dir)
        html = write_html(summary, out_dir, written)
        if console is not None:
            console.print(f"plots: {', '.join(os.path.basename(p) for p in written)}; report: {html}", highlight=False)
    return summary


def compare_runs(
    run_dirs: Sequence[str],
    out_dir: str,
    slo: Optional[SLOConfig] = None,
    analysis: Optional[AnalysisConfig] = None,
    console: Optional[Console] = None,
) -> Comparison:
    """Analyse several runs under the same SLOs (the first run's unless given) and write the comparison.

    Writes ``comparison.json``, ``comparison.parquet``, ``comparison.png`` and
    ``comparison.html`` into ``out_dir`` and prints the comparison table.
    """
    first = analyze_run(run_dirs[0], slo=slo, analysis=analysis)
    summaries = [first] + [analyze_run(d, slo=first.slo, analysis=first.analysis) for d in run_dirs[1:]]
    comparison = compare(summaries)
    comparison.notes.insert(0, f"every run is judged against the same SLOs: {slo_words(first.slo)}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "comparison.json"), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(comparison), f, indent=2)
    rows = [
        {"group": r.group, "load": r.load, "metric": r.metric, "run": run, "value": r.values[i],
         "lo": (r.intervals[i] or (None, None))[0], "hi": (r.intervals[i] or (None, None))[1],
         "ratio": r.ratios[i], "verdict": r.verdicts[i]}
        for r in comparison.rows
        for i, run in enumerate(comparison.runs)
    ]
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(out_dir, "comparison.parquet"))
    render_comparison(comparison, console, run_dirs)
    title = "Saturation curves — " + " vs ".join(comparison.runs)
    plot = saturation_figure(summaries, os.path.join(out_dir, "comparison.png"), title=title)
    write_comparison_html(comparison, summaries, out_dir, [plot])
    return comparison
