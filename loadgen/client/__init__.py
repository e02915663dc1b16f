"""Protocol adapters: OpenAI bodies, the workers' HTTP/1.1 connection pool, and the timed SSE/JSON request."""

from __future__ import annotations

from loadgen.client.http import ConnectionPool, Timeouts
from loadgen.client.openai import request_body, url_for
from loadgen.client.stream import StreamError, execute

__all__ = ["ConnectionPool", "StreamError", "Timeouts", "execute", "request_body", "url_for"]
