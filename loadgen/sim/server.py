"""The simulator's OpenAI-compatible HTTP front (aiohttp) over one engine loop.

Input: HTTP requests on ``/v1/completions``, ``/v1/chat/completions``,
``/v1/models``, ``/health`` and ``/metrics``. Output: vLLM-shaped responses
whose tokens are written when the engine model produces them, Prometheus
metrics, and optionally a ground-truth Parquet file (``loadgen.sim.truth``).

Streaming responses are written straight to the connection's transport from
the engine step that produced the tokens: each request's SSE events are
encoded once, HTTP/1.1 chunk framing included, so a token costs one
``transport.write`` of ready bytes and no await.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import struct
import time
import uuid
from typing import Any, Iterator, Optional

from aiohttp import web
from aiohttp.http_writer import HttpVersion11
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from loadgen.clock import now_ns
from loadgen.config import FaultConfig, SimProfile
from loadgen.sim.engine import Engine, EngineLoop, Seq, block_hashes, check_profile
from loadgen.sim.faults import FaultPlan, check_faults, draw, injects
from loadgen.sim.openai import Encoder, GenRequest, RequestError, parse_request
from loadgen.sim.truth import GroundTruthWriter

log = logging.getLogger("loadgen.sim")

#: How long a connection stays open after the token that triggers an injected reset,
#: so that the client reads that token before the RST discards its receive buffer.
RESET_DELAY_S = 0.05

_NEVER = 1 << 62


def output_length(request_id: str, req: GenRequest) -> int:
    """Tokens to generate: max_tokens with ignore_eos, else a seeded EOS in [max(min_tokens, 1), max_tokens]."""
    if req.ignore_eos:
        return req.max_tokens
    return random.Random(f"eos:{request_id}").randint(max(req.min_tokens, 1), req.max_tokens)


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the engine loop crashed; the simulator no longer generates", exc_info=task.exception())


class _Response:
    """One in-flight generation: the engine's sink for its tokens, and its ground-truth row."""

    __slots__ = (
        "request_id",
        "encoder",
        "req",
        "plan",
        "seq",
        "transport",
        "done",
        "written",
        "token_ns",
        "body_ns",
        "end_ns",
        "status",
    )

    def __init__(
        self, request_id: str, encoder: Encoder, req: GenRequest, plan: Optional[FaultPlan], seq: Seq, truth: bool
    ) -> None:
        self.request_id = request_id
        self.encoder = encoder
        self.req = req
        self.plan = plan
        self.seq = seq
        self.transport: Optional[asyncio.Transport] = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.written = 0  # tokens written to the client
        self.token_ns: Optional[list[int]] = [] if truth else None  # write time of each streamed chunk
        self.body_ns: Optional[int] = None  # write time of a non-streamed body
        self.end_ns: Optional[int] = None
        self.status: Optional[str] = None

    def tokens(self, seq: Seq, n: int, last: bool) -> bool:
        """Non-streaming: count tokens until the last one; stop early if the client left."""
        if self.status is not None:
            return False
        if self.transport.is_closing():
            self.finish("disconnected")
            return False
        if last:
            self.finish("ok")
        return True

    def finish(self, status: str) -> None:
        """End the response with ``status`` (the first status set wins) and wake its handler."""
        if self.status is None:
            self.status = status
        if self.end_ns is None and self.token_ns is not None:
            self.end_ns = now_ns()
        if not self.done.done():
            self.done.set_result(self.status)

    def row(self, arrival_ns: int) -> dict[str, Any]:
        """The ground-truth row."""
        token_ns = self.token_ns or []
        return {
            "request_id": self.request_id,
            "response_id": self.encoder.response_id,
            "api": self.req.api,
            "stream": self.req.stream,
            "arrival_ns": arrival_ns,
            "first_token_ns": token_ns[0] if token_ns else self.body_ns,
            "token_ns": token_ns,
            "end_ns": self.end_ns,
            "prompt_tokens": self.req.prompt_tokens,
            "cached_tokens": self.seq.cached_tokens,
            "output_tokens": self.written,
            "status": self.status,
            "http_status": 200 if self.req.stream or self.status in ("ok", "truncated") else None,
            "fault": self.plan.names if self.plan else "",
        }


class _Stream(_Response):
    """A streamed generation: writes each engine emission as a pre-encoded SSE event."""

    __slots__ = ("events", "next_event", "held", "timer")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.events = self.plan.events() if self.plan else []
        self.next_event = self.events[-1][0] if self.events else _NEVER  # tokens written when a fault is due
        self.held: Optional[list[tuple[int, bool]]] = None  # emissions kept back during a stall
        self.timer: Optional[asyncio.TimerHandle] = None  # end of a stall, or a pending reset

    def tokens(self, seq: Seq, n: int, last: bool) -> bool:
        if self.status is not None:
            return False
        if self.transport.is_closing():
            self.finish("disconnected")
            return False
        if self.held is not None:
            self.held.append((n, last))
            return True
        return self.emit(n, last)

    def emit(self, n: int, last: bool) -> bool:
        """Write ``n`` tokens; False when an injected fault ended the stream."""
        enc = self.encoder
        thought = enc.thought(self.written, n, self.seq.output_tokens) if enc.reasoning else 0
        answer = n - thought
        if last:
            finish = "length" if self.seq.output_tokens >= self.req.max_tokens else "stop"
            usage = (
                (self.req.prompt_tokens, self.written + n, self.seq.cached_tokens) if self.req.include_usage else None
            )
            data = (enc.thinking(thought) if thought else b"") + enc.final(answer, finish, usage)
        elif not thought:
            data = enc.chunk if n == enc.k else enc.tokens(n)
        else:  # thinking (a reasoning model): the thought tokens, then any answer tokens of the same step
            data = enc.thinking(thought) + (enc.tokens(answer) if answer else b"")
        self.transport.write(data)
        if self.token_ns is not None:
            self.token_ns.append(now_ns())
        self.written += n
        if last:
            self.finish("ok")
        elif self.written >= self.next_event:
            return self.inject()
        return True

    def inject(self) -> bool:
        """Apply the faults due at this point of the stream; False when one ended it."""
        loop = asyncio.get_running_loop()
        while self.events and self.events[-1][0] <= self.written:
            kind = self.events.pop()[2]
            if kind == "garbage":
                self.transport.write(self.encoder.garbage())
            elif kind == "stall":
                self.held = []
                self.timer = loop.call_later(self.plan.stall_s, self.unstall)
            elif kind == "reset":
                self.status = "reset"  # nothing more is written; the RST follows shortly
                self.timer = loop.call_later(RESET_DELAY_S, self.reset)
                return False
            else:
                self.finish("truncated")
                return False
        self.next_event = self.events[-1][0] if self.events else _NEVER
        return True

    def unstall(self) -> None:
        """End a stall: write what was generated meanwhile, then stream on."""
        held, self.held, self.timer = self.held or [], None, None
        if self.status is not None:
            return
        if self.transport.is_closing():
            self.finish("disconnected")
            return
        for n, last in held:
            if not self.emit(n, last) or self.status is not None:
                return

    def reset(self) -> None:
        """Reset the connection now."""
        _reset(self.transport)
        self.finish("reset")

    def close(self) -> None:
        """End the stream at server shutdown (a pending reset happens now)."""
        if self.timer is not None:
            self.timer.cancel()
        if self.status == "reset":
            self.reset()
        self.finish("shutdown")


class SimServer:
    """The simulated inference server: an aiohttp application over one ``EngineLoop``.

    Serve it with ``await server.start(host, port)`` (then ``await server.close()``),
    or hand ``server.app`` to aiohttp's runners or test utilities; the engine loop
    and the ground-truth writer start and stop with the application.
    """

    def __init__(
        self,
        profile: Optional[SimProfile] = None,
        faults: Optional[FaultConfig] = None,
        ground_truth: Optional[str] = None,
        *,
        late_threshold_s: float = 0.005,
    ) -> None:
        self.profile = check_profile(profile or SimProfile())
        self.faults = check_faults(faults or FaultConfig())
        self.engine = Engine(self.profile)
        self.engine_loop = EngineLoop(self.engine, late_threshold_s=late_threshold_s)
        self.truth: Optional[GroundTruthWriter] = None
        self._truth_path = ground_truth
        self._injects = injects(self.faults)
        self._model_json = json.dumps(self.profile.model).encode()
        self._open: set[_Response] = set()
        self._task: Optional[asyncio.Task[None]] = None
        self._runner: Optional[web.AppRunner] = None
        self.url: Optional[str] = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Metrics(self))
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
                web.get("/metrics", self._metrics),
            ]
        )
        self.app.on_startup.append(self._on_startup)
        self.app.on_shutdown.append(self._on_shutdown)
        self.app.on_cleanup.append(self._on_cleanup)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0: a free port); return the base URL, ending in /v1."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except BaseException:
            await self._runner.cleanup()
            raise
        bound = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound}/v1"
        return self.url

    async def close(self) -> None:
        """Stop listening, end open responses, stop the engine and close the ground truth."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_startup(self, app: web.Application) -> None:
        if self._truth_path:
            self.truth = GroundTruthWriter(self._truth_path)
            self.truth.start()
        self._task = asyncio.get_running_loop().create_task(self.engine_loop.run())
        self._task.add_done_callback(_report_crash)

    async def _on_shutdown(self, app: web.Application) -> None:
        for response in list(self._open):
            if isinstance(response, _Stream):
                response.close()
            else:
                response.finish("shutdown")

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.truth is not None:
            await self.truth.close()

    # ------------------------------------------------------------------ handlers

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _models(self, request: web.Request) -> web.Response:
        model = {
            "id": self.profile.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "loadgen-sim",
            "root": self.profile.model,
            "max_model_len": self.engine.total_blocks * self.profile.block_size,
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completions")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _generate(self, request: web.Request, api: str) -> web.StreamResponse:
        arrival_ns = now_ns()
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        headers = {"X-Request-Id": request_id}
        if self.faults.accept_delay_s:
            await asyncio.sleep(self.faults.accept_delay_s)
        if self.profile.request_overhead_ms:
            # a real server's fixed cost before its engine sees a request (HTTP, tokenization, queues)
            await asyncio.sleep(self.profile.request_overhead_ms / 1000)
        try:
            req = parse_request(api, await request.read(), self.profile.model)
            if not self.engine.fits(req.prompt_tokens, req.max_tokens):
                raise RequestError(
                    f"This request needs {req.prompt_tokens} prompt + {req.max_tokens} output tokens of KV cache; "
                    f"the simulated engine holds {self.engine.total_blocks * self.profile.block_size}.",
                    param="max_tokens",
                )
        except RequestError as exc:
            return self._refuse(request_id, api, arrival_ns, exc, headers, "")

        output_tokens = output_length(request_id, req)
        plan = draw(self.faults, request_id, output_tokens) if self._injects else None
        if plan is not None and plan.http_status is not None:
            if plan.http_status == 429:
                headers["Retry-After"] = "1"
            exc = RequestError("injected fault: the simulator refused this request", status=plan.http_status)
            return self._refuse(request_id, api, arrival_ns, exc, headers, plan.names)

        hashes = block_hashes(req.tokens, self.profile.block_size) if self.profile.prefix_caching else ()
        seq = Seq(req.prompt_tokens, output_tokens, max_tokens=req.max_tokens, block_hashes=hashes)
        framed = request.version >= HttpVersion11
        response_id = ("chatcmpl-" if api == "chat" else "cmpl-") + request_id
        encoder = Encoder(
            api, response_id, self._model_json, int(time.time()), self.profile.tokens_per_chunk, framed,
            reasoning=self.profile.reasoning_tokens,
        )
        args = (request_id, encoder, req, plan, seq, self.truth is not None)
        response = _Stream(*args) if req.stream else _Response(*args)
        seq.sink = response
        self._open.add(response)
        try:
            if req.stream:
                return await self._stream(request, response, headers, framed)
            return await self._complete(request, response, headers)
        finally:
            self._open.discard(response)
            if not seq.done:
                self.engine.cancel(seq)
            if self.truth is not None:
                self.truth.add(response.row(arrival_ns))

    async def _stream(
        self, request: web.Request, response: _Stream, headers: dict[str, str], framed: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        if framed:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        # aiohttp has sent the headers; from here on the events go straight to the transport, in order
        response.transport = request.transport
        if response.transport is None or response.transport.is_closing():
            response.finish("disconnected")
            return resp
        if response.req.api == "chat":
            response.transport.write(response.encoder.role())
        if response.next_event > 0 or response.inject():
            self.engine_loop.submit(response.seq)
        status = await response.done
        if status in ("ok", "truncated") and not response.transport.is_closing():
            await resp.write_eof()
        return resp

    async def _complete(self, request: web.Request, response: _Response, headers: dict[str, str]) -> web.StreamResponse:
        response.transport = request.transport
        self.engine_loop.submit(response.seq)
        status = await response.done
        if status == "shutdown":
            return web.json_response(
                RequestError("the simulator is shutting down", status=503).body(), status=503, headers=headers
            )
        if status != "ok":
            return web.Response(status=499, headers=headers)  # the client has gone; nobody reads this
        seq, req, plan = response.seq, response.req, response.plan or FaultPlan()
        if plan.stall_after is not None:
            await asyncio.sleep(plan.stall_s)
        if plan.reset_after is not None:
            _reset(request.transport)
            response.status, response.end_ns = "reset", now_ns()
            return web.Response(status=499, headers=headers)
        finish = "length" if seq.output_tokens >= req.max_tokens else "stop"
        body = json.dumps(
            response.encoder.body(self.profile.model, seq.output_tokens, finish, req.prompt_tokens, seq.cached_tokens)
        ).encode()
        if plan.garbage_after is not None:
            body = body[: len(body) // 2] + b"\xff"
        resp = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        if plan.truncate_after is not None:
            # the declared Content-Length is never reached: the client sees the connection close mid-body
            await resp.write(body[: len(body) // 2])
            request.transport.close()
            response.status, response.end_ns = "truncated", now_ns()
            return resp
        await resp.write_eof(body)
        response.written = seq.output_tokens
        response.body_ns = response.end_ns = now_ns()
        return resp

    def _refuse(
        self, request_id: str, api: str, arrival_ns: int, exc: RequestError, headers: dict[str, str], fault: str
    ) -> web.Response:
        resp = web.json_response(exc.body(), status=exc.status, headers=headers)
        if self.truth is not None:
            self.truth.add(
                {
                    "request_id": request_id,
                    "api": api,
                    "arrival_ns": arrival_ns,
                    "end_ns": now_ns(),
                    "token_ns": [],
                    "output_tokens": 0,
                    "status": "http_error",
                    "http_status": exc.status,
                    "fault": fault,
                }
            )
        return resp


#: (family, name, help, Engine attribute) of the vLLM-named metrics, labelled with model_name.
_ENGINE_METRICS = (
    (GaugeMetricFamily, "vllm:num_requests_running", "Number of requests in model execution batches.", "num_running"),
    (GaugeMetricFamily, "vllm:num_requests_waiting", "Number of requests waiting to be processed.", "num_waiting"),
    (GaugeMetricFamily, "vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "kv_usage"),
    (GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "kv_usage"),
    (CounterMetricFamily, "vllm:prompt_tokens", "Number of prefill tokens processed.", "prompt_tokens_total"),
    (
        CounterMetricFamily,
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        "generation_tokens_total",
    ),
    (
        CounterMetricFamily,
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in prompt tokens.",
        "cache_queries_total",
    ),
    (CounterMetricFamily, "vllm:prefix_cache_hits", "Prefix cache hits, in prompt tokens.", "cache_hits_total"),
)


class _Metrics:
    """Reads the engine's state when /metrics is scraped (nothing is updated per step)."""

    def __init__(self, server: SimServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        """The vLLM-named engine metrics, then the simulator's own."""
        server = self.server
        engine, loop = server.engine, server.engine_loop
        for family, name, doc, attribute in _ENGINE_METRICS:
            metric = family(name, doc, labels=["model_name"])
            metric.add_metric([server.profile.model], getattr(engine, attribute))
            yield metric
        yield CounterMetricFamily("loadgen_sim_steps", "Engine steps run.", value=engine.steps)
        yield CounterMetricFamily(
            "loadgen_sim_late_steps",
            "Engine steps whose tokens were written more than the late threshold after their deadline: "
            "this machine's CPU, not the modelled GPU, was the bottleneck.",
            value=loop.late_steps,
        )
        yield GaugeMetricFamily(
            "loadgen_sim_step_lag_seconds",
            "Worst lag of a step behind its deadline over about the last second.",
            value=loop.recent_lag_s,
        )
        yield GaugeMetricFamily(
            "loadgen_sim_open_responses", "Generation responses in progress.", value=len(server._open)
        )
