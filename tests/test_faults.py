"""The fault matrix: every server and network fault, driven through the real simulator, ends as a record.

Each fault is injected at rate 1 into a simulator child process (``start_sim``)
and a worker core sends a few requests to it: every request must come back as
one record with the right status, an error message that says what happened,
the tokens that arrived before the fault, and a ledger that accounts for it.
One full run with a mix of faults checks the run-wide ledger and the report.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

from loadgen.analysis import analyze_run
from loadgen.config import ClusterConfig, FaultConfig, SimProfile, TargetConfig
from loadgen.report.html import render_html
from loadgen.report.terminal import render_terminal
from loadgen.rundir import Ledger, read_records
from loadgen.sim import start_sim
from loadgen.worker import LevelRun, TargetSpec, WorkerCore
from loadgen.workload.table import REQUEST_SCHEMA

N = 4  # requests per fault
OUT = 8  # output tokens per request

FAST = SimProfile(
    model="sim-faults",
    max_num_seqs=8,
    max_num_batched_tokens=512,
    kv_cache_tokens=20_000,
    step_base_ms=5.0,
    step_per_seq_ms=0.0,
    step_per_prefill_token_ms=0.0,
)

#: One simulator per fault, each injecting it into every request.
SIM_FAULTS = {
    "http_503": FaultConfig(http_error_rate=1.0, http_error_status=503),
    "http_429": FaultConfig(http_error_rate=1.0, http_error_status=429),
    "reset": FaultConfig(reset_rate=1.0, reset_after_tokens=3),
    "truncate": FaultConfig(truncate_rate=1.0),
    "garbage": FaultConfig(garbage_rate=1.0),
    "stall": FaultConfig(stall_rate=1.0, stall_after_tokens=2, stall_s=6.0),
    "slow_accept": FaultConfig(accept_delay_s=1.0),
}


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, str]]:
    """Base URL of each fault's simulator (started in parallel: each child takes seconds to import)."""
    with ThreadPoolExecutor(len(SIM_FAULTS)) as pool:
        futures = {name: pool.submit(start_sim, FAST, faults) for name, faults in SIM_FAULTS.items()}
    started, failure = {}, None
    for name, fut in futures.items():
        try:
            started[name] = fut.result()
        except Exception as exc:  # noqa: BLE001 - stop the others before failing
            failure = exc
    try:
        if failure is not None:
            raise failure
        yield {name: sim.url for name, sim in started.items()}
    finally:
        for sim in started.values():
            sim.stop()


def shard(n: int = N, out: int = OUT) -> pa.Table:
    rows = [{"request_id": f"r{i}", "turn": 0, "input_tokens": 3, "output_tokens": out, "prompt": f"p{i}"} for i in range(n)]
    table = pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)
    return table.append_column("scheduled_s", pa.array(np.arange(n) * 0.05, pa.float64()))


def send(url: str, run_dir: str, **target: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send N requests from one worker core; return its ledger and the records it wrote."""

    async def main() -> dict[str, Any]:
        config = TargetConfig(kind="openai", url=url, **target)
        core = WorkerCore(0, "faults", "node", TargetSpec(url, FAST.model, config), ClusterConfig(flush_interval_s=0.2), run_dir)
        await core.start()
        try:
            await core.prepare_level(LevelRun(level=0, mode="rate", value=20, duration_s=0.3, drain_s=15), shard())
            return await core.start_level(core.now() + 50_000_000)
        finally:
            await core.close()

    ledger = asyncio.run(asyncio.wait_for(main(), 60))
    return ledger, read_records(run_dir).to_pylist()


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Case:
    """A fault and what each of its records must show."""

    sim: Optional[str]  # which simulator (None: a port nothing listens on)
    status: str
    error: Optional[str]  # regex the error must match (None: no error)
    tokens: int  # chunks timestamped before the fault
    target: dict[str, Any] = field(default_factory=dict)  # target.* settings of the client
    waited: Optional[tuple[str, str, float, float]] = None  # (from, to, min s, max s) the fault's delay shows as


CASES = {
    "http-5xx": Case("http_503", "http_error", r"^HTTP 503: .*injected fault", 0),
    "http-429-retry-after": Case("http_429", "http_error", r"^HTTP 429 \(Retry-After: 1\): .*injected fault", 0),
    "connection-refused": Case(None, "connection_error", r"^cannot connect: .*Connection refused", 0),
    "reset-mid-stream": Case("reset", "connection_error", r"^connection broken: .*Connection reset by peer", 3),
    "stream-without-done": Case("truncate", "protocol_error", r"^stream ended without data: \[DONE\]$", OUT // 2),
    "malformed-sse-json": Case("garbage", "protocol_error", r"^malformed JSON in SSE event: ", 1),
    # the simulator stalls 6 s after 2 tokens; each timeout must cut the request long before that
    "stall-timeout": Case(
        "stall", "timeout", r"^stall: .*target\.stall_timeout_s$", 2, {"stall_timeout_s": 0.5}, ("last_chunk", "end_ns", 0.45, 4.0)
    ),
    "request-timeout": Case(
        "stall", "timeout", r"^request exceeded target\.timeout_s$", 2, {"timeout_s": 1.0}, ("sent_ns", "end_ns", 0.95, 4.0)
    ),
    "slow-accept": Case("slow_accept", "ok", None, OUT, waited=("sent_ns", "first_byte_ns", 0.95, 30.0)),
    "slow-accept-past-stall-timeout": Case(
        "slow_accept", "timeout", r"^stall: ", 0, {"stall_timeout_s": 0.3}, ("sent_ns", "end_ns", 0.28, 0.95)
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fault_becomes_a_record_with_status_error_and_tokens(sims, tmp_path, name):
    case = CASES[name]
    url = sims[case.sim] if case.sim else f"http://127.0.0.1:{free_port()}/v1"
    ledger, recs = send(url, str(tmp_path), **case.target)

    # The ledger: every planned request sent, each ended in exactly this way, each on disk.
    assert ledger.planned == ledger.sent == N and not ledger.not_sent
    assert ledger.statuses == {case.status: N}
    assert ledger.records_written == len(recs) == N
    assert sorted(r["request_id"] for r in recs) == [f"L0-r{i}" for i in range(N)]
    for rec in recs:
        assert rec["status"] == case.status
        if case.error is None:
            assert rec["error"] is None
        else:
            assert re.search(case.error, rec["error"]), rec["error"]
        chunks = rec["chunk_ns"]
        assert len(chunks) == case.tokens, rec
        assert chunks == sorted(chunks) and all(rec["sent_ns"] <= t <= rec["end_ns"] for t in chunks)
        assert rec["first_token_ns"] == (chunks[0] if chunks else None)
        if case.waited:
            start, end, lo, hi = case.waited
            t0 = chunks[-1] if start == "last_chunk" else rec[start]
            assert lo <= (rec[end] - t0) / 1e9 <= hi, (name, rec)


def test_connect_never_accepted_is_a_connect_timeout(tmp_path):
    """A server too slow to accept (its backlog full) fails each request at target.connect_timeout_s."""
    with open("/proc/sys/net/ipv4/tcp_abort_on_overflow") as f:
        if f.read().strip() != "0":
            pytest.skip("this kernel resets connections to a full backlog instead of ignoring them")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        filler = []
        for _ in range(4):  # fill the accept queue: later SYNs are dropped, never answered
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            filler.append(c)
        try:
            ledger, recs = send(f"http://127.0.0.1:{port}/v1", str(tmp_path), connect_timeout_s=0.5)
        finally:
            for c in filler:
                c.close()
    assert ledger.statuses == {"connection_error": N} and len(recs) == N
    for rec in recs:
        assert rec["error"].startswith("connect timeout: ") and rec["first_byte_ns"] is None
        assert 0.45 <= (rec["end_ns"] - rec["sent_ns"]) / 1e9 < 10


# --------------------------------------------------------------------------- one full run

#: What each error class's messages say in the mixed run.
MIX_ERRORS = {
    "http_error": r"^HTTP 503: ",
    "connection_error": r"^connection broken: .*reset",
    "protocol_error": r"^(malformed JSON in SSE event|stream ended without data: \[DONE\])",
    "timeout": r"^stall: ",
}


@pytest.mark.slow
def test_a_run_with_mixed_faults_accounts_for_every_request(tmp_path):
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [
            sys.executable, "-m", "loadgen.cli", f"hydra.run.dir={run_dir}",
            "load=rate", "load.levels=[12]", "load.duration_s=4", "load.warmup_s=1", "load.drain_s=10",
            "load.arrival=constant", "workload.num_requests=100", "workload.output_tokens.mean=16",
            "target.faults.http_error_rate=0.15", "target.faults.http_error_status=503",
            "target.faults.reset_rate=0.15", "target.faults.reset_after_tokens=4",
            "target.faults.truncate_rate=0.1", "target.faults.garbage_rate=0.1",
            "target.faults.stall_rate=0.1", "target.faults.stall_s=4", "target.stall_timeout_s=1",
            "cluster.workers=2", "analysis.plots=false", "progress=false",
        ],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete"
    led = meta["levels"][0]["ledger"]
    recs = read_records(str(run_dir))
    statuses = recs.column("status").to_pylist()

    # planned = sent + not sent; sent = ok + errors by class + cancelled; records on disk = sent.
    assert led["planned"] == 48 == led["sent"] + sum(led["not_sent"].values())
    assert led["sent"] == led["ok"] + sum(led["errors"].values()) + led["cancelled"] + led["lost"]
    assert recs.num_rows == led["sent"] and led["lost"] == 0
    assert led["ok"] == statuses.count("ok") > 0
    for cls, pattern in MIX_ERRORS.items():
        assert led["errors"][cls] == statuses.count(cls) > 0, (cls, led)
        for err in (r["error"] for r in recs.to_pylist() if r["status"] == cls):
            assert re.search(pattern, err), (cls, err)
    assert Ledger.from_dict(led, records=recs.num_rows).closes

    # The report shows the ledger, closing, and the errors by class.
    summary = analyze_run(str(run_dir))
    console = Console(record=True, width=250, color_system=None)
    render_terminal(summary, console)
    text = console.export_text()
    assert f"{led['planned']} planned = {led['sent']} sent + 0 not sent" in text
    assert f"{sum(led['errors'].values())} errors" in text and "— closes." in text
    ledger_row = html_table_row(render_html(summary, []), "Request ledger", "run")
    for cls in MIX_ERRORS:
        assert ledger_row[cls] == f"{led['errors'][cls]:,}", (cls, ledger_row)
    assert ledger_row["closes"] == "yes"


def html_table_row(html: str, heading: str, first_cell: str) -> dict[str, str]:
    """The row starting with ``first_cell`` of the first table after ``heading``, keyed by column header."""
    table = html[html.index(heading) :]
    table = table[table.index("<table>") : table.index("</table>")]
    header = re.findall(r"<th[^>]*>(.*?)</th>", table)
    for row in re.findall(r"<tr[^>]*>(<td.*?)</tr>", table):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if cells and cells[0] == first_cell:
            return dict(zip(header, cells))
    raise AssertionError(f"no row {first_cell!r} in the table under {heading!r}")
