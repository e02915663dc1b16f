"""Resolve the server under test: start the embedded simulator or check a given URL, fail fast.

Input: ``TargetConfig``. Output: a ``ResolvedTarget`` (base URL, model name,
the replicas of a fleet, the API key, the simulator process when one was
started) after ``GET /v1/models`` and one tiny probe request succeeded on
every replica; otherwise ``TargetError`` naming the URL and what the server
answered, before any load is sent. This is the one place the target config is
turned into where the load goes: the runner, the scraper and the workers take
what they need from the ``ResolvedTarget``.

Both go through loadgen's own client, built as the workers build theirs
(:func:`loadgen.client.endpoint.open_pool`: TLS, proxy, headers), and the
probe is read by the same code that reads the load's responses, so a probe
that passes means the load can be sent and read. 307/308 redirects are
followed (same method and body, at most five); the load then goes straight to
where the probe ended, and run.json records it. Any other redirect fails with
its ``Location`` named.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional
from urllib.parse import urlsplit

from loadgen.client.endpoint import headers_for, open_pool
from loadgen.client.fetch import MAX_REDIRECTS, Origins, fetch, redirect_target
from loadgen.client.http import HTTPError, request_path
from loadgen.client.openai import PATHS, request_body, url_for
from loadgen.client.stream import execute
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
    requested_url: Optional[str] = None  # target.url when a redirect moved the load elsewhere
    redirects: list[str] = field(default_factory=list)  # the probe's redirect chain (URLs redirected from)
    urls: list[str] = field(default_factory=list)  # a fleet's replicas (target.urls), each probed; [] for one server
    api_key: Optional[str] = field(default=None, repr=False)  # the bearer token (config, env var or OPENAI_API_KEY)

    @property
    def root_url(self) -> str:
        """The server root (base URL without the trailing /v1)."""
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for run.json."""
        profile = getattr(getattr(self.sim, "profile", None), "name", None)
        out = {"kind": self.kind, "url": self.base_url, "model": self.model, "engine": self.engine, "profile": profile}
        if self.redirects:
            out.update(requested_url=self.requested_url, redirects=self.redirects)
        if self.urls:
            out["urls"] = self.urls
        return out

    @property
    def auth_headers(self) -> Optional[dict[str, str]]:
        """The Authorization header alone (for the metrics scraper), or None without a key."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None

    def close(self) -> None:
        """Stop the simulator if this run started it."""
        if self.sim is not None:
            self.sim.stop()
            self.sim = None


@dataclass
class Checked:
    """What the checks found: the model, and the base URL the load goes to (after the probe's redirects)."""

    model: str
    base_url: str
    redirects: list[str] = field(default_factory=list)


def resolve(target: TargetConfig, *, ground_truth: Optional[str] = None) -> ResolvedTarget:
    """Start or reach the target, find its model and send one probe request (to every replica of a fleet)."""
    if target.urls and not target.url:
        target = replace(target, url=target.urls[0])
    resolved = _resolve_one(target, ground_truth)
    if target.urls:
        try:
            resolved.urls = [u.rstrip("/") for u in target.urls]
            for url in resolved.urls[1:]:  # the first was checked above; the others must serve its model
                _resolve_one(replace(target, url=url, model=resolved.model, urls=[]), None).close()
        except BaseException:
            resolved.close()
            raise
    return resolved


def _resolve_one(target: TargetConfig, ground_truth: Optional[str]) -> ResolvedTarget:
    """One server: the simulator started (kind=sim) or ``target.url`` checked."""
    sim = None
    if target.kind == "sim":
        from loadgen.sim.cli import load_profile
        from loadgen.sim.process import start_sim

        sim = start_sim(load_profile(target.sim_profile) if target.sim_profile else target.sim, target.faults, ground_truth=ground_truth)
        base_url = sim.url
        engine = "sim"
    else:
        assert target.url is not None
        base_url = target.url.rstrip("/")
        engine = target.engine
    try:
        checked = asyncio.run(check(target, base_url, direct=sim is not None))
    except BaseException:
        if sim is not None:
            sim.stop()
        raise
    return ResolvedTarget(
        base_url=checked.base_url,
        model=checked.model,
        kind=target.kind,
        engine=engine,
        sim=sim,
        requested_url=base_url if checked.redirects else None,
        redirects=checked.redirects,
        api_key=api_key(target),
    )


async def check(target: TargetConfig, base_url: str, *, direct: bool = False) -> Checked:
    """The model (``target.model`` or the first listed) and the probe's outcome; TargetError when either fails.

    ``direct``: never through a proxy (the embedded simulator is on this machine).
    """
    headers = headers_for(target, api_key(target))
    probe_target = replace(target, timeout_s=min(target.timeout_s, max(30.0, target.connect_timeout_s * 3)))
    origins = Origins(lambda url: open_pool(probe_target, url, now=time.monotonic_ns, headers=headers, limit=4, direct=direct))
    try:
        model = target.model or await _first_model(origins, base_url)
        checked = Checked(model, base_url)
        if target.probe:
            checked = await _probe(origins, target, base_url, model)
        return checked
    finally:
        await origins.close()


async def _first_model(origins: Origins, base_url: str) -> str:
    url = f"{base_url}/models"
    try:
        resp = await fetch(origins, "GET", url, headers={"Accept": "application/json"})
    except HTTPError as exc:
        raise TargetError(f"cannot reach the target at {url}: {exc}. Is the server running?") from None
    except ValueError as exc:  # a proxy URL that cannot be used
        raise TargetError(f"cannot reach the target at {url}: {exc}") from None
    if 300 <= resp.status < 400:
        raise TargetError(_redirect_refused("GET", resp.url, resp.status, resp.headers.get("location")))
    if resp.status != 200:
        raise TargetError(
            f"GET {resp.url} answered HTTP {resp.status}: {resp.text(200)!r}. Is target.url the server's "
            f"OpenAI base URL (ending in /v1)? Set target.model=NAME to skip this lookup."
        )
    try:
        models = [m["id"] for m in json.loads(resp.body)["data"]]
    except (ValueError, KeyError, TypeError):
        raise TargetError(f"GET {resp.url} did not return an OpenAI model list: {resp.text(200)!r}") from None
    if not models:
        raise TargetError(f"GET {resp.url} lists no models; set target.model=NAME")
    return models[0]


PROBE_ATTEMPTS = 3


async def _probe(origins: Origins, target: TargetConfig, base_url: str, model: str) -> Checked:
    """One tiny request, read as the load's are, must succeed; a transient failure (5xx, 429, broken connection) gets two more tries."""
    first_url = url_for(base_url, target.api)
    body = request_body(target, model, prompt="Hello", messages=None, output_tokens=2)
    problem, url = "", first_url
    for attempt in range(1, PROBE_ATTEMPTS + 1):
        url, redirects = first_url, []
        while True:
            rec: dict[str, Any] = {}
            try:
                pool = origins.pool(url)
            except ValueError as exc:
                raise TargetError(f"probe request POST {url}: {exc}") from None
            headers = {"X-Request-Id": f"loadgen-probe-{attempt}"}
            answer = await execute(pool, request_path(url), body, headers, rec, api=target.api, stream=target.stream) or {}
            status = rec.get("http_status") or 0
            following = redirect_target(url, status, answer)
            if following is None:
                break
            redirects.append(url)
            if len(redirects) > MAX_REDIRECTS:
                raise TargetError(f"probe request POST {first_url} was redirected more than {MAX_REDIRECTS} times: "
                                  + " -> ".join(redirects + [following]))
            url = following
        if rec.get("status") == "ok":
            return Checked(model, _base_of(url, target.api, first_url), redirects)
        if 300 <= status < 400:
            raise TargetError(_redirect_refused("POST", url, status, answer.get("location")))
        if rec.get("status") != "http_error":
            problem = f"failed: {rec.get('error')}"
            continue
        problem = f"answered {rec.get('error', f'HTTP {status}')}"  # "HTTP 503: <the body>"
        if status < 500 and status != 429:
            break  # a client error will not go away by asking again
    where = url if url == first_url else f"{first_url} (redirected to {url})"
    raise TargetError(
        f"probe request POST {where} (model {model!r}) {problem} (after {attempt} attempt{'s' if attempt > 1 else ''})"
    )


def _base_of(url: str, api: str, first_url: str) -> str:
    """The base URL (…/v1) a redirected endpoint URL implies; TargetError when it implies none."""
    if url == first_url:
        return first_url[: -len(PATHS[api])]
    parts = urlsplit(url)
    if parts.query or not parts.path.endswith(PATHS[api]):
        raise TargetError(
            f"probe request POST {first_url} was redirected to {url}, which is not a base URL plus {PATHS[api]}; "
            "set target.url to the server's own base URL"
        )
    return url[: -len(PATHS[api])]


def _redirect_refused(method: str, url: str, status: int, location: Optional[str]) -> str:
    return (
        f"{method} {url} answered HTTP {status} redirecting to {location!r}; loadgen follows only 307/308 "
        "redirects (they keep the method and body): set target.url to the URL the server redirects to"
    )
