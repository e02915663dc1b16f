"""Hard kills: a worker actor SIGKILLed mid-level, and the whole loadgen process tree SIGKILLed mid-level.

Both run the real ``loadgen`` command (simulator, local Ray, two workers) in its
own session. Every process a test started is ended by its PID only, and only
if it is still the process the test saw (same start time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from loadgen.analysis import analyze_run
from loadgen.procs import ProcessTree
from loadgen.report.terminal import render_terminal
from loadgen.rundir import Ledger, part_dir, read_records, read_telemetry, records_root

pytestmark = pytest.mark.slow

FLUSH_S = 0.5
#: Room for a loaded 2-core machine: late sends, slow flushes, request latency.
SLACK_S = 2.0


def start_loadgen(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "loadgen.cli", f"hydra.run.dir={run_dir}",
            "load=rate", "load.arrival=constant", "load.warmup_s=1", "load.drain_s=5",
            "workload.num_requests=400", "workload.output_tokens.mean=16",
            "cluster.workers=2", f"cluster.flush_interval_s={FLUSH_S}", "analysis.plots=false", "progress=false",
            *overrides,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def wait_for(proc: subprocess.Popen, what: str, check: Callable[[], Any], timeout: float = 180) -> Any:
    """Poll ``check`` until it returns something truthy; fail if loadgen exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"loadgen exited before {what}:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def parts(directory: Path) -> list[Path]:
    return sorted(directory.rglob("part-*.parquet")) if directory.exists() else []


def test_a_killed_worker_is_counted_and_the_run_finishes_on_the_others(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_loadgen(run_dir, "load.levels=[10,10]", "load.duration_s=8")
    tree = ProcessTree(proc.pid)
    try:
        workers = wait_for(proc, "run.json lists the workers", lambda: (read_json(run_dir / "run.json") or {}).get("workers"))
        victim = workers[1]["pid"]
        # Worker 1 has flushed part of level 0 (and is still sending) when it dies.
        wait_for(proc, "worker 1 flushes records", lambda: len(part_dir(records_root(str(run_dir)), 0, 1).files()) >= 3)
        tree.sample()
        assert victim in tree.seen, "the pid in run.json is not one of this run's processes"
        kill_ns = time.time_ns()
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        tree.end()
    assert proc.returncode == 0, out

    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete" and len(meta["levels"]) == 2
    lost_worker, survivor = meta["workers"][1], meta["workers"][0]
    assert lost_worker["alive"] is False and "ActorDied" in lost_worker["lost_reason"]
    assert survivor.get("alive", True) is True

    recs = read_records(str(run_dir))
    by_level = {lv: recs.filter(pc.equal(recs.column("level"), lv)) for lv in (0, 1)}
    first, second = (lv["ledger"] for lv in meta["levels"])

    # Level 0: what worker 1 flushed is in the dataset; its unsent rows and unrecorded sends are counted.
    flushed = by_level[0].filter(pc.equal(by_level[0].column("worker_id"), 1))
    assert flushed.num_rows > 0
    assert max(flushed.column("end_ns").to_pylist()) < kill_ns + 100_000_000  # (clock sync is within a ms here)
    assert first["lost_workers"] == [1]
    assert first["planned"] == 80 and first["not_sent"].get("worker lost", 0) > 0
    assert first["planned"] == first["sent"] + sum(first["not_sent"].values())
    assert first["sent"] == first["ok"] + sum(first["errors"].values()) + first["cancelled"] + first["lost"]
    assert by_level[0].num_rows == first["sent"] - first["lost"]
    assert Ledger.from_dict(first, records=by_level[0].num_rows).closes

    # Level 1 runs its full load on the survivor alone.
    assert second["lost_workers"] == [] and second["lost"] == 0
    assert second["planned"] == second["sent"] == 80 == by_level[1].num_rows
    assert set(by_level[1].column("worker_id").to_pylist()) == {0}

    # The report names the lost worker and its ledger closes.
    summary = analyze_run(str(run_dir))
    assert summary.ledger.closes and all(lv.ledger.closes for lv in summary.levels)
    console = Console(record=True, width=250, color_system=None)
    render_terminal(summary, console)
    text = console.export_text()
    assert "worker 1 was lost during the run" in text
    assert f"+ {first['lost']} lost — closes." in text


def test_a_killed_run_leaves_only_readable_files_and_at_most_a_flush_interval_unwritten(tmp_path):
    run_dir = tmp_path / "run"
    rate = 20
    proc = start_loadgen(run_dir, f"load.levels=[{rate}]", "load.duration_s=120")
    tree = ProcessTree(proc.pid)
    try:
        wait_for(proc, "the level starts", lambda: parts(run_dir / "telemetry"))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # processes come and go while Ray warms up: keep every one
            tree.sample()
            time.sleep(0.5)
        tree.sample()
        kill_ns = time.time_ns()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        orphans = tree.end()
    assert len(tree.seen) > 5  # the driver, the simulator, Ray's processes and the workers were all tracked
    assert not orphans, f"processes outlived the killed run by 15 s (now killed): {orphans}"

    # Every Parquet file left behind is complete.
    files = parts(run_dir / "records") + parts(run_dir / "telemetry")
    assert files
    rows = {f: pq.read_table(f).num_rows for f in files}
    record_rows = sum(n for f, n in rows.items() if "records" in f.parts)

    # A part cut off mid-write (as a kill during a flush leaves it) is never read as data.
    part = parts(run_dir / "records")[0]
    cut = part.parent / ".part-99999-killed.parquet.tmp"
    cut.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    recs = read_records(str(run_dir))
    assert recs.num_rows == record_rows

    # At most about one flush interval of finished requests is missing.
    t0 = min(recs.column("scheduled_ns").to_pylist())
    due = (kill_ns - t0) / 1e9 - FLUSH_S - SLACK_S  # requests scheduled this early had finished and been flushed
    assert due > 1.0, "the kill came too early to measure anything"
    assert recs.num_rows >= int(due * rate)
    # Orphaned workers stop sending at once instead of loading the server until Ray notices.
    assert max(recs.column("sent_ns").to_pylist()) <= kill_ns + 1e9
    for w in (0, 1):
        mine = recs.filter(pc.equal(recs.column("worker_id"), w))
        assert max(mine.column("end_ns").to_pylist()) >= kill_ns - (FLUSH_S + SLACK_S) * 1e9
    # Telemetry never acknowledges a finished request whose record is not on disk (records flush first).
    tel = read_telemetry(str(run_dir))
    for w in (0, 1):
        acked = max(tel.filter(pc.equal(tel.column("worker_id"), w)).column("completed").to_pylist())
        assert recs.filter(pc.equal(recs.column("worker_id"), w)).num_rows >= acked

    # run.json still says "running"; the report works on the partial run and says it did not finish.
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    res = subprocess.run(
        [sys.executable, "-m", "loadgen.report.cli", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "did not finish (status 'running'" in res.stdout + res.stderr
