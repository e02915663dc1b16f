"""Send one request and time it: SSE streaming or plain JSON, every failure mode a status.

Input: a connection pool (:mod:`loadgen.client.http`), a prepared body and a
record dict. Output: the same record filled with ``sent_ns, connect_ms, first_byte_ns,
first_token_ns, first_answer_ns, end_ns, chunk_ns, output_tokens,
prompt_tokens, reasoning_tokens, response_id, status, http_status, error,
attempts``. Nothing raises except cancellation; errors are record fields.

Every generated token counts, reasoning included: a chat delta's ``content``
(the answer) and its ``reasoning_content`` / ``reasoning`` (the thinking that
vLLM, SGLang, DeepSeek, Qwen3 and gpt-oss servers stream first) both land in
``chunk_ns``, so TTFT is the first token of any kind; ``first_answer_ns`` is
the first answer token's arrival. The Responses API (``api="responses"``) is
read the same way from its typed events.

SSE is parsed as the spec (html.spec.whatwg.org, "server-sent events") says:
LF, CRLF or CR line endings, an event ends at a blank line, its ``data:``
lines join with newlines, comment lines (``: keep-alive``) and ``id:`` /
``retry:`` fields are ignored, ``event:`` names the event type.

The hot path avoids JSON-decoding every token: an event made of one ``data:``
line counts as a token when its ``"text"`` / ``"content"`` (or reasoning)
field holds a non-empty string and the event ends its JSON object; only the
first event (for the response id), usage events and events without text
(role-only chunks, keep-alives, anything malformed, including cut-off JSON)
are decoded.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Optional

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
_ERROR_BODY_BYTES = 2048
#: Per API: the JSON keys whose non-empty string is an answer token, then those that are a reasoning token.
_TEXT_KEYS: dict[str, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {
    "completions": ((b'"text":',), ()),
    "chat": ((b'"content":',), (b'"reasoning_content":', b'"reasoning":')),
    "responses": ((b'"delta":',), (b'"delta":',)),
}
ANSWER, REASONING = 1, 2
#: Responses API event types (platform.openai.com, "Streaming events") and what each one is.
_RESPONSES_ANSWER = frozenset({"response.output_text.delta", "response.refusal.delta"})
_RESPONSES_REASONING = frozenset({"response.reasoning_text.delta", "response.reasoning_summary_text.delta"})
_RESPONSES_END = frozenset({"response.completed", "response.incomplete"})
_RESPONSES_FAILED = frozenset({"response.failed", "error"})


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


def _fields(block: bytes) -> tuple[Optional[bytes], str]:
    """One SSE event's ``data`` (its data lines joined by newlines; None without any) and its ``event`` type."""
    data: list[bytes] = []
    kind = ""
    for line in block.split(b"\n"):
        if not line or line[0] == 58:  # blank, or a comment (":")
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            kind = value.decode("utf-8", "replace")
    return (b"\n".join(data) if data else None), kind


def _json_type(event: bytes) -> str:
    """The ``"type"`` string of a JSON event, found without decoding it ('' if absent)."""
    i = event.find(b'"type":')
    if i < 0:
        return ""
    j = event.find(b'"', i + 7)
    k = event.find(b'"', j + 1) if j >= 0 else -1
    return event[j + 1 : k].decode("utf-8", "replace") if k > j >= 0 else ""


def _usage(rec: dict[str, Any], usage: Any, api: str) -> None:
    """Token counts from a ``usage`` object (the Responses API names them input/output tokens)."""
    if not isinstance(usage, dict):
        return
    if api == "responses":
        rec["output_tokens"] = usage.get("output_tokens")
        rec["prompt_tokens"] = usage.get("input_tokens")
        details = usage.get("output_tokens_details")
    else:
        rec["output_tokens"] = usage.get("completion_tokens")
        rec["prompt_tokens"] = usage.get("prompt_tokens")
        details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and details.get("reasoning_tokens") is not None:
        rec["reasoning_tokens"] = details["reasoning_tokens"]


class StreamError(Exception):
    """The server's stream broke the protocol (malformed event, error event, missing end)."""


class _Response(Exchange):
    """Reads one response into its record: SSE events as they arrive, or a JSON body, or an error body."""

    def __init__(self, rec: dict[str, Any], api: str, stream: bool, pool: ConnectionPool) -> None:
        super().__init__(pool.now)
        self.rec = rec
        self.answer_keys, self.reasoning_keys = _TEXT_KEYS[api]
        self.api = api
        self.stream = stream
        self.sse = False
        self.append = rec["chunk_ns"].append
        # The byte scan's fastest case: a whole event in one body chunk, its answer key followed
        # at once by a non-empty string ('"text":"x'); None: no fast case (the Responses API's typed events).
        self.quoted_key: Optional[bytes] = self.answer_keys[0] + b'"' if api != "responses" else None
        self.pending = b""
        self.cr = False  # the last read ended in CR: a LF opening the next one belongs to it
        self.first_event = True
        self.answered = False  # first_answer_ns is set
        self.done = False
        self.decoder: Optional[Any] = None  # zlib decompressor for a Content-Encoding: gzip/deflate body
        self.parts: list[bytes] = []
        self.size = 0

    def on_response(self) -> None:
        self.rec["first_byte_ns"] = self.first_byte_ns
        self.rec["http_status"] = self.status
        self.sse = self.stream and self.status == 200 and not self.headers.get("content-type", "").startswith("application/json")
        if self.headers.get("content-encoding", "identity").lower() in ("gzip", "x-gzip", "deflate"):
            self.decoder = zlib.decompressobj(47)  # 32 + 15: a gzip or a zlib header, told apart by the header

    def on_body(self, data: bytes) -> None:
        if self.decoder is not None:
            try:
                data = self.decoder.decompress(data)
            except zlib.error as exc:
                self.rec["end_ns"] = self.t
                self.fail(StreamError(f"Content-Encoding {self.headers.get('content-encoding')}: {exc}"))
                return
        if self.sse:
            if self.done:
                return
            # The complete events in the data; what follows the last blank line waits for the next read.
            if self.cr or 13 in data:  # CRLF or CR line endings: make them LF ("13 in" is a memchr)
                data = self._lf(data)
            if self.pending:
                data = self.pending + data
            elif self._one_token(data):
                return
            blocks = data.split(b"\n\n")
            self.pending = blocks.pop()
            self._events(blocks)
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
        elif not self.sse:
            self.rec["end_ns"] = self.t
            body = b"".join(self.parts)[:120]
            self.fail(StreamError(f"asked for a stream (target.stream=true), the server answered one JSON body: {body!r}"))
        elif not self.done:
            self.rec["end_ns"] = self.t
            end = "response.completed" if self.api == "responses" else "data: [DONE]"
            self.fail(StreamError(f"stream ended without {end}"))

    def _one_token(self, data: bytes) -> bool:
        """Record ``data`` if it is exactly one answer-token event (one ``data:`` line, then a blank line).

        The common chunk of every stream, vouched for with a few C-level byte
        searches instead of a split and a per-event loop. Anything else, the
        first event, usage, ``[DONE]``, spaces after the key, returns False and
        goes the general way (``_events``), which accepts everything this does.
        """
        key = self.quoted_key
        if key is None or self.first_event:
            return False
        k = data.find(key)
        if (
            k < 0
            or data[k + len(key)] == 34  # an empty string: not a token
            or not data.endswith(b"}\n\n")
            or not data.startswith(_DATA)
            or data.find(b"\n") != len(data) - 2  # more than one line
            or _USAGE in data
        ):
            return False
        self.append(self.t)
        if not self.answered:
            self.answered = True
            self.rec["first_answer_ns"] = self.t
        return True

    def _lf(self, data: bytes) -> bytes:
        """``data`` with CRLF and CR line endings made LF, a CRLF split across two reads included."""
        if not data:  # (a decompressor between two whole blocks): keep the pending CR for the next read
            return data
        if self.cr and data[:1] == b"\n":
            data = data[1:]
        self.cr = data[-1:] == b"\r"
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _events(self, blocks: list[bytes]) -> None:
        """Timestamp every token event in ``blocks`` with the time their bytes arrived."""
        t = self.t
        answer_keys, reasoning_keys = self.answer_keys, self.reasoning_keys
        for block in blocks:
            if block.startswith(_DATA) and 10 not in block:  # the common case: one data line
                event = block[5:].strip()
                kind = ""
            else:
                data, kind = _fields(block)
                if data is None:
                    continue  # comments (keep-alives), id:/retry: only, stray blank lines
                event = data.strip()
            if event == _DONE:
                self._done(t)
                return
            # An event that does not end its JSON object was cut or garbled: decode it to say so.
            if kind or self.first_event or not event.endswith(b"}") or _has_usage(event):
                token = self._decoded(event, kind)
            elif _has_text(event, answer_keys):
                self.append(t)  # the hot path: an answer token, vouched for without decoding
                if not self.answered:
                    self.answered = True
                    self.rec["first_answer_ns"] = t
                continue
            elif reasoning_keys and _has_text(event, reasoning_keys):
                token = REASONING
            else:
                token = self._decoded(event, kind)
            if token:
                self.append(t)
                if token == ANSWER and not self.answered:
                    self.answered = True
                    self.rec["first_answer_ns"] = t
            elif self.done:
                return

    def _done(self, t: int) -> None:
        self.done = True
        self.rec["end_ns"] = t
        self.finish()

    def _decoded(self, event: bytes, kind: str) -> int:
        """Decode an event the byte scan could not vouch for; the kind of token it carries (0: none).

        A broken or error event ends the stream: ``done`` is set and the exchange failed.
        """
        try:
            obj = json.loads(event)
        except ValueError:
            return self._broken(f"malformed JSON in SSE event: {event[:120]!r}")
        if not isinstance(obj, dict):
            return self._broken(f"SSE event is not a JSON object: {event[:120]!r}")
        if kind == "error" or ("error" in obj and "choices" not in obj):
            return self._broken(f"error event in stream: {str(obj.get('error', obj))[:300]}")
        if self.first_event:
            self.first_event = False
            self.rec["response_id"] = obj.get("id")
        usage = obj.get("usage")
        if usage:
            _usage(self.rec, usage, self.api)
        return _choice_token(obj, self.api)

    def _broken(self, message: str) -> int:
        self.done = True
        self.rec["end_ns"] = self.t
        self.fail(StreamError(message))
        return 0

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
        rec["output_tokens"] = rec["prompt_tokens"] = None
        _usage(rec, obj.get("usage"), self.api)

    def _error_end(self) -> None:
        if self.future.done():
            return
        rec = self.rec
        rec["end_ns"] = self.t
        rec["status"] = "http_error"
        text = b"".join(self.parts)[:_ERROR_BODY_BYTES].decode("utf-8", "replace")
        notes = [f"{name}: {self.headers[key]}" for key, name in (("retry-after", "Retry-After"), ("location", "Location"))
                 if key in self.headers]
        note = f" ({', '.join(notes)})" if notes else ""
        rec["error"] = f"HTTP {self.status}{note}: {' '.join(text.split())[:300]}"
        self.finish()


class _ResponsesResponse(_Response):
    """The Responses API stream: typed events, output and reasoning text deltas, no ``[DONE]``.

    The type comes from the ``event:`` line, or from the JSON's ``"type"`` when a
    server sends none; token deltas are recognised without decoding them.
    """

    def _events(self, blocks: list[bytes]) -> None:
        t = self.t
        for block in blocks:
            data, kind = _fields(block)
            if data is None:
                continue
            event = data.strip()
            if event == _DONE:
                self._done(t)
                return
            kind = kind or _json_type(event)
            if kind in _RESPONSES_ANSWER or kind in _RESPONSES_REASONING:
                if not self.first_event and event.endswith(b"}"):
                    token = _has_text(event, self.answer_keys)
                else:
                    token = self._decoded_delta(event)
                if token:
                    self.append(t)
                    if kind in _RESPONSES_ANSWER and not self.answered:
                        self.answered = True
                        self.rec["first_answer_ns"] = t
                elif self.done:
                    return
            elif kind in _RESPONSES_END or kind in _RESPONSES_FAILED or self.first_event:
                if self._lifecycle(event, kind, t):
                    return

    def _decoded_delta(self, event: bytes) -> bool:
        obj = self._object(event)
        if obj is None:
            return False
        self.first_event = False
        return isinstance(obj.get("delta"), str) and bool(obj["delta"])

    def _object(self, event: bytes) -> Optional[dict[str, Any]]:
        try:
            obj = json.loads(event)
        except ValueError:
            self._broken(f"malformed JSON in SSE event: {event[:120]!r}")
            return None
        if not isinstance(obj, dict):
            self._broken(f"SSE event is not a JSON object: {event[:120]!r}")
            return None
        return obj

    def _lifecycle(self, event: bytes, kind: str, t: int) -> bool:
        """A response.* event that is not a token: id, usage, end or failure. Whether the stream ended."""
        obj = self._object(event)
        if obj is None:
            return True
        response = obj.get("response") if isinstance(obj.get("response"), dict) else {}
        if self.first_event:
            self.first_event = False
            self.rec["response_id"] = response.get("id")
        if kind in _RESPONSES_FAILED:
            error = response.get("error") or obj.get("error") or obj.get("message") or obj
            self._broken(f"{kind} event in stream: {str(error)[:300]}")
            return True
        if kind in _RESPONSES_END:
            _usage(self.rec, response.get("usage"), self.api)
            self._done(t)
            return True
        return False


def _choice_token(obj: dict[str, Any], api: str) -> int:
    """The kind of token a decoded chunk carries: ANSWER, REASONING, or 0 (role-only and usage chunks)."""
    if api == "responses":
        return ANSWER if isinstance(obj.get("delta"), str) and obj["delta"] else 0
    kind = 0
    for choice in obj.get("choices") or ():
        if api == "chat":
            delta = choice.get("delta") or {}
            if delta.get("content"):
                return ANSWER
            if delta.get("reasoning_content") or delta.get("reasoning"):
                kind = REASONING
        elif choice.get("text"):
            return ANSWER
    return kind


async def execute(
    pool: ConnectionPool,
    path: str,
    body: bytes,
    headers: dict[str, str],
    rec: dict[str, Any],
    *,
    api: str,
    stream: bool,
) -> Optional[dict[str, str]]:
    """Send one request and fill ``rec``; one retry if a pooled connection was already dead.

    Returns the last response's headers (lower-case names; None if none arrived),
    so a caller can read a redirect's ``Location``.
    """
    chunks: list[int] = []
    rec["chunk_ns"] = chunks
    try:
        return await _attempts(pool, pool.request_bytes(path, body, headers), rec, api, stream)
    finally:  # whatever ended the request, cancellation included, the first token is the first chunk
        if chunks:
            rec["first_token_ns"] = chunks[0]


async def _attempts(
    pool: ConnectionPool, request: bytes, rec: dict[str, Any], api: str, stream: bool
) -> Optional[dict[str, str]]:
    now = pool.now
    reader = _ResponsesResponse if api == "responses" else _Response

    def sent() -> None:
        rec["sent_ns"] = now()

    response: Optional[_Response] = None
    for attempt in (1, 2):
        rec["attempts"] = attempt
        response = reader(rec, api, stream, pool)
        try:
            await pool.send(request, response, on_sent=sent)
            if rec.get("status") != "http_error":
                rec["status"] = "ok"
                if rec.get("output_tokens") is None:
                    rec["output_tokens"] = len(rec["chunk_ns"])
            break
        except Disconnected as exc:
            # A keep-alive connection the server had already closed (llama.cpp does this):
            # nothing reached the server, so one fresh attempt is honest.
            if attempt == 1 and exc.before_response and exc.reused:
                continue
            _fail(rec, "connection_error", f"connection broken: {exc}", now)
        except ConnectTimeout as exc:
            _connect_failed(rec, response)
            _fail(rec, "connection_error", f"connect timeout: {exc}", now)
        except ConnectError as exc:
            _connect_failed(rec, response)
            _fail(rec, "connection_error", f"cannot connect: {exc}", now)
        except (StallTimeout, TotalTimeout) as exc:
            _fail(rec, "timeout", str(exc), now)
        except (StreamError, InvalidResponse) as exc:
            _fail(rec, "protocol_error", str(exc), now)
        finally:  # the last attempt's own connect, if it opened one (cancellation included)
            rec["connect_ms"] = response.connect_ms
        break
    if response is not None and rec.get("status") == "ok":
        await pool.settle(response)  # recorded already; the connection is free once its last bytes are read
    return response.headers if response is not None and response.status else None


def _connect_failed(rec: dict[str, Any], response: _Response) -> None:
    """A request whose connection never opened: ``sent_ns`` is when the connect began."""
    if rec.get("sent_ns") is None:
        rec["sent_ns"] = response.connect_start_ns


def _fail(rec: dict[str, Any], status: str, error: str, now: Clock) -> None:
    rec["status"] = status
    rec["error"] = error[:500]
    if rec.get("end_ns") is None:
        rec["end_ns"] = now()
