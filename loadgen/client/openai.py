"""OpenAI-compatible request bodies: completions and chat, with each engine's exact-length fields.

Input: a request-table row and the target config. Output: the URL path and the
JSON body bytes to POST. A worker builds each body the first time its row is sent (during the level) and keeps it for reuse.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from loadgen.config import TargetConfig

#: Fields each engine needs to generate exactly ``max_tokens`` tokens.
EXACT_LENGTH_FIELDS: dict[str, dict[str, Any]] = {
    "vllm": {"ignore_eos": True, "min_tokens": None},
    "sglang": {"ignore_eos": True, "min_tokens": None},
    "tgi": {},  # TGI's OpenAI route has no ignore_eos; lengths are measured, not forced
    "llamacpp": {"ignore_eos": True},
    "trtllm": {"ignore_eos": True, "min_tokens": None},
    "sim": {"ignore_eos": True, "min_tokens": None},
    "generic": {"ignore_eos": True},
}

PATHS = {"completions": "/completions", "chat": "/chat/completions", "responses": "/responses"}


def request_body(
    target: TargetConfig,
    model: str,
    *,
    prompt: Optional[str],
    messages: Optional[list[dict[str, str]]],
    output_tokens: int,
) -> bytes:
    """The JSON body for one request, as bytes."""
    body: dict[str, Any] = {"model": model, "max_tokens": int(output_tokens), "stream": target.stream}
    if target.api == "chat":
        body["messages"] = messages if messages else [{"role": "user", "content": prompt or ""}]
    elif target.api == "responses":  # the Responses API: input and max_output_tokens; usage always comes at the end
        del body["max_tokens"]
        body["input"] = messages if messages else (prompt or "")
        body["max_output_tokens"] = int(output_tokens)
    else:
        body["prompt"] = prompt if prompt is not None else _flatten(messages or [])
    if target.stream and target.api != "responses":
        body["stream_options"] = {"include_usage": True}
    if target.ignore_eos:
        for key, value in EXACT_LENGTH_FIELDS.get(target.engine, EXACT_LENGTH_FIELDS["generic"]).items():
            body[key] = int(output_tokens) if key == "min_tokens" else value
    body.update(target.extra_body)
    return json.dumps(body, separators=(",", ":")).encode()


def _flatten(messages: list[dict[str, str]]) -> str:
    """A chat conversation as one completion prompt."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def url_for(base_url: str, api: str) -> str:
    """The endpoint URL for ``api`` under a base URL ending in /v1."""
    return base_url.rstrip("/") + PATHS[api]
