"""``ray job submit -- loadgen cluster=ray …`` on a two-node Ray cluster on 127.0.0.1 started by scripts/cluster_start.sh.

What it checks: the scripts start a head (dashboard on, token authentication on)
and a worker node, every process of both listens on 127.0.0.1 only; a worker
node without the token is refused; a loadgen run submitted as a Ray job places
its workers on the worker node only, completes, and its records match its
ledger; scripts/cluster_stop.sh leaves no process of either node.

Needs Ray's dashboard (``pip install 'ray[default]'``); skipped without it.
Every process is ended by its PID (the scripts' pid files, then what is left of
the nodes' process trees).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from loadgen.procs import ProcessTree, kill
from test_local_ray import listening

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ray = pytest.importorskip("ray")


def _dashboard_missing() -> str:
    from ray._private.utils import get_dashboard_dependency_error

    return str(get_dashboard_dependency_error() or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """A head (no loadgen slots) and a worker node with 2 slots, all on 127.0.0.1; yields (env, dashboard URL)."""
    if _dashboard_missing():
        pytest.skip(f"ray job submit needs Ray's dashboard: {_dashboard_missing()} (pip install 'ray[default]')")
    state = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    # The scripts run `ray` and `python`: the ones of this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    temp = Path(tempfile.mkdtemp(prefix="lgray-"))  # short: Ray's socket paths must fit in 107 bytes
    env.update(LOADGEN_CLUSTER_DIR=str(state), LOADGEN_RAY_TEMP_DIR=str(temp),
               LOADGEN_NODE_START_TIMEOUT_S="300")
    port, dash = free_port(), free_port()
    trees: dict[int, ProcessTree] = {}  # each node's processes, from the PID its start script left

    def alive() -> list[int]:
        return sorted({pid for tree in trees.values() for pid in tree.alive()})

    def script(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(["bash", str(ROOT / "scripts" / args[0]), *args[1:]], env=env, capture_output=True,
                             text=True, timeout=400)
        for pid_file in state.glob("*.pid"):
            try:
                root = int(pid_file.read_text())
            except (ValueError, OSError):
                continue
            trees.setdefault(root, ProcessTree(root)).sample()
        if check:
            assert res.returncode == 0, res.stdout + res.stderr
        return res

    try:
        head = script("cluster_start.sh", "head", "--ip", "127.0.0.1", "--port", str(port), "--cpus", "1",
                      "--dashboard-port", str(dash))
        exports = re.findall(r"^export (RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=\S+)$", head.stdout, re.M)
        assert len(exports) == 1, head.stdout
        refused = script("cluster_start.sh", "worker", "--ip", "127.0.0.1", "--address", f"127.0.0.1:{port}",
                         "--name", "tokenless", check=False)
        assert refused.returncode == 2 and "token authentication" in refused.stderr
        env.update(kv.split("=", 1) for kv in exports[0].split())
        script("cluster_start.sh", "worker", "--ip", "127.0.0.1", "--address", f"127.0.0.1:{port}", "--cpus", "2",
               "--slots", "2", "--name", "w1")
        yield env, f"http://127.0.0.1:{dash}", alive
    finally:
        script("cluster_stop.sh", check=False)
        deadline = time.monotonic() + 30
        while alive() and time.monotonic() < deadline:
            time.sleep(0.25)
        left = alive()
        kill(left)
        shutil.rmtree(temp, ignore_errors=True)
    assert not left, "processes of the stopped nodes were still alive 30 s later (now killed)"


def test_a_loadgen_run_submitted_as_a_ray_job_uses_the_worker_node(cluster, tmp_path):
    env, dashboard, alive = cluster
    sockets = listening(alive())
    assert sockets, "no listening socket found: the check would pass vacuously"
    exposed = {pid: addrs for pid, addrs in sockets.items() if addrs - {"127.0.0.1", "::1"}}
    assert not exposed, f"node processes listening beyond 127.0.0.1: {exposed}"

    run_dir = tmp_path / "run"
    res = subprocess.run(
        [
            "ray", "job", "submit", "--address", dashboard, "--",
            sys.executable, "-m", "loadgen.cli", "cluster=ray", "cluster.node_resource=loadgen",
            f"hydra.run.dir={run_dir}", "load=rate", "load.levels=[4]", "load.duration_s=2", "load.warmup_s=0",
            "load.drain_s=20", "workload.num_requests=40", "workload.output_tokens.mean=8",
            "analysis.plots=false", "progress=false",
        ],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0 and "succeeded" in res.stdout, res.stdout + res.stderr
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete"
    cpus = {n["node_id"]: n["cpus"] for n in meta["nodes"]}
    assert sorted(cpus.values()) == [1, 2]  # the head (1 CPU, no slots) and the worker node (2 CPUs, 2 slots)
    worker_nodes = {w["node_id"] for w in meta["workers"]}
    assert len(meta["workers"]) == 2 and len(worker_nodes) == 1  # one per slot of the worker node
    assert cpus[worker_nodes.pop()] == 2  # none on the head, where the job's driver runs
    ledgers = [level["ledger"] for level in meta["levels"]]
    assert ledgers and all(led["sent"] == led["planned"] == led["ok"] > 0 for led in ledgers)
    records = list((run_dir / "records").rglob("*.parquet"))
    assert records
    import pyarrow.parquet as pq

    assert sum(pq.read_metadata(p).num_rows for p in records) == sum(led["sent"] for led in ledgers)
