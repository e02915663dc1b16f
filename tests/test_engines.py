"""loadgen against real, unmodified inference engines: vLLM's CPU build and llama.cpp's llama-server.

The engines, a random-weight 42M-parameter Llama and the start/set-up scripts live
in ``../shared/real_engine`` beside the repository (or ``$LOADGEN_REAL_ENGINE_DIR``);
installs are cached in ``~/.cache/loadgen-engines``. Each test sets its engine up
(idempotent), starts it on a free port, runs a closed-loop sweep through the real
driver, and always stops the server. Both engines run at most 8 sequences at once
(8 slots / --max-num-seqs 8), so past 8 streams requests queue in the server.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from loadgen.config import ClusterConfig, LengthDist, LoadConfig, LoadgenConfig, TargetConfig, WorkloadConfig, validate
from loadgen.rundir import read_records
from loadgen.runner import run

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SLOTS = 8
OUTPUT_TOKENS = 32
LEVELS = [1, 4, 8, 16]
ENGINES_HOME = Path(os.environ.get("LOADGEN_ENGINES", Path.home() / ".cache" / "loadgen-engines"))
LLAMA_SERVER = ENGINES_HOME / "venvs/src/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server"


def real_engine_dir() -> Path | None:
    """``shared/real_engine`` beside the repository, else ``$LOADGEN_REAL_ENGINE_DIR``."""
    beside = Path(__file__).resolve().parents[2] / "shared" / "real_engine"
    if (beside / "start.sh").exists():
        return beside
    env = os.environ.get("LOADGEN_REAL_ENGINE_DIR")
    return Path(env) if env and (Path(env) / "start.sh").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(pid: int) -> None:
    """SIGTERM the server's process group (start.sh runs it under setsid), SIGKILL after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _alive(pid):
            return


@pytest.fixture
def engine_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Set up (cached) and start ``request.param`` (vllm | llama); yield its /v1 URL; always stop it."""
    engine = request.param
    here = real_engine_dir()
    if here is None:
        pytest.skip("../shared/real_engine (or $LOADGEN_REAL_ENGINE_DIR) with setup.sh/start.sh is not present")
    if engine == "llama" and not LLAMA_SERVER.exists() and not os.environ.get("LOADGEN_BUILD_LLAMA"):
        pytest.skip(f"llama-server is not built ({LLAMA_SERVER}); set LOADGEN_BUILD_LLAMA=1 to build it (~11 min)")
    setup = subprocess.run(
        [str(here / "setup.sh"), "vllm" if engine == "vllm" else "llama"],
        capture_output=True, text=True, timeout=3600,
    )
    assert setup.returncode == 0, f"setup.sh {engine} failed:\n{setup.stderr[-3000:]}"

    port = free_port()
    log = Path(tempfile.gettempdir()) / f"loadgen-test-{engine}-{port}.log"
    proc = subprocess.Popen(
        [str(here / "start.sh"), str(port), engine],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LOG": str(log)},
    )
    pid = None
    try:
        first = proc.stdout.readline().strip()  # start.sh prints the server's PID before waiting
        pid = int(first) if first.isdigit() else None
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and pid, f"start.sh {port} {engine} failed: {err[-2000:]}\n{_tail(log)}"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid:
            _stop_group(pid)


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def sweep(url: str, engine: str) -> LoadgenConfig:
    return validate(
        LoadgenConfig(
            target=TargetConfig(
                kind="openai", url=url, engine=engine, new_connection_per_request=engine == "llamacpp", scrape_interval_s=0.5
            ),
            workload=WorkloadConfig(
                kind="synthetic", num_requests=1000, input_tokens=LengthDist(mean=64), output_tokens=LengthDist(mean=OUTPUT_TOKENS)
            ),
            load=LoadConfig(kind="concurrency", levels=[float(c) for c in LEVELS], duration_s=8, warmup_s=2, drain_s=120),
            # one worker: the CPU engine already keeps both cores busy, and 16 streams are light work
            cluster=ClusterConfig(kind="local", num_cpus=2, workers=1),
            progress=False,
        )
    )


def check_sweep(run_dir: Path, meta: dict) -> None:
    """Every request accounted for, exact lengths, TTFT grows and throughput flattens past 8, server queues seen."""
    assert meta["status"] == "complete"
    levels = {int(lv["value"]): lv for lv in meta["levels"]}
    assert sorted(levels) == LEVELS
    records = read_records(str(run_dir))
    by_level = defaultdict(list)
    for rec in records.to_pylist():
        by_level[rec["level"]].append(rec)

    queueing: dict[int, float] = {}
    gain: dict[int, float] = {}
    for c, lv in levels.items():
        led = lv["ledger"]
        recs = by_level[lv["level"]]
        assert len(recs) == led["sent"] > 0
        assert led["sent"] == led["ok"] + sum(led["errors"].values()) + led["cancelled"]
        assert led["planned"] == led["sent"] + sum(led["not_sent"].values()) + led["lost"]
        assert led["ok"] == led["sent"], f"level {c}: {[r['error'] for r in recs if r['status'] != 'ok'][:3]}"
        for r in recs:
            assert r["output_tokens_expected"] == r["output_tokens"] == OUTPUT_TOKENS, r["request_id"]
            # One token per event, except that a token ending mid-character (the random model emits
            # byte-fallback tokens) carries no text until the next one completes it.
            assert OUTPUT_TOKENS - 4 <= len(r["chunk_ns"]) <= OUTPUT_TOKENS, r["request_id"]
            assert r["prompt_tokens"] and r["response_id"]
        queueing[c], gain[c] = _queueing_and_batching(recs, lv["steady_start_ns"], lv["steady_end_ns"])

    # Other jobs on a shared 2-core machine can make one level several times slower than the
    # next, so raw latencies and tokens/s are not compared across levels. Two speed-free views:
    # TTFT in units of the same level's decode time, and the batching gain (tokens/s in the steady
    # window over one stream's decode rate: about how many streams decode at once).
    report = f"TTFT / decode time {_fmt(queueing)}; batching gain {_fmt(gain)}"
    # Past 8 streams a request waits for a whole request ahead of it to finish first, so its
    # TTFT gains at least one prefill plus one decode time (about 2x + 1 of the 8-stream ratio).
    assert queueing[16] > 1.5 * max(queueing[4], queueing[8]), report
    # batching pays below the slot count, and stops paying past it
    assert gain[8] > 3 * gain[1], report
    assert gain[16] <= 1.3 * gain[8], report

    path = run_dir / "server_metrics.parquet"
    assert path.exists(), "server_metrics.parquet missing: is loadgen.scrape wired into the runner?"
    metrics = pq.read_table(path)
    top = levels[16]["level"]
    at_top = metrics.filter(pc.equal(metrics.column("level"), top))
    running = at_top.filter(pc.equal(at_top.column("name"), "running")).column("value").to_pylist()
    waiting = at_top.filter(pc.equal(at_top.column("name"), "waiting")).column("value").to_pylist()
    assert running and waiting
    assert max(running) == SLOTS and max(waiting) >= 1, (running, waiting)
    first = metrics.filter(pc.equal(metrics.column("level"), levels[1]["level"]))
    assert max(first.filter(pc.equal(first.column("name"), "running")).column("value").to_pylist()) <= 1


def _queueing_and_batching(recs: list[dict], start_ns: int, end_ns: int) -> tuple[float, float]:
    """A level's mean TTFT over its mean decode time, and its tokens/s in the window over the median stream's decode rate."""
    ttft = statistics.mean(r["first_token_ns"] - r["sent_ns"] for r in recs)
    decode = statistics.mean(r["end_ns"] - r["first_token_ns"] for r in recs)
    in_window = [[t for t in r["chunk_ns"] if start_ns <= t < end_ns] for r in recs]
    tokens_per_s = sum(map(len, in_window)) / ((end_ns - start_ns) / 1e9)
    # A stream's decode rate over its whole decode. A client stalled by a busy machine reads
    # several events at once and stamps them alike, so a stream whose events all share a
    # stamp has no measurable rate and is left out rather than counted as infinitely fast.
    stream_rates = [
        (len(c) - 1) / ((c[-1] - c[0]) / 1e9) for c in (r["chunk_ns"] for r in recs) if len(c) >= 3 and c[-1] > c[0]
    ]
    assert stream_rates, "no request has a measurable decode rate"
    return ttft / decode, tokens_per_s / statistics.median(stream_rates)


def _fmt(values: dict[int, float]) -> str:
    return ", ".join(f"{c}: {v:.2f}" for c, v in sorted(values.items()))


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("engine_url", ["vllm"], indirect=True)
def test_vllm_cpu_sweep(engine_url: str, tmp_path: Path) -> None:
    meta = run(sweep(engine_url, "vllm"), str(tmp_path / "run")).to_dict()
    check_sweep(tmp_path / "run", meta)
    # vLLM adopts the X-Request-Id header: its response ids join with loadgen's request ids
    records = read_records(str(tmp_path / "run")).select(["request_id", "response_id"]).to_pylist()
    assert all(r["response_id"] == f"cmpl-{r['request_id']}" for r in records)


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("engine_url", ["llama"], indirect=True)
def test_llama_server_sweep(engine_url: str, tmp_path: Path) -> None:
    meta = run(sweep(engine_url, "llamacpp"), str(tmp_path / "run")).to_dict()
    check_sweep(tmp_path / "run", meta)
