"""Whole small requests through the load's own client: the model list, the probe's redirects, metrics.

Input: a method, a URL, and a factory of pools (one per origin, so a redirect
to another host gets its own). Output: a :class:`Response` with the status,
headers, the body (``Content-Encoding: gzip``/``deflate`` undone) and the
final URL after 307/308 redirects; an :class:`~loadgen.client.http.HTTPError`
when no response came. Not for the hot path: the body is collected whole.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urljoin, urlsplit

from loadgen.client.http import ConnectionPool, Disconnected, Exchange, HTTPError, request_path

#: Redirects followed in a row before giving up (browsers allow about 20; a server needs one or two).
MAX_REDIRECTS = 5
#: Statuses that keep the method and the body (RFC 9110, 15.4.8 and 15.4.9): the only ones followed.
FOLLOWED = (307, 308)


class RedirectError(HTTPError):
    """Too many redirects in a row; the message names the chain."""


@dataclass
class Response:
    """A complete response: status, lower-case headers, decoded body, and the URL that answered."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str
    redirects: list[str]  # the URLs redirected from, in order

    def text(self, limit: int = 300) -> str:
        """The body as one line of text, cut at ``limit`` characters."""
        return " ".join(self.body.decode("utf-8", "replace").split())[:limit]


class _Whole(Exchange):
    """Collects a response's body (at most ``max_bytes`` of it, decoded)."""

    def __init__(self, pool: ConnectionPool, max_bytes: int) -> None:
        super().__init__(pool.now)
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0
        self.decoder: Optional["zlib._Decompress"] = None

    def on_response(self) -> None:
        if self.headers.get("content-encoding", "").lower() in ("gzip", "x-gzip", "deflate"):
            self.decoder = zlib.decompressobj(47)  # a gzip or zlib header, told apart by the header itself

    def on_body(self, body: bytes) -> None:
        if self.size >= self.max_bytes:
            return
        if self.decoder is not None:
            body = self.decoder.decompress(body, self.max_bytes - self.size)
        self.parts.append(body)
        self.size += len(body)


class Origins:
    """One connection pool per origin, made on demand by ``make(url)``; :meth:`close` closes them all."""

    def __init__(self, make: Callable[[str], ConnectionPool]) -> None:
        self.make = make
        self.pools: dict[tuple[str, str], ConnectionPool] = {}

    def pool(self, url: str) -> ConnectionPool:
        """The pool for ``url``'s scheme and host:port."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self.pools:
            self.pools[key] = self.make(url)
        return self.pools[key]

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()
        self.pools.clear()


def redirect_target(url: str, status: int, headers: dict[str, str]) -> Optional[str]:
    """Where a 307/308 response sends a request (absolute URL), or None if it is not one to follow."""
    location = headers.get("location")
    if status in FOLLOWED and location:
        return urljoin(url, location)
    return None


async def fetch(
    origins: Origins,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: Optional[dict[str, str]] = None,
    max_bytes: int = 1 << 20,
    max_redirects: int = MAX_REDIRECTS,
) -> Response:
    """Send one request and read its whole response, following 307/308 redirects with the same method and body."""
    redirects: list[str] = []
    while True:
        pool = origins.pool(url)
        request = pool.request_bytes(request_path(url), body, headers or {}, method)
        exchange = _Whole(pool, max_bytes)
        try:
            await pool.send(request, exchange, on_sent=_nothing)
        except Disconnected as exc:
            if not (exc.before_response and exc.reused):
                raise
            # a kept-alive connection the server had closed meanwhile: nothing reached it, ask once more
            exchange = _Whole(pool, max_bytes)
            await pool.send(request, exchange, on_sent=_nothing)
        following = redirect_target(url, exchange.status, exchange.headers)
        if following is None:
            data = b"".join(exchange.parts)
            return Response(exchange.status, exchange.headers, data, url, redirects)
        redirects.append(url)
        if len(redirects) > max_redirects:
            raise RedirectError(f"more than {max_redirects} redirects: {' -> '.join(redirects + [following])}")
        url = following


def _nothing() -> None:
    pass
