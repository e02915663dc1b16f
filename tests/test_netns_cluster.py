"""scripts/netns_cluster.sh end to end: a Ray cluster across network namespaces runs a sweep, then vanishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from loadgen.rundir import read_records

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "netns_cluster.sh"


def run_script(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run the script in its own process group; on timeout, SIGTERM the group so its trap tears down."""
    proc = subprocess.Popen(
        [str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
        pytest.fail(f"netns_cluster.sh took over {timeout:g} s; stderr:\n{err[-5000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


@pytest.mark.timeout(420)
def test_a_sweep_runs_through_a_namespace_cluster_and_leaves_nothing_behind(tmp_path):
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip command is not installed")
    check = subprocess.run([str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    if check.returncode == 77:
        pytest.skip(f"network namespaces are unavailable here: {check.stderr.strip()}")
    assert check.returncode == 0, check.stderr

    prefix = f"lgt{os.getpid() % 100000}"
    env = {**os.environ, "LOADGEN_NETNS_PREFIX": prefix, "WORKERS": "2", "NODE_SLOTS": "2", "SIMS": "2"}
    run_dir = tmp_path / "run"
    proc = run_script([str(run_dir)], env, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    assert "checks passed" in proc.stdout
    assert namespaces(prefix) == []

    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete"
    # two slots on each worker namespace, none on the head (10.77.0.1), both replicas used
    assert Counter(w["ip"] for w in meta["workers"]) == {"10.77.0.11": 2, "10.77.0.12": 2}
    assert sorted({w["url"] for w in meta["workers"]}) == [
        "http://10.77.0.100:8001/v1",
        "http://10.77.0.100:8002/v1",
    ]
    records = read_records(str(run_dir))
    assert records.num_rows == sum(level["ledger"]["sent"] for level in meta["levels"]) > 0
    assert len(set(records.column("request_id").to_pylist())) == records.num_rows
