"""The OpenAI wire format as the simulator speaks it: request parsing and pre-encoded responses.

Input: the JSON body of ``POST /v1/completions`` or ``/v1/chat/completions``.
Output: a ``GenRequest`` (or a ``RequestError`` with an OpenAI-style body), and
the bytes of every SSE event and JSON response the simulator writes, shaped like
vLLM's. A prompt's token count is its number of whitespace-separated words (for
chat: the words of all message contents, no template overhead, at least one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

#: Text of one generated token.
TOKEN_TEXT = " tok"
#: max_tokens when a request does not say (the OpenAI completions default).
DEFAULT_MAX_TOKENS = 16

DONE = b"data: [DONE]\n\n"

_COMPLETION_EVENT = (
    b'data: {"id":%s,"object":"text_completion","created":%d,"model":%s,"choices":[{"index":0,'
    b'"text":"%s","logprobs":null,"finish_reason":%s,"stop_reason":null}]}\n\n'
)
_CHAT_EVENT = (
    b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[{"index":0,'
    b'"delta":{"content":"%s"},"logprobs":null,"finish_reason":%s}]}\n\n'
)
_REASONING_EVENT = (
    b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[{"index":0,'
    b'"delta":{"reasoning_content":"%s"},"logprobs":null,"finish_reason":null}]}\n\n'
)
_ROLE_EVENT = (
    b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
)
_USAGE_EVENT = (
    b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":[],"usage":{"prompt_tokens":%d,'
    b'"total_tokens":%d,"completion_tokens":%d,"prompt_tokens_details":{"cached_tokens":%d}%s}}\n\n'
)
_REASONING_USAGE = b',"completion_tokens_details":{"reasoning_tokens":%d}'
_GARBAGE_EVENT = b'data: {"id":%s,"object":"text_completion","choices":[{"text": "\xff\n\n'


class RequestError(Exception):
    """A request the simulator refuses; ``body()`` is the OpenAI-style error JSON."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}`` as the OpenAI API and vLLM return it."""
        kind = {404: "NotFoundError", 429: "RateLimitError"}.get(self.status, "BadRequestError")
        if self.status >= 500:
            kind = "InternalServerError"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


@dataclass
class GenRequest:
    """What the simulator needs from a generation request."""

    api: str  # completions | chat
    tokens: list[Any]  # the prompt's "tokens": its words, or the token ids it was given
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False

    @property
    def prompt_tokens(self) -> int:
        """Prompt length in tokens."""
        return len(self.tokens)


def _int_field(body: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestError(f"'{key}' must be an integer >= {minimum}, got {value!r}", param=key)
    return value


def _bool_field(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false, got {value!r}", param=key)
    return value


def _prompt_tokens(prompt: Any) -> list[Any]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        tokens: list[Any] = prompt.split()
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        tokens = prompt
    else:
        raise RequestError(
            "'prompt' must be a string or a list of token ids (the simulator serves one prompt per request)",
            param="prompt",
        )
    if not tokens:
        raise RequestError("'prompt' is empty", param="prompt")
    return tokens


def _message_tokens(messages: Any) -> list[Any]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    words: list[Any] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'", param="messages")
        content = message.get("content")
        if isinstance(content, str):
            words += content.split()
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    words += part["text"].split()
        elif content is not None:
            raise RequestError(f"messages[{i}].content must be a string or a list of parts", param="messages")
    return words or [""]


def parse_request(api: str, raw: bytes, model: str) -> GenRequest:
    """Validate a generation request body; raise RequestError (400, or 404 for another model)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    asked = body.get("model")
    if asked is not None and asked != model:
        raise RequestError(f"The model `{asked}` does not exist.", status=404, param="model")
    if api == "chat":
        if "messages" not in body:
            raise RequestError("'messages' is required", param="messages")
        tokens = _message_tokens(body["messages"])
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    else:
        if "prompt" not in body:
            raise RequestError("'prompt' is required", param="prompt")
        tokens = _prompt_tokens(body["prompt"])
        key = "max_tokens"
    max_tokens = _int_field(body, key, DEFAULT_MAX_TOKENS, 1)
    min_tokens = _int_field(body, "min_tokens", 0, 0)
    if min_tokens > max_tokens:
        raise RequestError(f"'min_tokens' ({min_tokens}) must not exceed '{key}' ({max_tokens})", param="min_tokens")
    if _int_field(body, "n", 1, 1) != 1:
        raise RequestError("the simulator supports n=1 only", param="n")
    stream = _bool_field(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise RequestError("'stream_options' can only be set when 'stream' is true", param="stream_options")
        if not isinstance(options, dict):
            raise RequestError("'stream_options' must be an object", param="stream_options")
    include_usage = bool(options and options.get("include_usage"))
    return GenRequest(api, tokens, max_tokens, min_tokens, _bool_field(body, "ignore_eos"), stream, include_usage)


class Encoder:
    """The bytes of one response: SSE events (optionally HTTP/1.1 chunk-framed) and the JSON body."""

    __slots__ = ("api", "response_id", "_id", "_model", "_created", "_framed", "_event", "chunk", "k", "reasoning")

    def __init__(
        self, api: str, response_id: str, model_json: bytes, created: int, k: int, framed: bool, reasoning: int = 0
    ) -> None:
        self.api = api
        self.response_id = response_id
        self._id = json.dumps(response_id).encode()
        self._model = model_json
        self._created = created
        self._framed = framed
        self._event = _CHAT_EVENT if api == "chat" else _COMPLETION_EVENT
        self.k = k
        self.reasoning = reasoning if api == "chat" else 0  # tokens of thinking before the answer (chat only)
        self.chunk = self.tokens(k)  # the common case, encoded once

    def frame(self, data: bytes) -> bytes:
        """Wrap bytes as one HTTP/1.1 chunk (the writes bypass aiohttp's own framing)."""
        return b"%x\r\n%s\r\n" % (len(data), data) if self._framed else data

    def _event_data(self, n: int, finish: Optional[str]) -> bytes:
        reason = b'"%s"' % finish.encode() if finish else b"null"
        return self._event % (self._id, self._created, self._model, (TOKEN_TEXT * n).encode(), reason)

    def tokens(self, n: int) -> bytes:
        """An event carrying ``n`` tokens."""
        return self.frame(self._event_data(n, None))

    def thinking(self, n: int) -> bytes:
        """An event carrying ``n`` reasoning tokens as ``delta.reasoning_content``, as vLLM's reasoning parsers send them."""
        return self.frame(_REASONING_EVENT % (self._id, self._created, self._model, (TOKEN_TEXT * n).encode()))

    def thought(self, written: int, n: int, total: int) -> int:
        """How many of the ``n`` tokens after the first ``written`` of ``total`` are reasoning (the last one never is)."""
        return max(0, min(n, min(self.reasoning, total - 1) - written))

    def role(self) -> bytes:
        """The chat stream's opening event: the assistant role and no text, as vLLM sends it."""
        return self.frame(_ROLE_EVENT % (self._id, self._created, self._model))

    def final(self, n: int, finish: str, usage: Optional[tuple[int, int, int]]) -> bytes:
        """The last ``n`` tokens with their finish_reason, the usage event if asked, and [DONE].

        ``usage`` is (prompt, completion, cached) tokens.
        """
        data = self._event_data(n, finish)
        if usage is not None:
            prompt, completion, cached = usage
            kind = b"chat.completion.chunk" if self.api == "chat" else b"text_completion"
            total = prompt + completion
            details = _REASONING_USAGE % self.thought(0, completion, completion) if self.reasoning else b""
            data += _USAGE_EVENT % (self._id, kind, self._created, self._model, prompt, total, completion, cached, details)
        return self.frame(data + DONE)

    def garbage(self) -> bytes:
        """One malformed event: truncated JSON with an invalid UTF-8 byte."""
        return self.frame(_GARBAGE_EVENT % self._id)

    def body(self, model: str, n: int, finish: str, prompt: int, cached: int) -> dict[str, Any]:
        """The non-streaming response."""
        text = TOKEN_TEXT * n
        thought = self.thought(0, n, n)
        if self.api == "chat":
            message = {"role": "assistant", "content": TOKEN_TEXT * (n - thought)}
            if thought:
                message["reasoning_content"] = TOKEN_TEXT * thought
            obj, choice = "chat.completion", {"index": 0, "message": message}
        else:
            obj, choice = "text_completion", {"index": 0, "text": text, "stop_reason": None}
        choice.update(logprobs=None, finish_reason=finish)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + n,
            "completion_tokens": n,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        if thought:
            usage["completion_tokens_details"] = {"reasoning_tokens": thought}
        return {
            "id": self.response_id,
            "object": obj,
            "created": self._created,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
