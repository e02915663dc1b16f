"""Send one request and time it: SSE streaming or plain JSON, every failure mode a status.

Input: a connection pool (:mod:`loadgen.client.http`), a prepared body and a
record dict. Output: the same record filled with ``sent_ns, first_byte_ns,
first_token_ns, end_ns, chunk_ns, output_tokens, prompt_tokens, response_id,
status, http_status, error, attempts``. Nothing raises except cancellation; errors are record fields.

The hot path avoids JSON-decoding every token: a chunk counts as a token when
its ``"text"`` / ``"content"`` field holds a non-empty string and the event
ends its JSON object; only the first event (for the response id), usage events
and events without text (role-only chunks, keep-alives, anything malformed,
including cut-off JSON) are decoded.
"""

from __future__ import annotations

import json
from typing import Any

from loadgen.client.http import (
    Clock,
    ConnectError,
    ConnectionPool,
    ConnectTimeout,
    Disconnected,
    Exchange,
    InvalidResponse,
    StallTimeout,
    TotalTimeout,
)

_DATA = b"data:"
_DONE = b"[DONE]"
_USAGE = b'"usage":'
_TEXT_KEYS = {"completions": (b'"text":',), "chat": (b'"content":',)}
_ERROR_BODY_BYTES = 2048


def _has_text(event: bytes, keys: tuple[bytes, ...]) -> bool:
    """Whether a JSON event carries a non-empty string under one of ``keys`` (no decoding)."""
    for key in keys:
        i = event.find(key)
        while i >= 0:
            j = i + len(key)
            while j < len(event) and event[j] == 32:
                j += 1
            if j + 1 < len(event) and event[j] == 34 and event[j + 1] != 34:
                return True
            i = event.find(key, j)
    return False


def _has_usage(event: bytes) -> bool:
    """Whether an event carries a non-null ``usage`` object."""
    i = event.find(_USAGE)
    if i < 0:
        return False
    j = i + len(_USAGE)
    while j < len(event) and event[j] == 32:
        j += 1
    return j < len(event) and event[j] == 123  # '{'


class StreamError(Exception):
    """The server's stream broke the protocol (malformed event, error event, missing [DONE])."""


class _Response(Exchange):
    """Reads one response into its record: SSE events as they arrive, or a JSON body, or an error body."""

    def __init__(self, rec: dict[str, Any], api: str, stream: bool, pool: ConnectionPool) -> None:
        super().__init__(pool.now)
        self.rec = rec
        self.keys = _TEXT_KEYS[api]
        self.api = api
        self.stream = stream
        self.sse = False
        self.append = rec["chunk_ns"].append
        self.pending = b""
        self.first_event = True
        self.done = False
        self.parts: list[bytes] = []
        self.size = 0

    def on_response(self) -> None:
        self.rec["first_byte_ns"] = self.first_byte_ns
        self.rec["http_status"] = self.status
        self.sse = self.stream and self.status == 200

    def on_body(self, data: bytes) -> None:
        if self.sse:
            if not self.done:
                self._events(data)
        elif self.size < _ERROR_BODY_BYTES or self.status == 200:
            self.parts.append(data)
            self.size += len(data)
            if self.status != 200 and self.size >= _ERROR_BODY_BYTES:
                self._error_end()  # enough to say what went wrong; the rest is not read

    def on_end(self) -> None:
        if self.status != 200:
            self._error_end()
        elif not self.stream:
            self._json_end()
        elif not self.done:
            self.rec["end_ns"] = self.t
            self.fail(StreamError("stream ended without data: [DONE]"))

    def _events(self, data: bytes) -> None:
        """Timestamp every content event in ``data`` with the time its bytes arrived."""
        t = self.t
        if self.pending:
            data = self.pending + data
        lines = data.split(b"\n")
        self.pending = lines.pop()
        keys = self.keys
        for line in lines:
            if not line.startswith(_DATA):
                continue  # blank separators, comments (keep-alives), event:/id: fields
            event = line[5:].strip()
            if event == _DONE:
                self.done = True
                self.rec["end_ns"] = t
                self.finish()
                return
            # An event that does not end its JSON object was cut or garbled: decode it to say so.
            if self.first_event or not event.endswith(b"}") or not _has_text(event, keys) or _has_usage(event):
                try:
                    if not self._decoded(event):
                        continue
                except StreamError as exc:
                    self.done = True
                    self.rec["end_ns"] = t
                    self.fail(exc)
                    return
            self.append(t)

    def _decoded(self, event: bytes) -> bool:
        """Decode an event the byte scan could not vouch for; whether it carries text."""
        try:
            obj = json.loads(event)
        except ValueError:
            raise StreamError(f"malformed JSON in SSE event: {event[:120]!r}") from None
        if not isinstance(obj, dict):
            raise StreamError(f"SSE event is not a JSON object: {event[:120]!r}")
        if "error" in obj and "choices" not in obj:
            raise StreamError(f"error event in stream: {str(obj['error'])[:300]}")
        if self.first_event:
            self.first_event = False
            self.rec["response_id"] = obj.get("id")
        usage = obj.get("usage")
        if usage:
            self.rec["output_tokens"] = usage.get("completion_tokens")
            self.rec["prompt_tokens"] = usage.get("prompt_tokens")
        return _choice_has_text(obj, self.api)

    def _json_end(self) -> None:
        rec = self.rec
        rec["end_ns"] = self.t
        body = b"".join(self.parts)
        try:
            obj = json.loads(body)
        except ValueError:
            self.fail(StreamError(f"malformed JSON response: {body[:120]!r}"))
            return
        if not isinstance(obj, dict):
            self.fail(StreamError(f"JSON response is not an object: {body[:120]!r}"))
            return
        rec["response_id"] = obj.get("id")
        usage = obj.get("usage") or {}
        rec["output_tokens"] = usage.get("completion_tokens")
        rec["prompt_tokens"] = usage.get("prompt_tokens")

    def _error_end(self) -> None:
        if self.future.done():
            return
        rec = self.rec
        rec["end_ns"] = self.t
        rec["status"] = "http_error"
        text = b"".join(self.parts)[:_ERROR_BODY_BYTES].decode("utf-8", "replace")
        retry = self.headers.get("retry-after")
        note = f" (Retry-After: {retry})" if retry else ""
        rec["error"] = f"HTTP {self.status}{note}: {' '.join(text.split())[:300]}"
        self.finish()


def _choice_has_text(obj: dict[str, Any], api: str) -> bool:
    """Whether a decoded chunk carries generated text (role-only and usage chunks do not)."""
    for choice in obj.get("choices") or ():
        if api == "chat":
            if (choice.get("delta") or {}).get("content"):
                return True
        elif choice.get("text"):
            return True
    return False


async def execute(
    pool: ConnectionPool,
    path: str,
    body: bytes,
    headers: dict[str, str],
    rec: dict[str, Any],
    *,
    api: str,
    stream: bool,
) -> None:
    """Send one request and fill ``rec``; one retry if a pooled connection was already dead."""
    chunks: list[int] = []
    rec["chunk_ns"] = chunks
    try:
        await _attempts(pool, pool.request_bytes(path, body, headers), rec, api, stream)
    finally:  # whatever ended the request, cancellation included, the first token is the first chunk
        if chunks:
            rec["first_token_ns"] = chunks[0]


async def _attempts(pool: ConnectionPool, request: bytes, rec: dict[str, Any], api: str, stream: bool) -> None:
    now = pool.now

    def sent() -> None:
        rec["sent_ns"] = now()

    for attempt in (1, 2):
        rec["attempts"] = attempt
        try:
            await pool.send(request, _Response(rec, api, stream, pool), on_sent=sent)
            if rec.get("status") != "http_error":
                rec["status"] = "ok"
                if rec.get("output_tokens") is None:
                    rec["output_tokens"] = len(rec["chunk_ns"])
            return
        except Disconnected as exc:
            # A keep-alive connection the server had already closed (llama.cpp does this):
            # nothing reached the server, so one fresh attempt is honest.
            if attempt == 1 and exc.before_response and exc.reused:
                continue
            _fail(rec, "connection_error", f"connection broken: {exc}", now)
        except ConnectTimeout as exc:
            _fail(rec, "connection_error", f"connect timeout: {exc}", now)
        except ConnectError as exc:
            _fail(rec, "connection_error", f"cannot connect: {exc}", now)
        except (StallTimeout, TotalTimeout) as exc:
            _fail(rec, "timeout", str(exc), now)
        except (StreamError, InvalidResponse) as exc:
            _fail(rec, "protocol_error", str(exc), now)
        return


def _fail(rec: dict[str, Any], status: str, error: str, now: Clock) -> None:
    rec["status"] = status
    rec["error"] = error[:500]
    if rec.get("end_ns") is None:
        rec["end_ns"] = now()
