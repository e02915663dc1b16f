"""The simulator's HTTP front: OpenAI wire format, metrics, errors, faults, ground truth, child process, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional

import aiohttp
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.clock import now_ns
from loadgen.config import FaultConfig, SimProfile
from loadgen.paths import conf_dir
from loadgen.sim.cli import configure
from loadgen.sim.process import SimStartError, start_sim
from loadgen.sim.server import SimServer

FAST = SimProfile(
    model="sim-test",
    max_num_seqs=8,
    max_num_batched_tokens=512,
    kv_cache_tokens=20_000,
    step_base_ms=2.0,
    step_per_seq_ms=0.0,
    step_per_prefill_token_ms=0.0,
)


@asynccontextmanager
async def serve(
    profile: SimProfile = FAST, faults: Optional[FaultConfig] = None, ground_truth: Optional[str] = None
) -> AsyncIterator[tuple[SimServer, aiohttp.ClientSession]]:
    server = SimServer(profile, faults, ground_truth)
    await server.start()
    try:
        async with aiohttp.ClientSession(base_url=server.url.removesuffix("/v1") + "/") as session:
            yield server, session
    finally:
        await server.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def events(raw: bytes) -> list[Any]:
    """SSE data payloads in order: parsed JSON, "[DONE]", or the raw text of a malformed one."""
    out: list[Any] = []
    for block in raw.split(b"\n\n"):
        if not block.startswith(b"data: "):
            continue
        payload = block[len(b"data: ") :]
        if payload == b"[DONE]":
            out.append("[DONE]")
            continue
        try:
            out.append(json.loads(payload))
        except ValueError:
            out.append(payload.decode(errors="replace"))
    return out


def texts(evs: list[Any]) -> list[str]:
    """Generated text of each content event (completions or chat)."""
    found = []
    for ev in evs:
        if isinstance(ev, dict) and ev.get("choices"):
            choice = ev["choices"][0]
            text = choice.get("text", choice.get("delta", {}).get("content"))
            if text:
                found.append(text)
    return found


async def post(
    session: aiohttp.ClientSession, api: str, body: dict[str, Any], **headers: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with session.post(f"v1/{api}", json=body, headers=headers) as resp:
        return resp, await resp.read()


# --------------------------------------------------------------------------- wire format


def test_streaming_completion_with_usage():
    async def main() -> tuple[aiohttp.ClientResponse, bytes]:
        async with serve() as (_, session):
            body = {
                "prompt": "one two  three\nfour",
                "max_tokens": 5,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            return await post(session, "completions", body, **{"X-Request-Id": "req-1"})

    resp, raw = run(main())
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Request-Id"] == "req-1"
    evs = events(raw)
    assert evs[-1] == "[DONE]"
    *content, usage, _ = evs
    assert texts(content) == [" tok"] * 5
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 4 + ["length"]
    assert {ev["id"] for ev in evs[:-1]} == {"cmpl-req-1"}
    assert usage["choices"] == []
    assert usage["usage"]["prompt_tokens"] == 4 and usage["usage"]["completion_tokens"] == 5
    assert usage["usage"]["total_tokens"] == 9


def test_streaming_chat_opens_with_a_role_chunk():
    async def main() -> bytes:
        async with serve() as (_, session):
            body = {
                "model": "sim-test",
                "max_tokens": 3,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "hello there you"}]},
                ],
            }
            resp, raw = await post(session, "chat/completions", body)
            assert resp.status == 200
            return raw

    evs = events(run(main()))
    role, *content, usage, done = evs
    assert role["choices"][0]["delta"]["role"] == "assistant" and not role["choices"][0]["delta"].get("content")
    assert role["id"].startswith("chatcmpl-") and role["object"] == "chat.completion.chunk"
    assert texts(content) == [" tok"] * 3
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 5
    assert done == "[DONE]"


def test_streaming_without_usage_ends_with_done():
    async def main() -> bytes:
        async with serve() as (_, session):
            return (
                await post(session, "completions", {"prompt": "x", "max_tokens": 2, "ignore_eos": True, "stream": True})
            )[1]

    evs = events(run(main()))
    assert texts(evs) == [" tok"] * 2 and evs[-1] == "[DONE]"
    assert all("usage" not in ev for ev in evs[:-1])


def test_non_streaming_completion_and_chat():
    async def main() -> list[tuple[int, Any]]:
        async with serve() as (_, session):
            out = []
            for api, body in (
                ("completions", {"prompt": [[5, 6, 7, 8, 9, 10]], "max_tokens": 4, "ignore_eos": True}),
                (
                    "chat/completions",
                    {"messages": [{"role": "user", "content": "a b"}], "max_completion_tokens": 3, "ignore_eos": True},
                ),
            ):
                resp, raw = await post(session, api, body)
                out.append((resp.status, json.loads(raw)))
            return out

    (s1, comp), (s2, chat) = run(main())
    assert (s1, s2) == (200, 200)
    assert comp["id"].startswith("cmpl-") and comp["choices"][0]["text"] == " tok" * 4
    assert comp["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": 4,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert chat["id"].startswith("chatcmpl-") and chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": " tok" * 3}
    assert chat["choices"][0]["finish_reason"] == "length" and chat["usage"]["completion_tokens"] == 3


def test_ignore_eos_gives_exact_lengths_and_otherwise_a_seeded_early_stop():
    async def main() -> tuple[list[int], list[tuple[int, str]], list[tuple[int, str]]]:
        async with serve() as (_, session):
            exact, free, again = [], [], []
            for i in range(12):
                body = {"prompt": "p", "max_tokens": 20, "min_tokens": 5, "ignore_eos": True}
                exact.append(
                    json.loads((await post(session, "completions", body, **{"X-Request-Id": f"e{i}"}))[1])["usage"][
                        "completion_tokens"
                    ]
                )
                for out in (free, again):
                    body["ignore_eos"] = False
                    data = json.loads((await post(session, "completions", body, **{"X-Request-Id": f"e{i}"}))[1])
                    out.append((data["usage"]["completion_tokens"], data["choices"][0]["finish_reason"]))
            return exact, free, again

    exact, free, again = run(main())
    assert exact == [20] * 12
    assert free == again  # seeded by the request id
    assert all(5 <= n <= 20 for n, _ in free) and any(n < 20 for n, _ in free)
    assert all(reason == ("length" if n == 20 else "stop") for n, reason in free)


def test_models_and_health():
    async def main() -> tuple[int, Any]:
        async with serve() as (_, session):
            async with session.get("health") as health:
                status = health.status
            async with session.get("v1/models") as models:
                return status, await models.json()

    status, models = run(main())
    assert status == 200
    assert [m["id"] for m in models["data"]] == ["sim-test"] and models["object"] == "list"


def metric_values(text: str) -> dict[str, float]:
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_show_running_and_waiting_and_free_slots_of_clients_that_left():
    profile = SimProfile(
        model="sim-test", max_num_seqs=2, step_base_ms=20.0, step_per_seq_ms=0.0, step_per_prefill_token_ms=0.0
    )

    async def main() -> tuple[dict[str, float], dict[str, float]]:
        async with serve(profile) as (server, session):
            body = {"prompt": "a b c", "max_tokens": 1000, "ignore_eos": True, "stream": True}
            clients = [aiohttp.ClientSession(base_url=server.url.removesuffix("/v1") + "/") for _ in range(5)]
            streams = [await c.post("v1/completions", json=body) for c in clients[:2]]
            waiting = [asyncio.create_task(c.post("v1/completions", json=body)) for c in clients[2:]]
            busy: dict[str, float] = {}
            for _ in range(200):
                async with session.get("metrics") as resp:
                    busy = metric_values(await resp.text())
                if busy["vllm:num_requests_waiting"] == 3 and busy["vllm:prompt_tokens_total"] == 6:
                    break  # both running streams are past their prefill
                await asyncio.sleep(0.02)
            for stream in streams:
                stream.close()
            for c in clients:
                await c.close()  # the clients leave: waiting requests are dropped, running slots freed
            await asyncio.gather(*waiting, return_exceptions=True)
            idle: dict[str, float] = {}
            for _ in range(200):
                async with session.get("metrics") as resp:
                    idle = metric_values(await resp.text())
                if idle["vllm:num_requests_running"] == 0:
                    break
                await asyncio.sleep(0.02)
            return busy, idle

    busy, idle = run(main())
    assert busy["vllm:num_requests_running"] == 2 and busy["vllm:num_requests_waiting"] == 3
    assert 0 < busy["vllm:gpu_cache_usage_perc"] <= 1
    assert busy["vllm:prompt_tokens_total"] == 6 and busy["vllm:generation_tokens_total"] >= 2
    assert {
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "loadgen_sim_late_steps_total",
        "loadgen_sim_step_lag_seconds",
    } <= set(busy)
    assert idle["vllm:num_requests_running"] == 0 and idle["vllm:gpu_cache_usage_perc"] == 0


def test_prefix_cache_hits_are_reported():
    async def main() -> tuple[int, dict[str, float]]:
        async with serve() as (_, session):
            prompt = " ".join(f"w{i}" for i in range(40))
            await post(session, "completions", {"prompt": prompt, "max_tokens": 1})
            data = json.loads((await post(session, "completions", {"prompt": prompt + " more", "max_tokens": 1}))[1])
            async with session.get("metrics") as resp:
                return data["usage"]["prompt_tokens_details"]["cached_tokens"], metric_values(await resp.text())

    cached, metrics = run(main())
    assert cached == 32  # two full 16-word blocks
    assert metrics["vllm:prefix_cache_queries_total"] == 81 and metrics["vllm:prefix_cache_hits_total"] == 32


@pytest.mark.parametrize(
    "api, body, status, needle",
    [
        ("completions", b"{not json", 400, "not valid JSON"),
        ("completions", b"[1, 2]", 400, "JSON object"),
        ("completions", {"max_tokens": 4}, 400, "'prompt' is required"),
        ("completions", {"prompt": "", "max_tokens": 4}, 400, "'prompt' is empty"),
        ("completions", {"prompt": "hi", "max_tokens": 0}, 400, "'max_tokens' must be an integer >= 1"),
        ("completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "'max_tokens' must be an integer >= 1"),
        ("completions", {"prompt": "hi", "max_tokens": 4, "min_tokens": 9}, 400, "'min_tokens'"),
        ("completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "'stream_options'"),
        ("completions", {"prompt": "hi", "max_tokens": 10**6}, 400, "KV cache"),
        ("completions", {"prompt": "hi", "model": "gpt-9"}, 404, "gpt-9"),
        ("chat/completions", {"prompt": "hi"}, 400, "'messages' is required"),
        ("chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages[0]"),
    ],
)
def test_bad_requests_get_an_openai_style_error(api, body, status, needle):
    async def main() -> tuple[int, Any]:
        async with serve() as (_, session):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with session.post(f"v1/{api}", data=data, headers={"Content-Type": "application/json"}) as resp:
                return resp.status, await resp.json()

    got, err = run(main())
    assert got == status
    assert needle in err["error"]["message"] and err["error"]["code"] == status


def test_http10_stream_is_unframed_and_closes():
    async def main() -> bytes:
        async with serve() as (server, _):
            port = int(server.url.split(":")[2].split("/")[0])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = json.dumps({"prompt": "hi", "max_tokens": 3, "ignore_eos": True, "stream": True}).encode()
            writer.write(
                b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            raw = await reader.read()  # to EOF: the server closes the connection
            writer.close()
            return raw

    raw = run(main())
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    evs = events(payload)
    assert texts(evs) == [" tok"] * 3 and evs[-1] == "[DONE]"


# --------------------------------------------------------------------------- faults


def test_injected_http_errors():
    async def main(status: int) -> tuple[int, Any, Optional[str]]:
        async with serve(faults=FaultConfig(http_error_rate=1.0, http_error_status=status)) as (_, session):
            resp, raw = await post(session, "completions", {"prompt": "hi", "stream": True})
            return resp.status, json.loads(raw), resp.headers.get("Retry-After")

    status, body, retry = run(main(503))
    assert status == 503 and "injected" in body["error"]["message"] and retry is None
    assert run(main(429))[::2] == (429, "1")


async def raw_stream(server: SimServer, body: dict[str, Any]) -> tuple[bytes, Optional[BaseException]]:
    """Send one request over a bare socket; return every byte received and how the read ended."""
    port = int(server.url.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(data), data)
    )
    received, error = b"", None
    try:
        while not received.endswith(b"\r\n0\r\n\r\n"):
            chunk = await reader.read(65536)
            if not chunk:
                break
            received += chunk
    except OSError as exc:
        error = exc
    writer.close()
    return received, error


STREAM = {"prompt": "hi", "max_tokens": 10, "ignore_eos": True, "stream": True}


def test_injected_reset_after_k_tokens():
    async def main() -> tuple[bytes, Optional[BaseException]]:
        async with serve(faults=FaultConfig(reset_rate=1.0, reset_after_tokens=3)) as (server, _):
            return await raw_stream(server, STREAM)

    received, error = run(main())
    assert isinstance(error, ConnectionResetError)
    assert 0 < received.count(b'"text":" tok"') <= 3 and b"[DONE]" not in received


def test_injected_truncation_ends_cleanly_without_done():
    async def main() -> tuple[bytes, Optional[BaseException]]:
        async with serve(faults=FaultConfig(truncate_rate=1.0)) as (server, _):
            return await raw_stream(server, STREAM)

    received, error = run(main())
    assert error is None and received.endswith(b"\r\n0\r\n\r\n")  # a complete HTTP response
    assert received.count(b'"text":" tok"') == 5 and b"[DONE]" not in received


def test_injected_garbage_chunk():
    async def main() -> bytes:
        async with serve(faults=FaultConfig(garbage_rate=1.0)) as (_, session):
            return (await post(session, "completions", STREAM))[1]

    evs = events(run(main()))
    malformed = [ev for ev in evs if isinstance(ev, str) and ev != "[DONE]"]
    assert len(malformed) == 1 and evs.index(malformed[0]) == 1  # right after the first token
    assert texts(evs) == [" tok"] * 10 and evs[-1] == "[DONE]"


def test_injected_stall():
    async def main() -> list[tuple[float, bytes]]:
        faults = FaultConfig(stall_rate=1.0, stall_after_tokens=2, stall_s=0.3)
        async with serve(faults=faults) as (_, session):
            async with session.post("v1/completions", json=STREAM) as resp:
                return [(time.monotonic(), line) async for line in resp.content if line.startswith(b"data: ")]

    lines = run(main())
    times = [t for t, line in lines if b" tok" in line]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 10 and lines[-1][1].strip() == b"data: [DONE]"
    assert gaps[1] >= 0.25  # between tokens 2 and 3
    assert max(gaps[:1] + gaps[2:]) < gaps[1]


def test_slow_accept():
    async def main() -> float:
        async with serve(faults=FaultConfig(accept_delay_s=0.3)) as (_, session):
            start = time.monotonic()
            resp, _ = await post(session, "completions", {"prompt": "hi", "max_tokens": 1})
            assert resp.status == 200
            return time.monotonic() - start

    assert run(main()) >= 0.3


def test_non_streaming_faults():
    async def main(faults: FaultConfig) -> Any:
        async with serve(faults=faults) as (_, session):
            try:
                resp, raw = await post(session, "completions", {"prompt": "hi", "max_tokens": 4})
            except aiohttp.ClientError as exc:
                return exc
            return raw

    assert isinstance(run(main(FaultConfig(reset_rate=1.0))), aiohttp.ClientError)
    assert isinstance(run(main(FaultConfig(truncate_rate=1.0))), aiohttp.ClientPayloadError)
    with pytest.raises(ValueError):
        json.loads(run(main(FaultConfig(garbage_rate=1.0))))


def test_fault_draws_are_seeded_per_request_id():
    async def main(seed: int) -> list[int]:
        faults = FaultConfig(http_error_rate=0.4, seed=seed)
        async with serve(faults=faults) as (_, session):
            return [
                (await post(session, "completions", {"prompt": "hi", "max_tokens": 1}, **{"X-Request-Id": f"r{i}"}))[
                    0
                ].status
                for i in range(150)
            ]

    first, again, other = run(main(7)), run(main(7)), run(main(8))
    assert first == again and first != other
    assert 0.25 < first.count(500) / len(first) < 0.55


# --------------------------------------------------------------------------- ground truth


def test_ground_truth_has_one_consistent_row_per_request(tmp_path):
    path = tmp_path / "truth" / "gt.parquet"

    async def main() -> dict[str, list[int]]:
        seen: dict[str, list[int]] = {}
        async with serve(ground_truth=str(path)) as (_, session):
            for i in range(6):
                rid = f"s{i}"
                body = {"prompt": "a b c d", "max_tokens": 3 + i, "ignore_eos": True, "stream": True}
                async with session.post("v1/completions", json=body, headers={"X-Request-Id": rid}) as resp:
                    seen[rid] = [
                        now_ns() async for line in resp.content if line.startswith(b"data: ") and b" tok" in line
                    ]
            await post(
                session,
                "chat/completions",
                {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                **{"X-Request-Id": "n0"},
            )
            await post(session, "completions", {"prompt": ""}, **{"X-Request-Id": "bad"})
        return seen

    seen = run(main())
    rows = {r["request_id"]: r for r in pq.read_table(path).to_pylist()}
    assert set(rows) == set(seen) | {"n0", "bad"}
    for rid, client_times in seen.items():
        row = rows[rid]
        assert row["status"] == "ok" and row["output_tokens"] == len(client_times) == int(rid[1:]) + 3
        assert row["response_id"] == f"cmpl-{rid}" and row["prompt_tokens"] == 4
        times = row["token_ns"]
        assert (
            row["arrival_ns"] < row["first_token_ns"] == times[0]
            and times == sorted(times)
            and times[-1] <= row["end_ns"]
        )
        # the client (same process, same clock) reads each token after the server wrote it
        assert all(c >= s for c, s in zip(client_times, times))
        # one 2 ms engine step per token on absolute deadlines: the last token never comes early
        assert times[-1] - row["arrival_ns"] >= len(times) * 2_000_000 - 100_000
    assert rows["n0"]["stream"] is False and rows["n0"]["first_token_ns"] == rows["n0"]["end_ns"]
    assert rows["bad"]["status"] == "http_error" and rows["bad"]["http_status"] == 400


def test_ground_truth_records_faults(tmp_path):
    path = tmp_path / "gt.parquet"

    async def main() -> None:
        async with serve(faults=FaultConfig(reset_rate=1.0, reset_after_tokens=2), ground_truth=str(path)) as (
            server,
            _,
        ):
            await raw_stream(server, STREAM)

    run(main())
    (row,) = pq.read_table(path).to_pylist()
    assert (row["status"], row["fault"], row["output_tokens"]) == ("reset", "reset", 2)


# --------------------------------------------------------------------------- child process and CLI


def test_start_sim_runs_a_child_and_stops_it_cleanly(tmp_path):
    truth = tmp_path / "gt.parquet"
    with start_sim(FAST, ground_truth=str(truth)) as sim:
        assert sim.url.startswith("http://127.0.0.1:") and sim.url.endswith("/v1") and sim.profile is FAST
        with urllib.request.urlopen(sim.url + "/models", timeout=10) as resp:
            assert json.load(resp)["data"][0]["id"] == "sim-test"
        request = urllib.request.Request(
            sim.url + "/completions",
            data=json.dumps({"prompt": "a b", "max_tokens": 3}).encode(),
            headers={"Content-Type": "application/json", "X-Request-Id": "child-1"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        port = int(sim.url.split(":")[2].split("/")[0])
        with pytest.raises(SimStartError, match="address already in use"):
            start_sim(FAST, port=port)
    assert not sim.running and sim.proc.returncode == 0
    assert pq.read_table(truth).column("request_id").to_pylist() == ["child-1"]


def test_start_sim_child_exits_when_its_parent_dies():
    script = (
        "import os, sys\n"
        "from loadgen.config import SimProfile\n"
        "from loadgen.sim.process import start_sim\n"
        "print(start_sim(SimProfile()).pid, flush=True)\n"
        "os._exit(0)\n"  # no stop(): the runner was killed
    )
    env = {**os.environ, "PYTHONPATH": str(conf_dir().parent)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    pid = int(out.stdout.strip())
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        assert not _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cli_loads_a_shipped_profile_with_overrides():
    assert (conf_dir() / "target" / "sim.yaml").is_file()
    _, profile, faults = configure(
        [
            "--port",
            "0",
            "--profile",
            "sim-70b",
            "--sim.max_num_seqs=7",
            "--fault.http_error_rate=0.5",
            "--fault.http_error_status=429",
        ]
    )
    assert profile.name == "llama3.1-70b-8xh100" and profile.max_num_seqs == 7
    assert (faults.http_error_rate, faults.http_error_status) == (0.5, 429)
    _, default, _ = configure(["--port", "0"])
    assert default.name == "llama3.1-8b-h100"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--fault.nope=1"], "unknown option --fault.nope"),
        (["--sim.max_num_seqs=many"], "--sim.max_num_seqs='many' is not a valid int"),
        (["--fault.reset_rate=2"], "target.faults.reset_rate"),
        (["--profile", "missing"], "simulator profile 'missing' not found"),
    ],
)
def test_cli_errors_are_clear(argv, needle, capsys):
    with pytest.raises(SystemExit):
        configure(["--port", "0", *argv])
    assert needle in capsys.readouterr().err
