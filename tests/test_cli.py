"""The ``loadgen`` command as a user runs it: config errors, a tiny sweep end to end, secrets, sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

SECRET = "sk-planted-3f9a1c-never-written"


def loadgen(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadgen.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        ("target.urll=http://x", "urll"),
        ("load.duration_s=abc", "load.duration_s"),
        ("load.levels=[]", "load.levels"),
        ("load.levels=[4,-1]", "load.levels[1]"),
        ("target=openai", "target.url"),
        ("load.arrival=uniform", "load.arrival"),
    ],
)
def test_bad_config_is_a_clear_error_naming_the_key(tmp_path, override, expected):
    res = loadgen(override, f"hydra.run.dir={tmp_path}", timeout=60)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert expected in out
    assert "Traceback" not in out  # a message, not a stack trace
    assert not (tmp_path / "records").exists()  # nothing was sent


def test_unreachable_target_fails_fast_with_the_url(tmp_path):
    t0 = time.monotonic()
    res = loadgen("target=openai", "target.url=http://127.0.0.1:9/v1", f"hydra.run.dir={tmp_path}", timeout=120)
    assert res.returncode == 2
    assert "http://127.0.0.1:9/v1/models" in res.stdout + res.stderr
    assert time.monotonic() - t0 < 60
    # The run had started (run.json written): it says it failed, and why.
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["status"] == "failed"
    assert "http://127.0.0.1:9/v1/models" in meta["reason"]


def _in(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``loadgen ARGS`` run in ``cwd`` with Hydra's default run directory (runs/<date>_<time> there)."""
    return subprocess.run(
        [sys.executable, "-m", "loadgen.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, key",
    [
        (["+load.foo=1"], "'load.foo' is not an option"),
        (["load.foo=1"], "'load.foo' is not an option"),
        (["load.duration_s=abc"], "'load.duration_s' is 'abc'; expected a number"),
        (["load=foo"], "config group 'load' has no option 'foo'"),
        (["load.duration_s=-1"], "'load.duration_s' is -1.0; expected a positive"),
        (["workload.input_tokens=-3"], "'workload.input_tokens' is -3; expected"),
        (["-m", "load.duration_s=-1,1"], "'load.duration_s' is -1.0; expected a positive"),
    ],
)
def test_a_user_error_is_one_line_and_creates_nothing(tmp_path, args, key):
    res = _in(tmp_path, *args)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip() and "[HYDRA]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # no runs/<ts>/ left behind


def test_hydra_full_error_keeps_the_traceback(tmp_path):
    res = _in(tmp_path, "load.foo=1", env={"HYDRA_FULL_ERROR": "1"})
    assert res.returncode != 0
    assert "Traceback" in res.stderr and "load.foo" in res.stderr


def test_help_lists_every_key_with_its_description(tmp_path):
    res = _in(tmp_path, "--help")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "== Configuration groups" in out and "== load: How hard to push" in out
    assert re.search(r"^  load\.duration_s=\S+ +length of each level's sending phase$", out, re.M)
    assert re.search(r"^  target\.headers=\{\} +extra HTTP headers", out, re.M)
    assert "e.g. loadgen target=vllm" in out and "$$" not in out
    assert list(tmp_path.iterdir()) == []


def _listening_ports(pids: set[int]) -> list[str]:
    """Local addresses that processes in ``pids`` listen on (TCP, via ss)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={p}," in line for p in pids):
            found.append(line.split()[3])
    return found


def _descendants(root: int) -> set[int]:
    pids = {root}
    for _ in range(4):
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid in pids:
                    pids.add(int(proc.name))
    return pids


@pytest.mark.slow
def test_tiny_sweep_end_to_end_writes_everything_and_leaks_no_secret(tmp_path):
    """One real run: sim + local Ray + 2 levels; run dir complete, key nowhere, sockets on loopback."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "loadgen.cli",
            f"hydra.run.dir={run_dir}",
            "load.levels=[4,12]", "load.duration_s=4", "load.warmup_s=1", "load.drain_s=10",
            f"target.api_key={SECRET}",
            "workload.num_requests=200",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},
    )
    seen: list[str] = []

    def watch() -> None:
        while proc.poll() is None:
            seen.extend(_listening_ports(_descendants(proc.pid)))
            time.sleep(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = proc.communicate(timeout=400)
    watcher.join(5)
    assert proc.returncode == 0, out

    # Whatever loadgen and its Ray listened on, it was loopback only.
    assert seen, "the run listened on nothing we could see"
    exposed = [a for a in seen if not a.startswith(("127.", "[::1]", "[::ffff:127.", "localhost"))]
    assert not exposed, exposed

    meta = json.loads((run_dir / "run.json").read_text())
    # Both levels ran; a level too short to judge is run once more, longer, under the same value.
    assert meta["status"] == "complete" and sorted({lv["value"] for lv in meta["levels"]}) == [4.0, 12.0]
    assert len(meta["levels"]) <= 4
    recs = ds.dataset(run_dir / "records", format="parquet", partitioning="hive").to_table()
    for lv in meta["levels"]:
        led = lv["ledger"]
        n = sum(1 for v in recs.column("level").to_pylist() if v == lv["level"])
        assert n == led["sent"] == led["planned"] == led["ok"]
    for name in ("summary.json", "summary.parquet", "saturation.png", "report.html", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name
    assert "saturat" in out.lower()

    # The planted key is nowhere in the run directory, nor in what was printed.
    assert SECRET not in out
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"API key leaked into {path}"


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_leaves_a_readable_partial_run(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "loadgen.cli", f"hydra.run.dir={run_dir}",
            "load=concurrency", "load.levels=[8]", "load.duration_s=60", "load.warmup_s=1",
            "workload.output_tokens.mean=3000",  # ~20 s streams: still in flight when the signal comes
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        parts = list((run_dir / "telemetry").rglob("part-*.parquet")) if (run_dir / "telemetry").exists() else []
        if parts:
            break
        time.sleep(0.5)
    assert parts, "the level never started"
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted"
    led = meta["levels"][0]["ledger"]
    assert led["cancelled"] > 0  # the long streams in flight were cut, and recorded
    recs = ds.dataset(run_dir / "records", format="parquet", partitioning="hive").to_table()
    assert recs.num_rows == led["sent"]
    assert not list(run_dir.rglob("*.tmp"))
    res = subprocess.run([sys.executable, "-m", "loadgen.report.cli", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
