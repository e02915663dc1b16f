"""Reports: the loadgen-report CLI on hand-made run directories — files, plots, HTML, secrets, comparison."""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stdout

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from loadgen.analysis import analyze_run
from loadgen.report import render_terminal
from loadgen.report.cli import main
from loadgen.rundir import RECORD_SCHEMA, PartWriter, part_dir, records_root, telemetry_parts

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
SECRET = "sk-PLANTED0123456789abcdef"
#: level -> (offered req/s, TTFT ms in the baseline run)
LEVELS = {0: (5.0, 20.0), 1: (10.0, 40.0), 2: (20.0, 400.0)}


def make_run(run_dir: str, slowdown: float = 1.0) -> None:
    """A 3-level open-loop run: requests every 1/rate s from 2 s to 9.5 s of each level; latencies × slowdown."""
    levels_meta, telemetry, server = [], [], []
    for n, (rate, ttft) in LEVELS.items():
        base = T0 + n * 20_000 * MS
        rows = []
        spacing = 1000.0 / rate
        k = 0
        while 2000 + k * spacing < 9500:
            t = base + int((2000 + k * spacing) * MS)
            chunks = [t + int(slowdown * (ttft + 10 * i) * MS) for i in range(4)]
            rows.append({
                "run_id": "t", "level": n, "level_value": rate, "worker_id": k % 2, "request_id": f"{n}-{k}",
                "scheduled_ns": t, "sent_ns": t, "first_token_ns": chunks[0], "end_ns": chunks[-1] + int(slowdown * MS),
                "output_tokens": 4, "chunk_ns": chunks, "status": "ok", "loop_lag_ms": 0.5,
            })
            k += 1
        for w in (0, 1):
            mine = [{f: r.get(f) for f in RECORD_SCHEMA.names} for r in rows if r["worker_id"] == w]
            PartWriter(part_dir(records_root(run_dir), n, w)).write(pa.Table.from_pylist(mine, schema=RECORD_SCHEMA))
        levels_meta.append({
            "level": n, "mode": "rate", "value": rate, "offered_rps": rate,
            "start_ns": base, "steady_start_ns": base + 2000 * MS, "steady_end_ns": base + 10_000 * MS,
            "ledger": {"planned": len(rows), "sent": len(rows), "not_sent": {}, "ok": len(rows), "errors": {},
                       "cancelled": 0, "lost": 0},
            "client_bound": False, "client_bound_workers": [], "stopped_early": None,
        })
        for s in range(0, 12):
            t = base + s * 1000 * MS
            telemetry += [{"t_ns": t, "level": n, "worker_id": w, "loop_lag_ms": 1.0, "cpu_percent": 10.0,
                           "in_flight": 2, "sent": 0, "completed": 0} for w in (0, 1)]
            server += [{"t_ns": t, "level": n, "name": "running", "metric": "vllm:num_requests_running", "labels": "{}", "value": 3.0},
                       {"t_ns": t, "level": n, "name": "kv_cache_usage", "metric": "vllm:gpu_cache_usage_perc", "labels": "{}", "value": 0.4}]
    PartWriter(telemetry_parts(run_dir, 0)).write(pa.Table.from_pylist(telemetry))
    pq.write_table(pa.Table.from_pylist(server), os.path.join(run_dir, "server_metrics.parquet"))
    config = {
        # A careless writer left the key in: the report must still never show it.
        "target": {"kind": "openai", "url": "http://127.0.0.1:8000/v1", "api_key": SECRET,
                   "headers": {"Authorization": f"Bearer {SECRET}"}},
        "slo": {"ttft_ms": 100.0, "tpot_ms": 50.0, "e2e_ms": None, "attainment": 0.9, "percentile": 99.0},
        "analysis": {"saturation_tolerance": 0.9, "target_rate": 100.0, "price_per_replica_hour": 3.0},
    }
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump({"run_id": os.path.basename(run_dir), "status": "complete", "config": config,
                   "target": {"kind": "openai", "model": "m", "note": f"key {SECRET}"}, "levels": levels_meta}, f)


@pytest.fixture
def run_dir(tmp_path) -> str:
    d = str(tmp_path / "run_a")
    make_run(d)
    return d


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[str, str]:
    """One run reported once by the CLI (plots included): (run_dir, what it printed)."""
    d = str(tmp_path_factory.mktemp("reported") / "run_a")
    make_run(d)
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main([d]) == 0
    return d, buf.getvalue()


def written_text(run_dir: str) -> str:
    """Every file the report wrote (everything except the inputs), as text."""
    out = []
    for name in os.listdir(run_dir):
        if name.endswith((".json", ".html", ".parquet")) and name != "run.json":
            with open(os.path.join(run_dir, name), "rb") as f:
                out.append(f.read().decode("utf-8", "replace"))
    return "\n".join(out)


def test_cli_writes_summary_plots_and_self_contained_html(reported):
    run_dir, printed = reported
    for name in ("summary.json", "summary.parquet", "saturation.png", "latency_distribution.png", "timeline.png", "report.html"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    for png in ("saturation.png", "latency_distribution.png", "timeline.png"):
        with open(os.path.join(run_dir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(run_dir, "report.html"), encoding="utf-8") as f:
        page = f.read()
    assert page.count("data:image/png;base64,") == 3
    assert not re.search(r'(src|href)\s*=\s*"https?:', page)  # opens without a network
    assert "Verdicts" in page and "Request ledger" in page and "closes" in page
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert [lv["level"] for lv in summary["levels"]] == [0, 1, 2]
    # TTFT 400 ms at 20 req/s breaks the 100 ms SLO: saturation at 10 req/s.
    assert summary["saturation"]["level"] == 1
    rows = pq.read_table(os.path.join(run_dir, "summary.parquet")).to_pylist()
    assert [r["offered_rps"] for r in rows] == [5.0, 10.0, 20.0]
    assert rows[2]["ttft_p50_ms"] == pytest.approx(400.0)
    assert rows[2]["saturated"] and not rows[1]["saturated"]
    assert "saturated at" in printed


def test_no_planted_secret_in_any_output(reported):
    run_dir, printed = reported
    text = written_text(run_dir) + printed
    assert SECRET not in text
    assert "PLANTED0123" not in text
    assert "***" in text  # the redacted placeholder shows where the key was


def test_cli_slo_overrides(run_dir):
    assert main([run_dir, "--no-plots", "--slo.ttft_ms", "1"]) == 0
    strict = json.load(open(os.path.join(run_dir, "summary.json")))
    assert all(lv["metrics"]["goodput_rps"] == 0 for lv in strict["levels"])
    assert main([run_dir, "--no-plots", "--slo.ttft_ms", "none", "--slo.tpot_ms", "none"]) == 0
    loose = json.load(open(os.path.join(run_dir, "summary.json")))
    assert all(lv["metrics"]["attainment"] == 1.0 for lv in loose["levels"])
    assert not os.path.exists(os.path.join(run_dir, "report.html"))


def test_cli_rejects_bad_values_and_missing_dirs(run_dir, tmp_path, capsys):
    assert main([run_dir, "--slo.attainment", "2"]) == 2
    assert "slo.attainment" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "loadgen run directory" in capsys.readouterr().out
    (empty / "run.json").write_text("{truncated")
    assert main([str(empty)]) == 2
    assert "run.json cannot be read" in capsys.readouterr().out


def test_terminal_table_and_capacity_verdicts(run_dir):
    buf = io.StringIO()
    render_terminal(analyze_run(run_dir), Console(file=buf, width=250))
    text = buf.getvalue()
    assert "saturated at 10.0 req/s offered (level 1)" in text
    # Goodput capacity: 100 % within SLO at 10 req/s offered, which served 9.38 req/s of good requests;
    # 0 % at 20 req/s. The capacity is what was served within SLO (interpolating on offered load said 11).
    assert "Goodput capacity 9.38 req/s" in text
    assert "100 req/s needs 11 replicas" in text  # ceil(100 / 9.38) = 11
    assert "closes" in text


def test_comparison_of_two_runs_has_the_right_ratios(tmp_path):
    a, b, out = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "cmp")
    make_run(a)
    make_run(b, slowdown=2.0)
    assert main([a, b, "--out", out]) == 0
    for name in ("comparison.json", "comparison.parquet", "comparison.png", "comparison.html"):
        assert os.path.exists(os.path.join(out, name)), name
    cmp = json.load(open(os.path.join(out, "comparison.json")))
    assert cmp["runs"] == ["a", "b"]
    rows = {(r["load"], r["metric"]): r for r in cmp["rows"]}
    assert rows[(5.0, "TTFT p99 ms")]["ratios"] == pytest.approx([1.0, 2.0])
    assert rows[(10.0, "E2E p99 ms")]["ratios"] == pytest.approx([1.0, 2.0])
    assert rows[(10.0, "achieved req/s")]["ratios"] == pytest.approx([1.0, 1.0])
    # b's TTFT doubles to 80 ms at 10 req/s (still within 100 ms): both saturate at 10 req/s.
    assert rows[(None, "saturation load")]["values"] == [10.0, 10.0]
    with open(os.path.join(out, "comparison.html"), encoding="utf-8") as f:
        page = f.read()
    assert "2.00×" in page and SECRET not in page
