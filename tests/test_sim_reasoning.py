"""The simulator as a reasoning model (target.sim.reasoning_tokens), read by loadgen's client end to end."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from loadgen.client.endpoint import headers_for, open_pool
from loadgen.client.openai import request_body
from loadgen.client.stream import execute
from loadgen.config import SimProfile, TargetConfig
from loadgen.sim.server import SimServer

PROFILE = SimProfile(step_base_ms=1.0, step_per_seq_ms=0.0, step_per_prefill_token_ms=0.0, reasoning_tokens=4)


async def _send(profile: SimProfile, api: str, stream: bool, output_tokens: int) -> dict:
    server = SimServer(profile)
    await server.start()
    try:
        target = TargetConfig(kind="openai", api=api, stream=stream, engine="sim", proxy="none")
        pool = open_pool(target, server.url, now=time.monotonic_ns, headers=headers_for(target, None))
        body = request_body(target, profile.model, prompt="why is the sky blue", messages=None, output_tokens=output_tokens)
        rec: dict = {}
        path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
        await execute(pool, path, body, {"X-Request-Id": "r1"}, rec, api=api, stream=stream)
        await pool.close()
        return rec
    finally:
        await server.close()


def send(profile: SimProfile = PROFILE, api: str = "chat", stream: bool = True, output_tokens: int = 10) -> dict:
    return asyncio.run(asyncio.wait_for(_send(profile, api, stream, output_tokens), 30))


def test_chat_stream_thinks_first_and_every_token_is_timed():
    rec = send()
    assert rec["status"] == "ok", rec.get("error")
    assert len(rec["chunk_ns"]) == rec["output_tokens"] == 10  # four reasoning tokens and six answer tokens, each timed
    assert rec["reasoning_tokens"] == 4
    assert rec["first_token_ns"] == rec["chunk_ns"][0] < rec["first_answer_ns"] == rec["chunk_ns"][4]


def test_a_short_answer_keeps_its_last_token_an_answer():
    rec = send(output_tokens=3)
    assert rec["status"] == "ok" and rec["reasoning_tokens"] == 2 and rec["first_answer_ns"] == rec["chunk_ns"][2]


def test_without_the_option_nothing_changes():
    rec = send(replace(PROFILE, reasoning_tokens=0))
    assert rec["status"] == "ok" and rec.get("reasoning_tokens") is None
    assert rec["first_answer_ns"] == rec["first_token_ns"]


def test_non_streaming_chat_reports_reasoning_tokens():
    rec = send(stream=False)
    assert rec["status"] == "ok" and (rec["output_tokens"], rec["reasoning_tokens"]) == (10, 4)


def test_completions_never_reason():
    rec = send(api="completions")
    assert rec["status"] == "ok" and rec.get("reasoning_tokens") is None and len(rec["chunk_ns"]) == 10
