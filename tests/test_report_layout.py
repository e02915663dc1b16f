"""report.html's per-level table fits a page: two-row sticky header, short flags with a legend, failures listed below."""

from __future__ import annotations

import re

from loadgen.analysis import analyze_run
from loadgen.analysis.flags import Flag, level_flags
from loadgen.report.html import render_html
from test_report import make_run


def _levels_table(page: str) -> str:
    start = page.index('<table class="levels">')
    return page[start : page.index("</table>", start)]


def test_level_table_has_short_flags_legend_and_sticky_header(tmp_path):
    run_dir = str(tmp_path / "run")
    make_run(run_dir)
    summary = analyze_run(run_dir)
    page = render_html(summary, [])
    table = _levels_table(page)

    # The header is sticky and groups percentiles under their metric (TTFT ms: p50 p90 p99).
    assert re.search(r"thead\{[^}]*position:sticky", page)
    assert '<th class="g" colspan="3">TTFT ms</th>' in table and table.count("<tr>") >= 2

    # Level 2 (400 ms TTFT against a 100 ms SLO) is saturated: a short flag, with its reason as tooltip and below.
    flags = {lv.level: level_flags(summary, lv) for lv in summary.levels}
    assert Flag.SATURATED in flags[2] and Flag.POINT in flags[1]
    failing = next(lv for lv in summary.levels if lv.level == 2)
    reason = failing.failures[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table)
    assert all(len(re.sub(r"<[^>]+>", "", c)) <= 40 for c in cells), "a cell holds a sentence"
    assert f'title="{reason}' in table.replace("&gt;", ">")  # the tooltip
    why = page[page.index("Why levels failed") :]
    assert "level 2: " in why and reason.split(" > ")[0] in why.replace("&gt;", ">")

    # The legend explains exactly the flags used.
    legend = page[page.index('<dl class="legend">') : page.index("</dl>")]
    used = {f for fs in flags.values() for f in fs}
    assert all(f.short in table for f in used)
    assert {f.meaning for f in used} == {f.meaning for f in Flag if f.meaning in legend}


def test_plot_helpers_log_axis_capacity_band_and_client_bound(tmp_path):
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    from loadgen.report.plots import CLIENT_BOUND, _capacity_line, _client_bound, _log_load_axis

    def closed(*loads):
        return SimpleNamespace(levels=[SimpleNamespace(open_loop=False, load=x) for x in loads])

    assert _log_load_axis([closed(1, 4, 16, 64)], open_loop=False)  # a doubling sweep: log axis
    assert not _log_load_axis([closed(8, 16, 32)], open_loop=False)  # 4× span: linear is fine
    assert not _log_load_axis([closed(1, 64)], open_loop=True)  # rate sweeps stay linear

    run_dir = str(tmp_path / "run")
    make_run(run_dir)
    summary = analyze_run(run_dir)
    ax = Figure().subplots()
    _capacity_line(ax, summary, "#1f77b4", True)
    cap = summary.goodput_capacity
    assert cap.rate is not None
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("goodput capacity")]
    assert len(lines) == 1 and lines[0].get_ydata()[0] == cap.rate
    if not cap.at_least:
        assert ax.patches, "the bracket band is drawn"

    levels = [lv for lv in summary.levels]
    levels[0].client_bound = True
    axes = [Figure().subplots() for _ in range(4)]
    _client_bound(levels, axes, ("ttft", "tpot"), "client-bound level")
    rings = axes[0].collections
    assert len(rings) == 1 and rings[0].get_offsets().shape == (1, 2)
    assert tuple(rings[0].get_edgecolor()[0][:3]) == tuple(int(CLIENT_BOUND[i : i + 2], 16) / 255 for i in (1, 3, 5))
