"""Protocol adapters: OpenAI completions/chat bodies and the timed SSE/JSON request."""

from __future__ import annotations

from loadgen.client.openai import request_body, url_for
from loadgen.client.stream import StreamError, execute

__all__ = ["StreamError", "execute", "request_body", "url_for"]
