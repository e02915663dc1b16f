"""The metrics scraper goes through loadgen's own client: kept-alive connection, gzip, 307, the target's TLS."""

from __future__ import annotations

import gzip

from aiohttp import web

from loadgen.scrape import scraper_for
from test_scrape import metrics_server

TEXT = "vllm:num_requests_running 3\nvllm:num_requests_waiting 1\n"


def test_scrapes_reuse_one_connection_and_read_gzip():
    transports: set[int] = set()

    async def handler(request: web.Request) -> web.Response:
        transports.add(id(request.transport))
        return web.Response(body=gzip.compress(TEXT.encode()), headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    with metrics_server(handler) as root:
        scraper = scraper_for(root, "vllm", "/metrics", 60.0)
        rows = [scraper.scrape_once() for _ in range(3)]
        scraper._close_client()
    assert rows == [2, 2, 2] and not scraper.failures
    assert len(transports) == 1


def test_a_307_to_the_metrics_is_followed():
    async def handler(request: web.Request) -> web.Response:
        if "moved" not in request.query:
            return web.Response(status=307, headers={"Location": "/metrics?moved=1"})
        return web.Response(text=TEXT, content_type="text/plain")

    with metrics_server(handler) as root:
        scraper = scraper_for(root, "vllm", "/metrics", 60.0)
        rows = scraper.scrape_once()
        scraper._close_client()
    assert rows == 2, dict(scraper.failures)
