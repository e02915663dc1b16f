"""Resolve the server under test: start the embedded simulator or check a given URL, fail fast.

Input: ``TargetConfig``. Output: a ``ResolvedTarget`` (base URL, model name,
the simulator process when one was started) after ``GET /v1/models`` and one
tiny probe request succeeded; otherwise ``TargetError`` naming the URL and
what the server answered, before any load is sent.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Optional

import aiohttp

from loadgen.client.openai import request_body, url_for
from loadgen.config import TargetConfig, api_key


class TargetError(RuntimeError):
    """The target cannot be used: unreachable, wrong URL, or failing requests."""


@dataclass
class ResolvedTarget:
    """A target that answered: where it is, what it serves, and the simulator if we own it."""

    base_url: str
    model: str
    kind: str
    engine: str
    sim: Any = None  # loadgen.sim.process.SimProcess when kind=sim

    @property
    def root_url(self) -> str:
        """The server root (base URL without the trailing /v1)."""
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for run.json."""
        profile = getattr(getattr(self.sim, "profile", None), "name", None)
        return {"kind": self.kind, "url": self.base_url, "model": self.model, "engine": self.engine, "profile": profile}

    def close(self) -> None:
        """Stop the simulator if this run started it."""
        if self.sim is not None:
            self.sim.stop()
            self.sim = None


def resolve(target: TargetConfig, *, ground_truth: Optional[str] = None) -> ResolvedTarget:
    """Start or reach the target, find its model and send one probe request."""
    sim = None
    if target.kind == "sim":
        from loadgen.sim.process import start_sim

        sim = start_sim(target.sim, target.faults, ground_truth=ground_truth)
        base_url = sim.url
        engine = "sim"
    else:
        assert target.url is not None
        base_url = target.url.rstrip("/")
        engine = target.engine
    try:
        model = asyncio.run(_check(target, base_url))
    except BaseException:
        if sim is not None:
            sim.stop()
        raise
    return ResolvedTarget(base_url=base_url, model=model, kind=target.kind, engine=engine, sim=sim)


async def _check(target: TargetConfig, base_url: str) -> str:
    headers = {"Content-Type": "application/json"}
    key = api_key(target)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    headers.update(target.headers)
    timeout = aiohttp.ClientTimeout(total=max(30.0, target.connect_timeout_s * 3), sock_connect=target.connect_timeout_s)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        model = target.model or await _first_model(session, base_url)
        if target.probe:
            await _probe(session, target, base_url, model)
    return model


async def _first_model(session: aiohttp.ClientSession, base_url: str) -> str:
    url = f"{base_url}/models"
    try:
        async with session.get(url) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise TargetError(
                    f"GET {url} answered HTTP {resp.status}: {text[:200]!r}. Is target.url the server's "
                    f"OpenAI base URL (ending in /v1)? Set target.model=NAME to skip this lookup."
                )
    except aiohttp.ClientError as exc:
        raise TargetError(f"cannot reach the target at {url}: {exc}. Is the server running?") from None
    except asyncio.TimeoutError:
        raise TargetError(f"GET {url} timed out. Is the server running and reachable?") from None
    try:
        models = [m["id"] for m in json.loads(text)["data"]]
    except (ValueError, KeyError, TypeError):
        raise TargetError(f"GET {url} did not return an OpenAI model list: {text[:200]!r}") from None
    if not models:
        raise TargetError(f"GET {url} lists no models; set target.model=NAME")
    return models[0]


PROBE_ATTEMPTS = 3


async def _probe(session: aiohttp.ClientSession, target: TargetConfig, base_url: str, model: str) -> None:
    """One tiny request must succeed; a transient failure (5xx, 429, broken connection) gets two more tries."""
    url = url_for(base_url, target.api)
    body = request_body(target, model, prompt="Hello", messages=None, output_tokens=2)
    problem = ""
    for attempt in range(1, PROBE_ATTEMPTS + 1):
        headers = {"X-Request-Id": f"loadgen-probe-{attempt}"}
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                text = await resp.text()
                if resp.status == 200:
                    return
                problem = f"answered HTTP {resp.status}: {text[:300]!r}"
                if resp.status < 500 and resp.status != 429:
                    break  # a client error will not go away by asking again
        except aiohttp.ClientError as exc:
            problem = f"failed: {exc}"
        except asyncio.TimeoutError:
            problem = "timed out"
    raise TargetError(f"probe request POST {url} (model {model!r}) {problem} (after {attempt} attempt{'s' if attempt > 1 else ''})")
