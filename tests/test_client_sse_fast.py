"""The SSE scan's one-event fast path records exactly what the general scan records, chunk for chunk.

Each case is a list of body chunks as httptools hands them to ``on_body``; the
same chunks go through a response with the fast path and one without it
(``quoted_key = None``), and the records must be equal: the same tokens, with
the same stamps, the same first answer, the same end.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from loadgen.client.http import ConnectionPool
from loadgen.client.stream import _Response


def ev(obj, end: bytes = b"\n\n", sep: bytes = b" ") -> bytes:
    return b"data:" + sep + json.dumps(obj, separators=(",", ":")).encode() + end


def text(t: str, **extra) -> dict:
    return {"id": "c", "choices": [{"index": 0, "text": t, "finish_reason": None}], **extra}


def chat(**fields) -> dict:
    return {"id": "c", "choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


USAGE = {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

CASES = {
    "plain": ("completions", [ev(text("a")), ev(text(" b")), ev(text(" c")), b"data: [DONE]\n\n"]),
    "first event empty": ("completions", [ev(text("")), ev(text("x")), ev(text("")), ev(text("y")), b"data: [DONE]\n\n"]),
    "spaces after the key": ("completions", [ev(text("a")), b'data: {"choices":[{"text": "b"}]}\n\n', b"data: [DONE]\n\n"]),
    "no space after data:": ("completions", [ev(text("a")), ev(text("b"), sep=b""), b"data: [DONE]\n\n"]),
    "usage in a token event": ("completions", [ev(text("a")), ev(text("b", usage={"completion_tokens": 2})), b"data: [DONE]\n\n"]),
    "usage null": ("completions", [ev(text("a")), ev(text("b", usage=None)), ev(USAGE), b"data: [DONE]\n\n"]),
    "two events in one chunk": ("completions", [ev(text("a")), ev(text("b")) + ev(text("c")), b"data: [DONE]\n\n"]),
    "an event split over chunks": ("completions", [ev(text("a")), ev(text("b"))[:10], ev(text("b"))[10:], b"data: [DONE]\n\n"]),
    "crlf": ("completions", [ev(text("a"), b"\r\n\r\n"), ev(text("b"), b"\r\n\r\n"), b"data: [DONE]\r\n\r\n"]),
    "cut json": ("completions", [ev(text("a")), b'data: {"choices":[{"text":"b"\n\n']),
    "comment and id lines": ("completions", [ev(text("a")), b": keep-alive\n\n", b"id: 7\n" + ev(text("b")), b"data: [DONE]\n\n"]),
    "event: error": ("completions", [ev(text("a")), b"event: error\n" + ev({"error": "boom"})]),
    "the key's text inside a string": ("completions", [ev(text("a")), ev(text('say "text":"x"')), b"data: [DONE]\n\n"]),
    "chat content": ("chat", [ev(chat(role="assistant")), ev(chat(content="a")), ev(chat(content="")), ev(chat(content="b")),
                              b"data: [DONE]\n\n"]),
    "chat reasoning then answer": ("chat", [ev(chat(role="assistant")), ev(chat(reasoning_content="r", content=None)),
                                            ev(chat(content=None, reasoning="s")), ev(chat(content="a")), b"data: [DONE]\n\n"]),
    "events after done": ("completions", [ev(text("a")), b"data: [DONE]\n\n", ev(text("late"))]),
}


def _record(api: str, chunks: list[bytes], fast: bool) -> dict:
    """Feed ``chunks`` to a streaming response's ``on_body``, each read stamped 1000 + its index."""

    async def main() -> dict:
        pool = ConnectionPool("http://127.0.0.1:1/v1", now=lambda: 0)
        rec: dict = {"chunk_ns": []}
        response = _Response(rec, api, True, pool)
        if not fast:
            response.quoted_key = None
        response.sse = True
        for i, chunk in enumerate(chunks):
            response.t = 1000 + i
            response.on_body(chunk)
        error = response.future.exception() if response.future.done() and not response.future.cancelled() else None
        return {**rec, "done": response.done, "error": repr(error)}

    return asyncio.run(main())


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_fast_path_records_what_the_general_scan_records(name):
    api, chunks = CASES[name]
    assert _record(api, chunks, fast=True) == _record(api, chunks, fast=False)


def test_the_fast_path_takes_the_common_chunk():
    # Guards the speed-up itself: a plain token chunk after the first event never reaches the general scan.
    async def main() -> int:
        pool = ConnectionPool("http://127.0.0.1:1/v1", now=lambda: 0)
        rec: dict = {"chunk_ns": []}
        response = _Response(rec, "completions", True, pool)
        response.sse = True
        scanned = []
        response._events = lambda blocks: scanned.append(blocks)  # type: ignore[method-assign]
        response.first_event = False
        for i in range(5):
            response.t = i
            response.on_body(ev(text("tok")))
        assert rec["chunk_ns"] == [0, 1, 2, 3, 4] and rec["first_answer_ns"] == 0
        return len(scanned)

    assert asyncio.run(main()) == 0
