"""The workers' HTTP/1.1 connections: reuse, limits, framing, and no reuse after a broken exchange."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from loadgen.client.http import ConnectionPool, Timeouts, request_path
from loadgen.client.stream import execute

SSE_BODY = (
    b'data: {"id":"c1","choices":[{"text":"a"}]}\n\n'
    b'data: {"id":"c1","choices":[{"text":"b"}]}\n\n'
    b"data: [DONE]\n\n"
)


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


class RawServer:
    """A loopback server that answers each request with bytes a test chooses, and counts connections."""

    def __init__(self, respond) -> None:
        self.respond = respond  # async (request_bytes, writer) -> None
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> "RawServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")][0].split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if await self.respond(request, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


def sse_ok(delay_s: float = 0.0):
    async def respond(request: bytes, writer: asyncio.StreamWriter) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunked(SSE_BODY))
        await writer.drain()

    return respond


async def one(pool: ConnectionPool, stream: bool = True) -> dict:
    rec: dict = {}
    await execute(pool, "/v1/completions", b'{"x":1}', {"X-Request-Id": "r1"}, rec, api="completions", stream=stream)
    return rec


def test_sequential_requests_share_one_kept_alive_connection():
    async def go():
        async with RawServer(sse_ok()) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns)
            recs = [await one(pool) for _ in range(5)]
            await asyncio.sleep(0)
            await pool.close()
            return recs, srv.connections

    recs, connections = asyncio.run(go())
    assert [r["status"] for r in recs] == ["ok"] * 5
    assert all(len(r["chunk_ns"]) == 2 and r["attempts"] == 1 for r in recs)
    assert connections == 1


def test_request_carries_host_pooled_headers_request_id_and_length():
    async def go():
        async with RawServer(sse_ok()) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns, headers={"Authorization": "Bearer k", "X-Team": "a"})
            await one(pool)
            await pool.close()
            return srv.requests[0], srv.url

    request, url = asyncio.run(go())
    head, body = request.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/completions HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Host"] == url.split("//")[1].split("/")[0]
    assert headers["Authorization"] == "Bearer k" and headers["X-Team"] == "a"
    assert headers["X-Request-Id"] == "r1" and headers["Content-Length"] == "7"
    assert "Connection" not in headers and body == b'{"x":1}'


def test_pool_never_opens_more_than_its_limit():
    async def go():
        async with RawServer(sse_ok(delay_s=0.05)) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns, limit=3)
            recs = await asyncio.gather(*[one(pool) for _ in range(12)])
            await pool.close()
            return recs, srv.max_open

    recs, max_open = asyncio.run(go())
    assert all(r["status"] == "ok" for r in recs)
    assert max_open == 3


def test_without_keep_alive_every_request_opens_and_closes_its_connection():
    async def go():
        async with RawServer(sse_ok()) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns, keep_alive=False)
            recs = [await one(pool) for _ in range(3)]
            await pool.close()
            return recs, srv.connections, srv.requests

    recs, connections, requests = asyncio.run(go())
    assert [r["status"] for r in recs] == ["ok"] * 3
    assert connections == 3 and all(b"Connection: close\r\n" in r for r in requests)


def test_body_delimited_by_the_server_closing_is_read_whole():
    async def respond(request, writer):
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
        writer.write(b'{"id":"x","usage":{"prompt_tokens":2,')
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b'"completion_tokens":5}}')
        await writer.drain()
        return False  # close: that ends the body

    async def go():
        async with RawServer(respond) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns)
            rec = await one(pool, stream=False)
            await pool.close()
            return rec

    rec = asyncio.run(go())
    assert rec["status"] == "ok", rec.get("error")
    assert rec["output_tokens"] == 5 and rec["prompt_tokens"] == 2 and rec["response_id"] == "x"


def test_garbage_instead_of_http_is_a_protocol_error():
    async def respond(request, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async def go():
        async with RawServer(respond) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns)
            rec = await one(pool)
            await pool.close()
            return rec

    rec = asyncio.run(go())
    assert rec["status"] == "protocol_error" and "invalid HTTP response" in rec["error"]


def test_a_cancelled_request_never_hands_its_connection_to_the_next():
    """Cut mid-stream, the connection still has the old response's bytes coming: it must be closed."""

    async def go():
        started = asyncio.Event()

        async def respond(request, writer):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(chunked(b'data: {"id":"c","choices":[{"text":"a"}]}\n\n')[:-5])  # stream stays open
            await writer.drain()
            if len(srv.requests) == 1:
                started.set()
                await asyncio.sleep(0.3)
                writer.write(chunked(b'data: {"id":"c","choices":[{"text":"late"}]}\n\n')[:-5])
                await writer.drain()
                return False
            writer.write(chunked(SSE_BODY))
            await writer.drain()

        async with RawServer(respond) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns)
            first = asyncio.create_task(one(pool))
            await started.wait()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            rec = await one(pool)
            await pool.close()
            return rec, srv.connections

    rec, connections = asyncio.run(go())
    assert rec["status"] == "ok" and len(rec["chunk_ns"]) == 3  # the open first event, then the body's two
    assert connections == 2


def test_ipv6_loopback_and_request_path():
    assert request_path("http://[::1]:8000/v1/completions?x=1") == "/v1/completions?x=1"
    assert request_path("http://h") == "/"
    pool = ConnectionPool("http://[::1]:8123/v1", now=time.monotonic_ns)
    assert b"Host: [::1]:8123\r\n" in pool.request_bytes("/v1/completions", b"", {})
    with pytest.raises(ValueError, match="not an http"):
        ConnectionPool("ftp://x/v1", now=time.monotonic_ns)


def test_timeouts_are_one_timer_per_request_not_one_per_chunk():
    """A stream that trickles a byte every 50 ms never stalls at 0.2 s, but does hit the total limit."""

    async def respond(request, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(30):
            writer.write(chunked(b": ping\n\n")[:-5])
            await writer.drain()
            await asyncio.sleep(0.05)
        return False

    async def go():
        async with RawServer(respond) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns, timeouts=Timeouts(total_s=0.6, stall_s=0.2))
            t0 = time.monotonic()
            rec = await one(pool)
            elapsed = time.monotonic() - t0
            await pool.close()
            return rec, elapsed

    rec, elapsed = asyncio.run(go())
    assert rec["status"] == "timeout" and "timeout_s" in rec["error"], rec["error"]
    assert 0.55 < elapsed < 1.5


def _kernel_stamps_work() -> bool:
    """Whether this kernel (or sandbox) returns receive timestamps on a TCP read."""
    if not sys.platform.startswith("linux"):
        return False
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        server, _ = listener.accept()
        with server:
            try:
                client.setsockopt(socket.SOL_SOCKET, 35, 1)
            except OSError:
                return False
            server.sendall(b"x")
            _, anc, _, _ = client.recvmsg(16, socket.CMSG_SPACE(16))
            return bool(anc) and anc[0][1] == 35


@pytest.mark.skipif(not _kernel_stamps_work(), reason="this kernel gives no receive timestamps on TCP (SO_TIMESTAMPNS)")
def test_arrival_is_stamped_by_the_kernel_even_when_the_event_loop_is_blocked():
    """Tokens 100 ms apart; the loop stalls from 150 to 260 ms: the token that arrives meanwhile keeps its arrival time."""
    written: list[int] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:  # a thread, so the client's blocked loop cannot delay it
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for text in (b"a", b"b", b"c"):
                time.sleep(0.1)
                written.append(time.monotonic_ns())
                conn.sendall(chunked(b'data: {"id":"c","choices":[{"text":"%s"}]}\n\n' % text)[:-5])
            conn.sendall(chunked(b"data: [DONE]\n\n"))

    async def go():
        pool = ConnectionPool(f"http://127.0.0.1:{listener.getsockname()[1]}", now=time.monotonic_ns)
        asyncio.get_running_loop().call_later(0.15, time.sleep, 0.11)
        rec = await one(pool)
        await pool.close()
        return rec

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    rec = asyncio.run(go())
    server.join(5)
    listener.close()
    assert rec["status"] == "ok" and len(rec["chunk_ns"]) == 3
    errors_ms = [(got - sent) / 1e6 for got, sent in zip(rec["chunk_ns"], written)]
    # token b would read ~50 ms late if stamped when the loop got to it
    assert all(-1 < e < 20 for e in errors_ms), errors_ms


def test_https_through_memory_bios(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=loadgen-test", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True,
    )
    if made.returncode:
        pytest.skip(f"openssl could not make a test certificate: {made.stderr[-200:]!r}")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def go():
        srv = RawServer(sse_ok())
        srv.server = await asyncio.start_server(srv._serve, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.server.sockets[0].getsockname()[1]
        pool = ConnectionPool(f"https://127.0.0.1:{port}/v1", now=time.monotonic_ns, ssl_context=client_ctx)
        recs = [await one(pool) for _ in range(3)]
        untrusted = ConnectionPool(f"https://127.0.0.1:{port}/v1", now=time.monotonic_ns)
        refused = await one(untrusted)
        await pool.close()
        await untrusted.close()
        srv.server.close()
        return recs, srv.connections, refused

    recs, connections, refused = asyncio.run(go())
    assert [(r["status"], len(r["chunk_ns"])) for r in recs] == [("ok", 2)] * 3
    assert connections == 1  # kept alive for all three (the refused one never got past its handshake)
    assert refused["status"] == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in refused["error"]


def test_a_request_larger_than_the_socket_buffer_is_sent_whole():
    """A long prompt (8 MiB here) is written in pieces as the server reads it, none lost."""
    body = b'{"prompt":"' + b"x" * (8 << 20) + b'"}'

    async def respond(request, writer):
        await asyncio.sleep(0)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunked(SSE_BODY))
        await writer.drain()

    async def go():
        async with RawServer(respond) as srv:
            pool = ConnectionPool(srv.url, now=time.monotonic_ns)
            rec: dict = {}
            await execute(pool, "/v1/completions", body, {}, rec, api="completions", stream=True)
            await pool.close()
            return rec, srv.requests

    rec, requests = asyncio.run(go())
    assert rec["status"] == "ok" and len(rec["chunk_ns"]) == 2
    assert len(requests) == 1 and requests[0].endswith(body)


def test_a_header_that_would_break_the_request_is_refused():
    with pytest.raises(ValueError, match="invalid HTTP header 'X-Team'"):
        ConnectionPool("http://127.0.0.1:9/v1", now=time.monotonic_ns, headers={"X-Team": "a\r\nHost: evil"})
    pool = ConnectionPool("http://127.0.0.1:9/v1", now=time.monotonic_ns)
    with pytest.raises(ValueError, match="invalid HTTP header 'Bad Name'"):
        pool.request_bytes("/v1/completions", b"", {"Bad Name": "x"})
