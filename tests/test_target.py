"""Target checks before any load: model discovery and the probe request."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from loadgen.config import TargetConfig
from loadgen.target import TargetError, check
from loopback import serve_app

SSE_OK = b'data: {"id":"x","choices":[{"text":"a"}]}\n\ndata: [DONE]\n\n'


async def _serve(statuses: list[int], seen: list[str]) -> tuple[web.AppRunner, str]:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m1"}, {"id": "m2"}]})

    async def complete(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Request-Id", ""))
        status = statuses.pop(0) if statuses else 200
        if status != 200:
            return web.json_response({"id": "x", "error": "nope"}, status=status)
        return web.Response(body=SSE_OK, content_type="text/event-stream")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", complete)
    return await serve_app(app)


def _run(statuses: list[int]) -> tuple[str | Exception, list[str]]:
    seen: list[str] = []

    async def go():
        runner, base = await _serve(statuses, seen)
        try:
            return (await check(TargetConfig(kind="openai", url=base), base)).model
        except TargetError as exc:
            return exc
        finally:
            await runner.cleanup()

    return asyncio.run(go()), seen


def test_model_defaults_to_the_first_listed_and_probe_passes():
    model, seen = _run([])
    assert model == "m1" and seen == ["loadgen-probe-1"]


def test_transient_probe_failures_are_retried():
    model, seen = _run([503, 429])
    assert model == "m1" and seen == ["loadgen-probe-1", "loadgen-probe-2", "loadgen-probe-3"]


def test_a_failing_server_fails_fast_with_url_and_status():
    err, seen = _run([503, 503, 503])
    assert isinstance(err, TargetError) and "HTTP 503" in str(err) and "/v1/completions" in str(err)
    assert "3 attempts" in str(err) and len(seen) == 3


@pytest.mark.parametrize("status", [400, 404])
def test_client_errors_are_not_retried(status):
    err, seen = _run([status])
    assert isinstance(err, TargetError) and f"HTTP {status}" in str(err) and len(seen) == 1


def test_a_fleet_is_resolved_once_every_replica_probed_and_the_key_kept(monkeypatch):
    """``resolve`` owns the whole target: the first replica's model, every replica probed, the API key."""
    import threading

    from loadgen.target import resolve

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    bases: list[str] = []
    seen: list[list[str]] = [[], []]
    probed = [0, 0]
    runners = []

    async def start():
        for k in range(2):
            async def models(request, k=k):
                seen[k].append(request.headers.get("Authorization", ""))
                return web.json_response({"data": [{"id": f"m{k}"}]})

            async def complete(request, k=k):
                probed[k] += 1
                return web.Response(body=SSE_OK, content_type="text/event-stream")

            app = web.Application()
            app.router.add_get("/v1/models", models)
            app.router.add_post("/v1/completions", complete)
            runner, base = await serve_app(app)
            runners.append(runner)
            bases.append(base)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    ready.wait(10)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fleet")
    try:
        target = resolve(TargetConfig(kind="openai", urls=bases))
        assert target.base_url == bases[0] and target.urls == bases
        assert target.model == "m0"  # the first replica's model is the fleet's: the others are not asked
        assert target.api_key == "sk-fleet" and target.auth_headers == {"Authorization": "Bearer sk-fleet"}
        assert seen == [["Bearer sk-fleet"], []] and probed == [1, 1]  # each replica probed once
        assert target.summary()["urls"] == bases and "sk-fleet" not in repr(target)
        with pytest.raises(TargetError):
            resolve(TargetConfig(kind="openai", urls=[bases[0], "http://127.0.0.1:9/v1"], connect_timeout_s=2))
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
