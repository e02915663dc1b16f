"""A stripped-down OpenAI-style SSE server for benchmarking loadgen itself (never the bottleneck).

Every stream gets its first token ``ttft_ms`` after the request and then one
token per ``itl_ms`` tick, ``max_tokens`` in all, from one ticker per process
that writes pre-encoded bytes to every active stream (like an engine step).
Several processes share one port with SO_REUSEPORT. It records the time each
stream's first token was written so a benchmark can compare loadgen's TTFT
with the truth.

    python scripts/fast_sse_server.py --port 18555 --procs 1 --ttft-ms 50 --itl-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import time

_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d+)')
_REQ_ID = re.compile(rb"(?im)^x-request-id:\s*(\S+)")
_LEN = re.compile(rb"(?im)^content-length:\s*(\d+)")

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
)
MODELS = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model"}]}).encode()


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


TOKEN = _chunk(b'data: {"id":"cmpl-fast","choices":[{"index":0,"text":" tok","finish_reason":null}]}\n\n')


def _tail(n: int) -> bytes:
    usage = {"id": "cmpl-fast", "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": n}}
    return _chunk(b"data: " + json.dumps(usage).encode() + b"\n\n") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Stream:
    __slots__ = ("transport", "left", "n", "first_at", "rid", "first_ns")

    def __init__(self, transport, n: int, first_at: float, rid: bytes) -> None:
        self.transport = transport
        self.left = n
        self.n = n
        self.first_at = first_at
        self.rid = rid
        self.first_ns = 0


class Server:
    def __init__(self, ttft_s: float, itl_s: float) -> None:
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.streams: list[Stream] = []
        self.truth: list[tuple[bytes, int]] = []
        self.base = time.time_ns() - time.monotonic_ns()

    async def ticker(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += self.itl_s
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            now = loop.time()
            keep = []
            for s in self.streams:
                if s.transport.is_closing():
                    continue
                if now + 1e-4 < s.first_at:
                    keep.append(s)
                    continue
                if s.left == s.n:
                    s.first_ns = time.monotonic_ns() + self.base
                    self.truth.append((s.rid, s.first_ns))
                s.transport.write(TOKEN)
                s.left -= 1
                if s.left == 0:
                    s.transport.write(_tail(s.n))
                else:
                    keep.append(s)
            self.streams = keep


class Protocol(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            m = _LEN.search(head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            if head.startswith(b"GET"):
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(MODELS), MODELS)
                )
                continue
            m = _MAX_TOKENS.search(body)
            n = int(m.group(1)) if m else 16
            rid = _REQ_ID.search(head)
            self.transport.write(HEAD)
            loop = asyncio.get_running_loop()
            self.server.streams.append(
                Stream(self.transport, max(1, n), loop.time() + self.server.ttft_s, rid.group(1) if rid else b"")
            )


def _serve(port: int, ttft_s: float, itl_s: float, truth_path: str | None, ready) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = Server(ttft_s, itl_s)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        srv = await asyncio.get_running_loop().create_server(lambda: Protocol(server), sock=sock, backlog=4096)
        ticker = asyncio.ensure_future(server.ticker())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        ready.set()
        await stop.wait()
        ticker.cancel()
        srv.close()
        if truth_path:
            with open(f"{truth_path}.{os.getpid()}", "w") as f:
                for rid, t in server.truth:
                    f.write(f"{rid.decode()} {t}\n")

    asyncio.run(main())


def start(port: int, procs: int = 1, ttft_ms: float = 50, itl_ms: float = 10, truth_path: str | None = None) -> list[mp.Process]:
    """Start ``procs`` server processes sharing ``port``; return them (terminate() to stop)."""
    ctx = mp.get_context("spawn")
    out = []
    for _ in range(procs):
        ready = ctx.Event()
        p = ctx.Process(target=_serve, args=(port, ttft_ms / 1e3, itl_ms / 1e3, truth_path, ready), daemon=True)
        p.start()
        if not ready.wait(30):
            raise RuntimeError("fast SSE server did not start")
        out.append(p)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18555)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--ttft-ms", type=float, default=50)
    ap.add_argument("--itl-ms", type=float, default=10)
    args = ap.parse_args()
    procs = start(args.port, args.procs, args.ttft_ms, args.itl_ms)
    print(f"fast SSE server on http://127.0.0.1:{args.port}/v1 ({args.procs} processes); Ctrl-C stops")
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
