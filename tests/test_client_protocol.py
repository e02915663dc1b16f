"""What real servers send, each from a loopback server that sends exactly that: reasoning deltas, every SSE
framing, error events, gzip, interim responses, HTTP/1.0, dead keep-alive connections, the Responses API."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import pytest

from loadgen.client.http import ConnectionPool, Timeouts
from loadgen.client.stream import execute
from test_client_http import RawServer, chunked

HEAD_SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def ev(obj: dict, end: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + end


def delta(**fields) -> dict:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def writes(*parts: bytes, gap_s: float = 0.01, head: bytes = HEAD_SSE):
    """A responder writing ``parts`` as separate chunks, ``gap_s`` apart, then ending the chunked body."""

    async def respond(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        for part in parts:
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(gap_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return respond


async def _request(respond, *, api: str = "chat", stream: bool = True, n: int = 1, pause_s: float = 0.0) -> list[dict]:
    async with RawServer(respond) as srv:
        pool = ConnectionPool(srv.url, now=time.monotonic_ns, timeouts=Timeouts(total_s=10, stall_s=5))
        recs = []
        for _ in range(n):
            rec: dict = {}
            path = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses"}[api]
            await execute(pool, path, b"{}", {}, rec, api=api, stream=stream)
            recs.append(rec)
            if pause_s:
                await asyncio.sleep(pause_s)
        await pool.close()
        return recs


def request(respond, **kw) -> dict:
    return asyncio.run(_request(respond, **kw))[0]


# --------------------------------------------------------------------------- reasoning models


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_deltas_are_tokens_and_the_first_answer_is_timed_apart(field):
    """vLLM/SGLang/DeepSeek stream thinking as reasoning_content (gpt-oss, newer vLLM: reasoning), then the answer."""
    usage = {"id": "chatcmpl-1", "choices": [], "usage": {
        "prompt_tokens": 5, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 3}}}
    rec = request(writes(
        ev(delta(role="assistant", content="")),
        ev(delta(**{field: "Let"})), ev(delta(**{field: " me"}, content=None)), ev(delta(**{field: " think"})),
        ev(delta(content="Hi")), ev(delta(content="!")),
        ev(usage), b"data: [DONE]\n\n",
    ))
    assert rec["status"] == "ok", rec.get("error")
    chunks = rec["chunk_ns"]
    assert len(chunks) == 5  # three reasoning tokens and two answer tokens; the role-only chunk is none
    assert rec["first_token_ns"] == chunks[0]  # TTFT: the first token of any kind
    assert rec["first_answer_ns"] == chunks[3] > chunks[2]  # the first answer token, after the thinking
    assert rec["output_tokens"] == 5 and rec["reasoning_tokens"] == 3


def test_without_reasoning_the_first_answer_is_the_first_token():
    rec = request(writes(ev(delta(content="a")), ev(delta(content="b")), b"data: [DONE]\n\n"), api="chat")
    assert rec["first_answer_ns"] == rec["first_token_ns"] == rec["chunk_ns"][0]
    assert rec.get("reasoning_tokens") is None


# --------------------------------------------------------------------------- SSE framing


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_crlf_and_cr_line_endings(eol):
    events = [ev(delta(content=c), end=eol + eol) for c in "abc"] + [b"data: [DONE]" + eol + eol]
    stream = b"".join(events)
    # cut everywhere, a CRLF pair split across two reads included
    parts = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    rec = request(writes(*parts, gap_s=0.002))
    assert rec["status"] == "ok", rec.get("error")
    assert len(rec["chunk_ns"]) == 3


def test_comments_event_and_id_lines_are_not_tokens():
    rec = request(writes(
        b": keep-alive\n\n",
        b"event: message\nid: 1\n" + ev(delta(content="a")),
        b": ping\r\n\r\n",
        b"retry: 1000\n\n",
        b"id: 2\ndata: " + json.dumps(delta(content="b")).encode() + b"\n\n",
        b"data: [DONE]\n\n",
    ))
    assert rec["status"] == "ok", rec.get("error")
    assert len(rec["chunk_ns"]) == 2


def test_multi_line_data_is_one_event():
    """The spec joins an event's data lines with a newline: JSON may span them."""
    body = json.dumps(delta(content="a"), indent=1).encode().split(b"\n")
    event = b"".join(b"data: " + line + b"\n" for line in body) + b"\n"
    rec = request(writes(event, event, b"data: [DONE]\n\n"))
    assert rec["status"] == "ok", rec.get("error")
    assert len(rec["chunk_ns"]) == 2


def test_an_error_object_mid_stream_fails_the_request_naming_it():
    rec = request(writes(
        ev(delta(content="a")),
        ev({"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}),
        ev(delta(content="never")),
    ))
    assert rec["status"] == "protocol_error" and "CUDA out of memory" in rec["error"]
    assert len(rec["chunk_ns"]) == 1


def test_an_error_event_type_fails_the_request():
    rec = request(writes(ev(delta(content="a")), b'event: error\ndata: {"message": "overloaded"}\n\n'))
    assert rec["status"] == "protocol_error" and "overloaded" in rec["error"]


# --------------------------------------------------------------------------- other HTTP


def test_gzip_json_body_is_decoded():
    body = gzip.compress(json.dumps({"id": "x", "usage": {"prompt_tokens": 2, "completion_tokens": 7}}).encode())

    async def respond(request, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    rec = request(respond, api="completions", stream=False)
    assert rec["status"] == "ok", rec.get("error")
    assert rec["output_tokens"] == 7 and rec["response_id"] == "x"


def test_gzip_error_body_is_readable():
    body = gzip.compress(b'{"error": {"message": "model not found"}}')

    async def respond(request, writer):
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    rec = request(respond)
    assert rec["status"] == "http_error" and "model not found" in rec["error"]


def test_interim_1xx_responses_are_skipped():
    head = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + HEAD_SSE
    recs = asyncio.run(_request(writes(ev(delta(content="a")), b"data: [DONE]\n\n", head=head), n=2))
    assert [(r["status"], r["http_status"], len(r["chunk_ns"])) for r in recs] == [("ok", 200, 1)] * 2


def test_http_1_0_stream_ends_with_the_connection():
    async def respond(request, writer):
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        for c in "ab":
            writer.write(ev(delta(content=c)))
            await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        return False  # HTTP/1.0: close after the response

    recs = asyncio.run(_request(respond, n=3))
    assert [(r["status"], len(r["chunk_ns"]), r["attempts"]) for r in recs] == [("ok", 2, 1)] * 3


def test_a_keep_alive_connection_closed_while_idle_is_retried_once():
    """The server keeps the connection after the response, then drops it while idle; the next request is sent on it."""
    done = {"n": 0}

    async def respond(request, writer):
        done["n"] += 1
        writer.write(HEAD_SSE + chunked(ev(delta(content="a")) + b"data: [DONE]\n\n"))
        await writer.drain()
        if done["n"] == 1:
            await asyncio.sleep(0.01)
            writer.transport.abort()  # closed while idle, keep-alive notwithstanding
            return False

    async def go():
        async with RawServer(respond) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns, timeouts=Timeouts(total_s=10, stall_s=5))
            first: dict = {}
            await execute(pool, "/v1/chat/completions", b"{}", {}, first, api="chat", stream=True)
            # The server drops the idle connection; the client must not see it before its next send, as
            # when the close and the request cross on the wire: stop watching the socket meanwhile.
            conn = pool._idle[-1]
            conn.loop.remove_reader(conn.fd)
            await asyncio.sleep(0.05)
            conn.loop.add_reader(conn.fd, conn._readable)
            second: dict = {}
            await execute(pool, "/v1/chat/completions", b"{}", {}, second, api="chat", stream=True)
            await pool.close()
            return first, second, srv.connections

    first, second, connections = asyncio.run(go())
    assert first["status"] == "ok" and first["attempts"] == 1
    assert second["status"] == "ok" and second["attempts"] == 2, second.get("error")
    assert connections == 2


# --------------------------------------------------------------------------- Responses API


def rev(kind: str, **fields) -> bytes:
    return b"event: " + kind.encode() + b"\n" + ev({"type": kind, **fields})


def test_responses_api_stream_counts_output_and_reasoning_deltas():
    response = {"id": "resp_1", "status": "in_progress"}
    done = {"id": "resp_1", "status": "completed",
            "usage": {"input_tokens": 4, "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 2}}}
    rec = request(writes(
        rev("response.created", response=response),
        rev("response.in_progress", response=response),
        rev("response.output_item.added", output_index=0, item={"type": "reasoning"}),
        rev("response.reasoning_text.delta", item_id="r", output_index=0, content_index=0, delta="Hmm"),
        rev("response.reasoning_text.delta", item_id="r", output_index=0, content_index=0, delta=" ok"),
        rev("response.output_item.added", output_index=1, item={"type": "message"}),
        rev("response.content_part.added", output_index=1, content_index=0, part={"type": "output_text", "text": ""}),
        rev("response.output_text.delta", item_id="m", output_index=1, content_index=0, delta="Hi"),
        rev("response.output_text.delta", item_id="m", output_index=1, content_index=0, delta=" there"),
        rev("response.output_text.done", item_id="m", output_index=1, content_index=0, text="Hi there"),
        rev("response.completed", response=done),
    ), api="responses")
    assert rec["status"] == "ok", rec.get("error")
    assert len(rec["chunk_ns"]) == 4
    assert rec["first_token_ns"] == rec["chunk_ns"][0] and rec["first_answer_ns"] == rec["chunk_ns"][2]
    assert rec["response_id"] == "resp_1"
    assert (rec["output_tokens"], rec["prompt_tokens"], rec["reasoning_tokens"]) == (6, 4, 2)


def test_responses_api_without_event_lines_and_a_failed_response():
    ok = request(writes(
        ev({"type": "response.created", "response": {"id": "resp_2"}}),
        ev({"type": "response.output_text.delta", "delta": "a"}),
        ev({"type": "response.completed", "response": {"id": "resp_2", "usage": {"input_tokens": 1, "output_tokens": 1}}}),
    ), api="responses")
    assert ok["status"] == "ok" and len(ok["chunk_ns"]) == 1 and ok["output_tokens"] == 1
    failed = request(writes(
        rev("response.created", response={"id": "resp_3"}),
        rev("response.failed", response={"id": "resp_3", "error": {"code": "server_error", "message": "boom"}}),
    ), api="responses")
    assert failed["status"] == "protocol_error" and "boom" in failed["error"]
    cut = request(writes(rev("response.created", response={"id": "r"}), rev("response.output_text.delta", delta="a")),
                  api="responses")
    assert cut["status"] == "protocol_error" and "response.completed" in cut["error"]


def test_responses_api_json_body():
    body = json.dumps({"id": "resp_9", "object": "response", "status": "completed",
                       "usage": {"input_tokens": 3, "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 5}}})

    async def respond(request, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body.encode()))
        await writer.drain()

    rec = request(respond, api="responses", stream=False)
    assert rec["status"] == "ok" and (rec["output_tokens"], rec["prompt_tokens"], rec["reasoning_tokens"]) == (8, 3, 5)


def test_responses_api_request_body():
    from loadgen.client.openai import request_body, url_for
    from loadgen.config import TargetConfig

    t = TargetConfig(engine="vllm", api="responses")
    body = json.loads(request_body(t, "m", prompt="hi", messages=None, output_tokens=9))
    assert body["input"] == "hi" and body["max_output_tokens"] == 9 and body["stream"] is True
    assert "max_tokens" not in body and "stream_options" not in body and body["ignore_eos"] is True
    chat = [{"role": "user", "content": "x"}]
    assert json.loads(request_body(t, "m", prompt=None, messages=chat, output_tokens=1))["input"] == chat
    assert url_for("http://h/v1", "responses") == "http://h/v1/responses"
