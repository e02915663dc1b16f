"""The timed request: SSE parsing, token counting and every failure as a record status."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from aiohttp import web

from loadgen.client.http import ConnectionPool, Timeouts
from loadgen.client.openai import request_body
from loadgen.client.stream import execute
from loadgen.config import TargetConfig
from loopback import serve_app


def now() -> int:
    return time.monotonic_ns()


def sse(*events: object, done: bool = True) -> list[bytes]:
    out = [b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events]
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


def completion(text: str, **extra) -> dict:
    return {"id": "cmpl-1", "choices": [{"index": 0, "text": text, "finish_reason": None}], **extra}


def chat(content, role=None) -> dict:
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"id": "chatcmpl-9", "choices": [{"index": 0, "delta": delta}]}


def usage(prompt: int, completion_tokens: int) -> dict:
    return {"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens}}


async def serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    app.router.add_post("/v1/chat/completions", handler)
    return await serve_app(app)


def streaming(chunks: list[bytes], gap_s: float = 0.0, *, hang_s: float = 0.0):
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for c in chunks:
            await resp.write(c)
            if gap_s:
                await asyncio.sleep(gap_s)
        if hang_s:
            await asyncio.sleep(hang_s)
        await resp.write_eof()
        return resp

    return handler


def path_of(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


async def run_one(handler, *, api="completions", stream=True, timeouts=Timeouts(total_s=10, stall_s=5)) -> dict:
    runner, base = await serve(handler)
    rec: dict = {}
    pool = ConnectionPool(base, now=now, timeouts=timeouts)
    try:
        await execute(pool, path_of(api), b"{}", {}, rec, api=api, stream=stream)
    finally:
        await pool.close()
        await runner.cleanup()
    return rec


def test_completion_stream_counts_each_content_chunk_and_reads_usage():
    chunks = sse(completion(" a"), completion(" b"), completion(" c"), completion("", usage=None), usage(7, 3))
    rec = asyncio.run(run_one(streaming(chunks, gap_s=0.01)))
    assert rec["status"] == "ok"
    assert len(rec["chunk_ns"]) == 3
    assert rec["output_tokens"] == 3 and rec["prompt_tokens"] == 7
    assert rec["response_id"] == "cmpl-1"
    assert rec["first_token_ns"] == rec["chunk_ns"][0]
    assert rec["sent_ns"] <= rec["first_byte_ns"] <= rec["first_token_ns"] <= rec["end_ns"]
    gaps = [b - a for a, b in zip(rec["chunk_ns"], rec["chunk_ns"][1:])]
    assert all(g >= 5_000_000 for g in gaps)  # the server paced chunks 10 ms apart


def test_chat_role_only_chunk_is_not_the_first_token():
    chunks = sse(chat("", role="assistant"), chat(None, role="assistant"), chat("Hi"), chat(" there"), usage(4, 2))
    rec = asyncio.run(run_one(streaming(chunks, gap_s=0.02), api="chat"))
    assert rec["status"] == "ok"
    assert len(rec["chunk_ns"]) == 2
    assert rec["response_id"] == "chatcmpl-9"
    assert rec["first_token_ns"] - rec["first_byte_ns"] >= 20_000_000  # two chunks later


def test_llamacpp_style_final_chunk_with_empty_text_and_usage():
    last = {"choices": [{"text": "", "index": 0, "finish_reason": "length"}], "id": "x", "usage": {"prompt_tokens": 2, "completion_tokens": 2}}
    rec = asyncio.run(run_one(streaming(sse(completion("a"), completion("b"), last))))
    assert rec["status"] == "ok" and len(rec["chunk_ns"]) == 2 and rec["output_tokens"] == 2


def test_multi_token_chunks_are_counted_by_usage_tokens():
    chunks = sse(completion(" a b c"), completion(" d e f"), usage(5, 6))
    rec = asyncio.run(run_one(streaming(chunks)))
    assert len(rec["chunk_ns"]) == 2 and rec["output_tokens"] == 6


def test_without_usage_tokens_are_counted_by_chunks():
    rec = asyncio.run(run_one(streaming(sse(completion("a"), completion("b"), completion("c")))))
    assert rec["output_tokens"] == 3 and rec.get("prompt_tokens") is None


def test_chunks_split_across_reads_and_crlf_keepalives_parse():
    raw = b"".join(sse(completion("x"), completion("y")))
    pieces = [b": keep-alive\n\n", raw[:7], raw[7:30], raw[30:]]
    rec = asyncio.run(run_one(streaming(pieces, gap_s=0.01)))
    assert rec["status"] == "ok" and len(rec["chunk_ns"]) == 2


def test_stream_without_done_is_a_protocol_error_keeping_what_arrived():
    rec = asyncio.run(run_one(streaming(sse(completion("a"), completion("b"), done=False))))
    assert rec["status"] == "protocol_error" and "[DONE]" in rec["error"]
    assert len(rec["chunk_ns"]) == 2 and rec["first_token_ns"] is not None


def test_malformed_json_is_a_protocol_error():
    rec = asyncio.run(run_one(streaming(sse(completion("a"), b"{not json"))))
    assert rec["status"] == "protocol_error" and "malformed JSON" in rec["error"]


def test_error_event_inside_a_stream_is_a_protocol_error():
    rec = asyncio.run(run_one(streaming(sse(completion("a"), {"error": {"message": "boom"}}))))
    assert rec["status"] == "protocol_error" and "boom" in rec["error"]


def test_http_429_records_status_and_retry_after():
    async def handler(request):
        return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "3"})

    rec = asyncio.run(run_one(handler))
    assert rec["status"] == "http_error" and rec["http_status"] == 429
    assert "Retry-After: 3" in rec["error"] and "slow down" in rec["error"]


def test_stall_between_chunks_is_a_timeout():
    handler = streaming(sse(completion("a"), done=False), hang_s=3)
    rec = asyncio.run(run_one(handler, timeouts=Timeouts(total_s=10, stall_s=0.3)))
    assert rec["status"] == "timeout" and "stall" in rec["error"]
    assert len(rec["chunk_ns"]) == 1


def test_total_timeout():
    handler = streaming(sse(*[completion("a")] * 5), gap_s=0.2)
    rec = asyncio.run(run_one(handler, timeouts=Timeouts(total_s=0.3)))
    assert rec["status"] == "timeout" and "timeout_s" in rec["error"]


def test_connection_refused_is_a_connection_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    async def go():
        rec: dict = {}
        pool = ConnectionPool(f"http://127.0.0.1:{port}/v1", now=now)
        await execute(pool, "/v1/completions", b"{}", {}, rec, api="completions", stream=True)
        return rec

    rec = asyncio.run(go())
    assert rec["status"] == "connection_error" and "cannot connect" in rec["error"]


def test_reset_mid_stream_is_a_connection_error():
    async def handler(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(sse(completion("a"), done=False)[0])
        await asyncio.sleep(0.05)
        request.transport.abort()
        return resp

    rec = asyncio.run(run_one(handler))
    assert rec["status"] in ("connection_error", "protocol_error")
    assert rec["status"] == "connection_error", rec["error"]
    assert len(rec["chunk_ns"]) == 1


def test_non_streaming_records_end_and_usage():
    async def handler(request):
        return web.json_response({"id": "cmpl-7", "choices": [{"text": "abc"}], "usage": {"prompt_tokens": 3, "completion_tokens": 9}})

    rec = asyncio.run(run_one(handler, stream=False))
    assert rec["status"] == "ok" and rec["output_tokens"] == 9 and rec["prompt_tokens"] == 3
    assert rec["chunk_ns"] == [] and rec.get("first_token_ns") is None and rec["end_ns"] >= rec["sent_ns"]


def test_stale_pooled_connection_is_retried_once():
    """A server that closes every connection after answering (llama.cpp) costs one retry."""
    calls = []

    async def handler(request):
        calls.append(1)
        return web.json_response({"id": "x", "usage": {"completion_tokens": 1, "prompt_tokens": 1}})

    async def go():
        runner, base = await serve(handler)
        recs = []
        try:
            pool = ConnectionPool(base, now=now)
            for _ in range(3):
                rec: dict = {}
                await execute(pool, "/v1/completions", b"{}", {}, rec, api="completions", stream=False)
                recs.append(rec)
                # Close the server side of every kept-alive connection, as llama.cpp does.
                for proto in list(runner.server.connections):
                    proto.transport.close()
                await asyncio.sleep(0.05)
            await pool.close()
        finally:
            await runner.cleanup()
        return recs

    recs = asyncio.run(go())
    assert all(r["status"] == "ok" for r in recs)
    assert len(calls) == 3


def test_request_body_forces_exact_length_per_engine():
    t = TargetConfig(engine="vllm", api="chat")
    body = json.loads(request_body(t, "m", prompt="hi", messages=None, output_tokens=17))
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 17 and body["min_tokens"] == 17 and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True}
    t = TargetConfig(engine="llamacpp", api="completions", extra_body={"temperature": 0})
    body = json.loads(request_body(t, "m", prompt=None, messages=[{"role": "user", "content": "x"}], output_tokens=3))
    assert body["prompt"] == "user: x" and "min_tokens" not in body and body["temperature"] == 0
    t = TargetConfig(ignore_eos=False, stream=False)
    body = json.loads(request_body(t, "m", prompt="p", messages=None, output_tokens=3))
    assert "ignore_eos" not in body and "stream_options" not in body


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_text_detection_tolerates_spaces_after_colons(api):
    key = "text" if api == "completions" else "content"
    ev = f'{{"id": "a", "choices": [{{"index": 0, "{"delta" if api == "chat" else "x"}": {{}}, "{key}": "tok"}}]}}'.encode()
    if api == "chat":
        ev = b'{"id": "a", "choices": [{"delta": {"content": "tok"}}]}'
    rec = asyncio.run(run_one(streaming(sse(b'{"id": "first", "choices": []}', ev, ev)), api=api))
    assert rec["status"] == "ok" and len(rec["chunk_ns"]) == 2
