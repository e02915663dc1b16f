"""Send one request and time it: SSE streaming or plain JSON, every failure mode a status.

Input: an aiohttp session, a prepared body and a record dict. Output: the same
record filled with ``sent_ns, first_byte_ns, first_token_ns, end_ns, chunk_ns,
output_tokens, prompt_tokens, response_id, status, http_status, error,
attempts``. Nothing raises except cancellation; errors are record fields.

The hot path avoids JSON-decoding every token: a chunk counts as a token when
its ``"text"`` / ``"content"`` field holds a non-empty string and the event
ends its JSON object; only the first event (for the response id), usage events
and events without text (role-only chunks, keep-alives, anything malformed,
including cut-off JSON) are decoded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import aiohttp

Clock = Callable[[], int]

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


async def _read_stream(resp: aiohttp.ClientResponse, rec: dict[str, Any], api: str, now: Clock) -> None:
    """Consume an SSE response, timestamping every content chunk as it arrives."""
    keys = _TEXT_KEYS[api]
    chunks: list[int] = rec["chunk_ns"]
    append = chunks.append
    pending = b""
    first_event = True
    done = False
    async for data in resp.content.iter_any():
        t = now()
        if pending:
            data = pending + data
        lines = data.split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not line.startswith(_DATA):
                continue  # blank separators, comments (keep-alives), event:/id: fields
            event = line[5:].strip()
            if event == _DONE:
                done = True
                continue
            # An event that does not end its JSON object was cut or garbled: decode it to say so.
            if first_event or not event.endswith(b"}") or not _has_text(event, keys) or _has_usage(event):
                try:
                    obj = json.loads(event)
                except ValueError:
                    raise StreamError(f"malformed JSON in SSE event: {event[:120]!r}") from None
                if not isinstance(obj, dict):
                    raise StreamError(f"SSE event is not a JSON object: {event[:120]!r}")
                if "error" in obj and "choices" not in obj:
                    raise StreamError(f"error event in stream: {str(obj['error'])[:300]}")
                if first_event:
                    first_event = False
                    rec["response_id"] = obj.get("id")
                usage = obj.get("usage")
                if usage:
                    rec["output_tokens"] = usage.get("completion_tokens")
                    rec["prompt_tokens"] = usage.get("prompt_tokens")
                if not _choice_has_text(obj, api):
                    continue
            append(t)
        if done:
            break
    rec["end_ns"] = now()
    if not done:
        raise StreamError("stream ended without data: [DONE]")


def _choice_has_text(obj: dict[str, Any], api: str) -> bool:
    """Whether a decoded chunk carries generated text (role-only and usage chunks do not)."""
    for choice in obj.get("choices") or ():
        if api == "chat":
            if (choice.get("delta") or {}).get("content"):
                return True
        elif choice.get("text"):
            return True
    return False


async def _read_json(resp: aiohttp.ClientResponse, rec: dict[str, Any], now: Clock) -> None:
    """Consume a non-streaming response: only end time and usage are known."""
    body = await resp.read()
    rec["end_ns"] = now()
    try:
        obj = json.loads(body)
    except ValueError:
        raise StreamError(f"malformed JSON response: {body[:120]!r}") from None
    rec["response_id"] = obj.get("id")
    usage = obj.get("usage") or {}
    rec["output_tokens"] = usage.get("completion_tokens")
    rec["prompt_tokens"] = usage.get("prompt_tokens")


async def execute(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    rec: dict[str, Any],
    *,
    api: str,
    stream: bool,
    now: Clock,
) -> None:
    """Send one request and fill ``rec``; one retry if a pooled connection was already dead."""
    rec["chunk_ns"] = []
    for attempt in (1, 2):
        rec["attempts"] = attempt
        rec["sent_ns"] = now()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                rec["first_byte_ns"] = now()
                rec["http_status"] = resp.status
                if resp.status != 200:
                    text = (await resp.content.read(_ERROR_BODY_BYTES)).decode("utf-8", "replace")
                    rec["end_ns"] = now()
                    rec["status"] = "http_error"
                    retry = resp.headers.get("Retry-After")
                    note = f" (Retry-After: {retry})" if retry else ""
                    rec["error"] = f"HTTP {resp.status}{note}: {' '.join(text.split())[:300]}"
                    return
                if stream:
                    await _read_stream(resp, rec, api, now)
                else:
                    await _read_json(resp, rec, now)
            rec["status"] = "ok"
            if rec.get("output_tokens") is None:
                rec["output_tokens"] = len(rec["chunk_ns"])
            if rec["chunk_ns"]:
                rec["first_token_ns"] = rec["chunk_ns"][0]
            return
        except aiohttp.ServerDisconnectedError as exc:
            # A keep-alive connection the server had already closed (llama.cpp does this):
            # nothing reached the server, so one fresh attempt is honest.
            if attempt == 1 and rec.get("first_byte_ns") is None:
                continue
            _fail(rec, "connection_error", f"server disconnected: {exc}", now)
        except aiohttp.ConnectionTimeoutError as exc:
            _fail(rec, "connection_error", f"connect timeout: {exc}", now)
        except aiohttp.ServerTimeoutError:
            _fail(rec, "timeout", "stall: no data from the server within target.stall_timeout_s", now)
        except asyncio.TimeoutError:
            _fail(rec, "timeout", "request exceeded target.timeout_s", now)
        except aiohttp.ClientConnectorError as exc:
            _fail(rec, "connection_error", f"cannot connect: {exc.os_error or exc}", now)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError) as exc:
            _fail(rec, "connection_error", f"connection broken: {type(exc).__name__}: {exc}", now)
        except StreamError as exc:
            _fail(rec, "protocol_error", str(exc), now)
        except aiohttp.ClientError as exc:
            _fail(rec, "protocol_error", f"{type(exc).__name__}: {exc}", now)
        if rec["chunk_ns"]:
            rec["first_token_ns"] = rec["chunk_ns"][0]
        return


def _fail(rec: dict[str, Any], status: str, error: str, now: Clock) -> None:
    rec["status"] = status
    rec["error"] = error[:500]
    if rec.get("end_ns") is None:
        rec["end_ns"] = now()
