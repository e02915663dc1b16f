"""A tiny OpenAI-compatible streaming server with an exactly known capacity, for validating loadgen's verdicts.

It is written for the tests and imports nothing from ``loadgen``, so that its
answer is independent of loadgen's own simulator. The model:

- ``slots`` requests are served at once; the others wait in one FIFO queue;
- a request is *admitted* when it gets a slot; its token ``i`` (0-based) is
  written at ``admission + ttft + i × itl`` (absolute deadlines, so sleeping
  late for one token does not push back the next ones);
- it holds its slot from admission until its last token is written, then
  the next waiting request is admitted at once.

So a request of ``n`` tokens occupies a slot for ``ttft + (n − 1) × itl``
seconds, and the server's throughput, kept full, is exactly
``slots / (ttft + (n − 1) × itl)`` requests per second (``true_capacity``).

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (SSE
with one token per event, then an optional usage event when
``stream_options.include_usage`` is set, then ``data: [DONE]``; or one JSON
body when ``stream`` is false), ``GET /v1/models``, ``GET /health`` and
``GET /stats`` (what the server measured: slot hold times, queue lengths).

Run it in a thread (``FifoServer(...).start()``), in a child process
(``spawn(...)``) or from a shell::

    python tests/fifo_server.py --slots 4 --ttft-ms 50 --itl-ms 20 --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from aiohttp import web

MODEL = "fifo-test"
DEFAULT_MAX_TOKENS = 16


def true_capacity(slots: int, ttft_s: float, itl_s: float, tokens: int) -> float:
    """Input: the server's settings and a fixed output length. Output: its capacity in requests per second."""
    return slots / (ttft_s + (tokens - 1) * itl_s)


# --------------------------------------------------------------------------- the slots


@dataclass
class Stats:
    """What the server measured (all times in seconds)."""

    admitted: int = 0
    completed: int = 0
    max_queue: int = 0
    hold_s_sum: float = 0.0  # total time slots were held by completed requests
    hold_s_max: float = 0.0
    excess_s_max: float = 0.0  # worst lateness of a last token behind its nominal deadline
    excess_s_sum: float = 0.0  # total lateness of last tokens (the slot was held this much longer than nominal)
    queue_s_sum: float = 0.0  # total time admitted requests waited for a slot

    def to_dict(self, slots: int, in_service: int, queued: int) -> dict[str, Any]:
        """Input: the current slot state. Output: a JSON-ready dict with derived means."""
        done = max(self.completed, 1)
        return {
            "slots": slots,
            "in_service": in_service,
            "queued": queued,
            "admitted": self.admitted,
            "completed": self.completed,
            "max_queue": self.max_queue,
            "mean_hold_s": self.hold_s_sum / done if self.completed else None,
            "max_hold_s": self.hold_s_max,
            "max_excess_s": self.excess_s_max,
            "mean_excess_s": self.excess_s_sum / done if self.completed else None,
            "mean_queue_s": self.queue_s_sum / max(self.admitted, 1) if self.admitted else None,
        }


class Slots:
    """N slots handed out strictly first come, first served (asyncio.Semaphore makes no such promise)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.free = n
        self.waiters: deque[asyncio.Future] = deque()
        self.stats = Stats()

    async def acquire(self) -> float:
        """Input: none. Output: the loop time at which this request was admitted (after waiting its turn)."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if self.free > 0 and not self.waiters:
            self.free -= 1
        else:
            fut = loop.create_future()
            self.waiters.append(fut)
            self.stats.max_queue = max(self.stats.max_queue, len(self.waiters))
            try:
                await fut  # release() hands its slot over directly: no one can jump the queue
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self.release()  # the slot arrived just as the client went away: pass it on
                else:
                    self.waiters.remove(fut)
                raise
        admitted = loop.time()
        self.stats.admitted += 1
        self.stats.queue_s_sum += admitted - arrived
        return admitted

    def release(self) -> None:
        """Input: none. Output: none; the slot goes to the oldest waiter, or back to the pool."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1

    def record_hold(self, hold_s: float, excess_s: float) -> None:
        """Input: how long a finished request held its slot and how late its last token was. Output: none."""
        s = self.stats
        s.completed += 1
        s.hold_s_sum += hold_s
        s.hold_s_max = max(s.hold_s_max, hold_s)
        s.excess_s_max = max(s.excess_s_max, excess_s)
        s.excess_s_sum += excess_s


# --------------------------------------------------------------------------- the HTTP API


@dataclass
class Request:
    """One parsed generation request."""

    chat: bool
    stream: bool
    max_tokens: int
    include_usage: bool
    prompt_tokens: int
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _error(status: int, message: str, param: Optional[str] = None) -> web.Response:
    """Input: an HTTP status and a message. Output: an OpenAI-style error response."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return web.json_response(body, status=status)


def _count_words(value: Any) -> int:
    """Input: a prompt (string, list of strings or token ids) or chat messages. Output: a rough token count (≥ 1)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_count_words(v.get("content", "") if isinstance(v, dict) else v) for v in value)
    return 0


def parse(body: Any, chat: bool, model: str) -> tuple[Optional[Request], Optional[web.Response]]:
    """Input: a decoded JSON body. Output: the request, or the error response to send instead."""
    if not isinstance(body, dict):
        return None, _error(400, "the body must be a JSON object")
    if body.get("model") not in (None, model):
        return None, _error(404, f"model {body.get('model')!r} does not exist", "model")
    key = "messages" if chat else "prompt"
    if not body.get(key):
        return None, _error(400, f"'{key}' is required", key)
    n = body.get("max_completion_tokens") if chat and body.get("max_completion_tokens") is not None else body.get("max_tokens")
    n = DEFAULT_MAX_TOKENS if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None, _error(400, "max_tokens must be a positive integer", "max_tokens")
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    if options and not stream:
        return None, _error(400, "stream_options is only allowed with stream=true", "stream_options")
    req = Request(chat=chat, stream=stream, max_tokens=n, include_usage=bool(options.get("include_usage")),
                  prompt_tokens=max(1, _count_words(body[key])))
    return req, None


def _usage(req: Request) -> dict[str, int]:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.max_tokens,
            "total_tokens": req.prompt_tokens + req.max_tokens}


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def token_events(req: Request, model: str) -> tuple[bytes, bytes, bytes]:
    """Input: a request. Output: the SSE bytes of its first, middle and last token (built once per request)."""
    created = int(time.time())
    kind = "chat.completion.chunk" if req.chat else "text_completion"
    rid = ("chatcmpl-" if req.chat else "cmpl-") + req.request_id

    def chunk(finish: Optional[str], first: bool) -> bytes:
        if req.chat:
            delta = {"role": "assistant", "content": " tok"} if first else {"content": " tok"}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": " tok", "logprobs": None, "finish_reason": finish}
        return _event({"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]})

    last = chunk("length", first=req.max_tokens == 1)
    return chunk(None, first=True), chunk(None, first=False), last


def usage_event(req: Request, model: str) -> bytes:
    """Input: a request. Output: the final SSE event carrying its usage (choices empty, as OpenAI sends it)."""
    kind = "chat.completion.chunk" if req.chat else "text_completion"
    rid = ("chatcmpl-" if req.chat else "cmpl-") + req.request_id
    return _event({"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [],
                   "usage": _usage(req)})


def full_body(req: Request, model: str) -> dict[str, Any]:
    """Input: a request. Output: the non-streamed JSON answer."""
    text = " tok" * req.max_tokens
    if req.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
        return {"id": "chatcmpl-" + req.request_id, "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [choice], "usage": _usage(req)}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
    return {"id": "cmpl-" + req.request_id, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": _usage(req)}


class FifoApp:
    """The aiohttp application: the slots, the timing model and the routes."""

    def __init__(self, slots: int, ttft_s: float, itl_s: float, model: str = MODEL) -> None:
        if slots < 1 or ttft_s < 0 or itl_s < 0:
            raise ValueError("slots must be ≥ 1 and the times ≥ 0")
        self.slots = Slots(slots)
        self.ttft_s, self.itl_s, self.model = ttft_s, itl_s, model
        self.app = web.Application()
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/stats", self.stats)

    async def models(self, request: web.Request) -> web.Response:
        """GET /v1/models: the one model served."""
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "fifo-test"}]})

    async def health(self, request: web.Request) -> web.Response:
        """GET /health: 200."""
        return web.Response(text="ok")

    async def stats(self, request: web.Request) -> web.Response:
        """GET /stats: the measured slot hold times and queue lengths."""
        s = self.slots
        busy = s.n - s.free
        return web.json_response(s.stats.to_dict(s.n, busy, len(s.waiters)))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        """Input: a generation request. Output: its streamed or whole answer, timed by the slot model."""
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not valid JSON")
        req, err = parse(body, chat, self.model)
        if err is not None:
            return err
        assert req is not None
        if not req.stream:
            admitted = await self.slots.acquire()
            try:
                await self._sleep_until(admitted + self.ttft_s + (req.max_tokens - 1) * self.itl_s)
            finally:
                self._finish(admitted, req)
            return web.json_response(full_body(req, self.model))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)  # headers go out at once, as vLLM's do; tokens wait for a slot
        admitted = await self.slots.acquire()
        held = True
        try:
            first, middle, last = token_events(req, self.model)
            for i in range(req.max_tokens):
                await self._sleep_until(admitted + self.ttft_s + i * self.itl_s)
                final = i == req.max_tokens - 1
                await resp.write(last if final else (first if i == 0 else middle))
            # The slot is free from the last token on: usage and [DONE] are bookkeeping, not work.
            self._finish(admitted, req)
            held = False
            if req.include_usage:
                await resp.write(usage_event(req, self.model))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        finally:
            if held:  # the client went away mid-stream: give the slot back
                self.slots.release()
        return resp

    def _finish(self, admitted: float, req: Request) -> None:
        """Input: a request's admission time. Output: none; its slot is released and its hold time recorded."""
        now = asyncio.get_running_loop().time()
        nominal = self.ttft_s + (req.max_tokens - 1) * self.itl_s
        self.slots.release()
        self.slots.record_hold(now - admitted, now - admitted - nominal)

    @staticmethod
    async def _sleep_until(deadline: float) -> None:
        """Input: a loop-time deadline. Output: none, once it has passed (one timer, no busy wait)."""
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)


# --------------------------------------------------------------------------- running it


async def serve(app: FifoApp, port: int = 0) -> tuple[web.AppRunner, int]:
    """Input: the app and a port (0: any free one). Output: the started runner and the port it listens on."""
    runner = web.AppRunner(app.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


class FifoServer:
    """The server on its own event loop in a background thread: ``start()``, ``url``, ``stats()``, ``stop()``."""

    def __init__(self, slots: int, ttft_ms: float, itl_ms: float, port: int = 0) -> None:
        self.app = FifoApp(slots, ttft_ms / 1000.0, itl_ms / 1000.0)
        self.port = port
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        """The base URL, ending in /v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FifoServer":
        """Input: none. Output: self, once the server listens."""
        self._thread = threading.Thread(target=self._run, name="fifo-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the FIFO server did not start within 10 s")
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._runner, self.port = self.loop.run_until_complete(serve(self.app, self.port))
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def stats(self) -> dict[str, Any]:
        """Input: none. Output: what the server measured so far (see ``Stats``)."""
        s = self.app.slots
        return s.stats.to_dict(s.n, s.n - s.free, len(s.waiters))

    def stop(self) -> None:
        """Input: none. Output: none, once the loop and its thread have ended."""
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "FifoServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Spawned:
    """A FIFO server in a child process: ``url``, ``pid``, ``stop()``."""

    proc: subprocess.Popen
    url: str

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def stop(self) -> None:
        """Input: none. Output: none, once the child has exited (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> "Spawned":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(slots: int, ttft_ms: float, itl_ms: float, port: int = 0, stderr: Optional[IO[str]] = None) -> Spawned:
    """Input: the server's settings (and where its stderr goes). Output: a running child process on 127.0.0.1.

    The child has its own CPU and GIL; it prints its URL on its first line of
    output, which this waits for, and its stats on stderr when it stops.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--slots", str(slots), "--ttft-ms", str(ttft_ms),
           "--itl-ms", str(itl_ms), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # "listening on http://127.0.0.1:PORT/v1"
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"the FIFO server did not start (said {line!r}, exit code {proc.poll()})")
    return Spawned(proc, line.split()[-1])


async def _main_async(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT, then print the stats on stderr."""
    app = FifoApp(args.slots, args.ttft_ms / 1000.0, args.itl_ms / 1000.0, model=args.model)
    runner, port = await serve(app, args.port)
    print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    s = app.slots
    print(json.dumps(s.stats.to_dict(s.n, s.n - s.free, len(s.waiters))), file=sys.stderr, flush=True)
    await runner.cleanup()


def main(argv: Optional[list[str]] = None) -> None:
    """Command line: ``python tests/fifo_server.py --slots N --ttft-ms T --itl-ms I [--port P]``."""
    p = argparse.ArgumentParser(description="A FIFO-queue, N-slot OpenAI-compatible streaming server with a known capacity.")
    p.add_argument("--slots", type=int, default=4, help="requests served at once")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="time from admission to the first token")
    p.add_argument("--itl-ms", type=float, default=20.0, help="time between two tokens of a request")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one, printed on start)")
    p.add_argument("--model", default=MODEL, help="model name served on /v1/models")
    asyncio.run(_main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
