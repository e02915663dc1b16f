"""loadgen's own HTTP client: OpenAI bodies, the workers' HTTP/1.1 pool, the timed SSE/JSON request, and how a target is reached.

``openai`` builds request bodies; ``http`` holds the connection pool (kernel
receive stamps, every resolved address, TLS in memory, proxies via ``proxy``);
``stream`` sends one request and times every token; ``endpoint`` builds a pool
from the target config; ``fetch`` reads small whole responses (model list,
metrics) and follows 307/308.
"""

from __future__ import annotations

from loadgen.client.http import ConnectionPool, Timeouts
from loadgen.client.openai import request_body, url_for
from loadgen.client.stream import StreamError, execute

__all__ = ["ConnectionPool", "StreamError", "Timeouts", "execute", "request_body", "url_for"]
