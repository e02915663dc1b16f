"""The client against bytes recorded from real servers (vLLM 0.32 CPU, llama.cpp's llama-server).

Each fixture under fixtures/streams/ is a response body exactly as ``curl -sN``
received it; the expected token count, usage and id are read from the fixture
with ``json`` here, independently of the client's byte-level scanning.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp import web

from loadgen.client.http import ConnectionPool, Timeouts
from loadgen.client.stream import execute
from loopback import serve_app

STREAMS = Path(__file__).parent / "fixtures" / "streams"
SSE_FIXTURES = sorted(p.name for p in STREAMS.glob("*.sse"))
JSON_FIXTURES = sorted(p.name for p in STREAMS.glob("*.json"))


def api_of(name: str) -> str:
    return "chat" if "_chat" in name else "completions"


def events(body: bytes) -> list[dict]:
    """Every JSON event of an SSE body, in order ([DONE] and non-data lines left out)."""
    out = []
    for line in body.decode().splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(json.loads(line[5:]))
    return out


def has_text(event: dict, api: str) -> bool:
    for choice in event.get("choices") or []:
        text = (choice.get("delta") or {}).get("content") if api == "chat" else choice.get("text")
        if text:
            return True
    return False


def usage_of(evts: list[dict]) -> dict:
    found = [e["usage"] for e in evts if e.get("usage")]
    assert len(found) == 1, "a recorded stream carries usage exactly once"
    return found[0]


async def replay(body: bytes, api: str, *, stream: bool, piece: int | None, content_type: str) -> dict:
    """Serve ``body`` from a local aiohttp server (whole events, or ``piece``-byte fragments) and run execute()."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        if not stream:
            parts = [body]
        elif piece is None:
            parts = [p + b"\n\n" for p in body.split(b"\n\n") if p]
        else:
            parts = [body[i : i + piece] for i in range(0, len(body), piece)]
        try:
            for part in parts:
                await resp.write(part)
                await asyncio.sleep(0.001)  # separate arrivals, as from a server decoding token by token
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client may hang up once it has read [DONE], before the last bytes
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    app.router.add_post("/v1/chat/completions", handler)
    runner, base = await serve_app(app)
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    rec: dict = {}
    pool = ConnectionPool(base, now=time.monotonic_ns, timeouts=Timeouts(total_s=10, stall_s=5))
    try:
        await execute(pool, path, b"{}", {}, rec, api=api, stream=stream)
    finally:
        await pool.close()
        await runner.cleanup()
    return rec


@pytest.mark.parametrize("piece", [None, 7], ids=["events", "7-byte-fragments"])
@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_recorded_stream(name: str, piece: int | None) -> None:
    body = (STREAMS / name).read_bytes()
    api = api_of(name)
    evts = events(body)
    content = [e for e in evts if has_text(e, api)]
    usage = usage_of(evts)

    rec = asyncio.run(replay(body, api, stream=True, piece=piece, content_type="text/event-stream"))

    assert rec["status"] == "ok", rec.get("error")
    assert len(rec["chunk_ns"]) == len(content)
    assert rec["chunk_ns"] == sorted(rec["chunk_ns"]) and rec["first_token_ns"] == rec["chunk_ns"][0]
    assert rec["output_tokens"] == usage["completion_tokens"]
    assert rec["prompt_tokens"] == usage["prompt_tokens"]
    assert rec["response_id"] == evts[0]["id"]
    # these engines stream one token per event: the recorded content events are the tokens
    assert len(content) == usage["completion_tokens"]


def test_fixtures_cover_both_engines_and_apis() -> None:
    assert {"vllm_completions.sse", "vllm_chat.sse", "llamacpp_completions.sse", "llamacpp_chat.sse"} <= set(SSE_FIXTURES)
    assert {"vllm_completions.json", "vllm_chat.json", "llamacpp_completions.json", "llamacpp_chat.json"} <= set(JSON_FIXTURES)


@pytest.mark.parametrize("name", [n for n in SSE_FIXTURES if api_of(n) == "chat"])
def test_role_only_first_chat_chunk_is_not_a_token(name: str) -> None:
    body = (STREAMS / name).read_bytes()
    first, *rest = events(body)
    delta = first["choices"][0]["delta"]
    # both engines open chat streams with the role alone (vLLM: content "", llama.cpp: null)
    assert delta.get("role") == "assistant" and not delta.get("content")
    rec = asyncio.run(replay(body, "chat", stream=True, piece=None, content_type="text/event-stream"))
    # the role chunk arrives first, but tokens are only the later events with content
    assert len(rec["chunk_ns"]) == sum(has_text(e, "chat") for e in rest) > 0


@pytest.mark.parametrize("name", JSON_FIXTURES)
def test_recorded_json_response(name: str) -> None:
    body = (STREAMS / name).read_bytes()
    obj = json.loads(body)
    rec = asyncio.run(replay(body, api_of(name), stream=False, piece=None, content_type="application/json"))
    assert rec["status"] == "ok", rec.get("error")
    assert rec["output_tokens"] == obj["usage"]["completion_tokens"]
    assert rec["prompt_tokens"] == obj["usage"]["prompt_tokens"]
    assert rec["response_id"] == obj["id"]
    assert rec["chunk_ns"] == []


async def llama_like_pair(force_close: bool) -> list[dict]:
    """Two requests in one session against a server that, like llama-server, advertises keep-alive
    but treats a connection as dead after one streamed response."""
    body = (STREAMS / "llamacpp_completions.sse").read_bytes()
    served: set[int] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        conn = id(request.transport)
        if conn in served:
            request.transport.close()  # the socket the client pooled is gone
            return web.Response()
        served.add(conn)
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Keep-Alive": "timeout=5, max=100"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner, base = await serve_app(app)
    recs: list[dict] = [{}, {}]
    pool = ConnectionPool(base, now=time.monotonic_ns, timeouts=Timeouts(total_s=10), keep_alive=not force_close)
    try:
        for rec in recs:
            await execute(pool, "/v1/completions", b"{}", {}, rec, api="completions", stream=True)
            await asyncio.sleep(0.05)  # the response's last bytes arrive and its connection is pooled
    finally:
        await pool.close()
        await runner.cleanup()
    return recs


def test_dead_pooled_connection_is_retried_once_and_recorded() -> None:
    first, second = asyncio.run(llama_like_pair(force_close=False))
    assert first["status"] == second["status"] == "ok"
    assert (first["attempts"], second["attempts"]) == (1, 2)
    tokens = [e for e in events((STREAMS / "llamacpp_completions.sse").read_bytes()) if has_text(e, "completions")]
    assert len(second["chunk_ns"]) == second["output_tokens"] == len(tokens)


def test_new_connection_per_request_never_meets_a_dead_connection() -> None:
    recs = asyncio.run(llama_like_pair(force_close=True))
    assert [(r["status"], r["attempts"]) for r in recs] == [("ok", 1), ("ok", 1)]
