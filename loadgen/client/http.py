"""Keep-alive HTTP/1.1 connections built for thousands of streams, each read stamped on arrival.

Each connection is a non-blocking socket read by the event loop's reader
callback; its response is parsed in C by ``httptools`` and handed, chunk by
chunk, straight to the request's :class:`Exchange`. No stream reader, future
or task wake-up stands between a token's bytes and its timestamp, which is
what lets one core follow thousands of streams (aiohttp's ``StreamReader``
path cost about three times more CPU per chunk). Each read also carries the
kernel's arrival time of its bytes, so a busy loop does not make tokens look
late. Timeouts cost one timer per request, re-armed only when it fires, never
per chunk.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import ssl
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional
from urllib.parse import urlsplit

import httptools

from loadgen.client.proxy import Proxy as _Proxy
from loadgen.headers import header_line

Clock = Callable[[], int]

_READ_SIZE = 1 << 18  # bytes per read: a burst of events on one stream is parsed in one go
# Linux: the kernel's arrival time of the bytes each read returns (struct timespec, CLOCK_REALTIME)
# (Python names no constant for it; 35 is SO_TIMESTAMPNS on Linux's common architectures)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
_TIMESPEC = struct.Struct("@ql")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if _SO_TIMESTAMPNS is not None else 0


class HTTPError(Exception):
    """A request that got no complete response; subclasses say why."""


class ConnectError(HTTPError):
    """The TCP (or TLS) connection could not be made; ``cause`` is the OSError of one failed address, if any."""

    def __init__(self, message: str, cause: Optional[OSError] = None) -> None:
        super().__init__(message)
        self.cause = cause


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
        self.realtime_shift = 0  # run clock minus the kernel's realtime clock, for arrival stamps
        # How long this request's own connection took to open (TCP, proxy tunnel, TLS), in ms;
        # None when it went out on a connection opened ahead (``ConnectionPool.warm``) or reused.
        self.connect_ms: Optional[float] = None
        self.connect_start_ns: Optional[int] = None  # when that connect began
        self.keep_alive = False
        self.message_complete = False
        self.tail: Optional[asyncio.Future] = None  # the request is done, its response's last bytes are due
        self.interim = False  # parsing a 1xx interim response

    # httptools callbacks ---------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # an interim response (100 Continue, 103 Early Hints): the real one follows on this connection
            self.interim = True
            self.headers = {}
            self.first_byte_ns = None
            return
        self.status = status
        if self.first_byte_ns is None:  # the final response began in the read that ended an interim one
            self.first_byte_ns = self.t
        # asked here: once the message is complete the parser has reset for the next one
        self.keep_alive = self.parser.should_keep_alive()
        self.on_response()

    def on_body(self, body: bytes) -> None:
        """Body bytes (chunked framing already removed)."""

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.message_complete = True
        self.on_end()
        self.finish()
        if self.tail is not None:
            _settle(self.tail)

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


class _TLS:
    """TLS over a plain socket through memory BIOs, so reads keep their kernel timestamps."""

    def __init__(self, context: ssl.SSLContext, hostname: str) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)

    async def handshake(self, sock: socket.socket) -> None:
        """Run the TLS handshake on a connected non-blocking socket."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await loop.sock_sendall(sock, self.outgoing.read())
                data = await loop.sock_recv(sock, _READ_SIZE)
                if not data:
                    raise ConnectionResetError("server closed the connection during the TLS handshake") from None
                self.incoming.write(data)
        await loop.sock_sendall(sock, self.outgoing.read())

    def encrypt(self, data: bytes) -> bytes:
        """The TLS records carrying ``data``."""
        self.obj.write(data)
        return self.outgoing.read()

    def decrypt(self, data: memoryview) -> bytes:
        """The plaintext that ``data`` completes (empty while a record is still partial)."""
        self.incoming.write(data)
        parts = []
        while True:
            try:
                parts.append(self.obj.read(_READ_SIZE))
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
        return b"".join(parts)


class _Connection:
    """One TCP connection, read by the loop's reader callback straight into the exchange's parser.

    Each read asks the kernel when its last byte arrived (``SO_TIMESTAMPNS``), so a
    token's time is its arrival at this machine, not the moment a busy event loop got
    round to it. TLS runs through ``ssl.MemoryBIO`` on the same socket, so the stamp
    is the ciphertext's arrival.
    """

    def __init__(self, pool: ConnectionPool, sock: socket.socket, tls: Optional[_TLS]) -> None:
        self.pool = pool
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.tls = tls
        self.parser: Optional[httptools.HttpResponseParser] = None
        self.exchange: Optional[Exchange] = None
        self.closed = False
        self.served = 0
        self.warm = False  # opened ahead of any request (``ConnectionPool.warm``)
        self._out = b""
        self.loop.add_reader(self.fd, self._readable)

    def start(self, exchange: Exchange, request: bytes) -> None:
        self.exchange = exchange
        self.parser = exchange.parser = httptools.HttpResponseParser(exchange)
        if self.closed:  # the server closed it between the connect and this request: say so, not EBADF
            self._lost(None)
            return
        self._write(request)

    # ------------------------------------------------------------------ writing
    def _write(self, data: bytes) -> None:
        if self.tls is not None:
            data = self.tls.encrypt(data)
        if self._out:
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):
            self._out = data[sent:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        self._out = self._out[sent:]
        if not self._out:
            self.loop.remove_writer(self.fd)

    # ------------------------------------------------------------------ reading
    def _readable(self) -> None:
        pool = self.pool
        try:
            n, anc, _, _ = self.sock.recvmsg_into(pool._read_buffers, _ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if n == 0:
            self._lost(None)
            return
        ex = self.exchange
        if ex is None:  # bytes on an idle connection
            if self.tls is not None:
                try:
                    plain = self.tls.decrypt(pool._read_view[:n])
                except ssl.SSLError as exc:
                    self._lost(exc)
                    return
                if not plain:
                    return  # TLS's own records (a TLS 1.3 session ticket after the handshake): not HTTP
            self.abort()  # HTTP bytes nobody asked for: nothing sane can follow
            return
        t = ex.now()
        if anc:
            level, kind, stamp = anc[0]
            if kind == _SO_TIMESTAMPNS and level == socket.SOL_SOCKET and len(stamp) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(stamp)
                arrived = sec * 1_000_000_000 + nsec + ex.realtime_shift
                if arrived < t:
                    t = arrived
        ex.t = ex.last_ns = t
        if ex.first_byte_ns is None:
            ex.first_byte_ns = t
        data = pool._read_view[:n]  # the shared buffer: parsed now, never kept
        if self.tls is not None:
            try:
                data = self.tls.decrypt(data)
            except ssl.SSLError as exc:
                self._lost(exc)
                return
            if not data:
                return
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
                pool._release(self)
            else:
                self.abort()

    # ------------------------------------------------------------------ closing
    def _lost(self, exc: Optional[BaseException]) -> None:
        """The server closed the connection (or it broke): settle the exchange in flight."""
        ex = self.exchange
        self.exchange = None
        self._close()
        if ex is not None and ex.tail is not None:
            _settle(ex.tail)  # no more bytes will come
        if ex is None or ex.future.done() and ex.message_complete:
            return
        if exc is None and ex.status and ex.eof_delimited:
            ex.on_message_complete()  # the close is the end of this body
            return
        reason = f": {exc}" if exc else ""
        # A connection opened ahead and closed by the server before its first request is as
        # stale as a kept-alive one: nothing reached the server, so the request may be retried.
        reused = self.served > 0 or self.warm
        ex.fail(
            Disconnected(f"server closed the connection{reason}", before_response=ex.first_byte_ns is None, reused=reused)
        )

    def abort(self) -> None:
        """Close now, unread bytes dropped: the exchange's outcome is already settled or moot."""
        self.exchange = None
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self._out:
            self.loop.remove_writer(self.fd)
        self.sock.close()
        self.pool._forget(self)


class ConnectionPool:
    """Keep-alive connections to one origin for one worker's requests, at most ``limit`` of them at once.

    A request holds its slot until it is done; a stream is done at ``[DONE]``, so
    a connection whose last bytes are still on their way can briefly sit beside
    a new one. Servers end the response in the same write, so this is rare.

    Each new connection looks the name up again (at most once per ``dns_ttl_s``,
    one lookup shared by the connections opened meanwhile), starts at the next
    of its addresses in turn, so connections spread over the addresses of a
    name, and races the others after it happy-eyeballs style (RFC 8305: IPv6
    and IPv4 interleaved, the next one started when the last fails or after
    250 ms). With ``proxy`` (an ``http://HOST:PORT`` URL), https goes through a
    ``CONNECT`` tunnel and http is sent to the proxy in absolute form; either
    way the socket is still the pool's own, so reads keep their kernel stamps.
    """

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
        server_name: Optional[str] = None,
        proxy: Optional[str] = None,
        resolver: Optional[Resolver] = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.server_name = server_name or self.host  # TLS: the name sent (SNI) and checked in the certificate
        self.now = now
        self.timeouts = timeouts
        self.keep_alive = keep_alive
        self.resolver = resolver or _getaddrinfo
        self.dns_ttl_s = 1.0
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if default_port else f"{host}:{self.port}"
        lines = [f"Host: {self.authority}"]
        lines += [header_line(k, v) for k, v in (headers or {}).items()]
        if not keep_alive:
            lines.append("Connection: close")
        self.proxy: Optional[_Proxy] = _Proxy.parse(proxy) if proxy else None
        self._target_prefix = b""  # http through a proxy: requests name the whole URL (absolute form)
        if self.proxy is not None and self.scheme == "http":
            self._target_prefix = f"http://{self.authority}".encode("latin-1")
            if self.proxy.authorization:
                lines.append(f"Proxy-Authorization: {self.proxy.authorization}")
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._addrs: list[tuple[int, tuple]] = []
        self._addrs_at = -math.inf
        self._lookup: Optional[asyncio.Future] = None
        self._turn = 0  # which address the next connection starts with
        self._failed: set = set()  # addresses that failed to connect since the last lookup
        # one read buffer for every connection: the loop is single-threaded and each read is parsed at once
        self._read_buffer = bytearray(_READ_SIZE)
        self._read_buffers = [self._read_buffer]
        self._read_view = memoryview(self._read_buffer)
        self._idle: deque[_Connection] = deque()
        self._all: set[_Connection] = set()

    def request_bytes(self, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> bytes:
        """The whole request: request line, pooled headers, per-request headers, body (a GET has none)."""
        extra = "".join(header_line(k, v) + "\r\n" for k, v in headers.items())
        length = b"Content-Length: %d\r\n" % len(body) if body or method != "GET" else b""
        return b"%s %s%s HTTP/1.1\r\n%s%s%s\r\n%s" % (
            method.encode("ascii"), self._target_prefix, path.encode("latin-1"), self._head, extra.encode("latin-1"),
            length, body,
        )

    async def send(self, request: bytes, exchange: Exchange, *, on_sent: Callable[[], None]) -> None:
        """Send ``request`` on a pooled or new connection and wait until ``exchange`` finishes.

        Raises a :class:`HTTPError` subclass for every way the request can fail; on
        failure or cancellation the connection is closed, never reused.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s
        async with self._slots:
            conn = self._idle_connection()
            if conn is None:  # this request opens its own connection: its time is recorded apart
                started = exchange.connect_start_ns = self.now()
                try:
                    conn = await self._acquire(deadline)
                finally:
                    exchange.connect_ms = (self.now() - started) / 1e6
            on_sent()  # when the request's bytes are written: after any connect, so TTFT holds none of it
            exchange.last_ns = self.now()
            exchange.realtime_shift = exchange.last_ns - time.time_ns()
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
            if conn.exchange is exchange and exchange.eof_delimited:
                conn.abort()  # done before the body's end, which only the server's close would mark (HTTP/1.0)
            elif conn.exchange is exchange and not conn.closed:
                exchange.tail = loop.create_future()  # set when the response's last bytes are read

    @staticmethod
    async def settle(exchange: Exchange) -> None:
        """After a request is done and recorded, wait up to ``_TAIL_WAIT_S`` for its response's last bytes.

        Servers end the chunked body after ``[DONE]``, sometimes in a later write;
        until then the connection is busy. Waiting for them (as an HTTP client that
        reads its response to the end does) lets the caller's next request reuse the
        connection instead of opening another one during the level.
        """
        tail = exchange.tail
        if tail is None or tail.done():
            return
        handle = asyncio.get_running_loop().call_later(_TAIL_WAIT_S, _settle, tail)
        try:
            await tail
        finally:
            handle.cancel()

    def _idle_connection(self) -> Optional[_Connection]:
        """An open idle connection (the most recently used: the least likely to have been closed), or None."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _acquire(self, deadline: float) -> _Connection:
        """A new connection, within the connect timeout and ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        timeout = min(self.timeouts.connect_s, max(0.0, deadline - loop.time()))
        where = f"{self.host}:{self.port}" + (f" via proxy {self.proxy.host}:{self.proxy.port}" if self.proxy else "")
        try:
            conn = await asyncio.wait_for(self._connect(), timeout)
        except asyncio.TimeoutError:
            raise ConnectTimeout(f"no connection to {where} within {timeout:g} s") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"{self.host}:{self.port}: TLS: {exc}") from None
        except OSError as exc:
            cause = OSError(exc.errno, os.strerror(exc.errno)) if exc.errno and exc.errno > 0 else None  # ConnectionRefusedError …
            raise ConnectError(f"{where}: {_reason(exc)}", cause) from None
        self._all.add(conn)
        return conn

    async def _connect(self) -> _Connection:
        host, port = (self.proxy.host, self.proxy.port) if self.proxy else (self.host, self.port)
        addrs = await self._addresses(host, port)
        start = self._turn % len(addrs)
        self._turn += 1
        order = addrs[start:] + addrs[:start]
        if self._failed:  # an address that failed lately is tried last, not first for every other connection
            order = [a for a in order if a[1] not in self._failed] + [a for a in order if a[1] in self._failed]
        sock = await _race(order, self._failed)
        try:
            if self.proxy is not None and self.ssl is not None:
                host = f"[{self.host}]" if ":" in self.host else self.host
                await self.proxy.tunnel(sock, f"{host}:{self.port}")  # CONNECT names the port, default or not
            tls = None
            if self.ssl is not None:
                tls = _TLS(self.ssl, self.server_name)
                await tls.handshake(sock)
        except BaseException:
            sock.close()
            raise
        return _Connection(self, sock, tls)

    async def _addresses(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """The name's addresses, IPv6 and IPv4 interleaved; looked up again once ``dns_ttl_s`` has passed."""
        loop = asyncio.get_running_loop()
        if self._addrs and loop.time() - self._addrs_at < self.dns_ttl_s:
            return self._addrs
        if self._lookup is None:  # one lookup at a time, shared by every connection waiting for it
            self._lookup = asyncio.ensure_future(self.resolver(host, port))
            self._lookup.add_done_callback(self._looked_up)
        try:
            infos = await asyncio.shield(self._lookup)
        except socket.gaierror as exc:
            raise OSError(exc.errno, f"cannot resolve {host!r}: {exc.strerror}") from None
        if not infos:
            raise OSError(f"{host!r} resolved to no address")
        self._addrs, self._addrs_at = _interleave(infos), loop.time()
        return self._addrs

    def _looked_up(self, lookup: asyncio.Future) -> None:
        self._lookup = None
        self._failed.clear()  # a new answer: every address gets a fresh chance
        if not lookup.cancelled():
            lookup.exception()  # retrieved: a failed lookup nobody awaited any more is not an error to log

    async def warm(self, n: int, rate_per_s: float) -> tuple[int, Optional[str]]:
        """Open connections ahead of the load until the pool holds ``n`` (at most its limit).

        New connections start at most ``rate_per_s`` per second, so a server's listen
        backlog never sees them all at once (a burst of SYNs beyond it costs the
        dropped ones a 1 s, then 2 s retransmit: seconds of TTFT). They wait idle.
        Returns (connections opened, the first failure's message or None); the first
        failure stops the warm-up, and the level's requests then connect on their own.
        """
        if not self.keep_alive or rate_per_s <= 0:
            return 0, None
        want = min(n, self._limit) - len(self._all)
        if want <= 0:
            return 0, None
        loop = asyncio.get_running_loop()
        start = loop.time()
        failed: list[str] = []
        attempts: list[asyncio.Future] = []
        for i in range(want):
            delay = start + i / rate_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if failed:
                break
            attempts.append(asyncio.ensure_future(self._open_idle(loop.time() + self.timeouts.connect_s, failed)))
        opened = sum(await asyncio.gather(*attempts))
        return opened, (failed[0] if failed else None)

    async def _open_idle(self, deadline: float, failed: list[str]) -> bool:
        """Open one connection into the idle set; on failure add its message to ``failed``."""
        try:
            conn = await self._acquire(deadline)
        except HTTPError as exc:
            failed.append(str(exc))
            return False
        conn.warm = True
        self._idle.appendleft(conn)  # behind the recently used ones: those are popped first
        return True

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
            conn._lost(ConnectionAbortedError("the pool was closed"))
        self._idle.clear()
        self._all.clear()
        await asyncio.sleep(0)


Resolver = Callable[[str, int], Awaitable[list]]
#: How long a finished request waits for its response's last bytes (``ConnectionPool.settle``).
_TAIL_WAIT_S = 0.05


def _settle(future: asyncio.Future) -> None:
    """Set ``future``'s result unless it is done."""
    if not future.done():
        future.set_result(None)

_HAPPY_EYEBALLS_DELAY_S = 0.25  # RFC 8305's recommended "connection attempt delay"


async def _getaddrinfo(host: str, port: int) -> list:
    """``getaddrinfo`` results for a TCP connection to ``host:port``."""
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _interleave(infos: list) -> list[tuple[int, tuple]]:
    """(family, address) pairs, alternating families from the first one listed (RFC 8305, section 4)."""
    seen: set = set()
    by_family: dict[int, list[tuple[int, tuple]]] = {}
    for family, _, _, _, addr in infos:
        if (family, addr) not in seen:
            seen.add((family, addr))
            by_family.setdefault(family, []).append((family, addr))
    groups = list(by_family.values())
    out = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out


async def _open_socket(family: int, addr: tuple) -> socket.socket:
    """A connected non-blocking TCP socket with no delay and, where the kernel has them, receive stamps."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _SO_TIMESTAMPNS is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError:
                pass  # a kernel (or sandbox) without receive stamps: reads are stamped when read
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _race(addrs: list[tuple[int, tuple]], failed: set) -> socket.socket:
    """Connect to the first address that answers, starting the next when one fails or after 250 ms.

    Addresses that failed are added to ``failed``.
    """
    if len(addrs) == 1:
        return await _open_socket(*addrs[0])
    waiting = list(addrs)
    tasks: dict[asyncio.Task, tuple] = {}  # attempt -> the address it dials
    errors: list[str] = []
    won: Optional[asyncio.Task] = None
    try:
        while won is None:
            if waiting:
                family, addr = waiting.pop(0)
                tasks[asyncio.ensure_future(_open_socket(family, addr))] = addr
            running = [t for t in tasks if not t.done()]
            if not running:
                break
            done, _ = await asyncio.wait(
                running, timeout=_HAPPY_EYEBALLS_DELAY_S if waiting else None, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task.exception() is None:
                    won = won or task
                else:
                    failed.add(tasks[task])
                    errors.append(f"{_format_addr(tasks[task])}: {_reason(task.exception())}")
    finally:
        for task in tasks:
            if task is won:
                continue
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is None:
                task.result().close()  # a second connection that made it too: not needed
    if won is None:
        raise OSError("no address answered: " + "; ".join(errors))
    return won.result()


def _format_addr(addr: tuple) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _reason(exc: BaseException) -> str:
    """An OSError as its errno's meaning (the loop's own wording, "Connect call failed", hides it)."""
    if isinstance(exc, OSError) and exc.errno and str(exc.strerror).startswith("Connect call failed"):
        return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
    return str(exc)


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
