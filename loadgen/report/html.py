"""One self-contained ``report.html`` (inline CSS, PNGs as base64 data URIs, no network) per run or comparison.

Input: a ``RunSummary`` (or a ``Comparison`` with its summaries) and the PNG
paths to embed. Output: the HTML file. Every value is escaped; the config
shown is scrubbed of anything that looks like a secret.
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Iterable, Optional, Sequence

from loadgen.analysis import Comparison, LevelSummary, RunSummary
from loadgen.analysis.confidence import DIFFERENT, min_samples_for_upper
from loadgen.analysis.flags import Flag, level_flags
from loadgen.analysis.labels import run_label
from loadgen.report.noise import interval_text, value_text, verdict_text
from loadgen.report.verdicts import load_words, num, pct, slo_words, verdicts
from loadgen.rundir import ERROR_STATUSES, scrub
from loadgen.rundir.layout import REPORT_HTML, run_file

CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:2px;overflow-wrap:anywhere} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;font-size:12.5px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap} th{background:#f4f6f8;font-weight:600}
td.l,th.l{text-align:left} td.w{white-space:normal;min-width:16em}
thead{position:sticky;top:0;z-index:1} thead th{box-shadow:inset 0 -1px 0 #ccc}
th.g{text-align:center;border-bottom:none} th.u{font-weight:400;color:#555}
.scroll{overflow-x:auto;max-width:100%}
tr.sat td{background:#fdecea} tr.cb td{background:#fff8e1}
tr.diff td{font-weight:600}
.flag{display:inline-block;padding:0 4px;margin-right:3px;border-radius:3px;font-size:11px;font-weight:600;background:#eceff1;color:#333}
.flag.sat,.flag.slo{background:#f8d7da;color:#8a1020} .flag.point{background:#ffe08a;color:#5c4300}
.flag.cb{background:#ffecb3;color:#6d4c00} .flag.ok{background:#e3f2e6;color:#1b5e20}
dl.legend{font-size:12px;color:#555;display:flex;flex-wrap:wrap;gap:2px 14px;margin:4px 0}
dl.legend dt{margin:0} dl.legend dd{margin:0 0 0 4px}
ul.why{font-size:12.5px;margin:4px 0}
ul.verdicts li{margin:5px 0} .warn{color:#a15c00} .bad{color:#b00020;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:6px 0} pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
details{margin:8px 0} .muted{color:#777}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Optional[Sequence[str]] = None,
           left: Optional[Sequence[int]] = None) -> str:
    # Columns of words (``left``; default the first and last: level names, verdicts) left-aligned; numbers right.
    words = (0, len(header) - 1) if left is None else left

    def align(j: int) -> str:
        return ' class="l"' if j in words else ""

    head = "".join(f"<th{align(j)}>{_e(h)}</th>" for j, h in enumerate(header))
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f"<td{align(j)}>{_cell(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    # Secondary tables may be wider than the page (intervals, many runs): they scroll sideways on their own.
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _cell(text: str) -> str:
    """A cell's text, escaped; a second line (after a newline) shown small and grey under the first."""
    first, sep, second = str(text).partition("\n")
    return _e(first) + (f'<br><span class="muted" style="font-size:11px">{_e(second)}</span>' if sep else "")


def _img(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{_e(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def _levels(summary: RunSummary) -> list[LevelSummary]:
    return sorted(summary.levels, key=lambda lv: (not lv.open_loop, lv.value, lv.level))


#: The CSS class of each flag's badge (see ``analysis.flags``); "ok" is the badge of a level with no flag.
_FLAG_CLASS = {
    Flag.POINT.short: "point",
    Flag.SATURATED.short: "sat",
    Flag.SLO.short: "slo",
    Flag.CLIENT_BOUND.short: "cb",
    Flag.LEDGER.short: "sat",
    "ok": "ok",
}
_MEANING = {flag.short: flag.meaning for flag in Flag} | {"ok": "passed every rule"}


#: Columns of the per-level table: (group, sub-header); a group spans its run of columns, None stands alone.
LEVEL_COLUMNS = (
    (None, "level"), (None, "load"), (None, "achieved req/s"), (None, "output tok/s"),
    ("TTFT ms", "p50"), ("TTFT ms", "p90"), ("TTFT ms", "p99"), ("TPOT ms", "p50"), ("TPOT ms", "p99"),
    ("ITL ms", "p50"), ("ITL ms", "p99"), ("E2E ms", "p50"), ("E2E ms", "p99"), (None, "E2E/token p50 ms"),
    (None, "errors"), (None, "peak in flight"), (None, "goodput req/s"), (None, "SLO attain."), (None, "flags"),
)


def level_rows(summary: RunSummary) -> tuple[list[str], list[list[str]], list[str]]:
    """Header (one name per column), rows (text cells; the last holds the flags, comma-separated) and row classes."""
    header = [sub if group is None else f"{group.split()[0]} {sub} {group.split()[1]}" for group, sub in LEVEL_COLUMNS]
    rows, classes = [], []
    for lv in _levels(summary):
        m = lv.metrics
        rows.append([str(lv.level), load_words(lv), num(m.achieved_rps), num(m.output_tok_s), num(m.ttft.p50),
                     num(m.ttft.p90), num(m.ttft.p99), num(m.tpot.p50), num(m.tpot.p99), num(m.itl.p50),
                     num(m.itl.p99), num(m.e2e.p50), num(m.e2e.p99), num(m.normalized.p50), pct(m.error_rate),
                     str(m.peak_in_flight), num(m.goodput_rps), pct(m.attainment), ", ".join(f.short for f in level_flags(summary, lv)) or "ok"])
        classes.append("sat" if summary.saturated(lv) else "cb" if lv.client_bound else "")
    return header, rows, classes


def _grouped_head(columns: Sequence[tuple[Optional[str], str]]) -> str:
    """A two-row <thead>: groups span their sub-columns (p50, p99 under 'TTFT ms'); lone columns span both rows."""
    top, bottom = [], []
    j = 0
    while j < len(columns):
        group, sub = columns[j]
        cls = ' class="l"' if j in (0, len(columns) - 1) else ""
        if group is None:
            top.append(f'<th rowspan="2"{cls}>{_e(sub)}</th>')
            j += 1
            continue
        span = 1
        while j + span < len(columns) and columns[j + span][0] == group:
            span += 1
        top.append(f'<th class="g" colspan="{span}">{_e(group)}</th>')
        bottom += [f'<th class="u">{_e(columns[k][1])}</th>' for k in range(j, j + span)]
        j += span
    return f"<thead><tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr></thead>"


def _flag_html(flags: str, why: str) -> str:
    """The flags as small badges; the level's failures in words as their tooltip."""
    title = f' title="{_e(why)}"' if why else ""
    return "".join(f'<span class="flag {_FLAG_CLASS.get(f, "")}"{title}>{_e(f)}</span>' for f in flags.split(", "))


LEFT = ' class="l"'


def _level_table(summary: RunSummary) -> str:
    """The per-level table (sticky two-row header, short flags), its legend and why each failing level failed."""
    _, rows, classes = level_rows(summary)
    levels = _levels(summary)
    body = []
    for row, cls, lv in zip(rows, classes, levels):
        cells = "".join(f"<td{LEFT if j == 0 else ''}>{_e(c)}</td>" for j, c in enumerate(row[:-1]))
        flags = _flag_html(row[-1], "; ".join(lv.failures))
        tr = f'<tr class="{cls}">' if cls else "<tr>"
        body.append(f'{tr}{cells}<td class="l">{flags}</td></tr>')
    used = {f for row in rows for f in row[-1].split(", ")}
    legend = "".join(f'<dt><span class="flag {_FLAG_CLASS.get(flag, "")}">{_e(flag)}</span></dt><dd>{_e(meaning)}</dd>'
                     for flag, meaning in _MEANING.items() if flag in used)
    why = [f"<li>level {lv.level}: {_e('; '.join(lv.failures))}</li>" for lv in levels if lv.failures]
    return (
        f'<table class="levels">{_grouped_head(LEVEL_COLUMNS)}<tbody>{"".join(body)}</tbody></table>'
        f'<dl class="legend">{legend}</dl>'
        + (f'<p class="muted">Why levels failed:</p><ul class="why">{"".join(why)}</ul>' if why else "")
    )


def _omission_table(summary: RunSummary) -> str:
    levels = [lv for lv in _levels(summary) if lv.open_loop]
    if not levels:
        return ""
    header = ["level", "load", "TTFT p50 ms (from send)", "TTFT p50 ms (from schedule)", "TTFT p99 ms (from send)",
              "TTFT p99 ms (from schedule)", "E2E p99 ms (from send)", "E2E p99 ms (from schedule)",
              "schedule lag p50 ms", "schedule lag p99 ms", "schedule lag max ms"]
    rows = [[str(lv.level), load_words(lv), num(lv.metrics.ttft.p50), num(lv.metrics.queued_ttft.p50),
             num(lv.metrics.ttft.p99), num(lv.metrics.queued_ttft.p99), num(lv.metrics.e2e.p99),
             num(lv.metrics.queued_e2e.p99), num(lv.metrics.schedule_lag.p50), num(lv.metrics.schedule_lag.p99),
             num(lv.metrics.schedule_lag.max)] for lv in levels]
    return (
        "<h2>Coordinated omission: service time vs. time from the scheduled send</h2>"
        "<p>“From send” is what the server did; “from schedule” is what a user who arrived at the planned time saw, "
        "including any delay in loadgen (schedule lag) or its concurrency ceiling. They differ when loadgen fell "
        "behind its schedule.</p>" + _table(header, rows)
    )


#: (column, distribution, percentile) of the run report's interval table.
INTERVAL_COLUMNS = (("TTFT p50", "ttft", "p50"), ("TTFT p99", "ttft", "p99"), ("TPOT p50", "tpot", "p50"),
                    ("TPOT p99", "tpot", "p99"), ("ITL p50", "itl", "p50"), ("ITL p99", "itl", "p99"),
                    ("E2E p50", "e2e", "p50"), ("E2E p99", "e2e", "p99"))


def _interval_table(summary: RunSummary) -> str:
    """Each level's headline percentiles with their 95 % order-statistic intervals and sample counts."""
    header = ["level", "load", "samples (TTFT / E2E)", *(f"{name} ms [95 % interval]" for name, _, _ in INTERVAL_COLUMNS)]
    rows = []
    for lv in _levels(summary):
        m = lv.metrics
        cells = [f"{num(getattr(getattr(m, d), stat))} {interval_text(getattr(m, d).ci.get(stat))}".strip()
                 for _, d, stat in INTERVAL_COLUMNS]
        rows.append([str(lv.level), load_words(lv), f"{m.ttft.count:,} / {m.e2e.count:,}", *cells])
    return (
        "<h2>Confidence intervals</h2><p>95 % distribution-free intervals from order statistics (the binomial "
        f"method of MLPerf LoadGen's early stopping); — : too few samples to bound that side (p99 needs ≥ "
        f"{min_samples_for_upper(99.0)}). See docs/metrics.md, “Confidence intervals”.</p>" + _table(header, rows)
    )


def _ledger_table(summary: RunSummary) -> str:
    classes = list(ERROR_STATUSES)
    header = ["level", "planned", "sent", "not sent", "ok", *classes, "cancelled", "lost", "records", "source", "closes"]
    rows = []
    for lv in _levels(summary) + [None]:
        ld = summary.ledger if lv is None else lv.ledger
        not_sent = ", ".join(f"{k}: {v}" for k, v in ld.not_sent.items() if v) or "0"
        rows.append([
            "run" if lv is None else str(lv.level), f"{ld.planned:,}", f"{ld.sent:,}", not_sent, f"{ld.ok:,}",
            *(f"{ld.errors.get(c, 0):,}" for c in classes), f"{ld.cancelled:,}", f"{ld.lost:,}",
            "—" if ld.records is None else f"{ld.records:,}", ld.source,
            "yes" if ld.closes else "NO: " + "; ".join(ld.problems()),
        ])
    return "<h2>Request ledger</h2><p>planned = sent + not sent; sent = ok + errors + cancelled + lost.</p>" + _table(header, rows)


def _info(summary: RunSummary) -> str:
    target, workload = summary.info.get("target") or {}, summary.info.get("workload") or {}
    parts = [f"status {summary.status}"]
    parts += [f"target {k}={v}" for k, v in target.items() if v not in (None, "")]
    parts += [f"workload {k}={v}" for k, v in workload.items() if k in ("kind", "source", "requests") and v is not None]
    for key in ("started_at", "finished_at"):
        if summary.info.get(key):
            parts.append(f"{key.replace('_', ' ')} {summary.info[key]}")
    return " · ".join(parts)


def render_html(summary: RunSummary, plots: Sequence[str]) -> str:
    """The run's report page as a string."""
    bound = [f"<li>level {lv.level}: {_e(', '.join(lv.client_bound_reasons))}</li>" for lv in summary.levels if lv.client_bound]
    body = [
        f"<h1>loadgen report — {_e(run_label(summary))}</h1>",
        f'<p class="sub">run {_e(summary.run_id)} · {_e(_info(summary))}</p>',
        f"<p>SLOs: {_e(slo_words(summary.slo))}; saturation judged on p{summary.slo.percentile:g}; "
        f"goodput capacity at ≥ {summary.slo.attainment:.0%} attainment. Metrics are computed over each level's "
        "steady-state window (warm-up and drain excluded); see docs/metrics.md for every formula.</p>",
        "<h2>Verdicts</h2><ul class=\"verdicts\">" + "".join(f"<li>{_e(v)}</li>" for v in verdicts(summary)) + "</ul>",
    ]
    notes = summary.shown_notes()
    if notes:
        body.append("<ul>" + "".join(f'<li class="warn">{_e(n)}</li>' for n in notes) + "</ul>")
    body.append('<h2 id="levels">Per level</h2>' + _level_table(summary))
    body.append('<p class="muted">Red rows: at or past the first level that failed the saturation rule. '
                "Yellow rows: client-bound (loadgen itself may have limited the level). Hover a flag for the "
                "level's failures in words.</p>")
    body += [_img(p) for p in plots]
    body.append(_omission_table(summary))
    body.append(_interval_table(summary))
    body.append(_ledger_table(summary))
    if bound:
        body.append("<h2 class=\"warn\">Client-bound levels</h2><ul>" + "".join(bound) + "</ul>")
    errors = [(lv.level, k, v) for lv in _levels(summary) for k, v in lv.metrics.errors.items()]
    if errors:
        body.append("<h2>Errors in the steady windows</h2>" + _table(["level", "class", "requests"], [[str(a), b, str(c)] for a, b, c in errors]))
    body.append("<h2>Configuration</h2><details><summary>run configuration (secrets redacted)</summary><pre>"
                + _e(json.dumps(scrub(summary.config), indent=2, sort_keys=True)) + "</pre></details>")
    versions = summary.info.get("versions") or {}
    if versions:
        body.append(f'<p class="muted">{_e(" · ".join(f"{k} {v}" for k, v in versions.items()))}</p>')
    return _page(f"loadgen — {summary.run_id}", "\n".join(body))


def render_comparison_html(comparison: Comparison, summaries: Sequence[RunSummary], plots: Sequence[str]) -> str:
    """The comparison page as a string: runs, verdicts per run, the noise summary, the side-by-side table, the plots."""
    base = comparison.runs[0]
    # One column per run, the verdict vs the base under each later run's value: 2–6 runs fit the page.
    header = [f"load ({comparison.load_axis})", "metric", f"{base} (base)", *comparison.runs[1:]]
    rows, classes = [], []
    runs = range(len(comparison.runs))
    for row in comparison.rows:
        load = "verdicts" if row.group == "verdict" else num(row.load)
        rows.append([load, row.metric, value_text(row, 0), *(f"{value_text(row, i)}\n{verdict_text(row, i)}" for i in runs[1:])])
        classes.append("diff" if DIFFERENT in row.verdicts else "")
    body = [f"<h1>loadgen comparison — {_e(' vs '.join(comparison.runs))}</h1>",
            f'<p class="sub">Values with their 95 % intervals [low, high] (— : too few samples to bound that side). '
            f"Each run vs {_e(base)}: “different” when the intervals do not overlap, else “within noise”; the ratio "
            f"run / {_e(base)} beside it (see docs/metrics.md, “Comparison”). Levels are matched by mode and "
            "configured value.</p>"]
    # Labels are short (label=, or the overrides that differ): say which directory each stands for.
    body.append("<ul>" + "".join(f"<li><b>{_e(label)}</b>{' (base)' if i == 0 else ''}: {_e(s.run_dir)}</li>"
                                 for i, (label, s) in enumerate(zip(comparison.runs, summaries))) + "</ul>")
    if comparison.summary:
        body.append("<ul class=\"verdicts\">" + "".join(f"<li>{_e(line)}</li>" for line in comparison.summary) + "</ul>")
    for label, s in zip(comparison.runs, summaries):
        body.append(f"<h2>{_e(label)}</h2><p class=\"sub\">{_e(_info(s))}</p><ul class=\"verdicts\">"
                    + "".join(f"<li>{_e(v)}</li>" for v in verdicts(s)) + "</ul>")
    body.append('<h2 id="side-by-side">Side by side</h2>' + _table(header, rows, classes, left=(1,)))
    if comparison.notes:
        body.append("<ul>" + "".join(f'<li class="warn">{_e(n)}</li>' for n in comparison.notes) + "</ul>")
    body += [_img(p) for p in plots]
    return _page("loadgen comparison", "\n".join(body))


#: The PNGs ``write_plots`` makes, embedded in this order when no list is given.
RUN_PLOTS = ("saturation.png", "latency_distribution.png", "timeline.png")


def write_html(summary: RunSummary, out_dir: str, plots: Optional[Sequence[str]] = None) -> str:
    """Write ``report.html`` for one run into ``out_dir``; return its path.

    ``plots`` defaults to the standard PNGs already present in ``out_dir``.
    """
    if plots is None:
        plots = [p for p in (os.path.join(out_dir, n) for n in RUN_PLOTS) if os.path.exists(p)]
    return _write(run_file(out_dir, REPORT_HTML), render_html(summary, plots))


def write_comparison_html(comparison: Comparison, summaries: Sequence[RunSummary], out_dir: str, plots: Sequence[str] = ()) -> str:
    """Write ``comparison.html`` into ``out_dir``; return its path."""
    return _write(os.path.join(out_dir, "comparison.html"), render_comparison_html(comparison, summaries, plots))


def _write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path
