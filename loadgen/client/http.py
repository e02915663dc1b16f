"""Keep-alive HTTP/1.1 connections built for thousands of streams: a bytes protocol, stamped on arrival.

Each connection is an ``asyncio.Protocol`` whose response is parsed in C by
``httptools`` and handed, chunk by chunk, straight to the request's
:class:`Exchange` inside ``data_received``. No stream reader, future or task
wake-up stands between a token's bytes and its timestamp, which is what lets
one core follow thousands of streams (aiohttp's ``StreamReader`` path costs
about four times more CPU per chunk). Timeouts cost one timer per request,
re-armed only when it fires, never per chunk.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit

import httptools

Clock = Callable[[], int]


class HTTPError(Exception):
    """A request that got no complete response; subclasses say why."""


class ConnectError(HTTPError):
    """The TCP (or TLS) connection could not be made."""


class ConnectTimeout(HTTPError):
    """The connection was not made within the connect timeout."""


class StallTimeout(HTTPError):
    """No bytes from the server within the stall timeout."""


class TotalTimeout(HTTPError):
    """The request outlived its whole-request timeout."""


class Disconnected(HTTPError):
    """The connection closed before the response was complete."""

    def __init__(self, message: str, *, before_response: bool, reused: bool) -> None:
        super().__init__(message)
        self.before_response = before_response  # no byte of the response had arrived
        self.reused = reused  # the connection had served an earlier request


class InvalidResponse(HTTPError):
    """The bytes from the server are not an HTTP/1.1 response."""


@dataclass(frozen=True)
class Timeouts:
    """Per-request limits, in seconds."""

    total_s: float = 600.0  # whole request, connect included
    stall_s: float = 60.0  # longest gap without a byte from the server
    connect_s: float = 10.0  # TCP (and TLS) connect


class Exchange:
    """One request's response as it arrives; the ``httptools`` parser calls these methods.

    Subclasses read the body (``on_body``) and call :meth:`finish` when they have
    what they need. ``t`` is the arrival time of the bytes being parsed.
    """

    def __init__(self, now: Clock) -> None:
        self.now = now
        self.t = 0
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.parser: Optional[httptools.HttpResponseParser] = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.first_byte_ns: Optional[int] = None
        self.last_ns = 0
        self.keep_alive = False
        self.message_complete = False

    # httptools callbacks ---------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        # asked here: once the message is complete the parser has reset for the next one
        self.keep_alive = self.parser.should_keep_alive()
        self.on_response()

    def on_body(self, body: bytes) -> None:
        """Body bytes (chunked framing already removed)."""

    def on_message_complete(self) -> None:
        self.message_complete = True
        self.on_end()
        self.finish()

    # hooks ---------------------------------------------------------------------
    def on_response(self) -> None:
        """Status and headers are known (``status``, ``headers``)."""

    def on_end(self) -> None:
        """The whole response has arrived."""

    # outcome -------------------------------------------------------------------
    def finish(self) -> None:
        """The request is done (the response may still be draining)."""
        if not self.future.done():
            self.future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """The request failed; the connection will not be reused."""
        if not self.future.done():
            self.future.set_exception(exc)

    @property
    def eof_delimited(self) -> bool:
        """A response whose body ends when the server closes the connection."""
        return "content-length" not in self.headers and "chunked" not in self.headers.get("transfer-encoding", "")


class _Connection(asyncio.Protocol):
    """One TCP connection; feeds the bytes of the current exchange's response to its parser."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: Optional[asyncio.Transport] = None
        self.parser: Optional[httptools.HttpResponseParser] = None
        self.exchange: Optional[Exchange] = None
        self.closed = False
        self.served = 0

    def start(self, exchange: Exchange, request: bytes) -> None:
        self.exchange = exchange
        self.parser = exchange.parser = httptools.HttpResponseParser(exchange)
        assert self.transport is not None
        self.transport.write(request)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes on an idle connection: nothing sane can follow
            self.abort()
            return
        t = ex.t = ex.last_ns = ex.now()
        if ex.first_byte_ns is None:
            ex.first_byte_ns = t
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserCallbackError as exc:
            ex.fail(exc.__context__ or exc)
            self.abort()
            return
        except httptools.HttpParserError as exc:
            ex.fail(InvalidResponse(f"invalid HTTP response: {exc}"))
            self.abort()
            return
        if ex.message_complete:
            self.exchange = None
            self.served += 1
            fut = ex.future
            if fut.done() and not fut.cancelled() and fut.exception() is None and ex.keep_alive:
                self.pool._release(self)
            else:
                self.abort()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self.pool._forget(self)
        ex = self.exchange
        self.exchange = None
        if ex is None or ex.future.done() and ex.message_complete:
            return
        if exc is None and ex.status and ex.eof_delimited:
            ex.on_message_complete()  # the close is the end of this body
            return
        reason = f": {exc}" if exc else ""
        ex.fail(
            Disconnected(
                f"server closed the connection{reason}", before_response=ex.first_byte_ns is None, reused=self.served > 0
            )
        )

    def abort(self) -> None:
        """Close now, unread bytes dropped (a connection mid-response cannot be reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class ConnectionPool:
    """Keep-alive connections to one origin, at most ``limit`` open, for one worker's requests."""

    def __init__(
        self,
        base_url: str,
        *,
        now: Clock,
        headers: Optional[dict[str, str]] = None,
        limit: int = 10_000,
        timeouts: Timeouts = Timeouts(),
        keep_alive: bool = True,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.now = now
        self.timeouts = timeouts
        self.keep_alive = keep_alive
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"Host: {host if default_port else f'{host}:{self.port}'}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if not keep_alive:
            lines.append("Connection: close")
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._slots = asyncio.Semaphore(limit)
        self._idle: deque[_Connection] = deque()
        self._all: set[_Connection] = set()

    def request_bytes(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        """The whole POST request: request line, pooled headers, per-request headers, body."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return b"POST %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
            path.encode("latin-1"), self._head, extra.encode("latin-1"), len(body), body
        )

    async def send(self, request: bytes, exchange: Exchange, *, on_sent: Callable[[], None]) -> None:
        """Send ``request`` on a pooled or new connection and wait until ``exchange`` finishes.

        Raises a :class:`HTTPError` subclass for every way the request can fail; on
        failure or cancellation the connection is closed, never reused.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s
        async with self._slots:
            on_sent()  # connecting is part of the request, as for any client; waiting for a slot is not
            conn = await self._acquire(deadline)
            exchange.last_ns = self.now()
            conn.start(exchange, request)
            timer = _Watchdog(loop, exchange, deadline, self.timeouts.stall_s)
            try:
                await exchange.future
            except BaseException:
                if conn.exchange is exchange:
                    conn.abort()
                raise
            finally:
                timer.cancel()
            if conn.exchange is exchange and not self.keep_alive:
                conn.abort()

    async def _acquire(self, deadline: float) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.closed and not conn.transport.is_closing():  # type: ignore[union-attr]
                return conn
        loop = asyncio.get_running_loop()
        timeout = min(self.timeouts.connect_s, max(0.0, deadline - loop.time()))
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectTimeout(f"no connection to {self.host}:{self.port} within {timeout:g} s") from None
        except OSError as exc:
            raise ConnectError(f"{self.host}:{self.port}: {exc.strerror or exc}") from None
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if self.keep_alive and not conn.closed:
            self._idle.append(conn)
        else:
            conn.abort()

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)

    async def close(self) -> None:
        """Close every connection."""
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        self._all.clear()
        await asyncio.sleep(0)


class _Watchdog:
    """One timer per request for both timeouts; it re-arms itself when it fires early."""

    __slots__ = ("loop", "exchange", "deadline", "stall_ns", "stall_s", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, exchange: Exchange, deadline: float, stall_s: float) -> None:
        self.loop = loop
        self.exchange = exchange
        self.deadline = deadline
        self.stall_s = stall_s
        self.stall_ns = int(stall_s * 1e9)
        self.handle = loop.call_at(min(deadline, loop.time() + stall_s), self._check)

    def _check(self) -> None:
        ex = self.exchange
        if ex.future.done():
            return
        now = self.loop.time()
        if now >= self.deadline:
            ex.fail(TotalTimeout("request exceeded target.timeout_s"))
            return
        quiet_s = (ex.now() - ex.last_ns) / 1e9
        if quiet_s >= self.stall_s:
            ex.fail(StallTimeout("stall: no data from the server within target.stall_timeout_s"))
            return
        self.handle = self.loop.call_at(min(self.deadline, now + self.stall_s - quiet_s), self._check)

    def cancel(self) -> None:
        self.handle.cancel()


def request_path(url: str) -> str:
    """The path (and query) part of a URL, as sent in the request line."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
