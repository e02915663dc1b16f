"""PNG plots (matplotlib, Agg, no pyplot state): saturation curves, latency distributions, timeline.

Input: ``RunSummary`` objects and, for the timeline, the run directory's
records, telemetry and server metrics. Output: ``saturation.png``,
``latency_distribution.png``, ``timeline.png`` (and ``comparison.png`` for
several runs).
"""

from __future__ import annotations

import os
import textwrap
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from loadgen.analysis import LevelSummary, RunSummary
from loadgen.analysis.compare import run_labels
from loadgen.analysis.labels import run_label
from loadgen.analysis.metrics import CDF_PERCENTILES, MISSING, NS_PER_S, in_flight_at
from loadgen.config import ClusterConfig
from loadgen.report.verdicts import load_words, num
from loadgen.rundir import iter_level_tables, read_meta, read_server_metrics, read_telemetry, run_records_root

#: The ring around client-bound levels' points.
CLIENT_BOUND = "#ff8f00"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
DPI = 110
#: Server series shown on the timeline, by their canonical names (loadgen.scrape maps each engine's).
SERVER_SERIES = {"running": "running", "waiting": "waiting", "kv": "kv_cache_usage"}


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _sorted(summary: RunSummary) -> list[LevelSummary]:
    open_loop = any(lv.open_loop for lv in summary.levels)
    return sorted((lv for lv in summary.levels if lv.open_loop == open_loop), key=lambda lv: lv.load)


def _arr(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _mark(ax: Axes, x: Optional[float], y: Optional[float], kind: str, color: str, label: Optional[str]) -> None:
    if x is None or y is None or not np.isfinite(y):
        return
    # The knee is a large hollow diamond under the star so both stay visible when they coincide.
    if kind == "saturation":
        ax.scatter([x], [y], marker="*", s=320, facecolor="gold", edgecolor=color, linewidth=1.4, zorder=6, label=label)
    elif kind == "unsaturated":
        ax.scatter([x], [y], marker="^", s=150, facecolor="gold", edgecolor=color, linewidth=1.4, zorder=6, label=label)
    else:
        ax.scatter([x], [y], marker="D", s=170, facecolor="none", edgecolor=color, linewidth=1.8, zorder=5, label=label)


def _slo_line(ax: Axes, value: Optional[float], name: str) -> None:
    if value is not None:
        ax.axhline(value, color="black", linestyle=(0, (6, 3)), linewidth=1.0, alpha=0.7, label=f"SLO: {name} ≤ {value:g} ms")


def saturation_figure(summaries: Sequence[RunSummary], path: str, title: Optional[str] = None) -> str:
    """Four panels per run: req/s and tok/s vs load, TTFT and TPOT (or E2E) percentiles vs achieved req/s."""
    fig = Figure(figsize=(13, 9.5), layout="constrained")
    (a_tp, a_tok), (a_l1, a_l2) = fig.subplots(2, 2)
    single = len(summaries) == 1
    base = summaries[0]
    open_loop = any(lv.open_loop for lv in base.levels)
    streamed = any(lv.metrics.streamed for s in summaries for lv in s.levels)
    l1, l2 = ("ttft", "tpot") if streamed else ("e2e", "normalized")
    names = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "normalized": "E2E per output token"}
    labels = run_labels(summaries)
    x_load = "offered load (req/s)" if open_loop else "concurrency (streams)"
    max_load = 0.0
    for i, s in enumerate(summaries):
        color = COLORS[i % len(COLORS)]
        levels = _sorted(s)
        if not levels:
            continue
        # Several runs: the runs' colours get one legend for the figure, each panel's legend shows line styles only.
        def pre(text: str) -> Optional[str]:
            return text if single else None

        load = _arr([lv.load for lv in levels])
        achieved = _arr([lv.metrics.achieved_rps for lv in levels])
        max_load = max(max_load, float(np.nanmax(load)))
        a_tp.plot(load, achieved, "o-", color=color, label=pre("achieved"))
        a_tp.plot(load, _arr([lv.metrics.goodput_rps for lv in levels]), "x--", color=color, alpha=0.8,
                  label=pre("goodput (met every SLO)"))
        a_tok.plot(load, _arr([lv.metrics.output_tok_s for lv in levels]), "o-", color=color, label=pre("output tok/s"))
        for ax, metric in ((a_l1, l1), (a_l2, l2)):
            p99 = _arr([getattr(lv.metrics, metric).p99 for lv in levels])
            ax.plot(achieved, p99, "o-", color=color, label=pre("p99"))
            ax.plot(achieved, _arr([getattr(lv.metrics, metric).p50 for lv in levels]), "s--", color=color,
                    alpha=0.75, markersize=4, label=pre("p50"))
            if single:
                _point_labels(ax, levels, achieved, p99)
            if single and open_loop and metric in ("ttft", "e2e"):
                queued = _arr([getattr(lv.metrics, "queued_" + metric).p99 for lv in levels])
                ax.plot(achieved, queued, "^:", color="gray", markersize=4,
                        label="p99 from scheduled send (incl. client queue)")
        by_level = {lv.level: lv for lv in levels}
        sat_kind = "saturation" if s.saturation.reached else "unsaturated"
        names_of = {"saturation": "saturation point", "unsaturated": "highest level (did not saturate)",
                    "knee": "knee (Kneedle)"}
        for kind, n in ((sat_kind, s.saturation.level), ("knee", s.knee.level)):
            lv = by_level.get(n) if n is not None else None
            if lv is None:
                continue
            name = names_of[kind]
            _mark(a_tp, lv.load, lv.metrics.achieved_rps, kind, color, pre(name))
            _mark(a_tok, lv.load, lv.metrics.output_tok_s, kind, color, None)
            _mark(a_l1, lv.metrics.achieved_rps, getattr(lv.metrics, l1).p99, kind, color, None)
            _mark(a_l2, lv.metrics.achieved_rps, getattr(lv.metrics, l2).p99, kind, color, None)
        _client_bound(levels, (a_tp, a_tok, a_l1, a_l2), (l1, l2), pre("client-bound level"))
        _capacity_line(a_tp, s, color, single)
    if open_loop and max_load > 0:
        a_tp.plot([0, max_load], [0, max_load], ":", color="gray", label="achieved = offered")
    _slo_line(a_l1, getattr(base.slo, f"{l1}_ms", None), names[l1])
    _slo_line(a_l2, getattr(base.slo, f"{l2}_ms", None), names[l2])
    a_tp.set(title="Throughput vs load", xlabel=x_load, ylabel="completed requests/s")
    a_tok.set(title="Output token throughput vs load", xlabel=x_load, ylabel="output tokens/s")
    note = " (point labels: offered req/s)" if single and open_loop else " (point labels: streams)" if single else ""
    a_l1.set(title=f"{names[l1]} vs throughput{note}", xlabel="achieved throughput (req/s)", ylabel=f"{names[l1]} (ms)")
    a_l2.set(title=f"{names[l2]} vs throughput{note}", xlabel="achieved throughput (req/s)",
             ylabel=f"{names[l2]} (ms{' per token' if l2 == 'normalized' else ''})")
    for ax in (a_l1, a_l2):
        _latency_scale(ax)
    log_x = _log_load_axis(summaries, open_loop)
    for ax in (a_tp, a_tok, a_l1, a_l2):
        ax.grid(True, alpha=0.3)
        if log_x and ax in (a_tp, a_tok):
            # Concurrency sweeps double (1, 2, 4 … 256): on a linear axis the low levels pile up at 0.
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.set_xlim(left=0)
        if ax in (a_tp, a_tok) or ax.get_yscale() == "linear":
            ax.set_ylim(bottom=0)
        if not single:
            _style_legend(ax, "tp" if ax is a_tp else "tok" if ax is a_tok else "latency", summaries)
        elif ax.has_data():
            ax.legend(fontsize=8, loc="best")
    if not single:
        runs = [Line2D([], [], color=COLORS[i % len(COLORS)], marker="o", linewidth=2.2, label=lab)
                for i, lab in enumerate(labels)]
        # Between the panels and the caption, in space kept free below: above the panels it collides
        # with the title, inside a panel it hides data.
        fig.legend(handles=runs, loc="lower center", bbox_to_anchor=(0.5, 0.035), ncol=min(len(runs), 3),
                   fontsize=10, title="runs")
    fig.suptitle(_wrap(title or f"Saturation curve — {_describe(base)}"), fontsize=13)
    fig.text(0.01, 0.0, _rules_caption(base), fontsize=8, color="#444", va="bottom", wrap=True)
    bottom = 0.04 if single else 0.04 + 0.035 * (2 + (len(summaries) - 1) // 3)  # caption, then the runs' legend rows
    fig.get_layout_engine().set(rect=(0, bottom, 1, 0.96 - bottom + 0.04))
    return _save(fig, path)


def _point_labels(ax: Axes, levels: Sequence[LevelSummary], xs: np.ndarray, ys: np.ndarray) -> None:
    """Label each p99 point with its load, above-left of the point on a white box so lines do not cross the text.

    Labels closer than ~4 % of the x range to the previous one are skipped: on flat
    panels (TPOT) neighbouring levels would otherwise print over each other.
    """
    finite = xs[np.isfinite(xs)]
    span = float(np.ptp(finite)) if finite.size else 0.0
    last = None
    for lv, x, y in zip(levels, xs, ys):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        if last is not None and span and abs(x - last) < 0.04 * span:
            continue
        last = x
        ax.annotate(num(lv.load) if lv.open_loop else f"{lv.value:g}", (x, y), textcoords="offset points", xytext=(-4, 9), ha="right", fontsize=7,
                    color="#444", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}, zorder=7)


def _client_bound(levels: Sequence[LevelSummary], axes: Sequence[Axes], latency: tuple[str, str], label: Optional[str]) -> None:
    """Ring the client-bound levels' points in orange on every panel (one legend entry, on the first panel)."""
    bound = [lv for lv in levels if lv.client_bound]
    if not bound:
        return
    load = _arr([lv.load for lv in bound])
    achieved = _arr([lv.metrics.achieved_rps for lv in bound])
    points = (
        (load, achieved), (load, _arr([lv.metrics.output_tok_s for lv in bound])),
        (achieved, _arr([getattr(lv.metrics, latency[0]).p99 for lv in bound])),
        (achieved, _arr([getattr(lv.metrics, latency[1]).p99 for lv in bound])),
    )
    for i, (ax, (x, y)) in enumerate(zip(axes, points)):
        ax.scatter(x, y, s=260, facecolor="none", edgecolor=CLIENT_BOUND, linewidth=2.0, zorder=4,
                   label=label + " (loadgen may have limited it)" if i == 0 and label else None)


def _capacity_line(ax: Axes, summary: RunSummary, color: str, labelled: bool) -> None:
    """The goodput capacity as a horizontal line on the throughput panel, its bracket as a band."""
    cap = summary.goodput_capacity
    if cap.rate is None:
        return
    sign = "≥ " if cap.at_least else ""
    text = f"goodput capacity {sign}{num(cap.rate)} req/s (≥ {cap.attainment:.0%} within SLO)"
    ax.axhline(cap.rate, color=color, linestyle=(0, (1, 1.5)), linewidth=1.6, alpha=0.9, label=text if labelled else None)
    if not cap.at_least and cap.lower_rate is not None and cap.upper_rate is not None:
        lo, hi = sorted((cap.lower_rate, cap.upper_rate))
        ax.axhspan(lo, hi, color=color, alpha=0.08, zorder=0)


def _style_legend(ax: Axes, panel: str, summaries: Sequence[RunSummary]) -> None:
    """A comparison panel's legend (``panel``: tp, tok or latency): what each line style and marker means, in grey."""
    grey = "#555"
    first = {"tp": "achieved", "tok": "output tok/s", "latency": "p99"}[panel]
    items = [Line2D([], [], color=grey, marker="o", label=first)]
    if panel == "tp":
        items.append(Line2D([], [], color=grey, marker="x", linestyle="--", label="goodput (met every SLO)"))
        if any(s.goodput_capacity.rate is not None for s in summaries):
            items.append(Line2D([], [], color=grey, linestyle=(0, (1, 1.5)), label="goodput capacity"))
        items.append(Line2D([], [], color=grey, marker="*", markersize=12, markerfacecolor="gold", linestyle="", label="saturation point"))
        if any(not s.saturation.reached for s in summaries):
            items.append(Line2D([], [], color=grey, marker="^", markersize=9, markerfacecolor="gold", linestyle="",
                                label="highest level (did not saturate)"))
        items.append(Line2D([], [], color=grey, marker="D", markerfacecolor="none", linestyle="", label="knee"))
    elif panel == "latency":
        items.append(Line2D([], [], color=grey, marker="s", linestyle="--", markersize=4, label="p50"))
    if any(lv.client_bound for s in summaries for lv in s.levels):
        items.append(Line2D([], [], color=CLIENT_BOUND, marker="o", markersize=12, markerfacecolor="none",
                            linestyle="", markeredgewidth=2, label="client-bound level"))
    handles, names = ax.get_legend_handles_labels()  # the unlabelled-by-run lines: achieved = offered, SLO
    ax.legend(handles=items + handles, fontsize=8, loc="best", ncol=1)


def _log_load_axis(summaries: Sequence[RunSummary], open_loop: bool) -> bool:
    """A log x axis for concurrency sweeps whose levels span more than 8× (1, 4, 16, 64 …)."""
    if open_loop:
        return False
    loads = [lv.load for s in summaries for lv in s.levels if not lv.open_loop and lv.load > 0]
    return bool(loads) and max(loads) / min(loads) > 8


def _latency_scale(ax: Axes) -> None:
    """Log scale (with plain tick labels) when the latencies span more than 20×, else linear from 0."""
    ys = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [np.empty(0)]).astype(np.float64)
    ys = ys[np.isfinite(ys) & (ys > 0)]
    if ys.size and ys.max() / ys.min() > 20:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _wrap(title: str, width: int = 120) -> str:
    """A figure title on at most two lines of ``width`` characters (the rest cut with '…'), never past the edges."""
    lines = textwrap.wrap(title, width)
    if len(lines) > 2:
        lines = [lines[0], lines[1][: width - 1] + "…"]
    return "\n".join(lines)


def _describe(summary: RunSummary) -> str:
    target = summary.info.get("target") or {}
    what = " · ".join(str(target[k]) for k in ("model", "profile", "engine") if target.get(k))
    return run_label(summary) + (f" ({what})" if what else "")


def _rules_caption(summary: RunSummary) -> str:
    text = f"★ saturation point: {summary.saturation.rule}.   ◆ knee: {summary.knee.rule}."
    return "\n".join(textwrap.wrap(text, 190))


def _nines(q: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(1.0 - q / 100.0, 1e-6, None))


def latency_distribution_figure(summary: RunSummary, path: str) -> Optional[str]:
    """Percentile curves per level (x: percentile on a 'nines' scale, y: latency, log): TTFT and ITL, or E2E."""
    levels = [lv for lv in _sorted(summary) if lv.metrics.cdf]
    streamed = any(lv.metrics.streamed for lv in levels)
    metrics = [("ttft", "TTFT"), ("itl", "ITL (gap between streamed chunks)")] if streamed else [("e2e", "E2E latency")]
    if not levels:
        return None
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    x = _nines(np.asarray(CDF_PERCENTILES))
    cmap = colormaps["viridis"]
    for ax, (key, name) in zip(axes, metrics):
        for j, lv in enumerate(levels):
            ys = lv.metrics.cdf.get(key) or []
            if not ys:
                continue
            tag = " (saturated)" if summary.saturated(lv) else ""
            ax.plot(x[: len(ys)], ys, color=cmap(j / max(len(levels) - 1, 1)), linewidth=1.6,
                    label=f"level {lv.level}: {load_words(lv)}{tag}")
        ticks = np.array([0, 50, 90, 99, 99.9, 99.99])
        ax.set_xticks(_nines(ticks), ["p0", "p50", "p90", "p99", "p99.9", "p99.99"])
        ax.set(title=f"{name} distribution per level", xlabel="percentile (tail stretched to the right)",
               ylabel=f"{name.split(' ')[0]} (ms)")
        _latency_scale(ax)
        ax.grid(True, alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    # Below the panels, never beside the title (long run names made the two collide).
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, title="load level", ncol=min(len(labels), 4) or 1)
    fig.suptitle(_wrap(f"Latency distributions — {_describe(summary)}"), fontsize=13)
    return _save(fig, path)


def _server_series(metrics: pa.Table, t0: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each server series (summed over label sets per sample time) as (seconds since t0, values)."""
    out = {}
    names = metrics.column("name")
    for kind, canonical in SERVER_SERIES.items():
        rows = metrics.filter(pc.equal(names, canonical))
        if not rows.num_rows:
            continue
        t = rows.column("t_ns").to_numpy()
        v = pc.fill_null(rows.column("value"), 0.0).to_numpy().astype(np.float64)
        ts, inverse = np.unique(t, return_inverse=True)
        out[kind] = ((ts - t0) / NS_PER_S, np.bincount(inverse, weights=v))
    return out


def timeline_figure(summary: RunSummary, path: str, points: int = 2000) -> Optional[str]:
    """In-flight requests (loadgen) with the server's running/waiting queues and KV-cache use over time; loop lag."""
    sent, end = [], []
    for _, table in iter_level_tables(run_records_root(summary.run_dir, read_meta(summary.run_dir)), ["sent_ns", "end_ns"]):
        sent.append(pc.fill_null(table.column("sent_ns"), MISSING).to_numpy())
        end.append(pc.fill_null(table.column("end_ns"), MISSING).to_numpy())
    start = np.concatenate(sent) if sent else np.empty(0, np.int64)
    stop = np.concatenate(end) if end else np.empty(0, np.int64)
    keep = start != MISSING
    start, stop = start[keep], stop[keep]
    if start.size == 0:
        return None
    t0 = int(start.min())
    t1 = int(max(start.max(), stop[stop != MISSING].max() if np.any(stop != MISSING) else start.max()))
    grid = np.linspace(t0, t1, points).astype(np.int64)
    telemetry = read_telemetry(summary.run_dir)
    has_lag = telemetry is not None and telemetry.num_rows > 0 and "loop_lag_ms" in telemetry.column_names
    fig = Figure(figsize=(13, 8 if has_lag else 5.5), layout="constrained")
    axes = fig.subplots(2 if has_lag else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    secs = (grid - t0) / NS_PER_S
    for i, lv in enumerate(sorted(summary.levels, key=lambda lv: lv.window_start_ns)):
        if lv.window_end_ns <= lv.window_start_ns:
            continue
        a, b = (lv.window_start_ns - t0) / NS_PER_S, (lv.window_end_ns - t0) / NS_PER_S
        for axis in axes:
            axis.axvspan(a, b, color="#e8eef7" if i % 2 == 0 else "#f3f3f3", zorder=0)
        ax.text((a + b) / 2, 1.0, f"L{lv.level}\n{num(lv.load)} {'req/s' if lv.open_loop else 'streams'}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="#333")
    ax.plot(secs, in_flight_at(start, stop, grid), color=COLORS[0], linewidth=1.4, label="in flight (loadgen)")
    metrics = read_server_metrics(summary.run_dir)
    series = _server_series(metrics, t0) if metrics is not None and metrics.num_rows else {}
    for kind, color, label in (("running", COLORS[2], "running (server)"), ("waiting", COLORS[1], "waiting in server queue")):
        if kind in series:
            ax.step(*series[kind], where="post", color=color, linewidth=1.2, label=label)
    # The run's name in the figure title (wrapped), the axis title short: it never runs off the figure.
    fig.suptitle(_wrap(f"Requests over time — {_describe(summary)}"), fontsize=13)
    ax.set_title("loadgen's in-flight requests and the server's queues (shaded: steady window of each level)", pad=26, fontsize=10)
    ax.set_ylabel("requests")
    ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    if "kv" in series:
        kv_t, kv = series["kv"]
        twin = ax.twinx()
        scale = 100.0 if np.nanmax(kv) <= 1.0 else 1.0
        line = twin.step(kv_t, kv * scale, where="post", color=COLORS[4], linewidth=1.0, alpha=0.9, label="KV cache used (server)")
        twin.set(ylabel="KV cache used (%)", ylim=(0, 105))
        handles, labels = handles + line, labels + ["KV cache used (server)"]
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    if has_lag:
        _lag_panel(axes[1], telemetry, t0, summary)
    axes[-1].set_xlabel("time since the first request (s)")
    return _save(fig, path)


def _lag_panel(ax: Axes, telemetry: pa.Table, t0: int, summary: RunSummary) -> None:
    warn = (summary.config.get("cluster") or {}).get("loop_lag_warn_ms", ClusterConfig.loop_lag_warn_ms)
    workers = pc.unique(telemetry.column("worker_id")).drop_null().to_pylist()
    for i, w in enumerate(sorted(workers)[: len(COLORS)]):
        rows = telemetry.filter(pc.equal(telemetry.column("worker_id"), w)).sort_by("t_ns")
        t = (rows.column("t_ns").to_numpy() - t0) / NS_PER_S
        lag = pc.fill_null(rows.column("loop_lag_ms"), np.nan).to_numpy().astype(np.float64)
        ax.plot(t, lag, color=COLORS[i], linewidth=1.0, label=f"worker {w}")
    ax.axhline(warn, color="black", linestyle=(0, (6, 3)), linewidth=1.0, label=f"client-bound threshold {warn:g} ms")
    shown = "" if len(workers) <= len(COLORS) else f" (first {len(COLORS)} of {len(workers)} workers)"
    ax.set(ylabel="event-loop lag (ms)", title=f"loadgen's own event-loop lag per worker{shown}")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2)


def write_plots(summary: RunSummary, out_dir: str) -> list[str]:
    """Write saturation.png, latency_distribution.png and timeline.png (those with data); return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    if not summary.levels:
        return []
    paths = [saturation_figure([summary], os.path.join(out_dir, "saturation.png"))]
    for make, name in ((latency_distribution_figure, "latency_distribution.png"), (timeline_figure, "timeline.png")):
        path = make(summary, os.path.join(out_dir, name))
        if path:
            paths.append(path)
    return paths
